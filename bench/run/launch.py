"""One cell on several devices: its processes started by torch's elastic launcher (the engine behind torchrun),
one per device, each training its share (bench/ranks.py); their outcomes merged into the cell's one result.

Runs inside the cell's own process, which becomes the launcher's agent: it forks the device processes (no torch
computation has run in it, and on GPUs CUDA is not initialised: its availability is asked of NVML), waits, and
reads back what each wrote. The launcher runs on a thread of its own so that it installs no signal handlers: the
cell process keeps ignoring Ctrl-C, which the runner handles. A device process that fails ends them all: the
launcher stops the others, and the failure becomes the cell's status (an out-of-memory on one device is the cell's
out-of-memory), never a hang. Everything the device processes write goes to a scratch folder the runner removes,
even after a timeout killed the cell.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path


class DeviceFailed(Exception):
    """This device's outcome is not ok: the process exits non-zero so the launcher stops the cell's other ones."""


def device_threads(threads: int, devices: int) -> int:
    """Each device process's share of the cell's threads (of the cores, where the slot sets none)."""
    return max(1, (threads or len(os.sched_getaffinity(0))) // devices)


def run_on_devices(job, device: str, emit) -> dict:
    """The cell of `job` (bench.run.runner.CellJob) trained on job.settings["devices"] processes; the merged result."""
    devices = job.settings["devices"]
    _quiet_launcher_logs()
    with nullcontext(job.scratch) if job.scratch else tempfile.TemporaryDirectory(prefix="bench-devices-") as folder:
        failure = _launch(job, device, emit, folder, devices)
        written = {r: pickle.loads(p.read_bytes()) for r in range(devices) if (p := _outcome_path(folder, r)).exists()}
        outcomes = {r: out for r, (_, out) in written.items()}
        order = sorted(written, key=lambda r: written[r][0])  # when each device wrote its outcome
        # a process that died without a word (killed, crashed); the ones the launcher stopped after a failure left none
        # either, but then another device's failure is the cause
        observed = set(failure.failures) if failure is not None else set()  # the launcher's first sight of a failure
        # of several processes gone at once, one killed outright (SIGKILL: the out-of-memory killer, an operator) is the
        # cause: a collective library may crash its peers (gloo segfaults when the other side vanishes mid-step)
        killed = {r for r in observed if failure.failures[r].exitcode == -signal.SIGKILL}
        silent = sorted((r for r in range(devices) if r not in outcomes),
                        key=lambda r: (r not in observed, r not in killed, r))
        lost = _lost_text(silent[0], devices, failure, folder) if silent else None
        return merge(outcomes, devices, job.settings["distributed"], lost=lost if failure else None, order=order)


def _launch(job, device: str, emit, folder: str, devices: int):
    """Run the device processes to their end; the launcher's failure (ChildFailedError), or None."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # standalone rendezvous, as `torchrun --standalone`: the store on a free port of this machine, so cells side by side
    # never meet; each process's output kept in the folder rather than on the user's terminal
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="fork",
                          monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=str(Path(folder) / "logs"),
                                                                            redirects=Std.ALL))
    ended: dict = {}

    def launch() -> None:
        try:
            elastic_launch(config, device_main)(job, device, folder, emit)
        except ChildFailedError as exc:
            ended["failure"] = exc
        except BaseException as exc:  # anything else: raised on the cell process's own thread below
            ended["error"] = exc

    thread = threading.Thread(target=launch, name="bench-devices")
    thread.start()
    thread.join()
    if "error" in ended:
        raise ended["error"]
    return ended.get("failure")


