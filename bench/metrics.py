"""Quality metrics as the field reports them, each on a 0-100 scale with its direction declared.

- Captions: CIDEr, BLEU-4, ROUGE-L (and METEOR) through pycocoevalcap's own scorers, after its
  PTB tokenizer (Java) as the COCO caption evaluation does, or a plain lower-case split without Java.
- VQA: the official accuracy (min(1, matching humans / 3), averaged over the leave-one-annotator-out
  subsets), the prediction normalised and the references compared exactly as the official script does it
  (GT-Vision-Lab/VQA, vqaEval.py), quirks included; exact_match is the always-normalising reading.
- Charts: ChartQA's relaxed accuracy as pix2struct computes it (numbers within 5 % of the answer, other answers exact).
- Classification: plain accuracy.

pycocoevalcap is imported only when caption scores are asked for, so importing this module is cheap.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from bench.records import version_text


@dataclass(frozen=True)
class Metric:
    higher_is_better: bool
    # bumped whenever what the metric computes changes: quality numbers of two versions never compare
    # (quality_version puts it in each record, evaluation_versions in the untuned base's key)
    version: int = 1


# every metric a task can report, declared here
METRICS: dict[str, Metric] = {
    "CIDEr": Metric(True),
    "BLEU-4": Metric(True),
    "ROUGE-L": Metric(True),
    "METEOR": Metric(True),
    # 2: the official script's rule (references normalised only when they disagree; threshold 3 whatever their
    # number); 1 normalised every reference and lowered the threshold for fewer than ten
    "vqa_acc": Metric(True, version=2),
    "exact_match": Metric(True),
    "relaxed_accuracy": Metric(True),
    "accuracy": Metric(True),
    "zero_shot_acc": Metric(True),
}


@dataclass(frozen=True)
class Evaluation:
    """A task's evaluation (bench/tasks/): its procedure's version (bumped when what evaluate() measures changes: prompt,
    generation, scoring) and the metrics it reports."""

    version: int
    metrics: tuple[str, ...]


EVALUATIONS: dict[str, Evaluation] = {
    "classification": Evaluation(1, ("zero_shot_acc",)),
    "caption": Evaluation(1, ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR")),
    "vqa": Evaluation(1, ("vqa_acc", "exact_match", "relaxed_accuracy")),
    # preference pairs, evaluated by the instruction task on their prompts and chosen answers (bench/tasks/preference.py
    # adds TRL's reward statistics for a DPO cell)
    "preference": Evaluation(1, ("vqa_acc", "exact_match", "relaxed_accuracy")),
}


def quality_version(task: str, metric: str) -> str:
    """What a quality number is, as records carry it (quality.version), e.g. "vqa-1/vqa_acc-2": the task's evaluation
    and the metric, each with its version. Numbers of two versions are never compared (bench gate, bench compare)."""
    return version_text(task, EVALUATIONS[task].version, metric, metric_version(metric))


def evaluation_versions(task: str) -> dict:
    """The versions an untuned base's evaluation depends on (part of its key: bench.suite.plan.base_key)."""
    return {"task": EVALUATIONS[task].version, "metrics": {m: metric_version(m) for m in EVALUATIONS[task].metrics}}


def higher_is_better(name: str) -> bool:
    return _metric(name).higher_is_better


def metric_version(name: str) -> int:
    return _metric(name).version


def _metric(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]


# ---------------------------------------------------------------- captions


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (a child process's stderr too) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def caption_scores(
    predictions: list[str],
    references: list[list[str]],
    *,
    tokenize: str = "ptb",
    meteor: bool = False,
) -> dict[str, float]:
    """Corpus-level caption metrics ×100. CIDEr's IDF comes from these references, so scores on
    different subsets are not comparable. METEOR needs Java and takes ~10 s; it is left out
    (not zeroed) when Java is missing."""
    return caption_scores_per_image(predictions, references, tokenize=tokenize, meteor=meteor)[0]


