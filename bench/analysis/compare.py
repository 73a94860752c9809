"""Compare two sets of records cell by cell: what got better, what got worse, what is only noise.

Cells are paired by cell_id (a hash of the resolved config, so the same id means the same
settings); each side is the mean over its repeats. A change is called better or worse by the
metric's direction, and flagged as noise when it is not larger than the spread between repeats
(bench/analysis/stats.py). Environment differences (another GPU, another torch) are loud warnings: cost
numbers across them measure the machine, not the change. Reads records only; never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.analysis import stats
from bench.analysis.markdown import cell_text
from bench.analysis.stats import Group, Summary
from bench.fields import ENV_COMPARED
from bench.fields import FIELDS as ALL_FIELDS

# the fields compared, and which way is better: "lower", "higher", "quality" (the record's higher_is_better), None
FIELDS: dict[str, str | None] = {f.path: f.better for f in ALL_FIELDS if f.compared}


@dataclass
class MetricChange:
    field: str
    old: Summary | None
    new: Summary | None
    better: str | None  # "lower" | "higher" | None, already resolved for quality fields

    @property
    def old_mean(self) -> float | None:
        return self.old.mean if self.old else None

    @property
    def new_mean(self) -> float | None:
        return self.new.mean if self.new else None

    @property
    def abs(self) -> float | None:
        if self.old is None or self.new is None:
            return None
        return self.new.mean - self.old.mean

    @property
    def pct(self) -> float | None:
        if self.abs is None or self.old.mean == 0:
            return None
        return self.abs / abs(self.old.mean) * 100

    @property
    def noise(self) -> float | None:
        return stats.noise(self.old, self.new)

    @property
    def beyond_noise(self) -> bool:
        return stats.differs(self.old, self.new)

    @property
    def direction(self) -> str | None:
        """"better", "worse", "same", "changed" (neutral field), or None when a side has no value."""
        if self.abs is None:
            return None
        if self.abs == 0:
            return "same"
        if self.better is None:
            return "changed"
        return "better" if (self.abs < 0) == (self.better == "lower") else "worse"


@dataclass
class CellChange:
    cell_id: str
    model: str
    dataset: str
    method: str
    old_status: str
    new_status: str
    changes: list[MetricChange] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} / {self.dataset} / {self.method}"

    @property
    def status_changed(self) -> bool:
        return self.old_status != self.new_status


@dataclass
class CompareResult:
    cells: list[CellChange]
    missing: list[Group]  # in the baseline, not in the current records
    extra: list[Group]  # in the current records, not in the baseline
    env_warnings: list[str]
    invalid: list[str] = field(default_factory=list)  # measurements that are not finite numbers, in either file
    incomparable: list[str] = field(default_factory=list)  # a field whose two sides count different things (its kind)

    def worse(self) -> list[tuple[CellChange, MetricChange]]:
        """Changes for the worse that are beyond noise."""
        return [(c, m) for c in self.cells for m in c.changes if m.direction == "worse" and m.beyond_noise]

    @property
    def failed(self) -> bool:
        """`bench compare` exits 1: something got worse beyond noise, a cell stopped finishing, a baseline cell
        is gone, a file holds a measurement that is not a finite number, or a field is not comparable (another kind:
        a revised metric, memory counted another way)."""
        stopped = any(c.old_status == "ok" and c.new_status != "ok" for c in self.cells)
        return bool(self.worse() or stopped or self.missing or self.invalid or self.incomparable)


def _values(records: list[dict], section: str, key: str) -> set:
    """The values of `section.key` (env, cost) over the records. Shown, never interpreted: anything unhashable (a list in
    a hand-edited file) as its text."""
    values = ((r.get(section) or {}).get(key) for r in records)
    return {v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for v in values}


def env_differences(base_records: list[dict], current_records: list[dict]) -> list[str]:
    """One warning per environment key whose values differ between the two sides (or within one)."""
    if not base_records or not current_records:
        return []
    warnings = []
    for key in ENV_COMPARED:
        old, new = _values(base_records, "env", key), _values(current_records, "env", key)
        if old != new:
            warnings.append(f"{key} differs: baseline {_show(old)} vs current {_show(new)}"
                            + (" (cost numbers are not comparable)" if key.startswith("device") else ""))
        elif len(old) > 1:
            warnings.append(f"{key} is mixed within each side: {_show(old)}")
    old, new = _values(base_records, "env", "torch_threads"), _values(current_records, "env", "torch_threads")
    if old != new:  # side by side with threads = 0 a cell gets cores ÷ jobs threads: its steps are not a lone cell's
        warnings.append(f"torch threads per cell differ: baseline {_show(old)} vs current {_show(new)} (env.torch_threads: "
                        "step times are not comparable)")
    # only cells that trained through: a failed, skipped or composed cell says no kernel, whenever it ran
    old, new = (_values(_trained(side), "cost", "optimizer_kernel") for side in (base_records, current_records))
    if old and new and old != new:  # the same AdamW through another kernel: benchmarks/optimizer_kernel.py
        warnings.append(f"optimizer kernels differ: baseline {_show(old)} vs current {_show(new)} (cost.optimizer_kernel; "
                        "None: a record from before the field, updated by torch's default, a for-loop on the CPU): step "
                        "times, and on the CPU the optimizer step's temporaries, are not comparable")
    old, new = _side_by_side(base_records), _side_by_side(current_records)
    if old != new:
        warnings.append(f"cells training at a time differ: baseline {_show(old)} vs current {_show(new)} (cost.concurrent_cells "
                        "and cost.timed_alone: step times measured while other cells trained are not comparable with ones "
                        "measured alone)")
    return warnings


def _trained(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok" and (r.get("cost") or {}).get("optimizer_steps") is not None]


def _side_by_side(records: list[dict]) -> set:
    """How many cells were training at once when each record was timed: one where the cells ran alone or took turns at
    their timed work (cost.timed_alone); records from before either field: one."""
    values = set()
    for r in records:
        cost = r.get("cost") or {}
        n = cost.get("concurrent_cells", 1)
        values.add(1 if cost.get("timed_alone") is True else n if isinstance(n, int) and not isinstance(n, bool) else str(n))
    return values


def _show(values: set) -> str:
    return ", ".join(sorted(repr(v) for v in values))


def _better(field_name: str, group: Group) -> str | None:
    rule = FIELDS.get(field_name)
    if rule == "quality":
        return "higher" if group.higher_is_better else "lower"
    return rule


def compare(base_records: list[dict], current_records: list[dict], fields=None) -> CompareResult:
    """Pair the cells of both sides by cell_id and measure the change of every field in `fields`."""
    fields = list(fields or FIELDS)
    old_groups = stats.group_by_cell(base_records)
    new_groups = stats.group_by_cell(current_records)
    cells, incomparable = [], []
    for cell_id, new in new_groups.items():
        old = old_groups.get(cell_id)
        if old is None:
            continue
        change = CellChange(cell_id, new.model, new.dataset, new.method, old.status, new.status)
        for f in fields:
            if old.random_weights and f.startswith("quality."):
                continue  # quality of random weights means nothing; do not show its "changes"
            if why := stats.unlike_kinds(f, old, new):  # refused, not measured: the numbers mean different things
                incomparable.append(f"{change.label} {f}: {why}")
                continue
            change.changes.append(MetricChange(f, old.summary(f), new.summary(f), _better(f, new)))
        cells.append(change)
    missing = [g for cid, g in old_groups.items() if cid not in new_groups]
    extra = [g for cid, g in new_groups.items() if cid not in old_groups]
    invalid = stats.invalid_on_either_side(base_records, current_records, fields)
    return CompareResult(cells, missing, extra, env_differences(base_records, current_records), invalid, incomparable)


# ---------------------------------------------------------------- rendering


def fmt_value(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4g}"


def fmt_change(m: MetricChange) -> str:
    if m.abs is None:
        return "—"
    text = ("+" if m.abs >= 0 else "") + fmt_value(m.abs)
    if m.pct is not None:
        text += f" ({m.pct:+.1f} %)"
    return text


def _shown(c: CellChange, m: MetricChange, show_all: bool) -> bool:
    """Rows worth a reader's attention: a value changed, or appeared/vanished without a status change explaining it."""
    if m.old is None and m.new is None:
        return False
    if show_all:
        return True
    if m.direction is None:
        return not c.status_changed
    return m.direction != "same"


