"""The synthetic scenes: deterministic, fast, correct texts, a real shift between source and target."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from bench.data import digits, scenes
from bench.data.digits import digits_dataset
from bench.data.sample import TASKS
from bench.data.vocabulary import COUNTS, DIGITS, SHAPES, SHAPES_PLURAL


def image_bytes(splits):
    return [s.image.tobytes() for s in splits.train + splits.eval]


def test_same_arguments_give_identical_images_and_fingerprint():
    a = scenes.scenes_dataset("vqa", train_size=12, eval_size=4, seed=3)
    b = scenes.scenes_dataset("vqa", train_size=12, eval_size=4, seed=3)
    assert image_bytes(a) == image_bytes(b)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert scenes.scenes_dataset("vqa", train_size=12, eval_size=4, seed=4).fingerprint != a.fingerprint
    assert scenes.scenes_dataset("vqa", train_size=12, eval_size=4, seed=3, split="source").fingerprint != a.fingerprint


def test_views_and_sizes_of_one_seed_show_the_same_scenes():
    cls = scenes.scenes_dataset("classification", train_size=8, eval_size=2)
    vqa = scenes.scenes_dataset("vqa", train_size=8, eval_size=2)
    assert image_bytes(cls) == image_bytes(vqa)
    assert [s.label for s in cls.train] == [s.label for s in vqa.train]
    # a longer list starts with the same scenes: train and eval are separate streams
    longer = scenes.scenes_dataset("classification", train_size=16, eval_size=2)
    assert image_bytes(longer)[:8] == image_bytes(cls)[:8] and image_bytes(longer)[16:] == image_bytes(cls)[8:]
    big = scenes.scenes_dataset("classification", train_size=8, eval_size=2, image_size=64)
    assert big.train[0].image.size == (64, 64) and [s.label for s in big.train] == [s.label for s in cls.train]


def test_generation_is_fast():
    start = time.perf_counter()
    splits = scenes.scenes_dataset("caption", train_size=256, eval_size=64, image_size=32)
    elapsed = time.perf_counter() - start
    assert len(splits.train) == 256 and len(splits.eval) == 64
    assert elapsed < 1.0, f"320 scenes took {elapsed:.2f}s"


def test_classification_view():
    splits = scenes.scenes_dataset("classification", train_size=64, eval_size=16)
    assert splits.task == "classification" and splits.classnames == SHAPES
    for s in splits.train:
        assert s.image.mode == "RGB" and s.image.size == (32, 32)
        assert 0 <= s.label < 4
        # "a photo of a red circle": CLIP's prompt template with a colour, naming the label's shape
        assert s.captions[0].startswith("a photo of ") and s.captions[0].endswith(" " + SHAPES[s.label])
    assert set(s.label for s in splits.train) == {0, 1, 2, 3}


def test_captions_are_varied_and_correct():
    specs = scenes.generate_scenes(200, split="target", seed=0, part="train")
    counts = Counter()
    for spec in specs:
        caps = scenes.captions(spec)
        assert 3 <= len(caps) <= 5 and len(set(caps)) == len(caps)
        counts[len(caps)] += 1
        noun = spec.shape if spec.count == 1 else SHAPES_PLURAL[SHAPES.index(spec.shape)]
        article = "an" if spec.color[0] in "aeiou" else "a"  # "an orange circle"
        count_word = article if spec.count == 1 else COUNTS[spec.count]
        assert caps[0] == f"{count_word} {spec.color} {noun} {scenes.PHRASE[spec.position]}"
        for cap in caps:
            assert spec.color in cap.split() and noun in cap.split()
    assert set(counts) == {3, 4, 5}


def test_vqa_answers_match_the_scene():
    specs = scenes.generate_scenes(300, split="target", seed=1, part="eval")
    kinds = Counter()
    for spec in specs:
        question, answers = scenes.question_answers(spec)
        kinds[spec.question_kind] += 1
        assert len(answers) == 10 and all(len(a.split()) == 1 for a in answers)
        expected = {"color": spec.color, "shape": spec.shape, "count": DIGITS[spec.count],
                    "position": spec.position}[spec.question_kind]
        assert answers[0] == expected and question.endswith(" ?")
        assert Counter(answers).most_common(1)[0][0] == expected  # the synonym is never the majority
        assert set(answers) <= {expected, "middle"}
    assert set(kinds) == set(scenes.QUESTION_KINDS)
    sample = scenes.to_sample(specs[0], "vqa", 32)
    assert sample.turns == ((sample.question, sample.answers[0]),)


def test_one_to_four_shapes_with_a_dominant_main_shape():
    specs = scenes.generate_scenes(400, split="target", seed=0, part="train")
    assert {len(s.items) for s in specs} == {1, 2, 3, 4}
    for spec in specs:
        main = [i for i in spec.items if i.shape == spec.shape]
        assert len(main) == spec.count
        if spec.distractor:
            assert spec.distractor[0] != spec.shape and all(i.radius > scenes.DISTRACTOR_RADIUS for i in main)


def test_pixels_show_the_described_scene():
    # source has no noise: the pixel under each shape's centre has its colour, a free corner the background
    spec = next(s for s in scenes.generate_scenes(50, split="source", seed=0, part="train")
                if s.shape == "circle" and s.position == "left" and not s.distractor)
    image = scenes.render(spec, 64)
    for item in spec.items:
        assert image.getpixel((int(item.x * 64), int(item.y * 64))) == scenes.RGB[item.color]
    assert image.getpixel((63, 0)) == scenes.BACKGROUND_RGB[spec.background]


def test_target_is_shifted_from_source():
    source = scenes.generate_scenes(400, split="source", seed=0, part="train")
    target = scenes.generate_scenes(400, split="target", seed=0, part="train")
    assert not any((s.shape, s.color) in scenes.HELD_OUT for s in source)
    assert sum((s.shape, s.color) in scenes.HELD_OUT for s in target) > 150
    assert {s.background for s in source} == {"dark", "gray"}
    assert "light" in {s.background for s in target} and "dark" not in {s.background for s in target}
    assert sum(s.size == "small" for s in target) / 400 > 0.45 > 0.35 > sum(s.size == "small" for s in source) / 400
    # shared ground, so a source-trained model is above chance: gray backgrounds, non-held-out pairs
    assert sum(s.background == "gray" and (s.shape, s.color) not in scenes.HELD_OUT for s in target) > 80
    # target pixels are noisy: a corner of background is no longer one flat colour
    noisy = np.asarray(scenes.render(target[0], 32))[:3, :3].reshape(-1, 3)
    clean = np.asarray(scenes.render(source[0], 32))[:3, :3].reshape(-1, 3)
    assert len(np.unique(noisy, axis=0)) > 1 and len(np.unique(clean, axis=0)) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        scenes.scenes_dataset("detection")
    with pytest.raises(ValueError, match="split"):
        scenes.scenes_dataset("vqa", split="test")


def test_bundled_text_tokenizes_without_unknown_words():
    from bench.models.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    texts = set()
    for task in TASKS:
        for split in scenes.SPLITS:
            d = scenes.scenes_dataset(task, split=split, train_size=200, eval_size=50, image_size=8)
            texts |= {t for s in d.train + d.eval for t in (*s.captions, s.question or "", *s.answers, s.rejected or "")}
    for task in digits.VIEWS:
        d = digits_dataset(task, train_size=100, eval_size=50, image_size=8)
        texts |= {t for s in d.train + d.eval for t in (*s.captions, s.question or "", *s.answers)}
    texts.discard("")
    assert len(texts) > 500
    unknown = {t for t in texts if tok.unk_token_id in tok(t, add_special_tokens=False)["input_ids"]}
    assert not unknown, sorted(unknown)[:10]
