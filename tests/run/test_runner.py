"""The runner end to end on tiny CLIP (random weights, seconds per cell), with faults injected for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MINI_SUITE, REPO

from bench.records import read_records
from bench.run.runner import TURNS_FILE, Runner
from bench.suite.load import load_suite
from bench.turns import ENV as TURNS_ENV


def run_suite(path: Path, tmp_path: Path, **kw):
    runner = Runner(load_suite(path), results_dir=tmp_path / "results", reports_dir=tmp_path / "reports", show_progress=False, **kw)
    return runner.run(), runner


def test_run_writes_records_report_and_rerun_skips(mini_suite, tmp_path):
    summary, runner = run_suite(mini_suite, tmp_path)
    records = read_records(runner.results)
    assert summary.ran == 2 and [r["status"] for r in records] == ["ok", "ok"]
    for r in records:
        assert r["params"]["trainable"] > 0 and r["cost"]["step_s_median"] > 0 and r["cost"]["peak_memory_mb"] is not None
        assert r["quality"]["applicable"] is False  # random weights
        assert r["env"]["torch"] and r["env"]["device_name"] == "cpu"
    lora = next(r for r in records if r["method"]["kind"] == "lora")
    assert lora["params"]["by_component"]["vision"]["trainable"] == 0  # the seeds' recipe: vision frozen
    assert (tmp_path / "reports" / "mini.md").is_file()
    again, _ = run_suite(mini_suite, tmp_path)
    assert again.ran == 0 and again.skipped_done == 2
    assert len(read_records(runner.results)) == 2


FAULTS = MINI_SUITE.replace('methods = ["lora", "full"]', 'methods = ["lora", "nan", "oom", "slow"]') + """
[methods.nan]
kind = "full"
train = { lr = 10, optimizer = "sgd", max_grad_norm = 0, steps = 6, diverge_loss = 0.5 }

[methods.oom]
kind = "full"
train = { memory_cap_mb = 0.001 }

