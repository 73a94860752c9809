import copy
from pathlib import Path

import pytest
from conftest import record
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.analysis import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def method(name, memory, wall, delta, **more):
    return record(cell_id=name, **{"method.name": name, "cost.peak_memory_mb": memory, "cost.train_wall_s": wall,
                                   "quality.delta": delta, **more})


RECORDS = [method("full", 90.0, 5.0, 30.0), method("lora", 40.0, 3.0, 28.0), method("ia3", 45.0, 2.0, 10.0),
           method("bad", 60.0, 6.0, 5.0)]


def texts(ax) -> set[str]:
    return {t.get_text() for t in ax.texts}


def test_pareto_figure_labels_axes_annotates_methods_and_draws_the_front():
    fig = plots.pareto_figure(RECORDS, "peak_memory_mb")
    [ax] = fig.axes
    assert ax.get_xlabel() == "Peak memory, process RSS high-water mark (MB)"
    assert ax.get_ylabel() == "Δ vqa_acc (points)"
    assert ax.get_title() == "llava-tiny / scenes-vqa"
    assert texts(ax) == {"full", "lora", "ia3", "bad"}
    [front] = [line for line in ax.lines if line.get_label() == "Pareto front"]
    assert list(front.get_xdata()) == [40.0, 90.0]  # lora and full; ia3 and bad are dominated by lora
    assert list(front.get_ydata()) == [28.0, 30.0]


def test_pareto_figure_on_time_has_its_own_front_and_one_facet_per_model_dataset():
    other = [copy.deepcopy(r) for r in RECORDS]
    for r in other:
        r["cell_id"] += "-blip"
        r["model"]["name"] = "blip2-tiny"
    fig = plots.pareto_figure(RECORDS + other, "train_wall_s")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["llava-tiny / scenes-vqa", "blip2-tiny / scenes-vqa"]
    assert axes[0].get_xlabel() == "Training wall time (s)"
    [front] = [line for line in axes[0].lines if line.get_label() == "Pareto front"]
    assert list(front.get_xdata()) == [2.0, 3.0, 5.0]  # ia3 is fastest, so it is on the time front


def test_failed_cells_are_named_on_the_plot_and_random_weights_become_cost_bars():
    oom = record(cell_id="big", status="oom", message="out of memory", **{"method.name": "big"})
    fig = plots.pareto_figure(RECORDS + [oom], "peak_memory_mb")
    assert "not finished: big (oom)" in texts(fig.axes[0])
    rand = [method(n, m, w, None, **{"model.weights": "random"}) for n, m, w in (("lora", 40.0, 3.0), ("full", 90.0, 5.0))]
    [ax] = plots.pareto_figure(rand, "peak_memory_mb").axes
    assert "random weights" in ax.get_title()
    assert [p.get_width() for p in ax.patches] == [40.0, 90.0]


