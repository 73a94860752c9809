"""Preference data: format = "preference" (JSONL and TRL's Hugging Face datasets) and the scenes' preference view."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import needs_datasets, png, raises_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.data import formats, scenes
from bench.data.loader import check_dataset, load_dataset
from bench.data.sample import TASKS
from bench.data.vocabulary import COLORS, DIGITS, POSITIONS, SHAPES
from bench.errors import DataError, SuiteError

SUITE = "suites/demo.toml"
WHERE = "[datasets.prefs]"
def pair(i: int = 0, **extra) -> dict:
    return {"image": f"img/{i}.png", "prompt": f"what is in picture {i} ?", "chosen": f"a cat {i}",
            "rejected": f"a dog {i}"} | extra


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] + [{"type": "text", "text": p} for p in parts]}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


@pytest.fixture
def folder(tmp_path) -> Path:
    for i in range(6):
        png(tmp_path / "img" / f"{i}.png", (i * 40, 0, 0))
    return tmp_path


def write(path: Path, rows) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path



# ---------------------------------------------------------------- JSONL


def test_pairs_load_as_prompt_chosen_rejected(folder):
    records = formats.read_preference(write(folder / "pairs.jsonl", [pair(0), pair(1)]))
    first = records[0]
    assert (first.question, first.answers, first.rejected) == ("what is in picture 0 ?", ("a cat 0",), "a dog 0")
    assert first.turns == (("what is in picture 0 ?", "a cat 0"),)  # the chosen answer also trains as SFT
    assert first.image == folder / "img" / "0.png" and records[1].where == "record 1 (line 2)"
    sample = formats.to_samples(records)[0]
    assert sample.rejected == "a dog 0" and sample.answers == ("a cat 0",)


def test_question_for_prompt_conversational_texts_and_a_json_list(folder):
    rows = [{"image": "img/0.png", "question": "<image>\nhow many ?", "chosen": "2", "rejected": "3"},
            {"image": "img/1.png", "prompt": user("describe", "the picture"), "chosen": assistant("a red bar"),
             "rejected": [{"role": "assistant", "content": "a blue bar"}]},
            {"image": "img/2.png", "prompt": [{"role": "system", "content": "be brief"}] + user("what ?"),
             "chosen": user("ignored") + assistant("this"), "rejected": "that"}]
    path = folder / "pairs.json"
    path.write_text(json.dumps(rows))
    records = formats.read_preference(path)
    assert [r.question for r in records] == ["how many ?", "describe\nthe picture", "what ?"]
    assert [r.answers[0] for r in records] == ["2", "a red bar", "this"]  # only the assistant's text
    assert [r.rejected for r in records] == ["3", "a blue bar", "that"]
    assert records[0].where == "record 0"


@pytest.mark.parametrize(
    "bad, where, words",
    [
        ({"prompt": None}, "field 'prompt'", "missing field 'prompt'"),
        ({"prompt": ""}, "field 'prompt'", "an empty one"),
        ({"prompt": "<image>"}, "field 'prompt'", "placeholder"),
        ({"chosen": None}, "field 'chosen'", "missing field 'chosen'"),
        ({"chosen": "  "}, "field 'chosen'", "is empty"),
        ({"rejected": 3}, "field 'rejected'", "a string or a list of messages, got int"),
        ({"rejected": "a cat 1"}, "field 'rejected'", "the same text as 'chosen'"),
        ({"rejected": " a cat 1 "}, "field 'rejected'", "the same text"),
        ({"chosen": "<image> yes"}, "field 'chosen'", "placeholder"),
        ({"chosen": [{"content": "x"}]}, "field 'chosen[0]'", "with a 'role'"),
        ({"chosen": ["x"]}, "field 'chosen[0]'", "with a 'role'"),
        ({"chosen": user("only the user speaks")}, "field 'chosen'", "no text in its gpt / assistant messages"),
        ({"chosen": [{"role": "assistant", "content": 5}]}, "field 'chosen[0].content'", "a string or a list of parts"),
        ({"chosen": [{"role": "assistant", "content": [5]}]}, "field 'chosen[0].content'", "content part"),
        ({"prompt": assistant("no user")}, "field 'prompt'", "no text in its human / user messages"),
        ({"image": None}, "field 'image'", "missing field 'image'"),
        ({"image": "img/9.png"}, "field 'image'", "does not exist"),
        ({"image": "/etc/hosts"}, "field 'image'", "escapes the image root"),
    ],
)
def test_a_bad_record_is_named_by_file_record_and_field(folder, bad, where, words):
    path = write(folder / "pairs.jsonl", [pair(0), pair(1) | bad])
    raises_at(lambda: formats.read_preference(path), str(path), f"record 1 (line 2), {where}", words)


def test_bad_files(folder):
    raises_at(lambda: formats.read_preference(write(folder / "a.jsonl", [])), "has no records")
    (folder / "b.jsonl").write_text(json.dumps(pair(0)) + "\n\n[1, 2]\n")
    raises_at(lambda: formats.read_preference(folder / "b.jsonl"), "record 1 (line 3)", "expected an object")
    (folder / "c.jsonl").write_text("{nope}\n")
    raises_at(lambda: formats.read_preference(folder / "c.jsonl"), "record 0 (line 1)", "not valid JSON")
    (folder / "e.jsonl").write_text("[1]\n" + json.dumps(pair(0)) + "\n")  # a list on the first line is JSONL's record
    raises_at(lambda: formats.read_preference(folder / "e.jsonl"), "record 0 (line 1)", "expected an object, got a list")
    (folder / "d.jsonl").write_bytes(b"\xff\xfe\x00")
    raises_at(lambda: formats.read_preference(folder / "d.jsonl"), "not UTF-8")


_TEXT = st.sampled_from(["", " ", "yes", "no", "<image>", "a cat", "img/0.png", "img/9.png", "../img/0.png"])
_MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]),
                                            "content": _TEXT | st.lists(st.fixed_dictionaries(
                                                {"type": st.sampled_from(["text", "image", "audio"]),
                                                 "text": _TEXT | st.none()}), max_size=2)}), max_size=2)
_FIELD = _TEXT | _MESSAGES | st.none() | st.integers() | st.lists(_TEXT, max_size=2)
_ROW = st.dictionaries(st.sampled_from(["image", "prompt", "question", "chosen", "rejected"]), _FIELD, max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW | _FIELD, max_size=4))
def test_any_records_either_load_as_valid_pairs_or_name_record_and_field(folder, rows):
    path = write(folder / "fuzz.jsonl", rows)
    try:
        records = formats.read_preference(path)
    except DataError as e:
        assert e.file == str(path) and e.fix and (e.where is None or e.where.startswith(("record", "line")))
        return
    for r in records:
        assert r.question.strip() and r.answers[0].strip() and r.rejected.strip() and r.answers[0] != r.rejected
        assert "<image>" not in r.question + r.answers[0] + r.rejected and r.image.is_file()


# ---------------------------------------------------------------- through the loader


def check(cfg, base_dir):
    return check_dataset(cfg, base_dir=base_dir, file=SUITE, where=WHERE)


def test_loaded_pairs_are_a_preference_dataset(folder):
    write(folder / "train.jsonl", [pair(i) for i in range(5)])
    write(folder / "val.jsonl", [pair(5)])
    cfg = {"format": "preference", "path": "train.jsonl", "eval_path": "val.jsonl"}
    check(cfg, folder)
    splits = load_dataset(cfg, base_dir=folder)
    assert splits.task == "preference" and splits.answer_metric == ""
    assert (len(splits.train), len(splits.eval)) == (5, 1) and splits.eval[0].rejected == "a dog 5"
    # the rejected answer is part of the content hash
    write(folder / "val.jsonl", [pair(5, rejected="a fox")])
    assert load_dataset(cfg, base_dir=folder).fingerprint != splits.fingerprint


@pytest.mark.parametrize(
    "cfg, key, words",
    [
        ({"format": "preference"}, "path", "exactly one of 'path'"),
        ({"format": "preference", "task": "vqa", "path": "train.jsonl"}, "task", "does not give task"),
        ({"format": "preference", "path": "train.jsonl", "hf_eval_split": "test"}, "hf_eval_split", "is a data file"),
        ({"format": "preference", "path": "train.jsonl", "label": "shape"}, "label", "does not apply"),
        ({"format": "preference", "path": "nothing.jsonl"}, "path", "does not exist"),
    ],
)
def test_table_mistakes_name_the_key(folder, cfg, key, words):
    write(folder / "train.jsonl", [pair(0), pair(1)])
    with pytest.raises(SuiteError) as info:
        check(cfg, folder)
    text = str(info.value)
    assert text.startswith(f"{SUITE}: {WHERE}, key '{key}'") and words in text, text


# ---------------------------------------------------------------- Hugging Face datasets: TRL's vision preference layout


@needs_datasets
def test_a_trl_style_dataset_with_images_and_conversations(tmp_path):
    import datasets

    rows = {"images": [[Image.new("RGB", (4, 4), (i * 50, 0, 0))] for i in range(4)],
            "prompt": [user(f"what is {i} ?") for i in range(4)],
            "chosen": [assistant(f"right {i}") for i in range(4)],
            "rejected": [assistant(f"wrong {i}") for i in range(4)]}
    ds = datasets.Dataset.from_dict(rows)
    ds = ds.cast_column("images", datasets.List(datasets.Image()))
    ds.save_to_disk(str(tmp_path / "rlaif"))
    cfg = {"format": "preference", "path": "rlaif", "eval_fraction": 0.25, "shuffle": False}
    check(cfg, tmp_path)
    splits = load_dataset(cfg, base_dir=tmp_path)
    assert splits.task == "preference" and (len(splits.train), len(splits.eval)) == (3, 1)
    first = splits.train[0]
    assert (first.question, first.answers, first.rejected) == ("what is 0 ?", ("right 0",), "wrong 0")
    assert [s.decoded().image.getpixel((0, 0))[0] for s in splits.train] == [0, 50, 100]
    # format hf reads the same dataset as its preference view
    hf = load_dataset({"format": "hf", "task": "preference", "path": "rlaif", "eval_fraction": 0.25, "shuffle": False},
                      base_dir=tmp_path)
    assert [(s.question, s.answers, s.rejected) for s in hf.train] == [(s.question, s.answers, s.rejected)
                                                                       for s in splits.train]


@needs_datasets
def test_a_dataset_of_plain_strings_and_its_mistakes(tmp_path):
    import datasets

    def save(name: str, rejected: list, images=None):
        n = len(rejected)
        rows = {"image": images or [Image.new("RGB", (4, 4))] * n, "question": [f"q{i} ?" for i in range(n)],
                "chosen": [f"c{i}" for i in range(n)], "rejected": rejected}
        ds = datasets.Dataset.from_dict(rows)
        if images is None:
            ds = ds.cast_column("image", datasets.Image())
        ds.save_to_disk(str(tmp_path / name))

    save("good", ["r0", "r1", "r2"])
    with pytest.raises(DataError, match="column 'prompt' .for prompt. is not in the dataset"):
        check({"format": "preference", "path": "good"}, tmp_path)
    cfg = {"format": "preference", "path": "good", "columns": {"prompt": "question"}}
    check(cfg, tmp_path)
    assert {s.question for s in load_dataset(cfg, base_dir=tmp_path).train} <= {"q0 ?", "q1 ?", "q2 ?"}
    save("same", ["r0", "c1", "r2"])
    with pytest.raises(DataError, match=r"record 1, field 'rejected'.*same text"):
        check({"format": "preference", "path": "same", "columns": {"prompt": "question"}}, tmp_path)
    save("two", ["r0", "r1"], images=[[Image.new("RGB", (4, 4))], [Image.new("RGB", (4, 4))] * 2])
    import datasets as ds_lib

    two = ds_lib.load_from_disk(str(tmp_path / "two")).rename_column("image", "images")
    two.save_to_disk(str(tmp_path / "two-images"))
    with pytest.raises(DataError, match="record 1, field 'images'.*list of 2 images"):
        check({"format": "preference", "path": "two-images", "columns": {"prompt": "question"}}, tmp_path)


# ---------------------------------------------------------------- the scenes' preference view


def test_scenes_preference_is_the_vqa_question_with_a_wrong_answer_of_its_kind():
    kinds = {"color": set(COLORS), "shape": set(SHAPES), "count": set(DIGITS[1:5]), "position": set(POSITIONS)}
    pref = scenes.scenes_dataset("preference", train_size=300, eval_size=20, image_size=8, seed=2)
    vqa = scenes.scenes_dataset("vqa", train_size=300, eval_size=20, image_size=8, seed=2)
    specs = scenes.generate_scenes(300, split="target", seed=2, part="train")
    assert pref.task == "preference" and "preference" in TASKS
    seen = Counter()
    for p, v, spec in zip(pref.train, vqa.train, specs, strict=True):
        assert p.image.tobytes() == v.image.tobytes() and p.question == v.question
        assert p.answers == (Counter(v.answers).most_common(1)[0][0],) and p.turns == v.turns
        assert p.rejected not in v.answers  # wrong for every annotator, synonyms included
        assert p.rejected in kinds[spec.question_kind] and p.answers[0] in kinds[spec.question_kind]
        if spec.distractor and spec.question_kind in ("color", "shape"):
            # the likeliest confusion: what the distractor in the same picture is
            assert p.rejected == spec.distractor[1 if spec.question_kind == "color" else 0]
        seen[spec.question_kind] += 1
    assert set(seen) == set(kinds)


def test_scenes_preference_is_deterministic_in_the_seed_and_leaves_the_scenes_alone():
    a = scenes.scenes_dataset("preference", train_size=40, eval_size=10, image_size=8, seed=5)
    b = scenes.scenes_dataset("preference", train_size=40, eval_size=10, image_size=8, seed=5)
    c = scenes.scenes_dataset("preference", train_size=40, eval_size=10, image_size=8, seed=6)
    assert [s.rejected for s in a.train] == [s.rejected for s in b.train] and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    # adding the view moved no scene: the vqa view's content hash is what it was before (seed 0, 8 px, 4 + 2 scenes)
    vqa = load_dataset({"format": "scenes", "task": "vqa", "train_size": 4, "eval_size": 2, "image_size": 8},
                       base_dir=".")
    assert vqa.fingerprint == VQA_FINGERPRINT and vqa.answer_metric == ""


VQA_FINGERPRINT = "1838b0d1f454ffa5"  # measured before the preference view existed


def test_the_digits_give_no_preference_view():
    with pytest.raises(SuiteError, match="does not give task 'preference'"):
        check({"format": "digits", "task": "preference"}, ".")
