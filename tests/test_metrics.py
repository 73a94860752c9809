"""Metrics: caption scores equal pycocoevalcap's own; VQA accuracy and normalisation follow the official script."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from bench import metrics
from bench.metrics import (
    accuracy,
    caption_scores,
    exact_match,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_answer_score,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs Java")

PREDICTIONS = ["two red circles on the left.", "A blue square", "a green cross, at the top", "three crosses"]
REFERENCES = [
    ["two red circles on the left", "there are two red circles on the left", "a photo of two red circles"],
    ["a blue square in the center", "one blue square"],
    ["a green cross at the top", "a small green cross", "a green cross on a dark background"],
    ["three yellow crosses at the bottom", "a picture of three yellow crosses"],
]


def reference_scores(gts, res):
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        "CIDEr": 100 * Cider().compute_score(gts, res)[0],
        "BLEU-4": 100 * bleu[3],
        "ROUGE-L": 100 * Rouge().compute_score(gts, res)[0],
    }


@needs_java
def test_caption_scores_equal_pycocoevalcap_with_ptb_tokenizer():
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(REFERENCES)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)})
    expected = reference_scores(gts, res)
    got = caption_scores(PREDICTIONS, REFERENCES)
    assert set(got) == {"CIDEr", "BLEU-4", "ROUGE-L"}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert 0 < got["BLEU-4"] < 100 and got["CIDEr"] > 0


def test_simple_tokenizer_is_lowercase_whitespace_split_without_java():
    gts = {i: [" ".join(r.lower().split()) for r in refs] for i, refs in enumerate(REFERENCES)}
    res = {i: [p.lower()] for i, p in enumerate(PREDICTIONS)}
    expected = reference_scores(gts, res)
    got = caption_scores(PREDICTIONS, REFERENCES, tokenize="simple")
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    # "left." is not "left" without the PTB tokenizer: the two modes really differ
    if shutil.which("java"):
        assert got["BLEU-4"] != caption_scores(PREDICTIONS, REFERENCES)["BLEU-4"]


def test_perfect_captions_score_100_and_empty_ones_do_not_crash():
    refs = [["a red circle on the left"], ["two blue squares at the top"]]
    perfect = caption_scores(["a red circle on the left", "two blue squares at the top"], refs, tokenize="simple")
    assert perfect["BLEU-4"] == pytest.approx(100, abs=1e-4) and perfect["ROUGE-L"] == pytest.approx(100)
    empty = caption_scores(["", "   "], refs, tokenize="simple")
    assert empty == {"CIDEr": 0.0, "BLEU-4": pytest.approx(0, abs=1e-6), "ROUGE-L": 0.0}
    assert caption_scores([], [], tokenize="simple") == {"CIDEr": 0.0, "BLEU-4": 0.0, "ROUGE-L": 0.0}


@needs_java
def test_empty_and_multiline_predictions_keep_the_ptb_lines_aligned():
    # an empty prediction is an empty line for the Java tokenizer, and a line break inside a caption
    # would start a new one: either could shift every later caption onto the wrong image
    preds = ["", "a blue\nsquare", "a green cross at the top"]
    refs = [["a red circle"], ["a blue square"], ["a green cross at the top"]]
    got = caption_scores(preds, refs)
    assert got["ROUGE-L"] == pytest.approx(100 * (0 + 1 + 1) / 3)  # per image: 0, 1, 1


@needs_java
def test_a_trailing_empty_prediction_scores_as_empty():
    # the last line of the one tokenizer call: an empty prediction there must still be its own (empty) line
    got = caption_scores(["a red circle", ""], [["a red circle"], ["a blue square"]])
    assert got["ROUGE-L"] == pytest.approx(100 * (1 + 0) / 2)


_WORDS = st.sampled_from(["a", "red", "circle", "two", "blue", "squares", "left.", "top,", "isn't", "(big)", "x-y"])
_CAPTION = st.lists(_WORDS, max_size=6).map(" ".join)


@needs_java
@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(_CAPTION.filter(str.strip), st.lists(_CAPTION.filter(str.strip), min_size=1, max_size=3)),
                min_size=1, max_size=6))
def test_one_tokenizer_call_scores_as_pycocoevalcaps_two(pairs):
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    got = caption_scores(preds, refs)
    for name, value in reference_scores(gts, res).items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_caption_argument_errors():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        caption_scores(["a", "b"], [["a"]], tokenize="simple")
    with pytest.raises(ValueError, match="references\\[0\\]"):
        caption_scores(["a"], [[]], tokenize="simple")
    with pytest.raises(ValueError, match="tokenize"):
        caption_scores(["a"], [["a"]], tokenize="bpe")


@pytest.mark.slow  # METEOR starts a JVM: ~10 s
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_runs_through_java_when_asked():
    got = caption_scores(["a blue square", "two red circles"], [["a blue square"], ["a red circle"]], meteor=True)
    assert 0 < got["METEOR"] < 100


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("the dog.", "dog"),  # articles and the final period go
        ("A Red Ball", "red ball"),
        ("black-and-white", "black and white"),  # a hyphen inside a word becomes a space
        ("yes !", "yes"),  # a mark next to a space is deleted
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),  # digit,digit: every mark is deleted
        ("dont", "don't"),  # contractions get their apostrophe back
        ("couldnt've", "couldn't've"),
        ("  on\tthe\nleft ", "on left"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw, normal):
    assert normalize_vqa_answer(raw) == normal


def test_vqa_accuracy_by_hand():
    # Ten annotators; for each one left out, the score is min(1, matches among the other nine / 3).
    def answers(n_match, match="red", other="blue"):
        return [match] * n_match + [other] * (10 - n_match)

    # 3 match: leaving out one of the 3 leaves 2 -> 2/3 (3 times); leaving out another leaves 3 -> 1 (7 times)
    # (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy(["red"], [answers(3)]) == pytest.approx(90.0)
    # 1 match: 0 once, 1/3 nine times -> 0.3
    assert vqa_accuracy(["red"], [answers(1)]) == pytest.approx(30.0)
    # 2 match: 1/3 twice, 2/3 eight times -> (2/3 + 16/3) / 10 = 0.6
    assert vqa_accuracy(["red"], [answers(2)]) == pytest.approx(60.0)
    # 4 match: at least 3 remain in every subset -> 1
    assert vqa_accuracy(["red"], [answers(4)]) == pytest.approx(100.0)
    assert vqa_accuracy(["green"], [answers(10)]) == 0.0
    # the mean over questions, after normalisation on both sides ("Two" and "2" are the same answer)
    assert vqa_accuracy(["red", "Two"], [answers(3), ["2"] * 10]) == pytest.approx(95.0)
    # the scenes' accepted synonym: 7 "center" + 3 "middle"; "middle" earns what 3 of 10 earns
    synonym = ["center"] * 7 + ["middle"] * 3
    assert vqa_accuracy(["middle", "center"], [synonym, synonym]) == pytest.approx((90 + 100) / 2)


def test_vqa_accuracy_with_fewer_answers():
    assert vqa_answer_score("red", ["red"]) == 1.0 and vqa_answer_score("Red.", ("red",)) == 1.0
    assert vqa_answer_score("blue", ["red"]) == 0.0
    # two answers: the threshold is min(3, n - 1) = 1; leaving out "red" leaves none, leaving out "blue" leaves one
    assert vqa_answer_score("red", ["red", "blue"]) == pytest.approx(0.5)
    assert vqa_answer_score("red", ["red", "red"]) == 1.0
    with pytest.raises(ValueError):
        vqa_answer_score("red", [])


def test_exact_match_and_accuracy():
    assert exact_match(["The red one", "blue", "two"], [["red one"], "green", ["2", "3"]]) == pytest.approx(200 / 3)
    assert accuracy([0, 1, 2, 3], [0, 1, 1, 3]) == 75.0
    assert accuracy([], []) == 0.0 and vqa_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])


def test_every_metric_declares_its_direction():
    assert metrics.METRICS and all(isinstance(v, bool) for v in metrics.METRICS.values())
    assert {"CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "vqa_acc", "exact_match", "accuracy"} <= set(metrics.METRICS)
    assert metrics.higher_is_better("CIDEr")
    with pytest.raises(KeyError):
        metrics.higher_is_better("loss")
