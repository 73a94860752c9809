"""PNG plots for the report pages: cost vs Δ quality with the Pareto front, and loss curves.

matplotlib is imported inside the functions and drives a bare `Figure` (the Agg canvas), never
pyplot: no global backend switch, no display needed, and `bench report` starts without it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import time
from pathlib import Path

from bench.analysis import stats
from bench.fields import MEMORY_KINDS
from bench.paths import inside
from bench.records import latest_per_cell

AXES = {
    "peak_memory_mb": ("cost.peak_memory_mb", "Peak memory (MB)"),
    "train_wall_s": ("cost.train_wall_s", "Training wall time (s)"),
}


def _figure(n_facets: int, *, width: float = 4.6, height: float = 3.6):
    from matplotlib.figure import Figure

    cols = min(n_facets, 3)
    rows = math.ceil(n_facets / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=110, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_facets:]:
        ax.set_visible(False)
    return fig, axes


def _colours(names) -> dict[str, tuple]:
    # the same method keeps its colour in every facet and every plot of a page
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(names)))}


def _log_if_wide(ax, values, axis: str) -> None:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def pareto_plot(records: list[dict], x: str, path: str | Path) -> Path | None:
    """`pareto_figure` saved as a PNG at `path`; None (nothing written) when no cell has the cost."""
    fig = pareto_figure(records, x)
    return None if fig is None else _save(fig, path)


def pareto_figure(records: list[dict], x: str):
    """Cost (`x`: "peak_memory_mb" or "train_wall_s") against Δ quality, one facet per model x dataset.

    One point per method (mean over ok repeats, error bars = sample std when repeats exist), each
    annotated with the method's name, and the Pareto front (lower cost, higher gain) drawn as a
    dashed line through the starred points. A facet without quality (random weights) shows the
    cost per method as bars instead. A matplotlib Figure, or None when no cell has the cost.
    """
    if x not in AXES:
        raise ValueError(f"x must be one of {sorted(AXES)}, not {x!r}")
    field, xlabel = AXES[x]
    blocks = stats.by_model_dataset(stats.group_by_cell(records).values())
    facets = {key: [g for g in groups if g.mean(field) is not None] for key, groups in blocks.items()}
    facets = {k: v for k, v in facets.items() if v}
    if not facets:
        return None
    kinds = {stats.get(r, "cost.memory_kind") for r in records if r.get("status") == "ok"} - {None}
    if x == "peak_memory_mb" and len(kinds) == 1:
        kind = next(iter(kinds))
        xlabel = f"Peak memory, {MEMORY_KINDS[kind].label if kind in MEMORY_KINDS else kind} (MB)"
    colours = _colours(g.method for groups in facets.values() for g in groups)
    fig, axes = _figure(len(facets))
    for ax, ((model, dataset), groups) in zip(axes, facets.items()):
        if any(stats.gain(g) is not None for g in groups):
            _pareto_facet(ax, groups, field, colours)
            ax.set_xlabel(xlabel)
        else:
            _cost_bars(ax, groups, field, colours)
            ax.set_xlabel(xlabel)
            why = "random weights" if groups[0].random_weights else "no quality recorded"
            ax.set_title(f"{model} / {dataset}\n(quality n/a: {why})", fontsize=10)
            continue
        ax.set_title(f"{model} / {dataset}", fontsize=10)
    for ax, key in zip(axes, facets):
        # a method that did not finish has no point; say so rather than let it silently vanish
        missing = [f"{g.method} ({g.status})" for g in blocks[key] if not g.ok]
        if missing:
            ax.text(0.01, 0.01, "not finished: " + ", ".join(missing), transform=ax.transAxes,
                    fontsize=7, color="firebrick", va="bottom")
    fig.suptitle(f"{xlabel.split(' (')[0].split(',')[0]} vs Δ quality  (★ = Pareto-optimal)", fontsize=11)
    return fig


def _pareto_facet(ax, groups, field: str, colours) -> None:
    points = [(g, g.summary(field), g.summary("quality.delta")) for g in groups]
    points = [(g, xs, ys) for g, xs, ys in points if ys is not None and stats.gain(g) is not None]
    points.sort(key=lambda p: (p[1].mean, p[2].mean))
    front = stats.pareto_cells([g for g, _, _ in points], field)
    for i, (g, xs, ys) in enumerate(points):
        on_front = g.cell_id in front
        ax.errorbar(
            xs.mean, ys.mean, xerr=xs.std or None, yerr=ys.std or None, fmt="*" if on_front else "o",
            markersize=13 if on_front else 7, color=colours[g.method], ecolor="0.6", capsize=2, zorder=3,
        )
        # alternate labels above/below along x so neighbouring points do not print over each other
        ax.annotate(g.method, (xs.mean, ys.mean), xytext=(6, 6 if i % 2 == 0 else -12),
                    textcoords="offset points", fontsize=8)
    line = sorted((xs.mean, ys.mean) for g, xs, ys in points if g.cell_id in front)
    if len(line) > 1:
        ax.plot(*zip(*line), linestyle="--", color="0.4", linewidth=1, zorder=2, label="Pareto front")
        ax.legend(fontsize=7, loc="best")
    ax.axhline(0, color="0.8", linewidth=0.8, zorder=1)
    metric = groups[0].metric or "quality"
    direction = "" if groups[0].higher_is_better else ", lower is better"
    ax.set_ylabel(f"Δ {metric} (points{direction})")
    _log_if_wide(ax, [xs.mean for _, xs, _ in points], "x")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.15)


def _cost_bars(ax, groups, field: str, colours) -> None:
    names = [g.method for g in groups]
    values = [g.mean(field) for g in groups]
    ax.barh(names, values, color=[colours[n] for n in names])
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)


def loss_curves_plot(records: list[dict], path: str | Path, *, title: str | None = None) -> Path | None:
    """`loss_curves_figure` saved as a PNG at `path`; None (nothing written) when no record has a curve."""
    fig = loss_curves_figure(records, title=title)
    return None if fig is None else _save(fig, path)


def loss_curves_figure(records: list[dict], *, title: str | None = None):
    """Training loss against step, one line per method (repeats beyond the first drawn thin).

    Records of any status are drawn (a diverged run's curve is the interesting one), marked with
    an x at its last point. A matplotlib Figure, or None when no record has a loss curve.
    """
    curves = [(r, _finite_points(r)) for r in latest_per_cell(records)]
    curves = [(r, pts) for r, pts in curves if pts]
    if not curves:
        return None
    curves.sort(key=lambda c: (stats.get(c[0], "method.name") or "", c[0].get("repeat", 0) or 0))
    colours = _colours(stats.get(r, "method.name") or "?" for r, _ in curves)
    fig, (ax,) = _figure(1, width=5.6, height=3.6)
    labelled = set()
    all_losses = []
    for r, points in curves:
        method = stats.get(r, "method.name") or "?"
        steps, losses = zip(*points)
        all_losses.extend(losses)
        first = method not in labelled
        ax.plot(steps, losses, color=colours[method], linewidth=1.6 if first else 0.7,
                alpha=1.0 if first else 0.5, label=method if first else None)
        labelled.add(method)
        if r.get("status") not in ("ok", None):
            ax.plot(steps[-1], losses[-1], marker="x", markersize=9, color=colours[method])
            ax.annotate(r["status"], (steps[-1], losses[-1]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    _log_if_wide(ax, all_losses, "y")
    ax.set_xlabel("Optimizer step")
    ax.set_ylabel("Training loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _finite_points(record: dict) -> list[tuple[float, float]]:
    # a diverged run's last losses are nan/inf (or null, as JSON records cannot hold nan): drop them
    return [
        (stats.number(p[0]), stats.number(p[1])) for p in record.get("loss_curve") or []
        if isinstance(p, (list, tuple)) and len(p) >= 2 and stats.number(p[0]) is not None and stats.number(p[1]) is not None
    ]


def _save(fig, path) -> Path:
    return save_figures([(fig, path)])[0]


def _target(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return inside(path.parent, path.name)  # a PNG that is a link out of its folder is not written through


CHILD_GRACE_S = 10  # how long past twice this process's own share the forked copy may take before its share is redone here


def save_figures(figures: list[tuple[object, Path]]) -> list[Path]:
    """Each (figure, path) saved as a PNG; returns the paths. Rendering is CPU-bound Python (threads would take turns),
    so with two figures or more and a second core a forked copy of this process saves every other one meanwhile (a
    report's five PNGs: 1.2 s one after the other on a 2-core CPU); what the copy did not save in time, or failed to,
    is saved here after all. Two figures for one file: the later one is saved, as one after the other."""
    paths = [_target(path) for _, path in figures]
    last = {path.resolve(): (fig, path) for (fig, _), path in zip(figures, paths)}  # one writer per file
    jobs = list(last.values())
    mine, theirs = _halves(jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    child = None
    try:
        child = _fork_saving(theirs) if theirs and cores > 1 else None
        started = time.monotonic()
        _save_all(mine if child else jobs)
        if child:
            deadline = time.monotonic() + CHILD_GRACE_S + 2 * (time.monotonic() - started)
            saved, child = _reaped(child, deadline), None
            if not saved:
                _save_all(theirs)
    finally:
        if child:  # this process stopped before waiting for it (an interrupt): it stops too
            _reaped(child, deadline=0)
    return paths


def _halves(jobs: list) -> tuple[list, list]:
    """The jobs in two shares of about equal drawing work, a figure's weighed by its axes (a facet costs about as much to
    lay out and draw as a loss plot): each in turn, heaviest first, to the lighter share."""
    def weight(job) -> int:
        return max(1, len(getattr(job[0], "axes", ()) or ()))

    shares, loads = ([], []), [0, 0]
    for job in sorted(jobs, key=weight, reverse=True):
        lighter = loads.index(min(loads))
        shares[lighter].append(job)
        loads[lighter] += weight(job)
    return shares


def _save_all(jobs) -> None:
    for fig, path in jobs:
        fig.savefig(path, format="png")


def _fork_saving(jobs) -> int | None:
    """A child process that saves `jobs` and exits 0 (1 if one failed); None where this process cannot fork. Ctrl-C is
    held back across the fork, so it reaches the child only once the child ends on it, never as the parent's handler."""
    if not hasattr(os, "fork"):
        return None
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return None
    if pid == 0:  # the child: nothing of the parent's runs here, and it leaves without flushing the parent's buffers
        code = 1
        try:
            gc.freeze()  # the parent's unreachable objects are never finalised here (a temporary folder's cleanup)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            _save_all(jobs)
            code = 0
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return pid


def _reaped(pid: int, deadline: float) -> bool:
    """Wait for the child until `deadline` (killed then) and reap it: whether it saved its figures (exited 0). A child
    reaped already (an interrupt between the two) counts as one that did not."""
    try:
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # not reaped yet, so the number is still the child's
                done = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
    except ChildProcessError:
        return False
    return os.waitstatus_to_exitcode(done[1]) == 0
