"""The terminal table of `bench plan`."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

_STATE_STYLE = {"done": "green", "pending": "yellow", "skip": "dim", "failed": "red"}


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def render_plan(suite_name: str, rows: list[dict], *, params: bool = False, estimate: bool = False, trace: bool = False) -> Table:
    # names, errors and messages come from the user's files: escaped, never read as markup
    table = Table(title=escape(f"suite {suite_name}: {len(rows)} cells"))
    for col in ("cell", "model", "dataset", "method", "state"):
        table.add_column(col)
    spread = any(r.get("devices", 1) > 1 for r in rows)  # a column only where some cell trains on several devices
    if spread:
        table.add_column("devices")
    if params:
        table.add_column("total", justify="right")
        table.add_column("trainable", justify="right")
        table.add_column("%", justify="right")
        table.add_column("trainable by component")
    if estimate:
        table.add_column("est. peak MB per device" if spread else "est. peak MB", justify="right")
        # the plan knows no data: it prices max_seq_len text positions, the most a batch can hold; a run records the
        # estimate again at the batch it measured, so a report's estimate can be lower
        table.caption = "est. peak MB: at max_seq_len text positions (the worst case); a run's record re-estimates at its measured batch"
    if trace:
        table.add_column("traced MB", justify="right")
        table.add_column("est. at trace", justify="right")
        table.add_column("error", justify="right")
    for r in rows:
        state = r["state"] + (f" ({r['pending_repeats']}/{r['repeats']})" if r["state"] == "pending" and r["repeats"] > 1 else "")
        if r.get("failed_statuses"):
            state += f" ({', '.join(r['failed_statuses'])}; --retry redoes it)"
        cols = [escape(str(r[k])) for k in ("cell_id", "model", "dataset", "method")] + [f"[{_STATE_STYLE[r['state']]}]{state}[/]"]
        if spread:
            cols.append(f"{r['devices']} ({r['distributed']})" if r["devices"] > 1 else "1")
        if params:
            p = r.get("params") or {}
            comps = ", ".join(f"{c} {_count(v['trainable'])}/{_count(v['total'])}" for c, v in (p.get("by_component") or {}).items() if v["total"])
            cols += [_count(p.get("total")), _count(p.get("trainable")),
                     f"{p['trainable_pct']:.3f}" if p.get("trainable_pct") is not None else escape(p.get("error", "-")), escape(comps)]
        if estimate:
            e = r.get("estimate") or {}
            cols.append(_mb(e.get("total_mb")))
        if trace:
            t, at = r.get("trace") or {}, r.get("estimate_at_trace") or {}
            why = t.get("not_traced") or t.get("error") or "-"
            cols.append(_mb(t["peak_mb"]) if "peak_mb" in t else f"[dim]{escape(why.splitlines()[0][:40])}[/]")
            cols.append(_mb(at["total_mb"]) if at else "-")
            cols.append(f"{at['error_pct']:+.1f}%" if at else "-")
        table.add_row(*cols)
    return table


def _mb(value) -> str:
    """Whole megabytes at scale, one decimal below 100 MB (tiny presets: 1.7 and 3.0 MB differ)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
