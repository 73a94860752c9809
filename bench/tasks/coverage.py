"""How much of a dataset's target text the model's own tokenizer knows, and how much of it max_seq_len cuts: a cell's
`quality.text_coverage`, and the run's one warning when either is above bench.fields.TEXT_COVERAGE_WARN_PCT.

A Δ measures a method only where the model can read and write the data's words. The tiny presets' word-level
tokenizers know the bundled datasets' words (bench/data/vocabulary.py) and nothing else: on other text most tokens
become `<unk>`, every method learns to write `<unk>`, and every Δ is the same. So every cell counts, with the
tokenizer of its model (`loaded.processor`'s; CLIP's or open_clip's for the contrastive task):

- `unknown_token_pct`: the share (0-100) of the target text's `tokens` that are the tokenizer's unknown token
  (`unk_token_id`). The target text is what quality is scored on: captions, answers (every reference answer, the
  assistant turns, a preference pair's chosen and rejected answers) and class names, over `texts` texts of both
  splits, each sample's distinct ones; no special tokens added. Byte-level BPE (GPT-2's, OPT's, open_clip's, which has
  no unknown token at all) never maps text to an unknown token: 0.0.
- `truncated`, `truncated_pct`: how many of `samples` training samples the task's encode cuts at max_seq_len, told by
  the task's own `truncated(loaded, samples, settings)` from the text alone (no image is decoded); a preference
  pair counts as cut when the family's SFT encoding of its prompt with the chosen or with the rejected answer is cut
  (a DPO cell's batches, written by TRL through the chat template, are cut at the same text budget).

Big splits are sampled: at most MOST_SAMPLES samples of each split, evenly spread (`texts` and `samples` say how many
were counted). Importing this module loads neither torch nor the model libraries.
"""

from __future__ import annotations

import dataclasses
import inspect

from bench.fields import TEXT_COVERAGE_WARN_PCT

MOST_SAMPLES = 1000  # per split: a few thousand texts, tokenized in well under a second
_CHUNK = 512  # texts per tokenizer call


