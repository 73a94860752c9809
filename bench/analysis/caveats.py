"""What the report must say beside its numbers, so that a page never reads better than the run went:

- the text-coverage banner: a model × dataset whose target text the tokenizer mostly cannot spell, or whose training
  answers max_seq_len cut (quality.text_coverage above bench.fields.TEXT_COVERAGE_WARN_PCT), has a Δ that does not
  measure the method;
- *Data left out*: the records a dataset lost when it was read with on_bad_sample = "skip" (dataset.skipped, by
  reason) and the samples whose images could not be decoded while batches were made (cost.skipped_samples);
- the failures of a measured part inside a finished cell (serving, the merged or untuned evaluation, retention, an
  evaluation that skipped samples, ...), which *Failures* lists beside the cells that did not finish.

Reads records only, like the rest of the report (bench/analysis/report.py calls these from its page); never imports
torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.analysis import stats
from bench.analysis.markdown import cell_text, table
from bench.analysis.stats import Group
from bench.data.problems import reasons_text
from bench.fields import TEXT_COVERAGE_WARN_PCT

if TYPE_CHECKING:  # report imports this module from its page renderer; the page type is only named here
    from bench.analysis.report import Page


# ---------------------------------------------------------------- text coverage


def _coverage(record: dict) -> dict | None:
    """A record's text coverage, where its quality means something (not random weights)."""
    coverage = stats.get(record, "quality.text_coverage")
    if stats.get(record, "model.weights") == "random" or stats.get(record, "quality.applicable") is False:
        return None
    return coverage if isinstance(coverage, dict) else None


def _above(coverage: dict) -> bool:
    return any((v := stats.number(coverage.get(k))) is not None and v > TEXT_COVERAGE_WARN_PCT
               for k in ("unknown_token_pct", "truncated_pct"))


def _count(value) -> str:
    n = stats.number(value)
    return "?" if n is None else f"{n:,.0f}"


def _coverage_line(model: str, dataset: str, record: dict) -> str:
    coverage = _coverage(record) or {}
    unknown, cut = stats.number(coverage.get("unknown_token_pct")), stats.number(coverage.get("truncated_pct"))
    limit = stats.number(stats.get(record, "train.max_seq_len"))
    parts = []
    if unknown is not None:
        parts.append(f"{unknown:.1f} % of the target text's tokens are the tokenizer's unknown token "
                     f"({_count(coverage.get('tokens'))} tokens in {_count(coverage.get('texts'))} texts)")
    if cut is not None:
        parts.append(f"max_seq_len{f' = {limit:.0f}' if limit is not None else ''} cut {cut:.1f} % of the training "
                     f"samples ({_count(coverage.get('truncated'))} of {_count(coverage.get('samples'))})")
    return f"> - {cell_text(model)} / {cell_text(dataset)}: " + "; ".join(parts)


def coverage_banner(page: Page) -> list[str]:
    """The warning at the top of the page, or no lines: each model × dataset with a record above the threshold, its
    worst record's figures (random weights measure no quality and are left out)."""
    worst: dict[tuple[str, str], tuple[float, dict]] = {}  # (model, dataset) -> (its highest figure, that record)
    for g in page.groups:
        for r in g.records:
            coverage = _coverage(r)
            if coverage is None or not _above(coverage):
                continue
            key = (g.model, g.dataset)
            score = max(stats.number(coverage.get(k)) or 0.0 for k in ("unknown_token_pct", "truncated_pct"))
            if key not in worst or score > worst[key][0]:
                worst[key] = (score, r)
    if not worst:
        return []
    limit = f"{TEXT_COVERAGE_WARN_PCT:g} %"
    return [f"> ⚠ **Δ on this data does not measure the method.** More than {limit} of the target text's tokens are "
            f"the tokenizer's unknown token, or more than {limit} of the training samples were cut by max_seq_len "
            "(`quality.text_coverage`), on:", ">",
            *(_coverage_line(model, dataset, r) for (model, dataset), (_, r) in worst.items()), ">",
            "> A model that cannot read or write the answers scores what the data's spelling allows, whatever the "
            "method: its Δ, ≈ and ★ compare nothing. Fix: a real checkpoint whose tokenizer knows the data's words "
            "(`weights = \"pretrained\"` with a `checkpoint`), and a larger `max_seq_len` where answers were cut.", ""]


# ---------------------------------------------------------------- data left out


def _counts(value) -> dict[str, int]:
    """{name: count} of a record's counting table, the positive whole numbers only (a record is data)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): int(n) for k, v in value.items() if (n := stats.number(v)) is not None and n > 0 and n == int(n)}


def _read_text(records: list[dict]) -> str:
    """What the newest record of a dataset says was left out when its files were read: "5: 3 missing image, 2 empty
    answer"."""
    newest = max(records, key=lambda r: str(r.get("finished_at") or r.get("started_at") or ""))
    counts = _counts(stats.get(newest, "dataset.skipped"))
    if not counts:
        return "—"
    return cell_text(f"{sum(counts.values())}: {reasons_text(counts)}")