def caption_scores_per_image(predictions: list[str], references: list[list[str]], *, tokenize: str = "ptb",
                             meteor: bool = False) -> tuple[dict[str, float], list[float]]:
    """caption_scores and each image's CIDEr ×100 (pycocoevalcap's corpus CIDEr is their mean; the IDF still comes from
    every reference, so an image's score depends on the others')."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    names = ["CIDEr", "BLEU-4", "ROUGE-L"] + (["METEOR"] if meteor and _has_java() else [])
    if not predictions:
        return {n: 0.0 for n in names}, []
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")

    # str.split() also breaks on \r, \x0b, \u2028...: the PTB tokenizer reads one caption per line,
    # so a stray line break inside a caption would shift every caption after it
    gts = {i: [" ".join(r.split()) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join((p or "").split())] for i, p in enumerate(predictions)}
    if tokenize == "ptb":
        if not _has_java():
            raise RuntimeError("tokenize='ptb' needs Java (pycocoevalcap's PTBTokenizer); use tokenize='simple'")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # one Java start for both sides (~0.13 s each): the tokenizer keeps lines apart (-preserveLines), so each
        # caption's tokens are what two calls give
        both = {("ref", i): caps for i, caps in gts.items()} | {("pred", i): caps for i, caps in res.items()}
        with _quiet_stderr():  # the Java tokenizer reports its speed on stderr for every call
            tokens = PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in both.items()})
        gts = {i: tokens[("ref", i)] for i in gts}
        res = {i: tokens[("pred", i)] for i in res}
    elif tokenize == "simple":
        gts = {i: [c.lower() for c in caps] for i, caps in gts.items()}
        res = {i: [c.lower() for c in caps] for i, caps in res.items()}
    else:
        raise ValueError(f"tokenize must be 'ptb' or 'simple', not {tokenize!r}")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    scores = {"CIDEr": 100 * float(cider), "BLEU-4": 100 * float(bleu[3]), "ROUGE-L": 100 * float(rouge)}
    if "METEOR" in names:
        scores["METEOR"] = 100 * _meteor(gts, res)
    return scores, [100 * float(x) for x in per_image]  # in the order of gts' keys: 0, 1, ...


def _has_java() -> bool:
    return shutil.which("java") is not None


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # starts a Java process; stop it here rather than whenever GC runs __del__
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


# ---------------------------------------------------------------- VQA answer normalisation
# Reimplemented from the official evaluation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py),
# quirks included, so that numbers are comparable with published VQA accuracies.

# Punctuation the official script removes (or turns into a space); the apostrophe is kept for contractions.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (a typo for a lookbehind) that never
# fires, so in effect: drop a period that is not followed by a digit. It is called as sub("", text, re.UNICODE), which
# passes re.UNICODE (32) as the count: only the first 32 such periods go.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIODS_DROPPED = 32
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The official table maps a contraction written with one apostrophe missing to its proper form
# ("dont" -> "don't", "couldnt've" and "couldn'tve" -> "couldn't've"). It is generated here from
# the proper forms; the official keys starting with a capital ("Im", "Ive", "Id've") never match
# lower-cased text, so they are left out, as is its no-op "let's"/"she's" entries.
_PROPER_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've "
    "shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll "
    "someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're "
    "why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll "
    "you're you've"
).split()


def _one_apostrophe_missing(word: str) -> list[str]:
    return [word[:i] + word[i + 1 :] for i, ch in enumerate(word) if ch == "'"]


_CONTRACTIONS = {typo: proper for proper in _PROPER_CONTRACTIONS for typo in _one_apostrophe_missing(proper)}
_CONTRACTIONS["somebody'd"] = "somebodyd"  # an inverted entry in the official table, kept for parity


def _strip_punctuation(text: str) -> str:
    """The official processPunctuation: a mark next to a space (or any mark, in a text with a digit,digit comma) is
    deleted, otherwise it becomes a space ("black-and-white" -> "black and white"); then the periods."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in _PUNCT:
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIODS_DROPPED)