def spread(samples, most: int = MOST_SAMPLES) -> list:
    """All of `samples`, or `most` of them evenly spread (the first included): the same ones on every run."""
    n = len(samples)
    return list(samples) if n <= most else [samples[i * n // most] for i in range(most)]


def target_texts(sample) -> list[str]:
    """A sample's texts that quality is scored on or trained towards, each once: captions, answers, the assistant's
    turns, a rejected answer."""
    texts = (*sample.captions, *sample.answers, *(answer for _, answer in sample.turns), sample.rejected)
    return list(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))


def text_tokenizer(processor):
    """The tokenizer a processor encodes text with: a transformers tokenizer, open_clip's SimpleTokenizer, or the
    transformers tokenizer inside open_clip's HFTokenizer."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if not hasattr(tokenizer, "unk_token_id") and not hasattr(tokenizer, "sot_token_id"):
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return tokenizer


def token_ids(tokenizer, texts: list[str], *, special: bool) -> list[list[int]]:
    """Each text's token ids, with the tokenizer's start and end tokens (`special`) or without."""
    if not texts:
        return []
    if hasattr(tokenizer, "sot_token_id"):  # open_clip's SimpleTokenizer: start + BPE + end
        ends = ([tokenizer.sot_token_id], [tokenizer.eot_token_id]) if special else ([], [])
        return [ends[0] + tokenizer.encode(t) + ends[1] for t in texts]
    return list(tokenizer(texts, add_special_tokens=special)["input_ids"])


def unknown_tokens(tokenizer, texts: list[str]) -> tuple[int, int]:
    """(unknown tokens, tokens) of `texts`, no special tokens added; a tokenizer without an unknown token has none."""
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown = total = 0
    for start in range(0, len(texts), _CHUNK):
        for ids in token_ids(tokenizer, texts[start:start + _CHUNK], special=False):
            total += len(ids)
            unknown += sum(1 for i in ids if i == unk) if unk is not None else 0
    return unknown, total


def truncated(task, loaded, samples: list, settings, classnames=()) -> list[bool | None]:
    """Per sample, whether the task's encode cuts it at max_seq_len (None: the sample cannot be encoded; the task has no
    `truncated`: nothing is cut). A preference pair is cut when its chosen or its rejected answer is."""
    hook = getattr(task, "truncated", None)
    if hook is None:
        return [False] * len(samples)
    kwargs = {"classnames": classnames} if "classnames" in inspect.signature(hook).parameters else {}
    cut = list(hook(loaded, samples, settings, **kwargs))
    pairs = [i for i, s in enumerate(samples) if s.rejected and s.question]
    if pairs:
        rejected = hook(loaded, [dataclasses.replace(samples[i], turns=((samples[i].question, samples[i].rejected),))
                                 for i in pairs], settings, **kwargs)
        for i, other in zip(pairs, rejected):
            cut[i] = None if cut[i] is None else bool(cut[i] or other)
    return cut


def text_coverage(task, loaded, splits, settings) -> dict:
    """A cell's quality.text_coverage: `task` is the family's task module, `settings` its TaskSettings."""
    texts = [c.strip() for c in splits.classnames if c.strip()]
    for part in (splits.train, splits.eval):
        for sample in spread(part):
            texts += target_texts(sample)
    unknown, tokens = unknown_tokens(text_tokenizer(loaded.processor), texts)
    checked = [c for c in truncated(task, loaded, spread(splits.train), settings, splits.classnames) if c is not None]
    cut = sum(checked)
    return {"unknown_token_pct": round(100 * unknown / tokens, 4) if tokens else 0.0, "tokens": tokens,
            "texts": len(texts), "truncated": cut, "truncated_pct": round(100 * cut / len(checked), 4) if checked else 0.0,
            "samples": len(checked)}


# ---------------------------------------------------------------- the run's warning


def low_coverage(record: dict) -> dict | None:
    """What a record's text coverage says where a figure is above TEXT_COVERAGE_WARN_PCT: model, dataset, the figures,
    max_seq_len. None where both are within it, or where the cell measured no quality (random weights, a failure)."""
    quality = record.get("quality") if isinstance(record.get("quality"), dict) else {}
    coverage = quality.get("text_coverage")
    if not isinstance(coverage, dict) or quality.get("applicable") is False:
        return None
    figures = {k: coverage.get(k) for k in ("unknown_token_pct", "truncated_pct")}
    figures = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0 for k, v in figures.items()}
    if max(figures.values()) <= TEXT_COVERAGE_WARN_PCT:
        return None
    return {"model": str((record.get("model") or {}).get("name")), "dataset": str((record.get("dataset") or {}).get("name")),
            "max_seq_len": (record.get("train") or {}).get("max_seq_len"), **figures}


def warning(entries: list[dict]) -> str | None:
    """One line for a run's low_coverage entries: each model × dataset with its figures (the highest of its cells),
    and the fix; None when there are none."""
    if not entries:
        return None
    pairs: dict = {}
    for e in entries:
        seen = pairs.setdefault((e["model"], e["dataset"]), {"unknown_token_pct": 0.0, "truncated_pct": 0.0,
                                                             "max_seq_len": e["max_seq_len"]})
        for k in ("unknown_token_pct", "truncated_pct"):
            seen[k] = max(seen[k], e[k])
    limit = TEXT_COVERAGE_WARN_PCT
    said, unknown, cut = [], [], []
    for (model, dataset), f in pairs.items():
        parts = []
        if f["unknown_token_pct"] > limit:
            parts.append(f"{f['unknown_token_pct']:.1f} % of the answer/caption tokens are unknown to the model's tokenizer")
            unknown.append(f"[models.{model}]")
        if f["truncated_pct"] > limit:
            parts.append(f"{f['truncated_pct']:.1f} % of the training samples are cut by max_seq_len = {f['max_seq_len']}")
            cut.append(model)
        said.append(f"{model} × {dataset}: " + " and ".join(parts))
    fixes = []
    if unknown:
        fixes.append("a real checkpoint whose tokenizer knows the data's words (`checkpoint = \"...\"` in "
                     + ", ".join(dict.fromkeys(unknown)) + ")")
    if cut:
        fixes.append("a larger max_seq_len")
    return (f"text coverage above {limit:g} %, so a quality Δ on this data does not measure the method: "
            + "; ".join(said) + ". Fix: " + ", or ".join(fixes) + ".")