def _batches_text(records: list[dict]) -> str:
    """The samples skipped while batches were made, per split over the cell-runs: "train 2, eval 1", or a range."""
    parts = []
    for split in ("train", "eval"):
        values = [_counts(stats.get(r, "cost.skipped_samples")).get(split, 0) for r in records
                  if isinstance(stats.get(r, "cost.skipped_samples"), dict)]
        if not any(values):
            continue
        low, high = min(values), max(values)
        parts.append(f"{split} {high}" if low == high else f"{split} {low}–{high}")
    return ", ".join(parts) or "—"


def data_section(page: Page) -> list[str]:
    """## Data left out: per dataset that lost anything, what and why; no lines when none did (or records predate it)."""
    by_dataset: dict[str, list[dict]] = {}
    for g in page.groups:
        by_dataset.setdefault(g.dataset, []).extend(g.records)
    rows = []
    for dataset, records in by_dataset.items():
        read, batches = _read_text(records), _batches_text(records)
        if read != "—" or batches != "—":
            cells = sum(1 for r in records if isinstance(stats.get(r, "cost.skipped_samples"), dict))
            rows.append([cell_text(dataset), read, batches + (f" ({cells} cell-runs)" if batches != "—" and cells > 1 else "")])
    if not rows:
        return []
    return ["## Data left out", "",
            "Records left out when the data was read (`on_bad_sample = \"skip\"`; text-only records always are), by "
            "reason (`dataset.skipped`), and samples whose image could not be decoded while batches were made "
            "(`cost.skipped_samples`: the same for every cell-run, or the range over them). Quality is over what was "
            "left.", ""] + table(["Dataset", "Left out when read", "Skipped while making batches"], rows) + [""]


# ---------------------------------------------------------------- failures of a measured part


@dataclass(frozen=True)
class PartFailure:
    group: Group
    record: dict
    part: str  # what failed: serving, retention, evaluation, ...
    message: str
    verb: str = "failed"  # how the page's summary says it: "serving failed on 3 cells"


# a record's parts that are not measurements (the resolved configs, where a setting may be called anything)
_CONFIGS = {"model", "dataset", "method", "train", "env", "suite", "message", "status"}
# what an error's place in a record is called on the page ("merged_error" in quality: quality.merged)
PART_NAMES = {"serving": "serving", "quality.retention": "retention", "quality.merged": "merged evaluation",
              "quality": "evaluation", "quality.text_coverage": "text coverage", "artifact": "kept artifact",
              "composition": "composition"}


def _errors(value, path: str, depth: int = 0):
    """(part, message) of each error a record's section holds: a key "error" or "..._error" with a message, in dicts
    down to three levels."""
    if not isinstance(value, dict) or depth > 3:
        return
    for key, inner in value.items():
        key = str(key)
        if (key == "error" or key.endswith("_error")) and isinstance(inner, str) and inner.strip():
            where = path if key == "error" else f"{path}.{key.removesuffix('_error')}"
            yield PART_NAMES.get(where, where), inner
        elif isinstance(inner, dict):
            yield from _errors(inner, f"{path}.{key}", depth + 1)


def _record_failures(g: Group, r: dict) -> list[PartFailure]:
    out = [PartFailure(g, r, part, message) for key, section in r.items() if key not in _CONFIGS
           for part, message in _errors(section, str(key))]
    quality = r.get("quality") if isinstance(r.get("quality"), dict) else {}
    if not g.random_weights and quality.get("note") and quality.get("base") is None:  # the runner's base_note
        out.append(PartFailure(g, r, "untuned evaluation", str(quality["note"])))
    retention = quality.get("retention")
    if isinstance(retention, dict) and retention.get("note") and retention.get("delta") is None:
        out.append(PartFailure(g, r, "retention", str(retention["note"])))
    skipped = _counts(stats.get(r, "cost.skipped_samples")).get("eval")
    if skipped:
        size = stats.number(stats.get(r, "dataset.eval_size"))
        of = f" of {size:,.0f}" if size is not None else ""
        out.append(PartFailure(g, r, "evaluation", f"{skipped}{of} evaluation samples skipped (their images could not "
                               "be decoded): quality is over the rest", verb="skipped samples"))
    return out


def part_failures(page: Page) -> list[PartFailure]:
    """Every failure of a measured part in the finished records of the page (a failed cell's own is its status)."""
    return [f for g in page.groups for r in g.ok for f in _record_failures(g, r)]


def failures_summary(failures: list[PartFailure]) -> str:
    """"serving failed on 3 cells, evaluation skipped samples on 1 cell": per part, the cells it happened in."""
    cells: dict[tuple[str, str], set[str]] = {}
    for f in failures:
        cells.setdefault((f.part, f.verb), set()).add(f.group.cell_id)
    return ", ".join(f"{part} {verb} on {len(ids)} cell{'s' if len(ids) > 1 else ''}" for (part, verb), ids in cells.items())


def failures_table(failures: list[PartFailure]) -> list[str]:
    rows = [[cell_text(f.group.model), cell_text(f.group.dataset), cell_text(f.group.method), str(f.record.get("repeat", 0)),
             cell_text(f.part), cell_text(f.message, 300)] for f in failures]
    return table(["Model", "Dataset", "Method", "Repeat", "Part", "Message"], rows)
