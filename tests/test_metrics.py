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
    relaxed_accuracy,
    relaxed_answer_score,
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


# The official score of a question with ten answers, k of which match the prediction under the official rules:
# each annotator left out in turn, min(1, matches among the other nine / 3), averaged.
OFFICIAL = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 5: 1.0, 6: 1.0, 7: 1.0, 8: 1.0, 9: 1.0, 10: 1.0}


def ten(*groups) -> list[str]:
    """Ten annotator answers from (answer, times) groups."""
    out = [a for a, n in groups for _ in range(n)]
    assert len(out) == 10
    return out


# (prediction, the ten answers, k: how many answers the official vqaEval.py counts as matching), worked out by hand from
# its evaluate(): the prediction always goes through processPunctuation and processDigitArticle; the answers are
# compared as written when all ten are identical, and after processPunctuation only (no lower case, no number words,
# no articles) when they are not
VQA_CASES = [
    # all ten identical: compared as written, against the normalised prediction
    ("yes", ten(("yes", 10)), 10),
    ("Yes", ten(("yes", 10)), 10),  # the prediction is lower-cased
    ("YES.", ten(("yes", 10)), 10),
    ("yes", ten(("Yes", 10)), 0),  # ... the answers are not
    ("two", ten(("two", 10)), 0),  # "two" becomes "2"; ten "two" stay "two"
    ("2", ten(("two", 10)), 0),
    ("two", ten(("2", 10)), 10),
    ("none", ten(("0", 10)), 10),
    ("none", ten(("none", 10)), 0),
    ("ten", ten(("10", 10)), 10),
    ("eleven", ten(("11", 10)), 0),  # only zero to ten are mapped
    ("a dog", ten(("dog", 10)), 10),  # the prediction loses its article
    ("dog", ten(("a dog", 10)), 0),  # the answers keep theirs
    ("a dog", ten(("a dog", 10)), 0),
    ("the red one", ten(("red 1", 10)), 10),  # every word is mapped: "one" too
    ("the red one", ten(("red one", 10)), 0),
    ("yes", ten(("yes.", 10)), 0),  # the answers keep their period
    ("3,000", ten(("3,000", 10)), 0),  # digit,digit: the prediction's comma goes, the answers' stays
    ("3000", ten(("3000", 10)), 10),
    ("3.5", ten(("3.5", 10)), 10),  # a period before a digit stays
    ("dont", ten(("don't", 10)), 10),  # the prediction's contraction is mended
    ("don't", ten(("dont", 10)), 0),
    ("yes/no", ten(("yes/no", 10)), 0),  # "/" becomes a space in the prediction only
    ("black-and-white", ten(("black and white", 10)), 10),
    ("black and white", ten(("black-and-white", 10)), 0),
    (" yes\n", ten(("yes", 10)), 10),  # line breaks, tabs and outer spaces
    ("yes\tno", ten(("yes no", 10)), 10),
    ("yes ?", ten(("yes", 10)), 10),  # a mark beside a space is deleted
    ("yes?", ten(("yes", 10)), 10),  # ... one that is not becomes a space, and split() drops it
    ("", ten(("yes", 10)), 0),
    ("yes" + "." * 40, ten(("yes", 10)), 0),  # sub("", text, re.UNICODE): only the first 32 periods go
    ("yes" + "." * 32, ten(("yes", 10)), 10),
    ("(red)", ten(("red", 10)), 10),
    # answers that differ: processPunctuation on them, nothing else
    ("red", ten(("red", 3), ("blue", 7)), 3),
    ("Red", ten(("red", 3), ("blue", 7)), 3),
    ("the red", ten(("red", 3), ("blue", 7)), 3),
    ("red", ten(("red", 1), ("blue", 9)), 1),
    ("red", ten(("red", 2), ("blue", 8)), 2),
    ("red", ten(("red", 4), ("blue", 6)), 4),
    ("green", ten(("red", 4), ("blue", 6)), 0),
    ("2", ten(("two", 8), ("2", 2)), 2),  # "two" is not mapped on the answers' side
    ("two", ten(("two", 8), ("2", 2)), 2),
    ("2", ten(("two", 2), ("2", 8)), 8),
    ("yes", ten(("Yes", 8), ("yes", 2)), 2),  # nor lower-cased
    ("yes", ten(("Yes", 5), ("yes", 5)), 5),
    ("dog", ten(("a dog", 6), ("dog", 4)), 4),  # nor stripped of articles
    ("yes", ten(("yes!", 3), ("no", 7)), 0),  # "yes!" becomes "yes " (a space where the "!" was)
    ("yes", ten(("yes !", 3), ("no", 7)), 0),  # "yes !" becomes "yes " (the "!" beside a space deleted)
    ("no", ten(("yes!", 3), ("no", 7)), 7),
    ("red", ten(("(red)", 4), ("blue", 6)), 0),  # "(red)" becomes " red "
    ("black and white", ten(("black-and-white", 4), ("black and white", 6)), 10),
    ("3000", ten(("3,000", 5), ("3000", 5)), 10),  # digit,digit: every mark deleted
    ("3000", ten(("3,000 people", 5), ("3000", 5)), 5),
    ("dont", ten(("dont", 5), ("don't", 5)), 5),  # the answers' contractions are not mended
    ("center", ten(("center", 7), ("middle", 3)), 7),
    ("middle", ten(("center", 7), ("middle", 3)), 3),
    ("yes.", ten(("yes.", 5), ("yes", 5)), 10),  # the answers' final period goes too
    ("left side", ten(("left side", 4), ("left", 6)), 4),
]


