"""One cell on several devices: its processes started by torch's elastic launcher (the engine behind torchrun),
one per device, each training its share (bench/ranks.py); their outcomes merged into the cell's one result.

Runs inside the cell's own process, which becomes the launcher's agent: it forks the device processes (no
torch computation has run in it, as in the forkserver it came from), waits, and reads back what each wrote.
A device process that fails ends them all: the launcher stops the others, and the failure becomes the cell's
status (an out-of-memory on one device is the cell's out-of-memory), never a hang.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import tempfile
import time
import uuid
from pathlib import Path


class DeviceFailed(Exception):
    """This device's outcome is not ok: the process exits non-zero so the launcher stops the cell's other ones."""


def run_on_devices(job, device: str, emit) -> dict:
    """The cell of `job` (bench.run.runner.CellJob) trained on job.settings["devices"] processes; the merged result."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    devices = job.settings["devices"]
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # failures come back in the record
    with tempfile.TemporaryDirectory(prefix="bench-devices-") as folder:
        # standalone rendezvous, as `torchrun --standalone`: the store on a free port of this machine, so cells side by
        # side never meet; each process's output kept in the folder rather than on the user's terminal
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=uuid.uuid4().hex,
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="fork",
                              monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=folder, redirects=Std.ALL))
        failure = None
        try:
            elastic_launch(config, device_main)(job, device, folder, emit)
        except ChildFailedError as exc:
            failure = exc
        written = {r: pickle.loads(p.read_bytes()) for r in range(devices) if (p := _outcome_path(folder, r)).exists()}
        outcomes = {r: out for r, (_, out) in written.items()}
        # a device that fails first is the cause; the others fail after it, at their next collective step
        order = sorted(written, key=lambda r: written[r][0])
        # ... unless a process died without a word: then it is the cause (the launcher's own stop leaves a mark)
        lost = next((_lost_text(r, devices, failure, folder) for r in range(devices)
                     if r not in outcomes and not _stopped_path(folder, r).exists()), None)
        return merge(outcomes, devices, job.settings["distributed"], lost=lost, order=order)


def device_main(job, device: str, folder: str, emit) -> None:
    """One device's process: join the group, train this device's share, write the outcome, fail loudly if not ok."""
    from bench.isolate import die_with_parent
    from bench.ranks import Ranks
    from bench.run.cell import run_cell

    die_with_parent()  # a killed cell (timeout, interrupt) takes its device processes with it
    local = int(os.environ["LOCAL_RANK"])
    signal.signal(signal.SIGTERM, lambda *_: _stop(folder, int(os.environ["RANK"])))
    devices = job.settings["devices"]
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    _threads(job.threads, devices)
    ranks = Ranks.join(device, job.settings["distributed"], job.settings["precision"])
    on_step = (lambda s, n, loss: emit("step", s, n, loss)) if ranks.main else None
    out = run_cell(job.cell, seed=job.seed, device=device, splits=job.splits.load(), base=job.base, zoo_path=job.zoo_path,
                   settings=job.settings, on_step=on_step, ranks=ranks)
    path = _outcome_path(folder, ranks.rank)
    path.with_suffix(".tmp").write_bytes(pickle.dumps((time.monotonic(), out)))  # one clock for the whole machine
    path.with_suffix(".tmp").replace(path)
    if out["status"] != "ok":
        raise DeviceFailed(out["message"])


def _threads(threads: int, devices: int) -> None:
    """Each device process its share of the cell's threads (of the cores, where the slot sets none)."""
    import torch

    cores = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // devices))


def _outcome_path(folder: str, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.pkl"


def merge(outcomes: dict[int, dict], devices: int, strategy: str, *, lost: str | None = None,
          order: list[int] | None = None) -> dict:
    """The cell's result from its devices' outcomes: the main device's (it evaluated); else the root cause of a
    failure: a process that died without an outcome (`lost`: the others then fail only at their next collective step),
    or the first device, in `order` (when each wrote its outcome), whose outcome is not ok. Memory per device beside
    its maximum; throughput for the whole cell and per device."""
    failed = [r for r in (order or sorted(outcomes)) if outcomes[r]["status"] != "ok"]
    if lost or (not failed and 0 not in outcomes):
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
    for name in ("samples_per_s", "tokens_per_s"):
        whole = cost.get(name)
        cost[f"{name}_per_device"] = round(whole / devices, 3) if whole is not None else None
    return out


def _stop(folder: str, rank: int) -> None:
    """SIGTERM, which the launcher sends every device process once one has failed: leave the mark that says this
    one was stopped rather than lost, and go."""
    _stopped_path(folder, rank).touch()
    os._exit(128 + signal.SIGTERM)


def _stopped_path(folder: str, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.stopped"


def _lost_text(rank: int, devices: int, failure, folder: str) -> str:
    """How the process of device `rank` ended without an outcome (as the launcher saw it, when it did), with the last
    line it wrote."""
    why = (failure.failures if failure is not None else {}).get(rank)
    code = why.exitcode if why is not None else None
    if code is None:
        how = "ended without an outcome (killed, or crashed)"
    elif code < 0:
        how = f"was killed by {why.signal_name()}"
    else:
        how = f"exited with code {code} before reporting an outcome"
    if code in (None, -signal.SIGKILL):
        how += " (the kernel's out-of-memory killer sends SIGKILL)"
    last = _last_line(Path(folder), rank)
    return f"the process of device {rank} of {devices} {how}" + (f": {last}" if last else "")


def _last_line(folder: Path, rank: int) -> str:
    for log in sorted(folder.rglob(f"{rank}/stderr.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return ""
