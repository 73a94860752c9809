"""bench.cost.preview: traces set beside the estimate, the cost-preview page, and `bench plan --trace` end to end."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.cost.params import count_cell
from bench.cost.preview import estimate_at_trace, render_markdown, target_device
from bench.suite.load import load_suite
from bench.suite.plan import expand

TRACE = {"peak_mb": 2.0, "by_kind_mb": {"param": 0.63, "opt": 0.09, "act": 1.1, "temp": 0.18}, "text_len": 6,
         "batch": {"input_ids": [4, 6]}, "params": {"trainable": 10_241}}
ROWS = [
    {"cell_id": "a" * 12, "model": "clip", "dataset": "cls", "method": "lora", "trace": TRACE,
     "estimate_at_trace": {"total_mb": 1.8, "error_pct": -10.0}},
    {"cell_id": "b" * 12, "model": "clip", "dataset": "cls", "method": "qlora", "params": {"trainable": 10_241},
     "trace": {"not_traced": "bitsandbytes quantises real weight data; fake tensors have none"},
     "estimate": {"total_mb": 1.2}},
]


def test_page_shows_the_trace_its_parts_the_estimate_and_the_error():
    page = render_markdown("mini", ROWS, {"torch": "2.15.0", "transformers": "5.23.0", "peft": "0.21.2", "git_sha": "abc"})
    assert "Device: **none**" in page and "torch 2.15.0" in page and "git abc" in page
    traced = next(line for line in page.splitlines() if line.startswith("| aaaa"))
    assert [c.strip() for c in traced.split("|")[1:-1]] == [
        "a" * 12, "clip", "cls", "lora", "10,241", "4 × 6", "**2.0**", "0.6", "0", "0.1", "1.1", "0.2", "1.8", "-10.0 %"]
    untraced = next(line for line in page.splitlines() if line.startswith("| bbbb"))
    assert "not traced: bitsandbytes quantises" in untraced and "| 1.2 |" in untraced
    assert untraced.count("|") == traced.count("|")  # the same columns
    assert "over 1 traced cells: largest 10.0 %, 1 of 1 within 15 %" in page


def test_target_device_is_the_cpu_only_when_the_suite_says_so():
    class S:
        def __init__(self, device):
            self.settings = {"device": device}

    assert [target_device(S(d)) for d in ("cpu", "cuda", "auto")] == ["cpu", "cuda", "cuda"]


def test_estimate_at_trace_uses_the_traced_text_length(mini_suite):
    cell = next(c for c in expand(load_suite(mini_suite)) if c.method["name"] == "lora")
    params = count_cell(cell, {})
    short = estimate_at_trace(cell, {"peak_mb": 1.0, "params": params, "text_len": 4}, {}, "cuda")
    long = estimate_at_trace(cell, {"peak_mb": 1.0, "params": params, "text_len": 16}, {}, "cuda")
    assert short["text_len"] == 4 and long["text_len"] == 16 and short["total_mb"] <= long["total_mb"]
    assert short["error_pct"] == pytest.approx(100 * (short["total_mb"] - 1.0), abs=0.1)
    assert estimate_at_trace(cell, {"not_traced": "why"}, {}, "cuda") is None
    # a CPU suite's trace ran the fused AdamW a CPU cell updates with: its estimate holds no foreach step buffer either
    cpu = estimate_at_trace(cell, {"peak_mb": 1.0, "params": params, "text_len": 4}, {}, "cpu")
    assert cpu["optimizer_step"] == 0 < short["optimizer_step"]


def test_plan_trace_end_to_end(mini_suite, tmp_path, capsys):
    page = tmp_path / "preview.md"
    assert main(["plan", str(mini_suite), "--trace", "--only", "*lora*", "--json", "--markdown", str(page),
                 "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    (cell,) = json.loads(out.out)["cells"]
    assert cell["method"] == "lora" and cell["params"]["trainable"] == cell["trace"]["params"]["trainable"]
    assert cell["trace"]["peak_mb"] > cell["trace"]["by_kind_mb"]["param"] > 0
    assert cell["estimate_at_trace"]["error_pct"] == pytest.approx(
        100 * (cell["estimate_at_trace"]["total_mb"] - cell["trace"]["peak_mb"]) / cell["trace"]["peak_mb"], abs=0.1)
    assert f"traced {cell['cell_id']} clip/lora" in out.err
    assert cell["cell_id"] in page.read_text()


def test_plan_only_that_matches_nothing_is_a_clear_error(mini_suite, tmp_path, capsys):
    assert main(["plan", str(mini_suite), "--only", "nothing-like-this", "--results-dir", str(tmp_path)]) == 2
    assert "--only 'nothing-like-this' matches no cell" in capsys.readouterr().err