def _quiet_launcher_logs() -> None:
    """torch's launcher logs each stop and failure (its loggers set their own levels): the record says it instead."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed", "torch.multiprocessing")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def device_main(job, device: str, folder: str, emit) -> None:
    """One device's process: train this device's share (joining the group when the model is wrapped), write the
    outcome, fail loudly if it is not ok."""
    from bench.isolate import die_with_parent
    from bench.ranks import Ranks
    from bench.run.cell import run_cell

    die_with_parent()  # a killed cell (timeout, interrupt) takes its device processes with it
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    scratch = Path(folder) / f"tmp-{rank}"  # this process's temporary files, removed with the folder
    scratch.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)
    threads = device_threads(job.threads, job.settings["devices"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    ranks = Ranks(device, job.settings["distributed"], threads)
    on_step = (lambda s, n, loss: emit("step", s, n, loss)) if ranks.main else None
    out = run_cell(job.cell, seed=job.seed, device=device, splits=job.splits.load(), base=job.base, zoo_path=job.zoo_path,
                   settings=job.settings, on_step=on_step, ranks=ranks,
                   retention=job.retention_loaded(),
                   artifact=job.artifact)
    path = _outcome_path(folder, rank)
    path.with_suffix(".tmp").write_bytes(pickle.dumps((time.monotonic(), out)))  # one clock for the whole machine
    path.with_suffix(".tmp").replace(path)
    if out["status"] != "ok":
        raise DeviceFailed(out["message"])


def _outcome_path(folder: str, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.pkl"


def merge(outcomes: dict[int, dict], devices: int, strategy: str, *, lost: str | None = None,
          order: list[int] | None = None) -> dict:
    """The cell's result from its devices' outcomes: the main device's (it evaluated); else the root cause of a
    failure, in this order: the first device, in `order` (when each wrote its outcome), that failed on its own (out of
    memory, divergence, an error of its own); a process that died without an outcome (`lost`); a device that only lost
    its peers (its collective step failed because another device was gone). Memory per device beside its maximum;
    throughput for the whole cell and per device; samples skipped by any device; the longest wait for data."""
    peer_lost = {r for r, o in outcomes.items() if o.pop("peer_lost", False)}
    failed = [r for r in (order or sorted(outcomes)) if outcomes[r]["status"] != "ok"]
    failed = [r for r in failed if r not in peer_lost] + ([] if lost else [r for r in failed if r in peer_lost])
    if not failed and (lost or 0 not in outcomes):
        out = {"status": "error", "message": lost or "the main device's process reported no outcome", "params": {},
               "cost": {}, "loss_curve": [], "diverged_at_step": None, "quality": (outcomes.get(0) or {}).get("quality", {})}
    elif failed:
        out = outcomes[failed[0]]
        if out["status"] != "diverged":  # a divergence is of the devices' mean loss: every device's, not one's
            out["message"] = f"on device {failed[0]} of {devices}: {out['message']}"
    else:
        out = outcomes[0]
    cost = out["cost"]
    per_device = [outcomes[r]["cost"].get("peak_memory_mb") if r in outcomes else None for r in range(devices)]
    known = [m for m in per_device if m is not None]
    cost.update(devices=devices, distributed=strategy, peak_memory_per_device_mb=per_device,
                peak_memory_mb=max(known) if known else None)
    if isinstance(cost.get("device"), str):
        cost["device"] = cost["device"].split(":")[0]  # "cuda", as one device's records say it
    for name in ("samples_per_s", "tokens_per_s"):
        whole = cost.get(name)
        cost[f"{name}_per_device"] = round(whole / devices, 3) if whole is not None else None
    skipped: dict[str, int] = {}
    for o in outcomes.values():
        for split, n in (o["cost"].get("skipped_samples") or {}).items():
            skipped[split] = skipped.get(split, 0) + n
    if "skipped_samples" in cost or skipped:
        cost["skipped_samples"] = skipped
    for name in ("data_wait_s", "data_wait_pct"):  # the step waits for its slowest device
        waits = [o["cost"].get(name) for o in outcomes.values() if o["cost"].get(name) is not None]
        if waits:
            cost[name] = max(waits)
    return out


def _lost_text(rank: int, devices: int, failure, folder: str) -> str:
    """How the process of device `rank` ended without an outcome (as the launcher saw it, when it did), with the last
    error it wrote."""
    why = (failure.failures if failure is not None else {}).get(rank)
    code = why.exitcode if why is not None else None
    if code is None:
        how = "ended without an outcome (killed, or crashed)"
    elif code < 0:
        how = f"was killed by {why.signal_name()}"
    else:
        how = f"exited with code {code} before reporting an outcome"
    if code == -signal.SIGKILL:
        how += " (the kernel's out-of-memory killer sends SIGKILL)"
    last = _last_error(Path(folder), rank)
    return f"the process of device {rank} of {devices} {how}" + (f": {last}" if last else "")


_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b|Killed|Segmentation fault|core dumped")


def _last_error(folder: Path, rank: int) -> str:
    """The last line of the device's output that names an error (its warnings are not the cause)."""
    for log in sorted(folder.rglob(f"{rank}/stderr.log")):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if _ERROR_LINE.search(line)]
        if lines:
            return lines[-1][:300]
    return ""
