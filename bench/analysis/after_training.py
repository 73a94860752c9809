"""The report's sections on what happens to a trained cell after training: *Serving* (what serving its adapter costs
unmerged, merged and over a 4-bit base; record["serving"], written by bench/run/serving.py) and *Composition* (cells
of `kind = "merge"` or `"fusion"` that combine or mix adapters other cells trained, against those sources).

Reads records only, like the rest of the report (bench/analysis/report.py calls these from its page); never imports
torch. Each section is empty (no lines) when no record has its data.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from bench.analysis import stats
from bench.analysis.markdown import cell_text, fmt_mb, fmt_rate, pm, status_label, table
from bench.analysis.stats import Group
from bench.fields import SERVING_MEMORY_KINDS
from bench.models.catalog import METHOD_KINDS

if TYPE_CHECKING:  # report imports this module from its page renderer; the page type is only named here
    from bench.analysis.report import Page

VARIANTS = ("unmerged", "merged", "4bit")
COMPOSING = tuple(k for k, m in METHOD_KINDS.items() if m.composes)  # merge, and X-LoRA's fusion


# ---------------------------------------------------------------- formatting


def fmt_ms(ms: float | None) -> str:
    """A latency in milliseconds, about three significant digits: 0.84, 12.3, 1,250."""
    if ms is None:
        return "—"
    if ms >= 100:
        return f"{ms:,.0f}"
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt_bytes(n: float | None) -> str:
    """A file size in binary units (the report's MB are MiB): 512 B, 36.0 KB, 1.2 GB."""
    if n is None:
        return "—"
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _numbers(records: list[dict], dotted: str) -> list[float]:
    """The finite numbers at `dotted` in `records` (a record is data: anything else is left out)."""
    return [v for r in records if (v := stats.number(stats.get(r, dotted))) is not None]


# ---------------------------------------------------------------- serving


def _serving(record: dict) -> dict | None:
    serving = record.get("serving")
    return serving if isinstance(serving, dict) else None


def _variants(record: dict) -> dict:
    variants = (_serving(record) or {}).get("variants")
    return variants if isinstance(variants, dict) else {}


def _latency_text(values: list[float]) -> str:
    """The median over the repeats; with several, their range and count beside it."""
    if not values:
        return "—"
    text = fmt_ms(_median(values))
    if len(values) > 1:
        text += f" ({fmt_ms(min(values))}–{fmt_ms(max(values))}, n={len(values)})"
    return text


def latency_ratio(unmerged_ms: list[float], merged_ms: list[float]) -> str:
    """Merged ÷ unmerged latency, of the medians over the repeats the table shows, to 2 decimals; "—" without both."""
    unmerged, merged = _median(unmerged_ms), _median(merged_ms)
    if unmerged is None or merged is None or unmerged <= 0:
        return "—"
    return f"{merged / unmerged:.2f}"


def _artifact_text(records: list[dict]) -> str:
    kept = [r["artifact"] for r in records if isinstance(r.get("artifact"), dict)]
    size = _median([n for a in kept if (n := stats.number(a.get("bytes"))) is not None])
    if size is None:
        return "—"
    return fmt_bytes(size) + (" (full model)" if any(a.get("kind") == "full" for a in kept) else "")


def _merge_delta_text(g: Group, records: list[dict]) -> str:
    if g.random_weights:
        return "—"
    return pm(stats.summarize(records, "quality.merged_delta"), None, signed=True)


def _serving_row(page: Page, g: Group, records: list[dict]) -> list[str]:
    latency = {v: _numbers(records, f"serving.variants.{v}.latency_ms") for v in VARIANTS}
    throughput = {v: _median(_numbers(records, f"serving.variants.{v}.throughput")) for v in ("unmerged", "merged")}
    memory = [_median(_numbers(records, f"serving.variants.{v}.peak_memory_mb")) for v in VARIANTS]
    units = sorted({str(u) for r in records for fig in _variants(r).values() if isinstance(fig, dict) and (u := fig.get("unit"))})
    rates = "—"
    if any(t is not None for t in throughput.values()):
        rates = f"{fmt_rate(throughput['unmerged'])} / {fmt_rate(throughput['merged'])} {cell_text(' or '.join(units))}".rstrip()
    return [page.model_label(g), cell_text(g.dataset), cell_text(g.method), _artifact_text(records),
            *(_latency_text(latency[v]) for v in VARIANTS), latency_ratio(latency["unmerged"], latency["merged"]), rates,
            "—" if all(m is None for m in memory) else " / ".join(fmt_mb(m) for m in memory), _merge_delta_text(g, records)]


def _where(g: Group, record: dict) -> str:
    return f"{cell_text(g.model)} / {cell_text(g.dataset)} / {cell_text(g.method)}, repeat {record.get('repeat', 0)}"


def _listed(values) -> str:
    return " or ".join(str(v) for v in sorted(values)) or "?"


def serving_section(page: Page) -> list[str]:
    """## Serving: one row per cell whose (finished) records measured serving; failures and left-out variants below."""
    rows, errors, notes = [], [], []
    served: list[dict] = []
    for g in page.groups:
        records = [r for r in g.ok if _serving(r) is not None]
        if not records:
            continue
        for r in records:
            if _serving(r).get("error"):
                errors.append(f"- {_where(g, r)}: {cell_text(_serving(r)['error'], 300)}")
            note_list = _serving(r).get("notes")
            for note in note_list if isinstance(note_list, list) else []:
                notes.append(f"- {_where(g, r)}: {cell_text(note, 300)}")
        measured = [r for r in records if _variants(r)]
        if measured:
            served += measured
            rows.append(_serving_row(page, g, measured))
    if not rows and not errors and not notes:
        return []
    rounds = {int(n) for r in served if (n := stats.number(_serving(r).get("rounds"))) is not None}
    batches = {int(n) for r in served for fig in _variants(r).values()
               if isinstance(fig, dict) and (n := stats.number(fig.get("batch"))) is not None}
    kinds = sorted({str(k) for r in served if (k := _serving(r).get("memory_kind"))})
    counted = "; ".join(f"`{cell_text(k)}`: {SERVING_MEMORY_KINDS.get(k, 'a kind this report does not know')}" for k in kinds) or "a kind not recorded"
    lines = ["## Serving", "",
             "What serving each trained model costs, measured after its evaluation: *unmerged* applies the adapter on the "
             "fly, *merged* serves it merged into its base (`merge_and_unload`; a full fine-tune is the plain model), "
             "*4-bit* applies it over an NF4-quantised base. The variants are held at once and their requests "
             f"interleave over {_listed(rounds)} rounds, the first request of each left out as warm-up. *ms* is the "
             f"latency of one sample's request (batch 1, median of the rounds), throughput that of a request of "
             f"{_listed(batches)} samples, memory the weights as stored plus the peak one batched request adds above what "
             f"was allocated before it, counted as {counted}. With repeats, the median over them (their range and count beside "
             "latencies); *Δ after merge* is the merged model's quality − the tuned one's (QLoRA: the 4-bit model it trained on), in points "
             "(mean over repeats).", ""]
    if rows:
        lines += table(["Model", "Dataset", "Method", "Adapter size", "Unmerged ms", "Merged ms", "4-bit ms", "Merged ÷ unmerged",
                         "Throughput unmerged / merged", "Memory unmerged / merged / 4-bit", "Δ after merge"], rows) + [""]
    if errors:
        lines += ["Serving not measured (`serving.error`):", "", *errors, ""]
    if notes:
        lines += ["Variants left out:", "", *notes, ""]
    return lines


# ---------------------------------------------------------------- composition


def _source_key(source, model: str) -> tuple[str, str, str] | None:
    """(model, dataset, method) of a source; a source names its model only when it is not the composed cell's own."""
    if not isinstance(source, dict):
        return None
    return str(source.get("model") or model), str(source.get("dataset") or "?"), str(source.get("method") or "?")


class _Composed:
    """One composed method of one model: its cells (one per dataset it was evaluated on) and how it combines."""

    def __init__(self, name: str, groups: list[Group], model: str):
        self.name = name
        self.groups = {g.dataset: g for g in groups}
        method = stats.get(groups[0].first, "method") or {}
        sources = method.get("sources") if isinstance(method.get("sources"), list) else []
        self.sources = [k for s in sources if (k := _source_key(s, model)) is not None]
        fusion = method.get("kind") == "fusion"
        self.combination = "X-LoRA (a learned per-token mix)" if fusion else str(method.get("combination") or "?")
        weights = method.get("weights") if isinstance(method.get("weights"), list) else []
        self.weights = [stats.number(w) for w in weights]

    def label(self, model: str) -> str:
        parts = []
        for i, (m, d, name) in enumerate(self.sources):
            text = f"{name} @ {d}" + (f" ({m})" if m != model else "")
            weight = self.weights[i] if i < len(self.weights) and len(self.weights) == len(self.sources) else None
            parts.append(f"{weight:g} × {text}" if weight is not None else text)
        if len(self.sources) == 1 and self.weights == [1.0]:  # bench/run/compose.py loads that adapter as it is
            return cell_text(f"{self.name} = {parts[0].removeprefix('1 × ')} as it is")
        return cell_text(f"{self.name} = {self.combination} of {' + '.join(parts) or '?'}")


def _quality_text(page: Page, g: Group | None) -> str:
    if g is None:
        return "—"
    if not g.ok:
        return status_label(g.status)
    if g.random_weights:
        return "n/a (random weights)"
    return pm(g.summary("quality.tuned"), lambda v: f"{v:.1f}") + page.repeats_note(g)


def _base_text(groups: list[Group]) -> str:
    if any(g.random_weights for g in groups):
        return "n/a (random weights)"
    base = next((s for g in groups if (s := g.summary("quality.base")) is not None), None)
    return "—" if base is None else f"{base.mean:.1f}"


def _reused(composed: list[_Composed]) -> dict[tuple, dict[str, Group]]:
    """source -> {dataset: cell} of the single-source composed methods shown on their source's row: the adapter reused
    on another dataset. A method evaluated on its source's own dataset, or sharing a dataset with another such method of
    the same source, keeps a row of its own instead (one cell of the table holds one number)."""
    claims: dict[tuple, list[_Composed]] = {}
    for c in composed:
        if len(c.sources) == 1:
            for d in c.groups:
                claims.setdefault((c.sources[0], d), []).append(c)
    out: dict[tuple, dict[str, Group]] = {}
    for c in composed:
        if len(c.sources) != 1:
            continue
        source = c.sources[0]
        if source[1] in c.groups or any(len(claims[(source, d)]) > 1 for d in c.groups):
            continue
        out.setdefault(source, {}).update(c.groups)
        c.groups = {}  # folded: no row of its own
    return out


def _composition_table(page: Page, model: str, groups: list[Group], trained: dict[tuple, Group]) -> list[str]:
    by_name: dict[str, list[Group]] = {}
    for g in groups:
        by_name.setdefault(g.method, []).append(g)
    composed = [_Composed(name, gs, model) for name, gs in by_name.items()]
    sources = list(dict.fromkeys(s for c in composed for s in c.sources))
    datasets = list(dict.fromkeys([g.dataset for g in groups] + [s[1] for s in sources if s[0] == model]))
    reused = _reused(composed)

    def header(d: str) -> str:
        metric = next((g.metric for g in page.blocks.get((model, d), []) if g.metric), None)
        return cell_text(d) + (f" ({cell_text(metric)})" if metric else "")

    rows = [["*base (not tuned)*", *(_base_text(page.blocks.get((model, d), [])) for d in datasets)]]
    for source in sources:
        m, own, name = source
        label = cell_text(f"{name} @ {own}" + (f" ({m})" if m != model else ""))
        row = []
        for d in datasets:
            if d == own:
                row.append(_quality_text(page, trained.get(source)))
            else:
                row.append(_quality_text(page, reused.get(source, {}).get(d)))
        rows.append([label, *row])
    for c in composed:
        if c.groups:
            rows.append([c.label(model), *(_quality_text(page, c.groups.get(d)) for d in datasets)])
    return [f"### {cell_text(model)}", ""] + table(["Adapter / combination", *map(header, datasets)], rows) + [""]


def composition_section(page: Page) -> list[str]:
    """## Composition: per model, the sources' and the combinations' quality on each dataset; skipped cells below."""
    merged = [g for g in page.groups if stats.get(g.first, "method.kind") in COMPOSING]
    if not merged:
        return []
    trained = {(g.model, g.dataset, g.method): g for g in page.groups if stats.get(g.first, "method.kind") not in COMPOSING}
    by_model: dict[str, list[Group]] = {}
    for g in merged:
        by_model.setdefault(g.model, []).append(g)
    lines = ["## Composition", "",
             "Cells that combine adapters other cells trained (`kind = \"merge\"`, no training of their own) or learn to mix "
             "them (`kind = \"fusion\"`, X-LoRA: only its classifier trains, on the dataset of its column): tuned quality "
             "(mean ± std over repeats) of each source adapter on the dataset it trained on — and on another dataset where "
             "a single-source cell reused it there — and of each combination on the datasets it was evaluated on, below "
             "the untuned base; — where not evaluated.", ""]
    for model, groups in by_model.items():
        shown = [g for g in groups if g.status != "skipped"]  # not evaluated: listed below instead
        if shown:
            lines += _composition_table(page, model, shown, trained)
    skipped = [(g, r) for g in merged for r in g.records if r.get("status") == "skipped"]
    if skipped:
        lines += ["Skipped (their messages say why: a source that did not finish, or a family PEFT's X-LoRA does not take):",
                  ""]
        lines += [f"- {_where(g, r)}: {cell_text(r.get('message') or 'no message', 300)}" for g, r in skipped] + [""]
    return lines
