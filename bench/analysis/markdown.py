"""Markdown for the report's pages: numbers formatted as the pages show them, text safe inside a table cell, tables,
status labels. report.py and the sections it assembles from other modules (after_training, caveats, preferences) and
compare/gate's tables format with these, so a page reads one way throughout."""

from __future__ import annotations

from bench.analysis import stats

STATUS_LABELS = {"oom": "OOM", "timeout": "timeout", "error": "error", "diverged": "diverged", "skipped": "skipped"}


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s:02d} s"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


def fmt_mb(mb: float | None) -> str:
    if mb is None:
        return "—"
    return f"{mb:,.0f} MB" if mb >= 100 else f"{mb:.1f} MB"


def fmt_count(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f}"


def fmt_rate(v: float | None) -> str:
    return "—" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def pm(summary: stats.Summary | None, fmt, *, signed: bool = False) -> str:
    """mean, with ± sample std when repeats exist."""
    if summary is None:
        return "—"
    text = f"{summary.mean:+.1f}" if signed else fmt(summary.mean)
    if summary.std is not None:
        text += f" ± {summary.std:.1f}" if signed else f" ± {fmt(summary.std)}"
    return text


def cell_text(text: str, limit: int | None = None) -> str:
    """Safe inside a Markdown table cell: no pipes or newlines; optionally shortened."""
    text = " ".join(str(text).split())
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def status_label(status: str) -> str:
    return f"**{STATUS_LABELS.get(status, status)}**"
