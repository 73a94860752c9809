import copy
import re

import pytest
from conftest import record
from rich.console import Console

from bench.analysis.compare import FIELDS, compare, env_differences, render_markdown, render_terminal


def change(result, cell_id, field):
    cell = next(c for c in result.cells if c.cell_id == cell_id)
    return next(m for m in cell.changes if m.field == field)


def test_every_metric_is_paired_by_cell_with_absolute_and_percent_change():
    old = [record(cell_id="a", **{"cost.peak_memory_mb": 100.0, "cost.tokens_per_s": 1000.0})]
    new = [record(cell_id="a", **{"cost.peak_memory_mb": 110.0, "cost.tokens_per_s": 1200.0})]
    result = compare(old, new)
    assert [m.field for m in result.cells[0].changes] == list(FIELDS)
    memory = change(result, "a", "cost.peak_memory_mb")
    assert memory.abs == pytest.approx(10.0) and memory.pct == pytest.approx(10.0)
    assert memory.direction == "worse"  # lower is better for memory
    throughput = change(result, "a", "cost.tokens_per_s")
    assert throughput.pct == pytest.approx(20.0) and throughput.direction == "better"
    assert change(result, "a", "cost.train_wall_s").direction == "same"
    assert change(result, "a", "params.trainable").direction == "same"


def test_quality_direction_follows_higher_is_better():
    old = [record(cell_id="a", **{"quality.delta": 10.0}), record(cell_id="b", **{"quality.delta": 10.0, "quality.higher_is_better": False})]
    new = [record(cell_id="a", **{"quality.delta": 12.0}), record(cell_id="b", **{"quality.delta": 12.0, "quality.higher_is_better": False})]
    result = compare(old, new)
    assert change(result, "a", "quality.delta").direction == "better"
    assert change(result, "b", "quality.delta").direction == "worse"


def test_means_over_repeats_and_noise_flag():
    def repeats(cell, values):
        return [record(cell_id=cell, repeat=i, **{"cost.train_wall_s": v}) for i, v in enumerate(values)]

    result = compare(repeats("a", [10.0, 14.0]) + repeats("b", [10.0, 10.2]),
                     repeats("a", [13.0, 15.0]) + repeats("b", [12.0, 12.2]))
    noisy, clear = change(result, "a", "cost.train_wall_s"), change(result, "b", "cost.train_wall_s")
    assert noisy.old_mean == 12.0 and noisy.new_mean == 14.0
    assert not noisy.beyond_noise and clear.beyond_noise
    assert [(c.cell_id, m.field) for c, m in result.worse()] == [("b", "cost.train_wall_s")]


def test_missing_and_extra_cells_are_listed():
    result = compare([record(cell_id="a"), record(cell_id="gone")], [record(cell_id="a"), record(cell_id="new")])
    assert [c.cell_id for c in result.cells] == ["a"]
    assert [g.cell_id for g in result.missing] == ["gone"]
    assert [g.cell_id for g in result.extra] == ["new"]
    md = render_markdown(result)
    assert "## Missing from the current records" in md and "`gone`" in md and "`new`" in md


def test_environment_differences_are_loud():
    old = [record(cell_id="a")]
    new = [record(cell_id="a", **{"env.device_name": "NVIDIA H100 80GB HBM3", "env.device_count": 1, "env.peft": "0.22.0"})]
    warnings = env_differences(old, new)
    assert any(w.startswith("device_name differs") and "not comparable" in w for w in warnings)
    assert any(w.startswith("device_count differs") for w in warnings)
    assert any(w.startswith("peft differs") and "0.22.0" in w for w in warnings)
    assert not any(w.startswith("torch") for w in warnings)
    assert "Environment differs" in render_markdown(compare(old, new))
    assert env_differences(old, copy.deepcopy(old)) == []


