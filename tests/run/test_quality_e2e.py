"""A sweep with retention end to end, on a real tiny model from bench's zoo (built once and cached): the records hold
every trial, repeat 1 trains repeat 0's pick, Δ has its interval and retention its numbers, and the report shows them.
CI runs it (`-m ci_only`): the first run on a machine pretrains the zoo's CLIP base."""

from __future__ import annotations

import pytest

from bench.records import read_latest
from bench.run.runner import Runner
from bench.suite.load import load_suite

pytestmark = [pytest.mark.slow, pytest.mark.ci_only]

SUITE = """
[suite]
name = "quality"
repeats = 2
threads = 1

[defaults]
steps = 12
batch_size = 16
max_seq_len = 16
eval_batch_size = 64
lr = [1e-3, 1e-2]
validation_size = 32

[models.clip]
family = "clip"

[datasets.target]
format = "scenes"
task = "classification"
label = "object"
split = "target"
train_size = 96
eval_size = 48

[datasets.source]
format = "scenes"
task = "classification"
label = "object"
split = "source"
train_size = 4
eval_size = 48

[methods.lora]
kind = "lora"

[[grid]]
models = ["clip"]
datasets = ["target"]
methods = ["lora"]
retention = "source"
"""


def test_a_sweep_with_retention_records_its_trials_its_pick_and_what_it_forgot(write_suite, tmp_path):
    runner = Runner(load_suite(write_suite(SUITE)), results_dir=tmp_path / "r", reports_dir=tmp_path / "p", show_progress=False)
    assert runner.run().statuses == {"ok": 2}
    first, second = sorted(read_latest([runner.results]), key=lambda r: r["repeat"])
    trials = first["sweep"]["trials"]
    assert [t["values"] for t in trials] == [{"lr": 1e-3}, {"lr": 1e-2}] and all(t["status"] == "ok" for t in trials)
    assert first["sweep"]["picked_by"] == "validation" and first["sweep"]["validation_size"] == 32
    best = max(trials, key=lambda t: t["validation"])  # the first listed wins a tie
    assert first["sweep"]["chosen"] == next(t for t in trials if t["validation"] == best["validation"])["values"]
    assert second["sweep"] == {**second["sweep"], "picked_by": "repeat 0", "chosen": first["sweep"]["chosen"], "trials": []}
    assert first["train"]["lr"] == second["train"]["lr"] == first["sweep"]["chosen"]["lr"]
    for r in (first, second):
        q = r["quality"]
        assert q["version"] == "classification-1/zero_shot_acc-1" and q["n_eval"] == 48 == len(q["items"]["tuned"])
        assert q["delta_ci"][0] <= q["delta"] <= q["delta_ci"][1]
        retention = q["retention"]
        assert retention["dataset"] == "source" and retention["n_eval"] == 48
        assert retention["delta"] == pytest.approx(retention["tuned"] - retention["base"], abs=1e-3)
    assert first["quality"]["retention"]["base"] == second["quality"]["retention"]["base"]  # measured once
    page = (tmp_path / "p" / "quality.md").read_text()
    assert f"lora (lr {first['sweep']['chosen']['lr']:g})" in page and "## Sweeps" in page and "on source" in page
