"""The bundled charts: deterministic, fast, right answers in the closed vocabulary, wrong-but-plausible rejections."""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data import charts
from bench.data.loader import check_dataset, load_dataset
from bench.data.vocabulary import CHART_ANIMALS, CHART_MONTHS, CHART_NUMBERS, CHART_WORDS, WORDS
from bench.errors import SuiteError
from bench.metrics import relaxed_answer_score

SUITE = "suites/demo.toml"
WHERE = "[datasets.charts]"


def image_bytes(splits):
    return [s.image.tobytes() for s in splits.train + splits.eval]


def texts(splits):
    return [(s.question, s.answers, s.rejected, s.turns) for s in splits.train + splits.eval]


def words(text: str) -> list[str]:
    """The words the tiny tokenizer sees: its own pre-tokenizer (whitespace, then punctuation) after lower case."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return [w for w, _ in split.pre_tokenize_str(text.lower())]


# ---------------------------------------------------------------- determinism and speed


def test_same_arguments_give_identical_charts_and_fingerprint():
    a = charts.charts_dataset("vqa", train_size=10, eval_size=4, seed=3)
    b = charts.charts_dataset("vqa", train_size=10, eval_size=4, seed=3)
    assert image_bytes(a) == image_bytes(b) and texts(a) == texts(b)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert charts.charts_dataset("vqa", train_size=10, eval_size=4, seed=4).fingerprint != a.fingerprint
    assert charts.charts_dataset("vqa", train_size=10, eval_size=4, seed=3, split="source").fingerprint != a.fingerprint


def test_content_depends_on_split_seed_part_and_index_only():
    vqa = charts.charts_dataset("vqa", train_size=8, eval_size=3, image_size=32)
    pref = charts.charts_dataset("preference", train_size=8, eval_size=3, image_size=32)
    assert image_bytes(vqa) == image_bytes(pref)
    assert [s.question for s in vqa.train] == [s.question for s in pref.train]
    assert [s.answers for s in vqa.train] == [s.answers for s in pref.train]  # chosen = the vqa answer
    # a longer list starts with the same charts; the eval stream does not move with the train size
    longer = charts.charts_dataset("vqa", train_size=12, eval_size=3, image_size=32)
    assert image_bytes(longer)[:8] == image_bytes(vqa)[:8] and image_bytes(longer)[12:] == image_bytes(vqa)[8:]
    big = charts.charts_dataset("vqa", train_size=8, eval_size=3, image_size=96)
    assert big.train[0].image.size == (96, 96) and [s.question for s in big.train] == [s.question for s in vqa.train]


def test_generation_is_fast():
    charts._canvas.cache_clear()  # a cold canvas and glyph cache, as a fresh process has
    charts._glyphs.cache_clear()
    start = time.perf_counter()
    splits = charts.charts_dataset("vqa", train_size=256, eval_size=64, image_size=64)
    elapsed = time.perf_counter() - start
    assert len(splits.train) == 256 and len(splits.eval) == 64
    assert elapsed < 1.5, f"320 charts took {elapsed:.2f}s"


@pytest.mark.parametrize("size", [8, 12, 64, 224])
def test_any_image_size_renders(size):
    splits = charts.charts_dataset("vqa", train_size=3, eval_size=1, image_size=size)
    for s in splits.train + splits.eval:
        assert s.image.mode == "RGB" and s.image.size == (size, size)
        assert len(np.unique(np.asarray(s.image).reshape(-1, 3), axis=0)) > 2  # background, marks, axis


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), split=st.sampled_from(charts.SPLITS), task=st.sampled_from(charts.VIEWS),
       size=st.integers(8, 160), n=st.integers(0, 3))
def test_any_seed_split_view_and_size_gives_well_formed_samples(seed, split, task, size, n):
    d = charts.charts_dataset(task, split=split, train_size=n, eval_size=1, image_size=size, seed=seed)
    assert (len(d.train), len(d.eval)) == (n, 1) and d.answer_metric == "relaxed_accuracy"
    for s in d.train + d.eval:
        assert s.image.size == (size, size) and s.question.endswith(" ?") and len(s.answers) == 1
        assert (s.rejected is not None) == (task == "preference")


# ---------------------------------------------------------------- texts


def test_questions_and_answers_are_right():
    specs = charts.generate_charts(400, split="target", seed=1, part="eval")
    kinds = Counter()
    for spec in specs:
        question, answer = charts.question_answer(spec)
        kinds[spec.question_kind] += 1
        values = dict(zip(spec.categories, spec.values, strict=True))
        assert len(set(spec.values)) == len(spec.values) and spec.a != spec.b
        first, second = spec.categories[spec.a], spec.categories[spec.b]
        if spec.question_kind == "value":
            assert question == f"what is the value of {first} ?" and answer == str(values[first])
        elif spec.question_kind in ("highest", "lowest"):
            noun = "bar" if spec.kind == "bar" else "point"
            assert question == f"which {noun} is the {spec.question_kind} ?"
            assert values[answer] == (max if spec.question_kind == "highest" else min)(spec.values)
        elif spec.question_kind == "difference":
            assert question == f"what is the difference between {first} and {second} ?"
            assert int(answer) == abs(values[first] - values[second]) > 0
        else:
            word = "higher" if spec.higher else "lower"
            assert question == f"is {first} {word} than {second} ?"
            assert (answer == "yes") == ((values[first] > values[second]) == spec.higher)
    assert set(kinds) == set(charts.QUESTION_KINDS) and min(kinds.values()) > 50
    answers = Counter(charts.question_answer(s)[1] for s in specs if s.question_kind == "compare")
    assert answers["yes"] > 20 and answers["no"] > 20  # both answers, so "yes" alone is not a strategy


def test_every_word_written_is_in_the_vocabulary():
    known = set(WORDS) | set(CHART_WORDS)
    seen = set()
    for split in charts.SPLITS:
        for task in charts.VIEWS:
            d = charts.charts_dataset(task, split=split, train_size=300, eval_size=50, image_size=8)
            for s in d.train + d.eval:
                for text in (s.question, *s.answers, s.rejected or "", *(t for turn in s.turns for t in turn)):
                    seen |= set(words(text))
    assert not seen - known, sorted(seen - known)[:10]
    assert len(seen) > 100  # numbers, categories, question words


def test_chart_words_leave_the_tiny_vocabulary_as_it_was():
    # the tiny tokenizer's ids come from WORDS: a changed WORDS would change every tiny model's vocabulary
    assert len(WORDS) == 96
    assert hashlib.sha256("\n".join(WORDS).encode()).hexdigest()[:16] == "634991e80ea20242"
    assert not set(CHART_WORDS) & set(WORDS) and len(set(CHART_WORDS)) == len(CHART_WORDS)
    assert set(CHART_NUMBERS) == {str(n) for n in range(101)} <= set(WORDS) | set(CHART_WORDS)
    assert set(CHART_ANIMALS + CHART_MONTHS) <= set(CHART_WORDS)


# ---------------------------------------------------------------- the preference view


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), split=st.sampled_from(charts.SPLITS))
def test_rejected_answers_are_plausible_and_wrong(seed, split):
    for spec in charts.generate_charts(25, split=split, seed=seed, part="train"):
        _, chosen = charts.question_answer(spec)
        rejected = charts.rejected_answer(spec)
        assert rejected != chosen
        assert relaxed_answer_score(rejected, [chosen]) == 0.0  # wrong under the data's own metric too
        if spec.question_kind in ("value", "difference"):
            assert rejected in CHART_NUMBERS and abs(int(rejected) - int(chosen)) <= max(3, 0.3 * int(chosen) + 1)
        elif spec.question_kind in ("highest", "lowest"):
            ranked = sorted(spec.values, reverse=spec.question_kind == "highest")
            assert spec.values[spec.categories.index(rejected)] == ranked[1]  # the runner-up
        else:
            assert {chosen, rejected} == {"yes", "no"}


@pytest.mark.parametrize("value", range(101))
def test_near_numbers_stay_in_range_and_outside_five_percent(value):
    for seed in range(20):
        other = charts.near_number(value, np.random.default_rng(seed))
        assert 0 <= other <= 100 and other != value
        assert relaxed_answer_score(str(other), [str(value)]) == 0.0


def test_preference_samples():
    d = charts.charts_dataset("preference", train_size=20, eval_size=5, image_size=16)
    assert d.task == "preference" and d.answer_metric == "relaxed_accuracy"
    for s in d.train + d.eval:
        assert len(s.answers) == 1 and s.rejected and s.rejected != s.answers[0]
        assert s.turns == ((s.question, s.answers[0]),)


# ---------------------------------------------------------------- images and the shift


def test_bars_are_as_tall_as_their_values():
    bars = [c for c in charts.generate_charts(120, split="source", seed=0, part="train") if c.kind == "bar"]
    assert len(bars) > 20
    size = 64
    left, _, width, height = (f * size for f in charts.AXES)
    for chart in bars:
        pixels = np.asarray(charts.render(chart, size)).astype(int)
        is_mark = np.abs(pixels - np.asarray(charts.MARK_RGB[chart.color])).sum(axis=2) < 60
        n, top = len(chart.values), charts.axis_max(chart.values) * 1.15
        for k, value in enumerate(chart.values):
            column = is_mark[:, int(left + width * (k + 0.5) / n)]
            assert abs(column.sum() - height * value / top) <= 1.5, (chart, k, column.sum())


def test_target_is_shifted_from_source():
    source = charts.generate_charts(400, split="source", seed=0, part="train")
    target = charts.generate_charts(400, split="target", seed=0, part="train")
    line_share = [sum(c.kind == "line" for c in cs) / 400 for cs in (source, target)]
    assert line_share[0] < 0.4 < 0.5 < line_share[1]
    assert {c.background for c in source} == {"white"} and {c.background for c in target} == {"cream", "dark"}
    assert not {c.color for c in source} & {c.color for c in target}
    assert max(v for c in source for v in c.values) <= 60 and min(v for c in target for v in c.values) >= 20
    assert max(v for c in target for v in c.values) > 80
    # the same questions on both: a source-trained model has something to carry over
    assert {c.question_kind for c in source} == {c.question_kind for c in target}


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        charts.charts_dataset("caption")
    with pytest.raises(ValueError, match="split"):
        charts.charts_dataset("vqa", split="test")
    with pytest.raises(ValueError, match="image_size"):
        charts.charts_dataset("vqa", image_size=4)


# ---------------------------------------------------------------- through the loader


def test_the_loader_gives_charts_with_their_answer_metric():
    d = load_dataset({"format": "charts", "task": "vqa", "train_size": 6, "eval_size": 2}, base_dir=".")
    assert d.task == "vqa" and d.answer_metric == "relaxed_accuracy" and d.classnames == ()
    assert d.train[0].image.size == (64, 64)  # the charts' default size
    assert d.info["format"] == "charts" and d.info["split"] == "target" and d.info["n_train"] == 6
    same = load_dataset({"format": "charts", "task": "vqa", "train_size": 6, "eval_size": 2, "seed": 0}, base_dir=".",
                        seed=9)
    assert same.fingerprint == d.fingerprint  # the table's own seed wins
    pref = load_dataset({"format": "charts", "task": "preference", "split": "source", "train_size": 3, "eval_size": 1,
                         "image_size": 32}, base_dir=".")
    assert pref.task == "preference" and all(s.rejected for s in pref.train)


@pytest.mark.parametrize(
    "cfg, key, words",
    [
        ({"format": "charts", "task": "caption"}, "task", "does not give task"),
        ({"format": "charts", "task": "vqa", "label": "shape"}, "label", "does not apply"),
        ({"format": "charts", "task": "vqa", "path": "x.json"}, "path", "does not apply"),
        ({"format": "charts", "task": "vqa", "split": "test"}, "split", "is not one of"),
        ({"format": "charts", "task": "vqa", "image_size": 4}, "image_size", "between 8"),
    ],
)
def test_table_mistakes_name_the_key(cfg, key, words):
    with pytest.raises(SuiteError) as info:
        check_dataset(cfg, base_dir=".", file=SUITE, where=WHERE)
    text = str(info.value)
    assert text.startswith(f"{SUITE}: {WHERE}, key '{key}'") and words in text, text
    assert info.value.fix


def test_a_table_without_a_task_is_refused_when_loaded():
    with pytest.raises(SuiteError, match="several tasks"):
        load_dataset({"format": "charts"}, base_dir=".", file=SUITE, where=WHERE)