def _digits_articles(text: str) -> str:
    """The official processDigitArticle: lower case, number words to digits, no articles, contractions mended."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The official normalisation of a predicted answer: line breaks and tabs to spaces, stripped, punctuation, then
    number words, articles and contractions."""
    return _digits_articles(_strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


# ---------------------------------------------------------------- VQA accuracy, exact match, accuracy


def _as_references(refs) -> list[str]:
    return [refs] if isinstance(refs, str) else list(refs)


def vqa_answer_score(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQA accuracy in [0, 1], as the official script computes it.

    The prediction is normalised (normalize_vqa_answer). The references are compared as written when they are all
    the same, and only stripped of punctuation (no lower case, number words or articles) when they are not: so ten
    "two" never match a predicted "two" (normalised to "2"), as in the official evaluation. Then, for each annotator
    left out, min(1, matching answers of the others / 3), averaged. The threshold is 3 whatever the number of answers:
    a question needs at least four to be answerable in full, and one with a single answer always scores 0 (the
    VQA task reports exact_match instead for such data).
    """
    refs = _as_references(answers)
    if not refs:
        raise ValueError("a VQA question needs at least one reference answer")
    pred = normalize_vqa_answer(prediction or "")
    if len(set(refs)) > 1:
        refs = [_strip_punctuation(r) for r in refs]
    matches = sum(r == pred for r in refs)
    # leaving out annotator i removes one match exactly when that annotator agreed with the prediction
    return sum(min(1.0, (matches - (r == pred)) / 3) for r in refs) / len(refs)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean VQA accuracy over questions, 0-100."""
    _same_length(predictions, answers)
    if not predictions:
        return 0.0
    return 100 * sum(vqa_answer_score(p, a) for p, a in zip(predictions, answers, strict=True)) / len(predictions)


def exact_match(predictions: Sequence[str], answers: Sequence[Sequence[str] | str]) -> float:
    """Share of predictions equal to any reference, both normalised as the official script normalises a prediction,
    0-100: the always-normalising reading, and the headline for data with fewer than four answers per question."""
    _same_length(predictions, answers)
    if not predictions:
        return 0.0
    hits = 0
    for pred, refs in zip(predictions, answers, strict=True):
        norm = normalize_vqa_answer(pred or "")
        hits += any(norm == normalize_vqa_answer(r) for r in _as_references(refs))
    return 100 * hits / len(predictions)


# ---------------------------------------------------------------- ChartQA's relaxed accuracy
# pix2struct's definition (google-research/pix2struct, metrics.py: relaxed_correctness), the one ChartQA numbers are
# published with: "an answer is correct if it is within 5% of the gold answer; non-numeric answers need an exact match".

RELAXED_TOLERANCE = 0.05


def _relaxed_float(text: str) -> float | None:
    """The answer as a number, as pix2struct reads it: Python's float(), a trailing '%' meaning hundredths."""
    try:
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def _relaxed_correct(prediction: str, target: str) -> bool:
    pred, gold = prediction.strip(), target.strip()
    pred_value, gold_value = _relaxed_float(pred), _relaxed_float(gold)
    # a target of 0 has no relative error: pix2struct falls through to the string comparison ("0.0" misses "0"),
    # and so does a NaN or infinite number (the relative change is NaN), as there
    if pred_value is not None and gold_value:
        return abs(pred_value - gold_value) / abs(gold_value) <= RELAXED_TOLERANCE
    return pred.lower() == gold.lower()


def relaxed_answer_score(prediction: str, answers: Sequence[str] | str) -> float:
    """1.0 when the prediction is relaxed-correct against any reference answer, else 0.0.

    Relaxed-correct (pix2struct): when both parse as floats (a trailing '%' is stripped and the number divided by
    100), |prediction - answer| / |answer| <= 0.05; otherwise (or when the answer is 0) they are equal after
    .strip().lower(). With several references the best one counts."""
    refs = _as_references(answers)
    if not refs:
        raise ValueError("a question needs at least one reference answer")
    return float(any(_relaxed_correct(prediction or "", r) for r in refs))


def relaxed_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str] | str]) -> float:
    """Mean relaxed correctness over questions, 0-100: ChartQA's metric."""
    _same_length(predictions, answers)
    if not predictions:
        return 0.0
    return 100 * sum(relaxed_answer_score(p, a) for p, a in zip(predictions, answers, strict=True)) / len(predictions)


def accuracy(pred_labels: Sequence[int], labels: Sequence[int]) -> float:
    """Share of correct labels, 0-100."""
    _same_length(pred_labels, labels)
    if not labels:
        return 0.0
    return 100 * sum(int(p) == int(t) for p, t in zip(pred_labels, labels, strict=True)) / len(labels)


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} references")
