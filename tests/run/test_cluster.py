"""The cluster path (bench/run/cluster.py) end to end through submitit's local executor: the driver submits, polls and
records; killed and run again, it re-attaches and every cell-run is recorded exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MINI_SUITE, REPO

from bench.errors import BenchError
from bench.records import read_records
from bench.run.cluster import ClusterOptions
from bench.run.runner import Runner
from bench.suite.load import load_suite

pytestmark = [pytest.mark.slow, pytest.mark.ci_only]  # each job is a fresh Python process that imports torch

FOUR_CELLS = (MINI_SUITE.replace('name = "mini"', 'name = "mini"\nthreads = 1')
              .replace('methods = ["lora", "full"]', 'methods = ["lora", "full", "ia3", "lora8"]')
              .replace("[methods.full]", '[methods.ia3]\nkind = "ia3"\n\n[methods.lora8]\nkind = "lora"\nr = 8\n\n[methods.full]'))


def runs(results: Path) -> list[tuple[str, int]]:
    return [(r["cell_id"], r["repeat"]) for r in read_records(results)]


def test_the_local_executor_runs_every_cell_as_a_job_and_the_driver_records_each(write_suite, tmp_path):
    path = write_suite(FOUR_CELLS)
    runner = Runner(load_suite(path), results_dir=tmp_path / "results", reports_dir=tmp_path / "reports",
                    show_progress=False, cluster=ClusterOptions("local", poll_s=0.3))
    summary = runner.run()
    records = read_records(runner.results)
    assert summary.ran == 4 and summary.statuses == {"ok": 4}
    assert sorted(runs(runner.results)) == sorted(set(runs(runner.results))) and len(records) == 4
    assert all(r["cost"]["job_id"].isdigit() and r["env"]["torch"] for r in records)
    assert not list((tmp_path / "results" / "mini.jobs").glob("*.json"))  # every job file gone once recorded


def test_a_driver_killed_mid_run_and_run_again_records_every_cell_run_exactly_once(write_suite, tmp_path):
    path = write_suite(FOUR_CELLS)
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "bench", "run", str(path), "--executor", "local", "--poll-s", "0.2", "--results-dir",
            str(results), "--reports-dir", str(tmp_path / "reports"), "--no-progress"]
    driver = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ((results / "mini.jsonl").exists() and read_records(results / "mini.jsonl")):
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)  # the driver only: its jobs go on, as they would on a cluster
    driver.wait()
    first = runs(results / "mini.jsonl")
    assert len(first) >= 1
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    final = runs(results / "mini.jsonl")
    assert len(final) == 4 and len(set(final)) == 4, final  # each cell-run once, none lost
    assert set(first) <= set(final)
    assert not list((results / "mini.jobs").glob("*.json"))


def test_slurm_without_sbatch_and_jobs_beside_an_executor_stop_before_anything_runs(mini_suite, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    for options, jobs, says in ((ClusterOptions("slurm"), None, "sbatch"), (ClusterOptions("local"), 2, "--jobs 2")):
        runner = Runner(load_suite(mini_suite), results_dir=tmp_path / "results", reports_dir=tmp_path / "reports",
                        show_progress=False, cluster=options, jobs=jobs)
        with pytest.raises(BenchError, match=says):
            runner.run()
        assert not (tmp_path / "results").exists()


def test_job_files_that_are_not_ours_are_ignored_and_recorded_ones_swept(tmp_path):
    from bench.run import cluster

    folder = tmp_path / "s.jobs"
    folder.mkdir()
    (folder / "abc-0.json").write_text("not json")
    (folder / "def-1.json").write_text(json.dumps({"job_id": "../../x", "executor": "local", "folder": "f", "started_at": "t"}))
    assert cluster.load(folder, ("abc", 0)) is None and cluster.load(folder, ("def", 1)) is None
    sub = cluster.Submitted(("ghi", 2), "123", "local", str(folder / "%j"), "t")
    cluster.save(folder, sub)
    assert cluster.load(folder, ("ghi", 2)).job_id == "123"
    cluster.sweep(folder, {("ghi", 2)})
    assert not (folder / "ghi-2.json").exists() and (folder / "abc-0.json").exists()


def test_slurm_receives_one_job_array_and_the_driver_records_what_it_ran(write_suite, tmp_path, monkeypatch):
    """A fake sbatch / srun / sacct on PATH (tests/run/fake_slurm: they log the submission and run it here) stand in for
    Slurm: the driver submits the pending cell-runs as one array with the partition and GPUs asked for, and records
    every cell-run once from the jobs' results."""
    state = tmp_path / "slurm"
    state.mkdir()
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("PATH", f"{REPO / 'tests' / 'run' / 'fake_slurm'}:{os.environ['PATH']}")
    path = write_suite(FOUR_CELLS)
    runner = Runner(load_suite(path), results_dir=tmp_path / "results", reports_dir=tmp_path / "reports", show_progress=False,
                    cluster=ClusterOptions("slurm", partition="gpu-a100", gpus_per_cell=1, cpus_per_cell=4, poll_s=0.5))
    summary = runner.run()
    assert summary.statuses == {"ok": 4} and len(set(runs(runner.results))) == len(runs(runner.results)) == 4
    submissions = [json.loads(line) for line in (state / "submissions.jsonl").read_text().splitlines()]
    assert len(submissions) == 1  # one array for the four cell-runs
    script = submissions[0]["script"]
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --partition=gpu-a100", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --ntasks-per-node=1"):
        assert line in script, (line, script)
    assert sorted(r["cost"]["job_id"] for r in read_records(runner.results)) == [f"4000_{i}" for i in range(4)]