def test_pareto_plot_writes_a_png_and_nothing_without_data(tmp_path):
    path = plots.pareto_plot(RECORDS, "train_wall_s", tmp_path / "sub" / "time.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    failed = [record(status="error", message="boom", **{"cost.peak_memory_mb": None, "cost.train_wall_s": None})]
    assert plots.pareto_plot(failed, "peak_memory_mb", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ValueError, match="peak_memory_mb"):
        plots.pareto_plot(RECORDS, "memory", tmp_path / "x.png")


def test_loss_curves_one_line_per_method_and_diverged_points_dropped(tmp_path):
    records = [
        method("lora", 40.0, 3.0, 28.0, loss_curve=[[1, 4.0], [10, 2.0], [20, 1.0]]),
        method("lora", 40.0, 3.0, 28.0, repeat=1, loss_curve=[[1, 4.1], [10, 2.1], [20, 1.1]]),
        method("full", 90.0, 5.0, 30.0, status="diverged", loss_curve=[[1, 4.0], [10, 9.0], [12, None], [13, float("nan")]]),
        method("ia3", 45.0, 2.0, 10.0, loss_curve=[]),
    ]
    fig = plots.loss_curves_figure(records, title="Training loss")
    [ax] = fig.axes
    assert ax.get_xlabel() == "Optimizer step" and ax.get_ylabel() == "Training loss"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["full", "lora"]
    full = next(line for line in ax.lines if line.get_label() == "full")
    assert list(full.get_xdata()) == [1, 10]
    assert "diverged" in texts(ax)
    path = plots.loss_curves_plot(records, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert plots.loss_curves_plot(records[3:], tmp_path / "empty.png") is None


class _Written:
    """A stand-in for a matplotlib figure that writes known bytes: save_figures' sharing of the work, not drawing.
    `fails_in_child` / `hangs_in_child`: what it does in a process other than the one that made it."""

    def __init__(self, text: str, *, fails_in_child=False, hangs_in_child=False):
        import os

        self.text, self.fails, self.hangs, self.maker = text, fails_in_child, hangs_in_child, os.getpid()

    def savefig(self, path, format):
        import os
        import time

        assert format == "png"
        if os.getpid() != self.maker and self.fails:
            raise RuntimeError("no font in the child")
        if os.getpid() != self.maker and self.hangs:
            time.sleep(3600)
        Path(path).write_text(self.text)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 7), fail=st.sets(st.integers(0, 6)))
def test_every_figure_is_saved_to_its_own_path_whichever_process_saved_it(tmp_path_factory, n, fail):
    """Half the figures are saved by a forked copy of the process; one that fails there is saved here after all."""
    out = tmp_path_factory.mktemp("figs")
    figures = [(_Written(f"figure {i}", fails_in_child=i in fail), out / f"sub/{i}.png") for i in range(n)]
    paths = plots.save_figures(figures)
    assert paths == [out / f"sub/{i}.png" for i in range(n)]
    assert [p.read_text() for p in paths] == [f"figure {i}" for i in range(n)]


def test_a_forked_saver_that_hangs_is_killed_and_its_figures_saved_here(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(plots, "CHILD_GRACE_S", 0.3)
    figures = [(_Written("a"), tmp_path / "a.png"), (_Written("b", hangs_in_child=True), tmp_path / "b.png")]
    start = time.monotonic()
    plots.save_figures(figures)
    assert time.monotonic() - start < 5
    assert (tmp_path / "a.png").read_text() == "a" and (tmp_path / "b.png").read_text() == "b"


def test_figures_saved_side_by_side_are_the_bytes_one_process_saves(tmp_path):
    records = [method("full", 90.0, 5.0, 30.0, loss_curve=[[1, 2.0], [2, 1.5]]), method("lora", 40.0, 3.0, 28.0)]
    make = [lambda: plots.pareto_figure(records, "peak_memory_mb"), lambda: plots.pareto_figure(records, "train_wall_s"),
            lambda: plots.loss_curves_figure(records)]
    together = plots.save_figures([(f(), tmp_path / f"together-{i}.png") for i, f in enumerate(make)])
    alone = [plots.save_figures([(f(), tmp_path / f"alone-{i}.png")])[0] for i, f in enumerate(make)]
    assert [p.read_bytes() for p in together] == [p.read_bytes() for p in alone]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in together)


def test_two_figures_for_one_file_leave_the_later_one_whole(tmp_path):
    """Names that slug alike ('a--b'/'c' and 'a'/'b--c') give one file: one process writes it, the later figure."""
    figures = [(_Written("first " * 1000), tmp_path / "same.png"), (_Written("other"), tmp_path / "other.png"),
               (_Written("later"), tmp_path / "same.png")]
    assert plots.save_figures(figures) == [tmp_path / "same.png", tmp_path / "other.png", tmp_path / "same.png"]
    assert (tmp_path / "same.png").read_text() == "later" and (tmp_path / "other.png").read_text() == "other"
