"""The driver of `bench run --executor slurm|local` (bench/run/cluster.py has the submitit side): claims each
pending cell-run as every run does, submits the lot as one job array, re-attaches to jobs a previous driver left,
polls, and appends every record itself. It drives the runner's own steps (claims, records, data) for one run."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from bench.errors import BenchError
from bench.run import cluster
from bench.run.runner import NOT_YET, CellJob, _merge_result, _now, recorded
from bench.suite.plan import base_key


class ClusterDriver:
    def __init__(self, runner, bases: dict, progress, summary):
        self.runner, self.bases, self.progress, self.summary = runner, bases, progress, summary

    def run(self, jobs: list, retry_before: int) -> None:
        """Every pending cell-run as a submitit job: claimed here, submitted, or re-attached to the job a previous
        driver submitted; polled; its record appended here when it ends."""
        runner, progress, summary = self.runner, self.progress, self.summary
        folder = runner._jobs_folder()
        folder.mkdir(parents=True, exist_ok=True)
        cluster.sweep(folder, set(recorded(runner.results)))
        longest = max(j.cell.train["timeout_s"] for j in jobs) * 2  # the base evaluation may run in the job too
        executor = cluster.make_executor(runner.cluster, folder, longest)
        waiting: dict = {}
        fresh: list = []
        for job in jobs:
            with runner._lock:
                claim = runner._claim(job, retry_before)
            if isinstance(claim, str):
                summary.taken_elsewhere += 1
                progress.pass_item(f"{job.cell.label} (repeat {job.repeat})", claim)
                continue
            key = (job.cell.cell_id, job.repeat)
            sub = cluster.load(folder, key)
            if sub is not None:
                waiting[key] = (job, claim, cluster.attach(sub))
                continue
            cell_job = self._cell_job(job, claim)
            if cell_job is not None:
                fresh.append((job, claim, cell_job))
        if fresh:  # one submission for them all: a job array on Slurm
            with executor.batch():
                handles = [executor.submit(cluster.cluster_job, cj, _needs_base(cj)) for _, _, cj in fresh]
            for (job, claim, _), handle in zip(fresh, handles):
                waiting[(job.cell.cell_id, job.repeat)] = (job, claim, self._submitted(job, handle, folder))
        # the local executor starts every job at once on this machine: their records say how many shared it
        at_once = len(waiting) if self.runner.cluster.executor == "local" else 1
        if waiting:
            progress.log(f"{len(waiting)} job(s) with {self.runner.cluster.executor}; their ids are kept in {folder}; "
                         "if this run stops, run it again to collect them")
        while waiting:
            cluster.refresh([sub for _, _, sub in waiting.values()])
            for key, (job, claim, sub) in list(waiting.items()):
                st = cluster.state(sub)
                if st == "running":
                    continue
                if st == "lost":  # a local job gone without a result: submitted again
                    progress.log(f"  job {sub.job_id} of {job.cell.label} (repeat {job.repeat}) is gone; submitting it again")
                    cluster.forget(folder, key)
                    cell_job = self._cell_job(job, claim)
                    if cell_job is None:
                        del waiting[key]
                    else:
                        handle = executor.submit(cluster.cluster_job, cell_job, _needs_base(cell_job))
                        waiting[key] = (job, claim, self._submitted(job, handle, folder))
                    continue
                self._collect(job, sub, at_once)
                cluster.forget(folder, key)  # after the record: a driver dying in between leaves a file the sweep removes
                self.runner._release(claim)
                del waiting[key]
            if waiting:
                waited = time.monotonic()
                time.sleep(runner.cluster.poll_s)
                runner._took("waiting for jobs", time.monotonic() - waited)

    def _cell_job(self, job, claim):
        """What a job needs to run this cell-run, or None once the cell-run is recorded as one that cannot run (skipped,
        unreadable data)."""
        from bench.suite import zoo

        cell = job.cell
        sources, missing = self.runner.sources_for(job)
        if missing is NOT_YET:  # left for a later run, unrecorded
            self.summary.left_unrecorded += 1
            self.runner._release(claim)
            return None
        if cell.skip_reason or missing:
            record = self.runner._record_head(job, _now())
            record.update(status="skipped", message=cell.skip_reason or missing)
            self._finish(record, claim)
            return None
        try:
            splits = self.runner.splits(cell.dataset, cell.train["on_bad_sample"])
        except BenchError as exc:
            record = self.runner._record_head(job, _now())
            record.update(status="error", message=f"loading dataset '{cell.dataset['name']}' failed: {exc.render()}")
            self._finish(record, claim)
            return None
        s = self.runner.suite.settings
        zpath = str(zoo.zoo_path(cell.model["family"])) if cell.model["weights"] == "zoo" else None
        artifact = str(self.runner.artifacts / self.runner.suite.name / cell.cell_id / str(job.seed))
        return CellJob(cell, job.seed, s["device"], splits, self.bases.get(base_key(cell)), zpath, dict(cell.train), s["threads"],
                       artifact=artifact, sources=sources)

    def _submitted(self, job, handle, folder: Path):
        """The job file of a submitted cell-run, written before anything waits on it."""
        sub = cluster.Submitted((job.cell.cell_id, job.repeat), str(handle.job_id), self.runner.cluster.executor,
                                str(folder / "%j"), _now(), handle)
        cluster.save(folder, sub)
        return sub

    def _collect(self, job, sub, at_once: int) -> None:
        cell = job.cell
        record = self.runner._record_head(job, sub.started_at)
        record["cost"].update(concurrent_cells=at_once, timed_alone=at_once == 1)
        with contextlib.suppress(BenchError):  # a job re-attached after its data changed: the record still comes
            splits = self.runner.splits(cell.dataset, cell.train["on_bad_sample"])
            record["dataset"].update(splits.provenance)
        status, value, why = cluster.outcome(sub)
        key = base_key(cell)
        if value is not None:
            _merge_result(record, value["result"])
            if value["base"] is not None and cell.model["weights"] != "random":
                self.bases.setdefault(key, value["base"])
            if value["base_note"]:
                record["quality"]["note"] = value["base_note"]
        else:
            record.update(status=status, message=why)
        record["cost"]["attempts"] = [{"batch_size": cell.train["batch_size"], "grad_accum": cell.train["grad_accum"],
                                       "status": record["status"], "peak_memory_mb": record["cost"].get("peak_memory_mb")}]
        record["cost"]["job_id"] = sub.job_id
        record["train"]["fitted_batch_size"] = cell.train["batch_size"]
        record["train"]["fitted_grad_accum"] = cell.train["grad_accum"]
        record["quality"]["base_key"] = key
        self.runner._append(record, self.progress)
        with self.runner._lock:
            self.summary.count(record["status"])

    def _finish(self, record: dict, claim) -> None:
        self.runner._append(record, self.progress)
        self.runner._release(claim)
        self.summary.count(record["status"])


def _needs_base(cell_job) -> bool:
    """Whether the job measures the untuned base itself (the driver has none recorded; random weights need none)."""
    return cell_job.base is None and cell_job.cell.model["weights"] != "random"