def _verdict(m: MetricChange) -> str:
    if m.direction in ("better", "worse"):
        return m.direction if m.beyond_noise else f"{m.direction}, within noise"
    return m.direction or "n/a"


def render_markdown(result: CompareResult, *, show_all: bool = False) -> str:
    """Markdown: warnings, a summary line, and a row per changed metric (every metric with show_all)."""
    lines = ["# Comparison", ""]
    for w in result.env_warnings:
        lines.append(f"> ⚠ **Environment differs** — {w}")
    if result.env_warnings:
        lines.append("")
    worse = result.worse()
    lines += [f"{len(result.cells)} cell(s) paired, {len(worse)} change(s) for the worse beyond noise, "
              f"{len(result.missing)} missing, {len(result.extra)} new.", ""]
    rows = []
    for c in result.cells:
        if c.status_changed:
            rows.append([c.label, "status", c.old_status, c.new_status, "—", "worse" if c.new_status != "ok" else "better"])
        for m in c.changes:
            if not _shown(c, m, show_all):
                continue
            verdict = _verdict(m)
            if m.direction in ("better", "worse") and m.beyond_noise:
                verdict = f"**{verdict}**"
            rows.append([c.label, m.field, fmt_value(m.old_mean), fmt_value(m.new_mean), fmt_change(m), verdict])
    if rows:
        lines += ["| Cell | Metric | Baseline | Current | Change | Verdict |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(cell_text(x) for x in r) + " |" for r in rows]
        lines.append("")
    elif result.cells:
        lines += ["No metric changed.", ""]
    for title, groups in (("Missing from the current records", result.missing), ("New in the current records", result.extra)):
        if groups:
            lines += [f"## {title}", ""] + [f"- `{g.cell_id}` {cell_text(f'{g.model} / {g.dataset} / {g.method}')}" for g in groups] + [""]
    if result.invalid:
        lines += ["## Not finite numbers (the files were edited or corrupted)", ""] + [f"- {cell_text(p)}" for p in result.invalid] + [""]
    if result.incomparable:
        lines += ["## Not comparable (re-record the baseline on purpose: `bench baseline update SUITE`)", ""]
        lines += [f"- {cell_text(p)}" for p in result.incomparable] + [""]
    return "\n".join(lines)


def terminal_table(console, env_warnings, title: str, key: str, numbers: tuple[str, ...]):
    """(console, table) for a terminal verdict, compare's or gate's: `console` (a new one if None) with the
    environment warnings printed on it, and an empty table with columns Cell, `key`, `numbers`, Verdict."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for w in env_warnings:
        console.print(Text.assemble(("⚠ environment differs: ", "bold red"), w))
    table = Table(title=title)
    # the key (metric, rule) never wraps: it is what a reader greps for; the rest wraps on a narrow terminal
    table.add_column("Cell")
    table.add_column(key, no_wrap=True)
    for name in numbers:
        table.add_column(name, justify="right")
    table.add_column("Verdict")
    return console, table


def render_terminal(result: CompareResult, console=None, *, show_all: bool = False) -> None:
    """A rich table: green = better beyond noise, red = worse beyond noise, dim = within noise.
    Unchanged metrics are left out unless `show_all`. Names and values are printed as plain Text,
    never as markup, so a "[...]" in a model name or message prints as itself."""
    from rich.text import Text

    console, table = terminal_table(console, result.env_warnings, "bench compare", "Metric",
                                    ("Baseline", "Current", "Change"))
    for c in result.cells:
        shown = [m for m in c.changes if _shown(c, m, show_all)]
        if not shown and not c.status_changed:
            continue
        if c.status_changed:
            style = "red" if c.new_status != "ok" else "green"
            table.add_row(Text(c.label), "status", Text(c.old_status), Text(c.new_status), "", Text(c.new_status, style))
        for m in shown:
            style = {"better": "green", "worse": "red"}.get(m.direction, "") if m.beyond_noise else "dim"
            table.add_row(Text(c.label), Text(m.field.removeprefix("cost.")), fmt_value(m.old_mean), fmt_value(m.new_mean),
                          Text(fmt_change(m), style), Text(_verdict(m), style))
        table.add_section()
    console.print(table)
    worse = result.worse()
    summary = (f"{len(worse)} change(s) for the worse beyond noise", "red") if worse else ("nothing worse beyond noise", "green")
    console.print(Text.assemble(f"{len(result.cells)} cell(s) paired; ", summary))
    for label, style, groups in (("missing: ", "red", result.missing), ("new: ", "yellow", result.extra)):
        for g in groups:
            console.print(Text.assemble((label, style), f"{g.cell_id} {g.model} / {g.dataset} / {g.method}"))
    for problem in result.invalid:
        console.print(Text.assemble(("not a finite number: ", "bold red"), problem))
    for problem in result.incomparable:
        console.print(Text.assemble(("not comparable: ", "bold red"), problem.replace("not comparable: ", "")))
