"""A suite's cells over a cluster through submitit: Slurm jobs, or submitit's local executor (the same path on this
machine, no Slurm).

The driver (`bench run SUITE --executor slurm|local`) claims each pending cell-run as every run does, submits one job
per cell-run (one `sbatch` job array for the lot on Slurm), keeps each job's id beside the results
(`<results>/<suite>.jobs/<cell>-<repeat>.json`), polls, and appends every finished cell's record itself: compute
nodes never write the results file (NFS locks are unreliable). A job that Slurm kills (time limit, preemption, node
failure) becomes a record with its status. A driver that dies loses nothing: run it again and it re-attaches to the
jobs still running, collects those that finished meanwhile and resubmits those that are gone. A cell-run is recorded
once: its record is appended before its job file is removed, and a job file whose cell-run has a record is swept.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from bench.errors import BenchError
from bench.paths import inside, write_atomic
from bench.run.claims import process_exists

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class ClusterOptions:
    executor: str  # one of EXECUTORS
    partition: str | None = None  # Slurm partition
    gpus_per_cell: int = 0
    cpus_per_cell: int | None = None
    poll_s: float = 30.0  # how often the driver asks for its jobs' states (one sacct call for all on Slurm)


def check_executor(options: ClusterOptions, *, devices: int = 1, device: str = "auto") -> None:
    """Before anything is claimed or built: the executor can be used here, and a job has the devices its cell trains
    on (exit 2 otherwise)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise BenchError(f"--executor {options.executor} needs submitit, which is not installed",
                         fix="pip install submitit (it comes with `pip install -e .`)") from None
    if options.executor == "slurm" and shutil.which("sbatch") is None:
        raise BenchError("--executor slurm needs Slurm's `sbatch` on PATH, and there is none on this machine",
                         fix="run bench on a Slurm login node, or use --executor local to run the same path here")
    if options.executor == "slurm" and device != "cpu" and 0 < options.gpus_per_cell < devices:
        raise BenchError(f"a cell trains on {devices} devices, and each Slurm job asks for {options.gpus_per_cell} GPU(s)",
                         fix=f"use --gpus-per-cell {devices} (or gpus_per_cell in [cluster])")


def make_executor(options: ClusterOptions, folder: Path, timeout_s: float):
    """A submitit executor writing its job files under `folder` (one sub-folder per job id)."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=options.executor)
    params = {"name": "bench-cell", "timeout_min": max(1, int(timeout_s // 60) + 5), "tasks_per_node": 1, "nodes": 1}
    if options.executor == "slurm":
        params.update(gpus_per_node=options.gpus_per_cell, slurm_partition=options.partition)
        if options.cpus_per_cell:
            params["cpus_per_task"] = options.cpus_per_cell
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def _quiet(*event) -> None:
    pass


def cluster_job(job, base_needed: bool) -> dict:
    """What one job runs, on a compute node or here: the untuned base when the driver had none, then the cell. The
    result goes back to the driver, which alone writes records."""
    from bench.run.runner import _base_job, run_cell_job

    base, note = job.base, ""
    if base_needed:
        try:
            base = _base_job(job.cell, job.device, job.splits, job.zoo_path, job.threads, emit=_quiet)
        except Exception as exc:  # the cell still trains; its record says why it has no Δ
            note = f"base evaluation failed: {type(exc).__name__}: {str(exc)[:300]}"
    return {"result": run_cell_job(replace(job, base=base), emit=_quiet), "base": base, "base_note": note}


# ---------------------------------------------------------------- job files: which job runs which cell-run


@dataclass
class Submitted:
    key: tuple[str, int]  # (cell_id, repeat)
    job_id: str
    executor: str
    folder: str  # submitit's folder pattern for this job (with %j)
    started_at: str
    handle: object = None  # the submitit Job


def job_file(folder: Path, key: tuple[str, int]) -> Path:
    return inside(folder, f"{key[0]}-{key[1]}.json")


def save(folder: Path, sub: Submitted) -> None:
    data = {"cell_id": sub.key[0], "repeat": sub.key[1], "job_id": sub.job_id, "executor": sub.executor,
            "folder": sub.folder, "started_at": sub.started_at}
    write_atomic(job_file(folder, sub.key), json.dumps(data, indent=1) + "\n")


def load(folder: Path, key: tuple[str, int]) -> Submitted | None:
    """The job a previous driver submitted for this cell-run, or None (none, or a file that is not one of ours)."""
    path = job_file(folder, key)
    try:
        data = json.loads(path.read_text())
        sub = Submitted(key, str(data["job_id"]), data["executor"], data["folder"], data["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sub if sub.executor in EXECUTORS and re.fullmatch(r"\d+(_\d+)?", sub.job_id) else None  # 123, or 123_4 in an array


def forget(folder: Path, key: tuple[str, int]) -> None:
    job_file(folder, key).unlink(missing_ok=True)


def sweep(folder: Path, recorded: set) -> None:
    """Job files of cell-runs that have a record (a driver that died between appending and removing) go."""
    if not folder.is_dir():
        return
    for path in folder.glob("*-*.json"):
        cell, _, repeat = path.stem.rpartition("-")
        if repeat.isdigit() and (cell, int(repeat)) in recorded:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- states


def attach(sub: Submitted) -> Submitted:
    """A submitit handle on a job a previous driver submitted."""
    import submitit
    from submitit.local.local import LocalJob

    sub.handle = LocalJob(sub.folder, sub.job_id) if sub.executor == "local" else submitit.SlurmJob(sub.folder, sub.job_id)
    return sub


def refresh(subs) -> None:
    """One look at the cluster for every job of this round (one `sacct` for them all), before state() reads it."""
    slurm = [sub.handle for sub in subs if sub.executor == "slurm"]
    if slurm:
        slurm[0].watcher.update()


def state(sub: Submitted) -> str:
    """"running", "done" (a result or a failure to collect) or "lost" (a local job whose process is gone without a
    result: the machine rebooted, or it was killed with its driver). Slurm jobs: as the last refresh() saw them."""
    handle = sub.handle
    if sub.executor == "slurm":
        return "done" if handle.watcher.is_done(handle.job_id, mode="cache") else "running"
    if handle.paths.result_pickle.exists():
        return "done"
    process = getattr(handle, "_process", None)  # known when this driver submitted it
    if process is not None:
        return "running" if process.poll() is None else "done"
    return "running" if process_exists(int(sub.job_id.split("_")[0])) else "lost"


def outcome(sub: Submitted) -> tuple[str, dict | None, str]:
    """("ok", what cluster_job returned, "") or (status, None, why) for a job that ended without a result."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return "ok", sub.handle.result(), ""
    except UncompletedJobError as exc:  # killed: time limit, preemption, node failure, cancelled
        slurm_state = str(getattr(sub.handle, "state", "") or "")
        status = "timeout" if "TIMEOUT" in slurm_state.upper() or "time limit" in str(exc).lower() else "error"
        return status, None, f"job {sub.job_id} ended without a result ({slurm_state or 'no state'}): {_first(exc)}"
    except FailedJobError as exc:  # the cell's code raised inside the job
        return "error", None, f"job {sub.job_id} failed: {_last(exc)}"
    except Exception as exc:  # an unreadable result file, a job folder removed
        return "error", None, f"job {sub.job_id}: its result cannot be read: {type(exc).__name__}: {_first(exc)}"


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _last(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]