[methods.slow]
kind = "full"
train = { steps = 100000, timeout_s = 3 }
"""


def test_faults_become_statuses_and_the_suite_finishes(write_suite, tmp_path):
    path = write_suite(FAULTS, "faults.toml")
    results = tmp_path / "results" / "mini.jsonl"  # the suite inside is named mini
    results.parent.mkdir(parents=True)
    results.write_text('{"cell_id": "torn", "stat')  # a torn line left by an earlier crash
    with pytest.warns(UserWarning, match="unreadable record"):
        summary, runner = run_suite(path, tmp_path)
    by_method = {r["method"]["name"]: r for r in read_records(results, warn=False)}
    assert summary.ran == 4
    assert by_method["lora"]["status"] == "ok"
    assert by_method["nan"]["status"] == "diverged" and by_method["nan"]["diverged_at_step"] >= 1
    assert by_method["oom"]["status"] == "oom" and by_method["oom"]["cost"]["peak_memory_mb"] > 0
    assert "memory_cap_mb" in by_method["oom"]["message"]
    assert by_method["slow"]["status"] == "timeout" and "3 s" in by_method["slow"]["message"]
    assert (tmp_path / "reports" / "mini.md").is_file()


def test_oom_backoff_halves_the_batch_and_keeps_the_effective_batch(write_suite, tmp_path):
    text = FAULTS.replace('name = "mini"', 'name = "mini"\noom_backoff = true\nmin_batch_size = 1')
    path = write_suite(text.replace('methods = ["lora", "nan", "oom", "slow"]', 'methods = ["oom"]'), "backoff.toml")
    summary, runner = run_suite(path, tmp_path)
    record = read_records(runner.results)[0]
    attempts = record["cost"]["attempts"]
    assert [a["batch_size"] for a in attempts] == [4, 2, 1]
    assert all(a["batch_size"] * a["grad_accum"] == 4 for a in attempts)
    assert record["status"] == "oom"  # a cap below the weights never fits: recorded, not retried forever


def _bench(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.ci_only  # ~20 s each: a real run killed and resumed
def test_kill_9_then_resume_records_every_cell_exactly_once(write_suite, tmp_path):
    methods = ", ".join(f'"m{i}"' for i in range(4))
    text = MINI_SUITE.replace('methods = ["lora", "full"]', f"methods = [{methods}]").replace("steps = 2", "steps = 40")
    text += "".join(f'\n[methods.m{i}]\nkind = "lora"\nr = {i + 1}\n' for i in range(4))
    path = write_suite(text, "killme.toml")
    results = tmp_path / "results" / "mini.jsonl"
    proc = _bench("run", str(path), "--results-dir", "results", "--no-progress", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_records(results, warn=False)) < 1:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the whole `bench run`, mid-suite
    proc.communicate()
    first = len(read_records(results, warn=False))
    assert 1 <= first < 4
    again = _bench("run", str(path), "--results-dir", "results", "--no-progress", cwd=tmp_path)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    records = read_records(results)
    assert sorted(r["method"]["name"] for r in records) == ["m0", "m1", "m2", "m3"]
    assert all(r["status"] == "ok" for r in records)


@pytest.mark.slow
def test_killed_cell_process_is_recorded_and_the_suite_goes_on(write_suite, tmp_path):
    import psutil

    text = MINI_SUITE.replace('kind = "lora"', 'kind = "lora"\ntrain = { steps = 100000 }')  # the victim runs until killed
    path = write_suite(text, "kill_cell.toml")
    proc = _bench("run", str(path), "--results-dir", "results", "--no-progress", cwd=tmp_path)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    victim = None
    def grandchildren():
        # cells (and the short-lived process that reads the dataset) are forked by the forkserver, a child of `bench run`
        try:
            return [k for c in parent.children() for k in c.children() if k.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    while time.monotonic() < deadline and victim is None:
        if grandchildren():
            time.sleep(1.0)  # let the cell get into training; the dataset reader has gone by then
            for kid in grandchildren():
                try:
                    kid.send_signal(signal.SIGKILL)
                    victim = kid
                    break
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.1)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()  # a failed search above must not leave a 100,000-step cell training after the test
    assert victim is not None and proc.returncode == 0, out
    records = read_records(tmp_path / "results" / "mini.jsonl")
    assert len(records) == 2
    statuses = sorted(r["status"] for r in records)
    assert statuses == ["error", "ok"], out
    killed = next(r for r in records if r["status"] == "error")
    assert "SIGKILL" in killed["message"]


@pytest.mark.slow
@pytest.mark.ci_only  # ~20 s each: a real run killed and resumed
def test_ctrl_c_to_the_process_group_exits_130_without_a_traceback_and_resume_finishes(write_suite, tmp_path):
    import psutil

    text = MINI_SUITE.replace('kind = "lora"', 'kind = "lora"\ntrain = { steps = 100000, timeout_s = 60 }')
    path = write_suite(text, "ctrl_c.toml")
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--results-dir", "results", "--no-progress"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    parent, deadline = psutil.Process(proc.pid), time.monotonic() + 120
    while time.monotonic() < deadline and not [k for c in parent.children() for k in c.children()]:
        time.sleep(0.1)  # until a cell is training (a grandchild: forked by the forkserver)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in out, out
    assert not (tmp_path / "results" / "mini.claims").exists() or not list((tmp_path / "results" / "mini.claims").glob("*.json"))
    text = text.replace("steps = 100000", "steps = 2")
    path.write_text(text)
    again = _bench("run", str(path), "--results-dir", "results", "--no-progress", cwd=tmp_path)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and len(read_records(tmp_path / "results" / "mini.jsonl")) == 2, out


def test_same_suite_and_seed_give_the_same_losses(mini_suite, tmp_path):
    _, first = run_suite(mini_suite, tmp_path / "a")
    _, second = run_suite(mini_suite, tmp_path / "b")
    curves = [[r["loss_curve"] for r in read_records(x.results)] for x in (first, second)]
    assert curves[0] == curves[1] and all(curves[0])
    env = read_records(first.results)[0]["env"]
    assert {"torch", "torch_threads", "device_name", "git_sha"} <= set(env)  # what makes runs differ elsewhere


def test_missing_checkpoints_stop_before_training_with_one_message_each(tmp_path, monkeypatch):
    from bench.errors import BenchError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached
    runner = Runner(load_suite(REPO / "suites" / "vlm_costs.toml"), results_dir=tmp_path / "results",
                    reports_dir=tmp_path / "reports", show_progress=False)
    with pytest.raises(BenchError) as err:
        runner.run()
    message = err.value.render()
    for checkpoint in ("openai/clip-vit-large-patch14", "Salesforce/blip2-opt-2.7b", "llava-hf/llava-1.5-7b-hf"):
        assert message.count(checkpoint) >= 1
    assert message.startswith("3 checkpoint(s) cannot be loaded")
    assert not (tmp_path / "results").exists()  # nothing written


def test_only_that_matches_nothing_is_an_input_error(mini_suite, tmp_path):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="matches no cell") as err:
        run_suite(mini_suite, tmp_path, only="nope/*")
    assert "--only 'clip/*'" in err.value.render()
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_runner_never_imports_torch_and_says_where_the_time_went(mini_suite, tmp_path):
    """Cells train in their own processes; the runner reads their results. Anything torch-typed in a result (a
    TorchVersion in the environment once was) would import torch here — 500 MB and 1.5 s — on unpickling."""
    script = (
        "import sys\n"
        "from bench.suite.load import load_suite\n"
        "from bench.run.runner import Runner\n"
        f"s = Runner(load_suite({str(mini_suite)!r}), results_dir='results', reports_dir='reports', show_progress=False).run()\n"
        "print(s.ran, 'torch' in sys.modules, sorted(s.phases_s), round(abs(sum(s.phases_s.values()) - s.wall_s), 6))\n"
    )
    # a BENCH_TIMED_TURNS left exported in the shell: no cell locks (creates) a file where it points
    outside = tmp_path / "elsewhere" / "turns.lock"
    outside.parent.mkdir()
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, TURNS_ENV: str(outside)})
    line = out.stdout.strip()
    assert line.startswith("2 False "), out.stdout + out.stderr
    assert not outside.exists()
    assert "leaked" not in out.stderr, out.stderr  # a cell's tqdm lock (PEFT's merge bar) left to the resource tracker
    for phase in ("training", "tuned evaluation", "model build", "start-up (imports, once)", "report", "other"):
        assert phase in line
    assert line.endswith(" 0.0"), line  # the phases add up to the wall time


# ---------------------------------------------------------------- cells side by side (--jobs)

SIDE_BY_SIDE = MINI_SUITE.replace('name = "mini"', 'name = "mini"\nrepeats = 2\nthreads = 1').replace(
    'methods = ["lora", "full"]', 'methods = ["lora", "full", "ia3"]').replace("[methods.full]", '[methods.ia3]\nkind = "ia3"\n\n[methods.full]')


def test_cells_side_by_side_record_each_cell_run_once_with_what_they_learn_alone(write_suite, tmp_path):
    """--jobs 2: the same cell-runs as one at a time, each recorded once, the same losses for the same seeds (each cell
    is seeded and runs in its own process), and records that say they ran beside another."""
    path = write_suite(SIDE_BY_SIDE)
    alone, one = run_suite(path, tmp_path / "one")
    side, two = run_suite(path, tmp_path / "two", jobs=2)
    a, b = read_records(one.results), read_records(two.results)
    assert alone.ran == side.ran == 6 and len(b) == 6 and side.statuses == {"ok": 6}
    assert len({(r["cell_id"], r["repeat"]) for r in b}) == 6
    by_run = {(r["cell_id"], r["seed"]): r["loss_curve"] for r in a}
    assert {(r["cell_id"], r["seed"]): r["loss_curve"] for r in b} == by_run
    assert {r["cost"]["concurrent_cells"] for r in b} == {2} and {r["cost"]["concurrent_cells"] for r in a} == {1}
    assert "2 cells at a time" in side.phases_text() and sum(side.phases_s.values()) == pytest.approx(2 * side.wall_s, rel=0.01)
    # their timed work took turns: the records say so, the lock is in the results folder, and the wall time a cell
    # trained is at most the wall time and at most the cells' training seconds summed
    assert {r["cost"]["timed_alone"] for r in b} == {True} == {r["cost"]["timed_alone"] for r in a}
    assert (two.results.parent / TURNS_FILE).is_file() and not (one.results.parent / TURNS_FILE).exists()
    assert 0 < side.training_s <= min(side.wall_s, side.phases_s["training"] + 0.05)
    assert "timed work one cell at a time" in side.phases_text() and "a cell was training during" in side.phases_text()
    assert alone.training_s == pytest.approx(alone.phases_s["training"], abs=0.05)  # one at a time: the sum is the union


def test_as_many_cells_as_fit_is_one_per_gpu_or_cores_over_threads_and_time_alone_false_trains_them_at_once(
        write_suite, tmp_path, monkeypatch):
    """jobs = 0: on the CPU cores ÷ threads (one where threads is 0, torch's all-cores), on GPUs one each; never more
    than the cell-runs, never beside each other in process; time_alone = false sets no turns."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # the cores this process may use

    def wanted(text: str, defaults: str = "", **kw) -> int:
        suite = load_suite(write_suite(MINI_SUITE.replace('name = "mini"', f'name = "mini"\n{text}').replace(
            "steps = 2", f"steps = 2\n{defaults}")))
        return Runner(suite, show_progress=False, **kw)._jobs_wanted(jobs_of(suite))

    assert wanted("jobs = 0\nthreads = 2") == 4 and wanted("jobs = 0\nthreads = 3") == 2
    assert wanted("jobs = 0") == 1 and wanted("jobs = 0\nthreads = 2\nisolate = false") == 1
    assert wanted("jobs = 3") == 3 and wanted("threads = 2", jobs=0) == 4 and wanted("jobs = 0\nthreads = 2", jobs=1) == 1
    assert wanted("jobs = 0\nthreads = 1", "devices = 2") == 4  # a core per device process at least
    fake_nvidia_smi(tmp_path, monkeypatch, 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert wanted("jobs = 0\nthreads = 1") == 3
    at_once = load_suite(write_suite(MINI_SUITE.replace('name = "mini"', 'name = "mini"\ntime_alone = false'), "once.toml"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert [s.env for s in Runner(at_once, jobs=2, show_progress=False)._slots(jobs_of(at_once))] == [{TURNS_ENV: None}] * 2


def jobs_of(suite) -> list:
    from bench.run.runner import Job
    from bench.suite.plan import expand

    return [Job(cell, 0, 0) for cell in expand(suite)]


def fake_nvidia_smi(folder: Path, monkeypatch, gpus: int) -> None:
    """An nvidia-smi on PATH that lists `gpus` GPU indices, as the real one does on a machine with them."""
    fake = folder / "nvidia-smi"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in range(gpus)))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


def test_more_cells_at_once_than_gpus_is_refused_before_anything_runs(mini_suite, tmp_path, monkeypatch):
    from bench.errors import BenchError

    fake_nvidia_smi(tmp_path, monkeypatch, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    runner = Runner(load_suite(mini_suite), results_dir=tmp_path / "results", reports_dir=tmp_path / "reports",
                    show_progress=False, jobs=2)
    with pytest.raises(BenchError, match="1 GPU"):
        runner.run()
    assert not (tmp_path / "results").exists()


def test_side_by_side_cells_share_the_cores_or_get_a_gpu_each(mini_suite, tmp_path, monkeypatch):
    suite = load_suite(mini_suite)
    fake_nvidia_smi(tmp_path, monkeypatch, 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible
    runner = Runner(suite, jobs=4, show_progress=False, results_dir=tmp_path / "results")
    slots = runner._slots(jobs_of(suite))
    turns = {TURNS_ENV: str((tmp_path / "results" / TURNS_FILE).absolute())}  # their timed work takes turns
    assert [(s.index, s.threads, s.env) for s in slots] == [(i, 2, turns) for i in range(4)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    # no turns on GPUs, nor one at a time: a BENCH_TIMED_TURNS the cell server was started with is unset in the cells
    assert [s.env for s in Runner(suite, jobs=3, show_progress=False)._slots(jobs_of(suite))] == [
        {"CUDA_VISIBLE_DEVICES": d, TURNS_ENV: None} for d in "257"]
    assert Runner(suite, show_progress=False)._slots(jobs_of(suite))[0].env == {TURNS_ENV: None}  # the devices the user set, untouched


def test_no_more_cells_at_once_than_cell_runs_and_none_beside_each_other_in_process(write_suite, tmp_path):
    """--jobs 8 on two cell-runs runs two at a time (records say 2 neighbours, not 8; the time split's capacity is 2 x wall);
    isolate = false would run them as threads of the runner, so side by side it is refused before anything runs."""
    from bench.errors import BenchError

    path = write_suite(MINI_SUITE.replace('name = "mini"', 'name = "mini"\nthreads = 1'))
    summary, runner = run_suite(path, tmp_path / "eight", jobs=8)
    assert summary.jobs == 2 and "2 cells at a time" in summary.phases_text()
    assert {r["cost"]["concurrent_cells"] for r in read_records(runner.results)} == {2}
    path = write_suite(MINI_SUITE.replace('name = "mini"', 'name = "mini"\nisolate = false'), "inproc.toml")
    with pytest.raises(BenchError, match="isolate = false"):
        run_suite(path, tmp_path / "inproc", jobs=2)
    assert not (tmp_path / "inproc").exists()


def test_an_interrupt_does_not_wait_for_a_dataset_still_loading(write_suite, tmp_path):
    """Side by side, a slot's thread reads the data file: the interrupt kills that read too (it took the whole read,
    minutes for a big file, before), and no error is kept for the dataset."""
    import threading

    from bench.run.runner import Cancelled
    from bench.suite.plan import expand

    path = write_suite(MINI_SUITE.replace("train_size = 16", "train_size = 300000"))
    runner = Runner(load_suite(path), results_dir=tmp_path / "results", reports_dir=tmp_path / "reports",
                    show_progress=False, jobs=2)
    runner._start_processes({"clip"})  # the cell server up first: its imports are not what is timed
    threading.Timer(1.0, runner._cancel.set).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        runner.splits(expand(runner.suite)[0].dataset)
    assert time.monotonic() - start < 15 and not runner._splits and not runner._split_errors


def test_visible_gpus_come_from_the_environment_or_nvidia_smi(tmp_path, monkeypatch):
    from bench.profile import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1, 3")
    assert visible_gpus() == ["1", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,,1")  # CUDA stops at the first entry that names no device
    assert visible_gpus() == ["0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2c,abc,2")
    assert visible_gpus() == ["GPU-8f2c"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert visible_gpus() == ["0", "1"]
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert visible_gpus() == []
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\n")
    assert visible_gpus() == []  # exit status 0, but not a list of indices


def test_a_dataset_reaches_cells_as_bytes_pickled_once_and_comes_back_whole():
    from bench.data.scenes import scenes_dataset
    from bench.run.runner import SharedSplits

    splits = scenes_dataset("vqa", train_size=12, eval_size=5)
    shared = SharedSplits.of(splits)
    assert (shared.fingerprint, shared.train_size, shared.eval_size) == (splits.fingerprint, 12, 5)
    back = shared.load()
    assert back.train == splits.train and back.eval == splits.eval and back.fingerprint == splits.fingerprint
    assert isinstance(shared.payload, bytes)


def test_a_cuda_visible_devices_with_no_gpu_behind_it_leaves_auto_cells_on_the_cpu(mini_suite, tmp_path, monkeypatch):
    """Some containers set CUDA_VISIBLE_DEVICES=0 on machines without a GPU: device "auto" then means the CPU."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 9\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    suite = load_suite(mini_suite)
    slots = Runner(suite, jobs=2, show_progress=False)._slots(jobs_of(suite))
    assert [set(s.env) for s in slots] == [{TURNS_ENV}, {TURNS_ENV}]  # CPU cells: no device named, timed work in turns


def test_every_record_that_could_not_be_saved_is_named_when_cells_side_by_side_fail_together():
    from concurrent.futures import Future

    from bench.records import RecordNotSaved
    from bench.run.runner import _with_others

    first = RecordNotSaved("record A kept in /tmp/a", fix="free space")
    futures = []
    for exc in (first, RecordNotSaved("record B kept in /tmp/b", fix="free space"), None):
        f = Future()
        f.set_exception(exc) if exc else f.set_result(None)
        futures.append(f)
    combined = _with_others(first, futures)
    assert "/tmp/a" in combined.message and "/tmp/b" in combined.message and combined.fix == "free space"
    interrupt = KeyboardInterrupt()
    assert _with_others(interrupt, futures) is interrupt


def test_a_cells_devices_are_checked_against_this_machine_before_anything_runs(write_suite, tmp_path, monkeypatch):
    """More devices than GPUs (or than cores on the CPU), FSDP without a GPU, and Slurm jobs asking for fewer GPUs than a
    cell trains on: each an exit-2 message before any folder is made; cells that fit get their GPUs in groups."""
    from bench.errors import BenchError
    from bench.run.cluster import ClusterOptions

    two = load_suite(write_suite(MINI_SUITE.replace("steps = 2", "steps = 2\ndevices = 2")))

    def refused(suite, says: str, **kw) -> None:
        runner = Runner(suite, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports", show_progress=False, **kw)
        with pytest.raises(BenchError, match=says):
            runner.run()
        assert not (tmp_path / "results").exists()

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    refused(two, r"--jobs 2 runs 2 cells at once, each on 2 device\(s\) of its own: that takes 4 CPU processes, and this "
                 r"machine has 2 core\(s\)", jobs=2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(1)))
    refused(two, r"one cell at a time, each on 2 device\(s\) of its own: that takes 2 CPU processes")
    sharded = load_suite(write_suite(MINI_SUITE.replace("steps = 2", 'steps = 2\ndevices = 2\ndistributed = "fsdp"'),
                                     "fsdp.toml"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    refused(sharded, r"FSDP on CUDA only\), and no GPU is visible")

    fake_nvidia_smi(tmp_path, monkeypatch, 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    refused(two, r"that takes 4 GPU\(s\), and 3 GPU\(s\) are visible \(0, 1, 2\)", jobs=2)
    fake_nvidia_smi(tmp_path, monkeypatch, 4)
    assert [s.env for s in Runner(two, jobs=2, show_progress=False)._slots(jobs_of(two))] == [
        {"CUDA_VISIBLE_DEVICES": "0,1", TURNS_ENV: None}, {"CUDA_VISIBLE_DEVICES": "2,3", TURNS_ENV: None}]
    assert Runner(sharded, show_progress=False)._slots(jobs_of(sharded))[0].env == {"CUDA_VISIBLE_DEVICES": "0,1", TURNS_ENV: None}

    monkeypatch.setenv("PATH", f"{REPO / 'tests' / 'run' / 'fake_slurm'}:{os.environ['PATH']}")
    refused(two, r"a cell trains on 2 devices, and each Slurm job asks for 1 GPU(?s:.)*--gpus-per-cell 2",
            cluster=ClusterOptions("slurm", gpus_per_cell=1))


@pytest.mark.ci_only  # ~10 s: a cell server of its own, started from scratch
def test_the_cell_server_warms_up_the_families_the_run_builds(write_suite, tmp_path):
    """The runner tells the server it starts which families its cells build (each warmed family is ~0.1 s on the way to
    the first cell); its own environment is as it was afterwards."""
    code = ("import os, sys\nfrom bench.isolate import WARM_FAMILIES, call_isolated\n"
            "from bench.run.runner import Runner, _ready\nfrom bench.suite.load import load_suite\n"
            "runner = Runner(load_suite(sys.argv[1]), results_dir=sys.argv[2], reports_dir=sys.argv[2], show_progress=False)\n"
            "runner._start_processes({'llava', 'clip'})\n"
            "print(call_isolated(_ready, timeout_s=300).value, os.environ.get(WARM_FAMILIES))\n")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_WARM_FAMILIES"}
    done = subprocess.run([sys.executable, "-c", code, str(write_suite(MINI_SUITE)), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "['clip', 'llava'] None"
