"""bench.suite.plan_view: the terminal table of `bench plan`, with and without the --params / --estimate columns."""

from __future__ import annotations

from rich.console import Console

from bench.suite.plan_view import _count, render_plan

ROW = {"cell_id": "abc123def456", "model": "llava-1.5-7b", "dataset": "vqa", "method": "lora-r8", "state": "pending",
       "pending_repeats": 2, "repeats": 3}
PARAMS = {"total": 7_067_621_376, "trainable": 25_174_016, "trainable_pct": 0.3562,
          "by_component": {"vision": {"total": 303_507_456, "trainable": 0}, "qformer": {"total": 0, "trainable": 0},
                           "projector": {"total": 20_979_712, "trainable": 20_979_712}}}


def rendered(rows, **flags) -> str:
    console = Console(width=250, record=True, color_system=None)
    console.print(render_plan("costs", rows, **flags))
    return console.export_text()


def test_counts_are_abbreviated():
    assert [_count(n) for n in (None, 999, 1_500, 25_174_016, 7_067_621_376)] == ["-", "999", "1.50K", "25.17M", "7.07B"]


def test_plain_plan_shows_state_and_pending_repeats():
    text = rendered([ROW, {**ROW, "cell_id": "0" * 12, "state": "done", "pending_repeats": 0}])
    assert "suite costs: 2 cells" in text and "pending (2/3)" in text and "done" in text
    assert "trainable" not in text and "est. peak MB" not in text


def test_params_and_estimate_columns():
    text = rendered([{**ROW, "params": PARAMS, "estimate": {"total_mb": 16761.21}}], params=True, estimate=True)
    for part in ("7.07B", "25.17M", "0.356", "vision 0/303.51M", "projector 20.98M/20.98M", "16,761", "worst case"):
        assert part in text, part
    tiny = rendered([{**ROW, "estimate": {"total_mb": 1.74}}], estimate=True)
    assert "1.7" in tiny  # a tiny preset's estimate keeps a decimal
    assert "qformer" not in text  # components without parameters are left out


def test_a_cell_that_could_not_be_counted_shows_its_error():
    text = rendered([{**ROW, "params": {"error": "targets.language = ['q_prj'] match no module"}}, ROW],
                    params=True, estimate=True)
    assert "q_prj" in text and text.count(" - ") >= 3  # no counts, no estimate
