"""One cell on several devices (bench/run/launch.py, bench/ranks.py): the same training as one device with the
same samples per step, the record saying how many devices, and every way a device process fails becoming the
cell's status rather than a hang."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import record

from bench.records import read_records
from bench.run.launch import merge
from bench.run.runner import Runner
from bench.suite.load import load_suite

EQUIVALENCE = """
[suite]
name = "devices"
threads = 2

[defaults]
steps = 5
batch_size = 8
lr = 2e-3
max_seq_len = 24
eval_batch_size = 64
max_new_tokens = 4
timing_warmup_steps = 2

[models.llava]
family = "llava"
preset = "tiny"
weights = "random"

[datasets.vqa]
format = "scenes"
task = "vqa"
split = "target"
train_size = 48
eval_size = 8

[methods.two-devices]
kind = "full"
train = {devices = 2}

[methods.one-device-accum-2]
kind = "full"
train = {grad_accum = 2}

[methods.lora-two-devices-accum-2]
kind = "lora"
dropout = 0.0
train = {devices = 2, grad_accum = 2}

[methods.lora-one-device-accum-4]
kind = "lora"
dropout = 0.0
train = {grad_accum = 4}

[[grid]]
models = ["llava"]
datasets = ["vqa"]
methods = ["two-devices", "one-device-accum-2", "lora-two-devices-accum-2", "lora-one-device-accum-4"]
"""


def test_two_cpu_processes_train_as_one_process_accumulating_over_their_batches(write_suite, tmp_path):
    """The acceptance point: 2 gloo processes at batch_size 8 give one process's loss curve at batch_size 8 ×
    grad_accum 2 within 1e-4 per step (full fine-tuning, whose unused vision layer DDP must tolerate, and LoRA with
    accumulation on each device); the records say 2 devices, one peak per device and the same effective batch."""
    runner = Runner(load_suite(write_suite(EQUIVALENCE)), results_dir=tmp_path / "results", reports_dir=tmp_path / "reports",
                    show_progress=False)
    summary = runner.run()
    assert summary.statuses == {"ok": 4}
    by = {r["method"]["name"]: r for r in read_records(runner.results)}
    for many, one, batch in (("two-devices", "one-device-accum-2", 16), ("lora-two-devices-accum-2", "lora-one-device-accum-4", 32)):
        curve, reference = by[many]["loss_curve"], by[one]["loss_curve"]
        assert [s for s, _ in curve] == [s for s, _ in reference] == [1, 2, 3, 4, 5]
        assert max(abs(a - b) for (_, a), (_, b) in zip(curve, reference)) <= 1e-4
        assert by[many]["train"]["effective_batch"] == by[one]["train"]["effective_batch"] == batch
        cost = by[many]["cost"]
        assert cost["devices"] == 2 and cost["distributed"] == "ddp" and by[one]["cost"]["devices"] == 1
        assert len(cost["peak_memory_per_device_mb"]) == 2 and cost["peak_memory_mb"] == max(cost["peak_memory_per_device_mb"])
        assert cost["tokens_per_s_per_device"] == pytest.approx(cost["tokens_per_s"] / 2, abs=1e-3)
    # the memory model's DDP term (gradient buckets alive through the forward) against the tracked tensors
    full = by["two-devices"]["cost"]
    assert abs(full["estimate_mb"] - full["peak_memory_mb"]) <= 0.05 * full["peak_memory_mb"]
    page = (tmp_path / "reports" / "devices.md").read_text()
    assert "| 2 × cpu |" in page


# -- the merge of the devices' outcomes ---------------------------------------------------------------


def outcome(status="ok", peak=1.0, message="", tokens=100.0):
    return {"status": status, "message": message, "params": {}, "loss_curve": [], "diverged_at_step": None, "quality": {},
            "cost": {"peak_memory_mb": peak, "tokens_per_s": tokens if status == "ok" else None, "samples_per_s": None}}


def test_the_main_devices_outcome_carries_every_devices_peak_and_the_per_device_rates():
    out = merge({0: outcome(peak=3.0), 1: outcome(peak=5.0, tokens=1.0)}, 2, "ddp")
    assert out["status"] == "ok" and out["cost"]["peak_memory_per_device_mb"] == [3.0, 5.0]
    assert out["cost"]["peak_memory_mb"] == 5.0 and out["cost"]["tokens_per_s_per_device"] == 50.0
    assert out["cost"]["samples_per_s_per_device"] is None


def test_a_failed_device_gives_the_cell_its_status_and_says_which_device():
    out = merge({0: outcome("error", message="RuntimeError: gloo"), 1: outcome("oom", message="out of memory: x")}, 2, "ddp")
    assert out["status"] == "error" and out["message"].startswith("on device 0 of 2: ")
    out = merge({0: outcome("error", message="RuntimeError: gloo"), 1: outcome("oom", message="out of memory: x")}, 2, "ddp",
                order=[1, 0])  # device 1 failed first: device 0's error followed from it
    assert out["status"] == "oom" and out["message"] == "on device 1 of 2: out of memory: x"
    out = merge({0: outcome(), 1: outcome("oom", peak=9.0, message="out of memory: x")}, 2, "ddp")
    assert out["status"] == "oom" and out["message"] == "on device 1 of 2: out of memory: x"
    assert out["cost"]["peak_memory_per_device_mb"] == [1.0, 9.0]
    diverged = merge({0: outcome("diverged", message="loss nan at step 3"), 1: outcome("diverged")}, 2, "ddp")
    assert diverged["message"] == "loss nan at step 3"  # the devices' mean loss: no one device's


def test_a_device_process_lost_without_an_outcome_is_the_root_cause():
    out = merge({0: {**outcome("error", message="RuntimeError: Connection closed by peer"), "peer_lost": True}}, 2, "ddp",
                lost="the process of device 1 of 2 was killed by SIGKILL")
    assert out["status"] == "error" and out["message"] == "the process of device 1 of 2 was killed by SIGKILL"
    assert out["cost"]["peak_memory_per_device_mb"] == [1.0, None]
    assert merge({}, 2, "ddp")["message"] == "the main device's process reported no outcome"
    # a device that failed on its own comes before a process the launcher stopped after it
    own = merge({1: outcome("oom", message="out of memory: x")}, 2, "ddp", lost="the process of device 0 of 2 was killed")
    assert own["status"] == "oom" and own["message"] == "on device 1 of 2: out of memory: x"
    # with nobody else to blame, a device that only lost its peers says so
    alone = merge({0: {**outcome("error", message="RuntimeError: Connection closed by peer"), "peer_lost": True}}, 2, "ddp")
    assert alone["message"] == "on device 0 of 2: RuntimeError: Connection closed by peer" and "peer_lost" not in alone


# -- device processes that fail, for real: the launcher forks this test process, so the patched cell runs there ----


def _cell_job(write_suite):
    from bench.data.loader import load_suite_dataset
    from bench.run.runner import CellJob, SharedSplits
    from bench.suite.plan import expand

    suite = load_suite(write_suite(EQUIVALENCE))
    cell = next(c for c in expand(suite) if c.method["name"] == "two-devices")
    splits = SharedSplits.of(load_suite_dataset(cell.dataset, suite.base_dir))
    return CellJob(cell, 0, "cpu", splits, None, None, dict(cell.train), threads=2)


def _waits_for_the_other_device(ranks) -> dict:
    """What bench.run.cell.run_cell does when a collective step fails: the error becomes the device's outcome."""
    import torch
    import torch.distributed as dist

    try:
        ranks.wrap(torch.nn.Linear(2, 2))  # joins the group, as the cell does once its model is built
        dist.barrier()  # the other device never arrives: its end (or the launcher's stop) ends this
    except RuntimeError as exc:
        from bench.run.cell import is_peer_loss

        return {**outcome("error", message=f"RuntimeError: {exc}"), "peer_lost": is_peer_loss(exc)}
    return outcome()