def test_cells_run_side_by_side_against_cells_run_alone_are_flagged():
    alone = [record(cell_id="a")]  # a record from before the field: one cell at a time
    side = [record(cell_id="a", **{"cost.concurrent_cells": 2})]
    assert any(w.startswith("cells training at a time differ") and "1" in w and "2" in w
               for w in env_differences(alone, side))
    assert env_differences(side, copy.deepcopy(side)) == []
    assert env_differences(alone, [record(cell_id="a", **{"cost.concurrent_cells": 1})]) == []
    # side by side with their timed work in turns: timed as if alone, nothing to flag; trained together: flagged
    turns = [record(cell_id="a", **{"cost.concurrent_cells": 2, "cost.timed_alone": True})]
    assert env_differences(alone, turns) == [] == env_differences(turns, alone)
    together = [record(cell_id="a", **{"cost.concurrent_cells": 2, "cost.timed_alone": False})]
    assert any(w.startswith("cells training at a time differ") for w in env_differences(turns, together))


def test_torch_threads_per_cell_that_differ_are_flagged():
    """Side by side with threads = 0 each cell gets cores ÷ jobs threads: its steps are not those of a cell alone."""
    one = [record(cell_id="a", **{"env.torch_threads": 1})]
    two = [record(cell_id="a", **{"env.torch_threads": 2})]
    assert any(w.startswith("torch threads per cell differ") and "1" in w and "2" in w for w in env_differences(two, one))
    assert not any(w.startswith("torch threads") for w in env_differences(one, copy.deepcopy(one)))


def test_status_change_and_vanished_values():
    old = [record(cell_id="a")]
    new = [record(cell_id="a", status="oom", message="CUDA out of memory", **{"cost.peak_memory_mb": None})]
    result = compare(old, new)
    assert result.cells[0].status_changed
    md = render_markdown(result)
    assert "| status | ok | oom |" in md
    assert "cost.peak_memory_mb" not in md  # explained by the status row, not repeated per metric


def test_random_weights_have_no_quality_changes():
    rand = {"model.weights": "random", "quality.delta": None, "quality.tuned": None}
    result = compare([record(cell_id="a", **rand)], [record(cell_id="a", **rand)])
    assert not any(m.field.startswith("quality.") for m in result.cells[0].changes)


def test_terminal_rendering_colours_better_green_and_worse_red():
    old = [record(cell_id="a", **{"cost.peak_memory_mb": 100.0, "cost.tokens_per_s": 1000.0})]
    new = [record(cell_id="a", **{"cost.peak_memory_mb": 150.0, "cost.tokens_per_s": 2000.0})]
    console = Console(record=True, width=160, force_terminal=True, color_system="truecolor")
    render_terminal(compare(old, new), console)
    ansi = console.export_text(styles=True, clear=False)
    text = console.export_text()
    assert "peak_memory_mb" in text and "+50.0 %" in text and "+100.0 %" in text
    red, green = r"\x1b\[31m\s*", r"\x1b\[32m\s*"
    assert re.search(red + r"\+50\.00 \(\+50\.0 %\)", ansi) and re.search(red + "worse", ansi)
    assert re.search(green + r"\+1,000 \(\+100\.0 %\)", ansi) and re.search(green + "better", ansi)
    assert "train_wall_s" not in text  # unchanged metrics are left out by default
    console = Console(record=True, width=160)
    render_terminal(compare(old, new), console, show_all=True)
    assert "train_wall_s" in console.export_text()


def test_optimizer_kernels_that_differ_are_flagged():
    """The same AdamW through another kernel (records from before cost.optimizer_kernel: torch's default) times
    differently: flagged, never failed."""
    fused = [record(cell_id="a", **{"cost.optimizer_kernel": "fused", "cost.optimizer_steps": 60})]
    before = [record(cell_id="a", **{"cost.optimizer_steps": 60})]
    assert any(w.startswith("optimizer kernels differ") and "'fused'" in w and "None" in w
               for w in env_differences(before, fused))
    assert env_differences(fused, copy.deepcopy(fused)) == []
    # a cell that failed (out of memory, diverged, timed out) or never trained says no kernel, whenever it ran
    failed = [record(cell_id="a", status="oom", **{"cost.optimizer_steps": 60}), record(cell_id="b", status="skipped")]
    assert env_differences(fused + failed, fused) == [] == env_differences(fused, fused + failed)