@pytest.mark.parametrize(("prediction", "answers", "k"), VQA_CASES)
def test_vqa_accuracy_is_the_official_scripts(prediction, answers, k):
    assert vqa_answer_score(prediction, answers) == pytest.approx(OFFICIAL[k], abs=1e-12)


def test_vqa_hand_cases_are_many_and_cover_the_official_quirks():
    assert len(VQA_CASES) >= 50
    assert {k for _, _, k in VQA_CASES} >= {0, 1, 2, 3, 4, 5, 7, 8, 10}


def test_vqa_accuracy_averages_questions_and_keeps_the_threshold_of_three_for_any_number_of_answers():
    assert vqa_accuracy(["red", "two"], [ten(("red", 3), ("blue", 7)), ["2"] * 10]) == pytest.approx(95.0)
    assert vqa_answer_score("red", ["red"]) == 0.0  # one answer: nobody is left to agree
    assert vqa_answer_score("red", ["red"] * 3) == pytest.approx(2 / 3)  # each subset of two has two matches
    assert vqa_answer_score("red", ["red"] * 4) == 1.0
    # two different answers: leaving out "red" leaves no match, leaving out "blue" leaves one (1/3)
    assert vqa_answer_score("red", ["red", "blue"]) == pytest.approx(1 / 6)
    with pytest.raises(ValueError):
        vqa_answer_score("red", [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["red", "Red", "two", "2", "a dog", "dog", "yes!", "3,000", "dont", "left"]), min_size=1,
                max_size=12), st.sampled_from(["red", "two", "2", "dog", "yes", "3000", "don't", "left"]))
def test_vqa_score_is_the_leave_one_out_mean_of_a_match_count(answers, prediction):
    """Whatever the answers: a mean of min(1, matches / 3) over the annotators left out, so a multiple of 1/(3n) in
    [0, 1], 1 exactly when four answers match, and never more than exact agreement with the normalised prediction."""
    score = vqa_answer_score(prediction, answers)
    n = len(answers)
    assert 0.0 <= score <= 1.0
    assert score * 3 * n == pytest.approx(round(score * 3 * n), abs=1e-9)
    if score > 0:
        assert exact_match([prediction], [answers]) == 100.0


def test_exact_match_and_accuracy():
    assert exact_match(["The red one", "blue", "two"], [["red one"], "green", ["2", "3"]]) == pytest.approx(200 / 3)
    assert accuracy([0, 1, 2, 3], [0, 1, 1, 3]) == 75.0
    assert accuracy([], []) == 0.0 and vqa_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])


