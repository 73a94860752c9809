"""Markdown report pages (reports/<suite>.md, plots in reports/<suite>/) and the index page.

Reads records only; never imports torch (matplotlib only through bench.analysis.plots, lazily).
Each page starts with a one-line HTML comment holding its metadata as JSON
(`<!-- bench-report {...} -->`), invisible when rendered, which `write_index` reads back: the index
never re-parses tables and keeps working when the page layout changes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bench.analysis import intervals, stats
from bench.analysis.markdown import (
    cell_text,
    fmt_count,
    fmt_mb,
    fmt_rate,
    fmt_time,
    pm,
    status_label,
    table,
)
from bench.analysis.stats import Group
from bench.fields import ENV_KEYS, MEMORY_KINDS
from bench.paths import PAGE_MARK, inside, page_target, write_atomic
from bench.suite.keys import TRAIN_KEYS

STAR = "★"
NEAR = "≈"
REMOTE_CODE = "⚠"
META_RE = re.compile(r"^<!-- bench-report (\{.*\}) -->$", re.MULTILINE)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


# ---------------------------------------------------------------- page pieces


class Page:
    """Everything derived once from the records, used by the sections."""

    def __init__(self, records: list[dict]):
        self.groups = list(stats.group_by_cell(records).values())
        self.records = [r for g in self.groups for r in g.records]
        self.blocks = stats.by_model_dataset(self.groups)
        self.front_memory: set[str] = set()
        self.front_time: set[str] = set()
        self.near_best: set[str] = set()
        self.best: set[str] = set()
        # Δ's 95 % interval per cell, where its records kept per-item scores (bench/analysis/intervals.py)
        self.intervals = {g.cell_id: intervals.delta_interval(g.ok) for g in self.groups
                          if g.ok and not g.random_weights}
        for groups in self.blocks.values():
            self.front_memory |= stats.pareto_cells(groups, "cost.peak_memory_mb")
            self.front_time |= stats.pareto_cells(groups, "cost.train_wall_s")
            self._mark_best(groups)
        self.remote_code = sorted({g.model for g in self.groups if stats.get(g.first, "model.trust_remote_code")})

    def _mark_best(self, groups: list[Group]) -> None:
        # the best Δ of a model x dataset, and every method not told apart from it: the 95 % interval of their
        # difference (items paired) holds 0; for records without per-item scores, a difference inside the noise
        scored = [g for g in groups if stats.gain(g) is not None]
        if not scored:
            return
        best = max(scored, key=stats.gain)
        self.best.add(best.cell_id)
        for g in scored:
            if g is best:
                continue
            difference = intervals.difference_interval(g.ok, best.ok)
            near = (intervals.contains_zero(difference) if difference is not None
                    else not stats.differs(best.summary("quality.delta"), g.summary("quality.delta")))
            if near:
                self.near_best.add(g.cell_id)

    def model_label(self, g: Group) -> str:
        return cell_text(g.model) + (f" {REMOTE_CODE}" if g.model in self.remote_code else "")

    def repeats_note(self, g: Group) -> str:
        if g.n > 1 and len(g.ok) < g.n:
            return f" ({len(g.ok)}/{g.n} repeats ok)"
        return ""

    def delta_text(self, g: Group) -> str:
        if not g.ok:
            return cell_text(g.message or "no message", 80)
        if g.random_weights:
            return "n/a (random weights)"
        s = g.summary("quality.delta")
        if s is None:
            return "—"
        text = f"{pm(s, None, signed=True)} {g.metric or ''}".rstrip()
        if s.n > 1:
            text += f" (n={s.n})"
        interval = self.intervals.get(g.cell_id)
        if interval is not None:
            text += f" [{interval[0]:+.1f}, {interval[1]:+.1f}]"
            if intervals.contains_zero(interval):  # no evidence the method moved quality at all
                text = f"_{text}_"
        if g.cell_id in self.best and len(self.blocks[(g.model, g.dataset)]) > 1:
            text = f"**{text}**"
        elif g.cell_id in self.near_best:
            text = f"{NEAR} {text}"
        return text + self.repeats_note(g)


def _device(record: dict) -> str:
    """What the cell trained on, as the documents' cost tables write it: `NVIDIA A100-SXM4-80GB`, `4 × NVIDIA
    A100-SXM4-80GB` (records from before cells could span devices ran on one)."""
    env = record.get("env") or {}
    name = str(env.get("device_name") or stats.get(record, "cost.device") or "?")
    count = stats.number(stats.get(record, "cost.devices"))  # a record is data: anything but a count reads as one
    plausible = count is not None and 1 < count <= TRAIN_KEYS["devices"].max and count == int(count)
    return f"{int(count)} × {name}" if plausible else name


def _results_section(page: Page) -> list[str]:
    from bench.analysis import preferences  # it formats with this module's helpers: imported once both exist

    metrics = sorted({g.metric for g in page.groups if g.metric})
    header = ["Model", "Dataset", "Method", "Device", "Time", f"Δ {metrics[0]}" if len(metrics) == 1 else "Δ quality"]
    retention = any(g.summary("quality.retention.delta") is not None for g in page.groups)
    if retention:
        header.append("Δ retention")
    rows = []
    for g in page.groups:
        if g.ok:
            time = pm(g.summary("cost.train_wall_s"), fmt_time)
            if g.cell_id in page.front_time:
                time += f" {STAR}"
        else:
            time = status_label(g.status)
        method = cell_text(g.method) + (f" ({cell_text(picked)})" if (picked := _picked(g)) else "")
        delta = page.delta_text(g) + preferences.results_suffix(g)  # a DPO cell: its reward statistics beside
        rows.append([page.model_label(g), cell_text(g.dataset), method, cell_text(_device(g.first)), time, delta])
        if retention:
            rows[-1].append(_retention_text(g))
    return ["## Results", ""] + table(header, rows) + [""]


def _retention_text(g: Group) -> str:
    """Δ on the retention dataset (tuned − base there), with the dataset's name: what the method forgot."""
    s = g.summary("quality.retention.delta")
    if s is None or not g.ok:
        return "—"
    where = stats.get(g.first, "quality.retention.dataset")
    metric = stats.get(g.first, "quality.retention.metric") or ""
    return f"{pm(s, None, signed=True)} {metric}".rstrip() + (f" on {cell_text(str(where))}" if where else "")


def _values_text(values) -> str:
    """{"lr": 0.0003} -> "lr 0.0003" (what a sweep tried or picked); "" for anything that is not such a table."""
    if not isinstance(values, dict):
        return ""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def _picked(g: Group) -> str:
    """The values a sweep cell's repeats trained with (repeat 0's pick; a repeat that had to pick again may differ)."""
    picks = {_values_text(r["sweep"].get("chosen")) for r in g.ok if isinstance(r.get("sweep"), dict)}
    picks.discard("")
    return " / ".join(sorted(picks))


def _sweeps_section(page: Page) -> list[str]:
    """Per sweep cell: every combination tried, its validation score, and the pick."""
    rows = []
    for g in page.groups:
        sweep = next((r.get("sweep") for r in g.records if isinstance(r.get("sweep"), dict) and r["sweep"].get("trials")), None)
        if not sweep:
            continue
        tried = []
        for t in sweep["trials"] if isinstance(sweep["trials"], list) else []:
            if not isinstance(t, dict):  # a record is data: a hand-edited trial is left out
                continue
            score = t.get("validation")
            shown = f"{score:.1f}" if isinstance(score, (int, float)) else status_label(str(t.get("status", "?")))
            tried.append(f"{_values_text(t.get('values'))}: {shown}")
        rows.append([page.model_label(g), cell_text(g.dataset), cell_text(g.method), cell_text(" · ".join(tried)),
                     cell_text(_values_text(sweep.get("chosen")) or "—"), cell_text(f"{sweep.get('metric') or '?'}, "
                                                                                   f"{sweep.get('validation_size')} samples")])
    if not rows:
        return []
    return ["## Sweeps", "", "Each combination trained on the training split less a validation split carved from it, "
            "scored there; the pick alone was evaluated on the evaluation split (repeats after the first trained "
            "the pick).", ""] + table(["Model", "Dataset", "Method", "Tried: validation score", "Picked", "Picked by"],
                                       rows) + [""]


def _block_section(page: Page, key, groups: list[Group], loss_png: str | None) -> list[str]:
    model, dataset = key
    lines = [f"### {model} / {dataset}", ""]
    first = groups[0]
    bases = [g.summary("quality.base") for g in groups]
    bases = [b for b in bases if b is not None]
    if first.random_weights:
        base_text = "n/a (random weights)"
    elif bases:
        base_text = f"{bases[0].mean:.1f} {first.metric or ''}".rstrip()
        if any(abs(b.mean - bases[0].mean) > 1e-6 for b in bases):
            lines += [f"> ⚠ the methods of this block report different base quality "
                      f"({', '.join(f'{b.mean:.2f}' for b in bases)}): the base was not evaluated once.", ""]
    else:
        base_text = "—"
    rows = [["*base (not tuned)*", "—", "—", base_text]]
    for g in groups:
        pct, trainable = g.mean("params.trainable_pct"), g.mean("params.trainable")
        if pct is None:  # params are counted before training, so a failed cell usually still has them
            pct, trainable = stats.get(g.first, "params.trainable_pct"), stats.get(g.first, "params.trainable")
        params = "—" if pct is None else f"{pct:.2f} % ({fmt_count(trainable)})"
        if g.ok:
            memory = pm(g.summary("cost.peak_memory_mb"), fmt_mb)
            if g.cell_id in page.front_memory:
                memory += f" {STAR}"
            if g.random_weights:
                quality = "n/a (random weights)"
            else:
                tuned, delta = g.summary("quality.tuned"), g.summary("quality.delta")
                quality = pm(tuned, lambda v: f"{v:.1f}")
                if tuned is not None and delta is not None:
                    quality += f" ({delta.mean:+.1f})"
                if g.cell_id in page.near_best:
                    quality = f"{NEAR} {quality}"
            quality += page.repeats_note(g)
        else:
            memory = status_label(g.status)
            quality = cell_text(g.message or "no message", 80)
        rows.append([cell_text(g.method), params, memory, quality])
    lines += table(["Method", "% params trainable", "Peak memory", "Quality"], rows) + [""]
    if loss_png:
        lines += [f"![Training loss, {model} / {dataset}]({loss_png})", ""]
    return lines


def _cost_section(page: Page) -> list[str]:
    ok = [g for g in page.groups if g.ok]
    if not ok:
        return []
    has = {f: any(g.summary(f) for g in ok) for f in ("cost.estimate_mb", "cost.mfu", "cost.peak_reserved_mb", "cost.nvml_used_mb",
                                                        "cost.data_wait_pct")}
    header = ["Model", "Dataset", "Method", "Step time (median ± IQR)", "Samples/s", "Tokens/s", "Peak memory"]
    header += ["Data wait"] if has["cost.data_wait_pct"] else []
    header += [name for f, name in (("cost.peak_reserved_mb", "Peak reserved"), ("cost.nvml_used_mb", "NVML used"),
                                    ("cost.estimate_mb", "Estimate (error)"), ("cost.mfu", "MFU")) if has[f]]
    rows = []
    for g in ok:
        median, iqr = g.mean("cost.step_s_median"), g.mean("cost.step_s_iqr")
        step = "—" if median is None else fmt_time(median) + ("" if iqr is None else f" ± {fmt_time(iqr)}")
        measured = g.mean("cost.peak_memory_mb")
        row = [page.model_label(g), cell_text(g.dataset), cell_text(g.method), step,
               fmt_rate(g.mean("cost.samples_per_s")), fmt_rate(g.mean("cost.tokens_per_s")), fmt_mb(measured)]
        if has["cost.data_wait_pct"]:
            wait, share = g.mean("cost.data_wait_s"), g.mean("cost.data_wait_pct")
            row.append("—" if wait is None or share is None else f"{fmt_time(wait)} ({share:.0f} %)")
        if has["cost.peak_reserved_mb"]:
            row.append(fmt_mb(g.mean("cost.peak_reserved_mb")))
        if has["cost.nvml_used_mb"]:
            row.append(fmt_mb(g.mean("cost.nvml_used_mb")))
        if has["cost.estimate_mb"]:
            est = g.mean("cost.estimate_mb")
            if est is None:
                row.append("—")
            elif measured and _tensor_bytes(stats.get(g.first, "cost.memory_kind")):
                row.append(f"{fmt_mb(est)} ({(est - measured) / measured * 100:+.0f} %)")
            else:
                row.append(fmt_mb(est))
        if has["cost.mfu"]:
            mfu = g.mean("cost.mfu")
            row.append("—" if mfu is None else f"{mfu * 100:.1f} %")
        rows.append(row)
    kinds = sorted({stats.get(r, "cost.memory_kind") for g in ok for r in g.ok} - {None})
    lines = ["## Cost details", ""] + table(header, rows) + [""]
    lines += [f"Peak memory is measured as {' and '.join(f'`{k}`' for k in kinds) or 'nothing'}: "
              + " ".join(f"`{k}` is {MEMORY_KINDS[k].counts}." for k in kinds if k in MEMORY_KINDS) + " "
              "Step time excludes warm-up steps and the wait for batches; *Data wait* is the time the timed steps "
              "waited for their batches in all and its share of their time (reading, decoding and processing that "
              "the workers did not hide; with the bundled in-memory data, the first pass's encoding); estimate "
              "error is (estimate − measured) / measured, where the measurement counts tensors as the estimate does "
              "(an RSS figure also holds the runtime's own pages: its estimate is shown without an error).", ""]
    beside = [r for g in ok for r in g.ok if isinstance(n := stats.get(r, "cost.concurrent_cells"), int) and n > 1]
    side = sorted({stats.get(r, "cost.concurrent_cells") for r in beside})
    together = [r for r in beside if stats.get(r, "cost.timed_alone") is not True]
    if together:
        lines += [f"Cells ran side by side ({' or '.join(map(str, side))} at a time, `cost.concurrent_cells`) without "
                  "taking turns at their timed work (`cost.timed_alone` false or not recorded): their step times include "
                  "what a neighbour's training took of the machine's memory bandwidth and caches; compare speeds between "
                  "runs made the same way.", ""]
    elif beside:
        lines += [f"Cells ran side by side ({' or '.join(map(str, side))} at a time, `cost.concurrent_cells`) and took turns "
                  "at their timed work (`cost.timed_alone`): a cell's timed steps and serving rounds ran while the others "
                  "built, warmed up or evaluated, never while another was timed (their untimed work still shared the "
                  "machine).", ""]
    return lines


def _tensor_bytes(kind) -> bool:
    return kind in MEMORY_KINDS and MEMORY_KINDS[kind].tensor_bytes


def _failures_section(page: Page) -> list[str]:
    """The cells that did not finish, and the measured parts that failed inside those that did (never "every cell
    finished" alone while one did)."""
    from bench.analysis import caveats

    failed = [r for r in page.records if r.get("status") != "ok"]
    parts = caveats.part_failures(page)
    lines = ["## Failures", ""]
    if not failed and not parts:
        return lines + ["Every cell finished.", ""]
    if failed:
        rows = [[cell_text(stats.get(r, "model.name")), cell_text(stats.get(r, "dataset.name")),
                 cell_text(stats.get(r, "method.name")), str(r.get("repeat", 0)), status_label(r["status"]),
                 cell_text(r.get("message") or "no message")] for r in failed]
        lines += table(["Model", "Dataset", "Method", "Repeat", "Status", "Message"], rows) + [""]
    if parts:
        lead = "Every cell finished; " if not failed else "Inside the cells that finished, "
        lines += [f"{lead}{caveats.failures_summary(parts)}:", ""] + caveats.failures_table(parts) + [""]
    return lines


def env_key(record: dict) -> tuple:
    """The record's environment as a hashable row; values are shown as text (a hand-edited file may hold anything)."""
    env = record["env"]
    return tuple(bool(env.get(k)) if k == "git_dirty" else None if env.get(k) is None else str(env.get(k)) for k in ENV_KEYS)


def _env_section(page: Page) -> list[str]:
    envs: dict[tuple, int] = {}
    for r in page.records:
        envs[env_key(r)] = envs.get(env_key(r), 0) + 1
    rows = []
    for key, count in envs.items():
        e = dict(zip(ENV_KEYS, key))
        git = "—" if not e["git_sha"] else e["git_sha"] + (" (dirty)" if e["git_dirty"] else "")
        rows.append([cell_text(e["device_name"] or "?"), str(e["device_count"] if e["device_count"] is not None else "?"),
                     *(cell_text(e[k] or "—") for k in ("torch", "transformers", "peft", "bitsandbytes")), git, str(count)])
    lines = ["## Environment", ""]
    if len(envs) > 1:
        differing = [k for i, k in enumerate(ENV_KEYS) if len({key[i] for key in envs}) > 1]
        lines += [f"> ⚠ **The records come from {len(envs)} different environments** (differing: "
                  f"{', '.join(differing)}): numbers from different rows below are not directly comparable.", ""]
    if any(dict(zip(ENV_KEYS, k))["git_dirty"] for k in envs):
        lines += ["> ⚠ Some records were produced from a working tree with uncommitted changes (dirty).", ""]
    lines += table(["Device", "Count", "torch", "transformers", "peft", "bitsandbytes", "git", "Records"], rows) + [""]
    if page.remote_code:
        lines += [f"{REMOTE_CODE} Loaded with `trust_remote_code=True` (code shipped with the checkpoint ran): "
                  f"{', '.join(page.remote_code)}.", ""]
    return lines


LEGEND = f"""## Legend

- **Δ** = tuned − base quality on a 0–100 scale (points), on the same evaluation samples; mean ± sample
  standard deviation over repeats when there are several (n = number of finished repeats).
- **Δ retention** (with a grid's `retention` dataset): tuned − base quality on that other dataset — what
  the method forgot of it (negative) or carried over (positive).
- [lo, hi] after a Δ: its 95 % confidence interval, from a paired bootstrap over the evaluation items (base and
  tuned scored on the same items) with the repeats' seeds resampled too (`bench/analysis/intervals.py`);
  _italic_: the interval contains 0 — no evidence the method changed quality.
- **bold** Δ: the best method of its model × dataset; {NEAR}: not told apart from the best — the 95 %
  interval of their difference (items paired) contains 0 (for records without per-item scores: the
  difference is not larger than the spread between repeats, see `bench/analysis/stats.py`).
- {STAR} next to a time or a peak memory: Pareto-optimal for that cost — no other method of the same
  model × dataset is both cheaper and better in Δ.
- **OOM / timeout / error / diverged / skipped**: the cell did not finish; its message is shown instead
  of numbers, and in full under *Failures* — beside the measured parts (serving, retention, an evaluation that
  skipped samples, ...) that failed inside cells that finished.
- **preference accuracy / Δ reward margin** (DPO cells, after the task metric's Δ): TRL's reward statistics on the
  held-out pairs with their 95 % intervals over the pairs — the accuracy read against 50 (chance), the margin's
  tuned − base against 0; _italic_ where the interval holds chance. In full under *Preferences (DPO)*.
- n/a (random weights): the model was built with random weights, so its cost is real and its quality
  is not meaningful.
- {REMOTE_CODE}: the model was loaded with `trust_remote_code=True`.
"""


def page_meta(records: list[dict]) -> dict:
    """What the index shows about a page: suite(s), last run date, devices, cell counts."""
    groups = list(stats.group_by_cell(records).values())
    finished = [r.get("finished_at") or r.get("started_at") for g in groups for r in g.records]
    return {
        "suites": sorted({str(r.get("suite")) for r in records if r.get("suite")}),
        "last_run": max((f for f in finished if f), default=None),
        "devices": sorted({_device(r) for g in groups for r in g.records}),
        "cells": len(groups),
        "cells_ok": sum(1 for g in groups if g.status == "ok"),
        "records": sum(g.n for g in groups),
    }


def _meta_line(meta: dict) -> str:
    # "--" may not appear inside an HTML comment; \u002d decodes back to "-"
    return "<!-- bench-report " + json.dumps(meta, ensure_ascii=False).replace("--", "-\\u002d") + " -->"


def read_page_meta(path: str | Path) -> dict | None:
    """The metadata comment of a page written by this module, or None."""
    try:
        head = Path(path).read_text(encoding="utf-8")[:4096]
    except OSError:
        return None
    m = META_RE.search(head)
    if not m:
        return None
    try:
        meta = json.loads(m.group(1))
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


# ---------------------------------------------------------------- pages


def _render(records: list[dict], title: str, plots_dir: Path | None, rel_to: Path) -> tuple[str, list[Path]]:
    page = Page(records)
    written: list[Path] = []
    meta = page_meta(records)
    lines = [_meta_line(meta), f"# {title}", ""]
    if not page.groups:
        return "\n".join(lines + ["No records.", ""]), written
    from bench.analysis import after_training, caveats, preferences  # they format with this module's helpers

    parts = caveats.part_failures(page)
    broken = f"; {len(parts)} failed measurement{'s' if len(parts) > 1 else ''} inside finished cells (see *Failures*)"
    lines += [f"{meta['cells']} cells ({meta['cells_ok']} finished), {meta['records']} records; "
              f"last run {meta['last_run'] or '?'} on {', '.join(meta['devices'])}{broken if parts else ''}.", ""]
    lines += caveats.coverage_banner(page)

    def link(path: Path | None) -> str | None:
        if path is None:
            return None
        written.append(path)
        return Path(os.path.relpath(path, rel_to)).as_posix()

    saved = _plots(page, plots_dir) if plots_dir is not None else {}
    lines += _results_section(page)
    lines += preferences.preferences_section(page)
    lines += caveats.data_section(page)
    lines += _sweeps_section(page)
    lines += ["## Cost and quality per model × dataset", ""]
    for key, groups in page.blocks.items():
        lines += _block_section(page, key, groups, link(saved.get(key)))
    pngs = [(label, link(saved[name])) for name, (label, _) in PARETO_PLOTS.items() if saved.get(name)]
    if pngs:
        lines += ["## Cost vs quality", ""] + [f"![{label}]({p})" for label, p in pngs] + [""]
    lines += _cost_section(page)
    lines += after_training.serving_section(page)
    lines += after_training.composition_section(page)
    lines += _failures_section(page)
    lines += _env_section(page)
    lines += [LEGEND]
    return "\n".join(lines), written


# the cost vs quality plots: name (pareto-<name>.png) -> (the page's label, the cost on the x axis)
PARETO_PLOTS = {"memory": ("Peak memory vs Δ quality", "peak_memory_mb"), "time": ("Training time vs Δ quality", "train_wall_s")}


def _plots(page: Page, plots_dir: Path) -> dict:
    """The page's PNGs, saved together (bench.analysis.plots.save_figures): a loss-curve plot per model x dataset block
    (keyed by the block) and the cost vs quality plots (keyed by name); a plot with nothing to draw is left out."""
    from bench.analysis import plots

    figures = {key: (plots.loss_curves_figure([r for g in groups for r in g.records],
                                              title=f"Training loss: {key[0]} / {key[1]}"),
                     plots_dir / f"loss-{_slug(key[0])}--{_slug(key[1])}.png")
               for key, groups in page.blocks.items()}
    figures.update({name: (plots.pareto_figure(page.records, x), plots_dir / f"pareto-{name}.png")
                    for name, (_, x) in PARETO_PLOTS.items()})
    drawn = {key: pair for key, pair in figures.items() if pair[0] is not None}
    return dict(zip(drawn, plots.save_figures(list(drawn.values()))))


def render_report(records: list[dict], *, title: str, plots_dir: Path | None = None, rel_to: Path = Path(".")) -> str:
    """The Markdown page for `records` (latest record per cell and repeat). With `plots_dir`, the
    PNGs are written there and linked relative to `rel_to` (the directory the page will live in)."""
    return _render(records, title, Path(plots_dir) if plots_dir is not None else None, Path(rel_to))[0]


def write_report(records: list[dict], out_md: str | Path, *, title: str | None = None) -> list[Path]:
    """Write `out_md` and its PNGs in `<out_md without .md>/`; returns every written path, the page first."""
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md = page_target(out_md.parent, out_md.name)
    plots_dir = inside(out_md.parent, out_md.stem)  # a symlinked plots folder would take the PNGs elsewhere
    if title is None:
        suites = sorted({str(r.get("suite")) for r in records if r.get("suite")}) or [out_md.stem]
        title = f"Benchmark: {', '.join(suites)}"
    text, pngs = _render(records, title, plots_dir, out_md.parent)
    write_atomic(out_md, text)
    return [out_md, *pngs]


def write_index(reports_dir: str | Path) -> Path:
    """reports/README.md: one row per page in `reports_dir` with its last run date and device(s)."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for page in sorted(reports_dir.glob("*.md")):
        if page.name == "README.md":
            continue
        meta = read_page_meta(page) or {}
        cells = f"{meta['cells_ok']}/{meta['cells']}" if "cells" in meta else "?"
        rows.append([f"[{cell_text(page.stem)}]({page.name})", cell_text(", ".join(meta.get("suites", [])) or "?"),
                     cell_text(meta.get("last_run") or "?"), cell_text(", ".join(meta.get("devices", [])) or "?"), cells])
    lines = [f"{PAGE_MARK} index -->", "# Benchmark reports", ""]
    if rows:
        lines += table(["Page", "Suite", "Last run", "Device", "Cells finished"], rows)
    else:
        lines += ["No report pages yet: run `bench report`."]
    index = write_atomic(page_target(reports_dir, "README.md"), "\n".join(lines) + "\n")
    return index
