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
import tempfile
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
        outcomes = {r: pickle.loads(p.read_bytes()) for r in range(devices) if (p := _outcome_path(folder, r)).exists()}
        return merge(outcomes, devices, job.settings["distributed"], crash=_crash_text(failure, folder) if failure else None)


def device_main(job, device: str, folder: str, emit) -> None:
    """One device's process: join the group, train this device's share, write the outcome, fail loudly if not ok."""
    from bench.isolate import die_with_parent
    from bench.ranks import Ranks
    from bench.run.cell import run_cell

    die_with_parent()  # a killed cell (timeout, interrupt) takes its device processes with it
    local = int(os.environ["LOCAL_RANK"])
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
    path.with_suffix(".tmp").write_bytes(pickle.dumps(out))
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


def merge(outcomes: dict[int, dict], devices: int, strategy: str, *, crash: str | None = None) -> dict:
    """The cell's result from its devices' outcomes: the main device's (it evaluated), or the first device's that
    failed; memory per device beside its maximum; throughput for the whole cell and per device."""
    failed = [r for r in sorted(outcomes) if outcomes[r]["status"] != "ok"]
    if failed:
        out = outcomes[failed[0]]
        if out["status"] != "diverged":  # a divergence is of the devices' mean loss: every device's, not one's
            out["message"] = f"on device {failed[0]} of {devices}: {out['message']}"
    elif crash or 0 not in outcomes:
        out = {"status": "error", "message": crash or "the main device's process reported no outcome", "params": {},
               "cost": {}, "loss_curve": [], "diverged_at_step": None, "quality": (outcomes.get(0) or {}).get("quality", {})}
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


def _crash_text(failure, folder: str) -> str:
    """Which device's process died and how, with the last line it wrote (no outcome of its own was left)."""
    rank, why = next(iter(sorted(failure.failures.items())), (None, None))
    if why is None:
        return f"the device processes failed: {failure}"
    code = why.exitcode
    how = f"was killed by {why.signal_name()}" if code is not None and code < 0 else f"exited with code {code}"
    if code == -9:
        how += " (the kernel's out-of-memory killer sends SIGKILL)"
    last = _last_line(Path(folder), rank)
    return f"the process of device {rank} {how}" + (f": {last}" if last else "")


def _last_line(folder: Path, rank: int) -> str:
    for log in sorted(folder.rglob(f"{rank}/stderr.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return ""