def test_every_metric_declares_its_direction_and_version():
    assert metrics.METRICS and all(isinstance(m.higher_is_better, bool) and m.version >= 1 for m in metrics.METRICS.values())
    assert metrics.metric_version("vqa_acc") == 2 and metrics.metric_version("CIDEr") == 1
    assert {"CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "vqa_acc", "exact_match", "accuracy", "relaxed_accuracy"} <= set(metrics.METRICS)
    assert metrics.higher_is_better("CIDEr")
    with pytest.raises(KeyError):
        metrics.higher_is_better("loss")


# ---------------------------------------------------------------- ChartQA's relaxed accuracy


def pix2struct_relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """google-research/pix2struct metrics.py relaxed_correctness, as published: the oracle the metric must match."""

    def _to_float(text: str):
        try:
            if text.endswith("%"):
                return float(text.rstrip("%")) / 100.0
            return float(text)
        except ValueError:
            return None

    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        relative_change = abs(prediction_float - target_float) / abs(target_float)
        return relative_change <= max_relative_change
    return prediction.lower() == target.lower()


RELAXED_CASES = [
    # ChartQA (Masry et al. 2022, end of 5.1): "correct if it is within 5% of the gold answer"
    ("10.5", "10", 1),  # exactly 5 %: included
    ("9.5", "10", 1),
    ("10.6", "10", 0),
    ("9.4", "10", 0),
    ("103", "100", 1),
    ("106", "100", 0),
    ("-10.2", "-10", 1),  # relative to |target|
    ("10", "-10", 0),
    ("1e1", "10", 1),  # anything Python's float() reads
    ("10.0", "10", 1),
    # percentages: a trailing '%' is stripped and the number divided by 100
    ("50%", "0.5", 1),
    ("0.5", "50%", 1),
    ("51%", "50%", 1),
    ("56%", "0.5", 0),
    ("50", "50%", 0),  # 50 is not 0.5
    # "for non-numeric answers, we still need an exact match": after strip and lower case
    ("Yes", "yes", 1),
    ("  no ", "no", 1),
    ("no", "yes", 0),
    ("United States", "united states", 1),
    ("USA", "United States", 0),
    ("1,000", "1000", 0),  # no thousands separators: "1,000" is text, compared as text
    ("ten", "10", 0),  # no number words
    ("", "0", 0),
    # a target of 0 has no relative error: pix2struct compares the strings
    ("0", "0", 1),
    ("0.0", "0", 0),
    ("0", "0.0", 0),
    ("0%", "0%", 1),
    ("0.001", "0", 0),
    # not finite: the relative change is NaN, never <= 0.05
    ("nan", "nan", 0),
    ("inf", "inf", 0),
    ("inf", "10", 0),
]


@pytest.mark.parametrize(("prediction", "answer", "score"), RELAXED_CASES)
def test_relaxed_accuracy_hand_cases(prediction, answer, score):
    assert relaxed_answer_score(prediction, [answer]) == score
    assert relaxed_answer_score(prediction, answer) == score  # one reference as a plain string
    assert pix2struct_relaxed_correctness(answer.strip(), prediction.strip()) == bool(score)


def test_relaxed_accuracy_takes_the_best_reference_and_averages_questions():
    assert relaxed_answer_score("12", ["10", "12.3"]) == 1.0
    assert relaxed_answer_score("12", ["10", "yes"]) == 0.0
    assert relaxed_answer_score(None, ["0"]) == 0.0
    assert relaxed_accuracy(["10", "no", "0.5"], [["10.4"], "yes", ["50%"]]) == pytest.approx(200 / 3)
    assert relaxed_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        relaxed_answer_score("1", [])
    with pytest.raises(ValueError):
        relaxed_accuracy(["1"], [])


def test_relaxed_accuracy_is_a_vqa_metric():
    assert metrics.higher_is_better("relaxed_accuracy") and metrics.metric_version("relaxed_accuracy") == 1
    assert "relaxed_accuracy" in metrics.EVALUATIONS["vqa"].metrics
    assert metrics.evaluation_versions("vqa")["metrics"]["relaxed_accuracy"] == 1


_GOLD = st.one_of(st.integers(-10**6, 10**6).filter(bool).map(float),
                  st.floats(min_value=1e-6, max_value=1e9).flatmap(lambda v: st.sampled_from([v, -v])))


@settings(max_examples=300, deadline=None)
@given(_GOLD, st.floats(-0.0499, 0.0499))
def test_within_five_percent_always_scores_one(gold, change):
    prediction = gold * (1 + change)
    assert relaxed_answer_score(repr(prediction), [repr(gold)]) == 1.0
    assert relaxed_answer_score(f" {prediction!r}% ", [f"{gold!r}%"]) == 1.0  # percent on both sides: the same ratio


@settings(max_examples=300, deadline=None)
@given(_GOLD, st.floats(0.0501, 10.0), st.booleans())
def test_beyond_five_percent_always_scores_zero(gold, change, below):
    prediction = gold * (1 - change if below else 1 + change)
    assert relaxed_answer_score(repr(prediction), [repr(gold)]) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: abs(v) > 1e-9))
def test_a_percentage_equals_its_hundredth_both_ways(value):
    percent, fraction = f"{value!r}%", repr(value / 100)
    assert relaxed_answer_score(percent, [fraction]) == 1.0
    assert relaxed_answer_score(fraction, [percent]) == 1.0


@settings(max_examples=200, deadline=None)
@given(_GOLD, st.floats(-0.02, 0.02))
def test_numbers_within_two_percent_score_one_whichever_is_the_reference(gold, change):
    """Symmetric where both relative errors are within 5 %: within 2 % of one is within ~2.05 % of the other."""
    other = repr(gold * (1 + change))
    assert relaxed_answer_score(other, [repr(gold)]) == relaxed_answer_score(repr(gold), [other]) == 1.0


_TEXT = st.text(alphabet="abcXYZ -%.,eE019", max_size=8)


@settings(max_examples=300, deadline=None)
@given(_TEXT, _TEXT)
def test_text_answers_score_by_case_blind_equality_symmetrically(a, b):
    if metrics._relaxed_float(a.strip()) is not None and metrics._relaxed_float(b.strip()) is not None:
        return  # two numbers: the relative rule, covered above
    expected = float(a.strip().lower() == b.strip().lower())
    assert relaxed_answer_score(a, [b]) == relaxed_answer_score(b, [a]) == expected


_ANSWER = st.one_of(_TEXT, _GOLD.map(repr), st.integers(-200, 200).map(str), st.integers(-200, 200).map(lambda v: f"{v}%"),
                    st.sampled_from(["0", "0.0", "-0", "nan", "inf", "-inf", "1e-320", "1e308", "%", "5%%", "NaN%"]))


@settings(max_examples=500, deadline=None)
@given(_ANSWER, st.lists(_ANSWER, min_size=1, max_size=4))
def test_relaxed_score_is_pix2structs_best_over_references(prediction, answers):
    expected = max(pix2struct_relaxed_correctness(a.strip(), prediction.strip()) for a in answers)
    assert relaxed_answer_score(prediction, answers) == float(expected)
    assert relaxed_accuracy([prediction], [answers]) == 100.0 * expected