def test_a_device_that_fails_stops_the_others_and_its_status_is_the_cells(write_suite, monkeypatch):
    from bench.run.launch import run_on_devices

    def cell(*args, ranks, **kwargs):
        if ranks.rank == 1:
            time.sleep(0.5)  # the other device is waiting by now
            return outcome("oom", peak=7.0, message="out of memory: injected")
        return _waits_for_the_other_device(ranks)

    monkeypatch.setattr("bench.run.cell.run_cell", cell)
    out = run_on_devices(_cell_job(write_suite), "cpu", lambda *event: None)
    assert out["status"] == "oom" and out["message"] == "on device 1 of 2: out of memory: injected"
    assert out["cost"]["peak_memory_per_device_mb"] in ([None, 7.0], [1.0, 7.0])  # the waiting one stopped, or failed after


def test_a_device_process_killed_outright_is_recorded_as_such(write_suite, monkeypatch):
    from bench.run.launch import run_on_devices

    def cell(*args, ranks, **kwargs):
        if ranks.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        # the other device waits outside any collective until the launcher stops it: inside one (gloo's rendezvous) it
        # sometimes crashed with SIGSEGV before the launcher saw device 1 die, and was then taken for the cause
        time.sleep(120)
        return outcome()

    monkeypatch.setattr("bench.run.cell.run_cell", cell)
    out = run_on_devices(_cell_job(write_suite), "cpu", lambda *event: None)
    assert out["status"] == "error"
    assert out["message"].startswith("the process of device 1 of 2 ") and "out-of-memory killer sends SIGKILL" in out["message"]


# -- the report ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("devices", "name", "shown"), [
    (4, "NVIDIA A100-SXM4-80GB", "4 × NVIDIA A100-SXM4-80GB"), (1, "NVIDIA H200", "NVIDIA H200"), (None, "cpu", "cpu"),
    ("4", "cpu", "cpu"), (True, "cpu", "cpu"), (2.5, "cpu", "cpu"),
])
def test_the_device_column_reads_like_the_documents_cost_table(devices, name, shown):
    from bench.analysis.report import _device

    assert _device(record({"cost.devices": devices, "env.device_name": name})) == shown


