"""Run a suite's pending cells, one process per cell, and append a record for each.

The runner owns the order of work: preflight (checkpoints), zoo bases, the untuned model's
quality once per (model, dataset), then every pending (cell, repeat). A cell's failure becomes a
record with a status; only the user's own input errors (raised before anything runs) stop a run.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.plan import Cell, base_key, expand, results_path
from bench.records import SCHEMA_VERSION, append_record, read_records


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Job:
    cell: Cell
    repeat: int
    seed: int


@dataclass
class RunSummary:
    ran: int = 0
    skipped_done: int = 0
    statuses: dict = field(default_factory=dict)
    results: Path | None = None
    report: Path | None = None
    wall_s: float = 0.0


def pending_jobs(suite, results: Path, *, only: str | None = None, retry: bool = False) -> tuple[list[Job], int]:
    """Jobs without a record yet (with --retry, also those whose last record is not ok)."""
    latest = {}
    for r in read_records(results, warn=False):
        latest[(r["cell_id"], r.get("repeat", 0))] = r["status"]
    jobs, done = [], 0
    for cell in expand(suite):
        if only and not cell.matches(only):
            continue
        for repeat, seed in enumerate(suite.seeds):
            status = latest.get((cell.cell_id, repeat))
            if status is not None and not (retry and status != "ok"):
                done += 1
                continue
            jobs.append(Job(cell, repeat, seed))
    return jobs, done


def preflight(suite, jobs: list[Job]) -> None:
    """Stop before any training when a named checkpoint cannot be had: one message per missing checkpoint."""
    from bench.models.hub import preflight_checkpoint

    problems, seen = [], set()
    for job in jobs:
        m = job.cell.model
        if m["weights"] != "pretrained" or m["checkpoint"] in seen:
            continue
        seen.add(m["checkpoint"])
        try:
            preflight_checkpoint(m["checkpoint"], revision=m.get("revision"), where=f"[models.{m['name']}] key 'checkpoint'", file=str(suite.path))
        except BenchError as exc:
            problems.append(exc.render())
    if problems:
        raise BenchError(
            f"{len(problems)} checkpoint(s) cannot be loaded on this machine; nothing was run:\n" + "\n".join(f"- {p}" for p in problems)
        )


class Runner:
    def __init__(self, suite, *, results_dir="results", reports_dir="reports", only=None, retry=False, console=None, show_progress=True):
        self.suite = suite
        self.results = results_path(results_dir, suite.name)
        self.reports_dir = Path(reports_dir)
        self.only, self.retry = only, retry
        self.console = console
        self.show_progress = show_progress
        self.run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        self.isolate = suite.settings["isolate"]
        self._splits: dict[str, object] = {}

    # -- data ------------------------------------------------------------------------------
    def splits(self, dataset: dict):
        """Load each dataset once in the parent; forked cells share it for free."""
        from bench.data.loader import load_suite_dataset

        key = dataset["name"]
        if key not in self._splits:
            self._splits[key] = load_suite_dataset(dataset, self.suite.base_dir)
        return self._splits[key]

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        start = time.monotonic()
        jobs, done = pending_jobs(self.suite, self.results, only=self.only, retry=self.retry)
        if self.only and not jobs and not done:
            example = expand(self.suite)[0]
            raise BenchError(f"--only {self.only!r} matches no cell of suite '{self.suite.name}'",
                             fix=f"match a cell id or model/dataset/method, e.g. --only '{example.model['name']}/*'")
        summary = RunSummary(skipped_done=done, results=self.results)
        if jobs:
            preflight(self.suite, jobs)
            with self._progress(len(jobs)) as progress:
                self._ensure_zoo(jobs, progress)
                bases = self._known_bases()
                for job in jobs:
                    record = self._run_job(job, bases, progress)
                    summary.ran += 1
                    summary.statuses[record["status"]] = summary.statuses.get(record["status"], 0) + 1
        summary.report = self.render_report()
        summary.wall_s = time.monotonic() - start
        return summary

    def render_report(self) -> Path | None:
        from bench.report import write_index, write_report

        records = read_records(self.results)
        if not records:
            return None
        out = self.reports_dir / f"{self.suite.name}.md"
        write_report(records, out)
        write_index(self.reports_dir)
        return out

    def _progress(self, total: int):
        from bench.progress import SuiteProgress

        return SuiteProgress(total, console=self.console, enabled=self.show_progress)

    def _ensure_zoo(self, jobs: list[Job], progress) -> None:
        from bench import zoo
        from bench.isolate import call_isolated

        families = sorted({j.cell.model["family"] for j in jobs if j.cell.model["weights"] == "zoo" and not j.cell.skip_reason})
        for family in families:
            if zoo.is_built(family):
                continue
            progress.start_item(f"pretraining the tiny {family} base (zoo, once)", zoo.RECIPES[family]["train"]["steps"])
            out = call_isolated(_zoo_job, family, self.suite.settings["threads"], timeout_s=zoo.RECIPES[family]["train"]["timeout_s"], on_event=progress.event, isolate=self.isolate)
            if out.kind != "ok":
                raise BenchError(f"building the tiny {family} zoo base failed: {out.message}", fix="run `bench zoo build` to see the full error")
            progress.log(f"zoo: tiny {family} base ready ({out.value['source_quality']['metric']} on source = {out.value['source_quality']['value']:.1f})")

    def _known_bases(self) -> dict:
        """Base qualities already measured in earlier runs of this results file."""
        bases = {}
        for r in read_records(self.results, warn=False):
            q = r.get("quality") or {}
            if q.get("base") is not None and q.get("base_key"):
                bases[q["base_key"]] = {"metric": q["metric"], "higher_is_better": q["higher_is_better"], "value": q["base"],
                                        "extra": q.get("base_extra", {}), "n": q.get("n_eval")}
        return bases

    def _base_for(self, cell: Cell, bases: dict, progress) -> tuple[str, dict | None, str]:
        from bench import zoo
        from bench.isolate import call_isolated

        key = base_key(cell)
        if cell.model["weights"] == "random" or key in bases:
            return key, bases.get(key), ""
        progress.start_item(f"{cell.model['name']} × {cell.dataset['name']}: untuned quality", 0)
        zpath = str(zoo.zoo_path(cell.model["family"])) if cell.model["weights"] == "zoo" else None
        out = call_isolated(_base_job, cell, self.suite.settings["device"], self.splits(cell.dataset), zpath,
                            self.suite.settings["threads"], timeout_s=cell.train["timeout_s"], isolate=self.isolate)
        if out.kind == "ok":
            bases[key] = out.value
            return key, out.value, ""
        return key, None, f"base evaluation failed: {out.message}"

    def _run_job(self, job: Job, bases: dict, progress) -> dict:
        from bench import zoo

        cell = job.cell
        started = _now()
        record = self._record_head(job, started)
        if cell.skip_reason:
            record.update(status="skipped", message=cell.skip_reason)
            return self._append(record, progress)
        splits = self.splits(cell.dataset)
        record["dataset"].update(fingerprint=splits.fingerprint, train_size=len(splits.train), eval_size=len(splits.eval))
        key, base, base_note = self._base_for(cell, bases, progress)
        progress.start_item(f"{cell.label} (repeat {job.repeat})" if len(self.suite.seeds) > 1 else cell.label, None)
        zpath = str(zoo.zoo_path(cell.model["family"])) if cell.model["weights"] == "zoo" else None
        out, settings, attempts = self._attempts(job, splits, base, zpath, progress)
        record["cost"]["attempts"] = attempts
        if out.kind == "ok":
            result = out.value
            record.update(status=result["status"], message=result["message"], params=result["params"],
                          quality=result["quality"], loss_curve=result["loss_curve"], diverged_at_step=result["diverged_at_step"],
                          env=result["env"])
            record["cost"].update(result["cost"])
        else:
            record.update(status="timeout" if out.kind == "timeout" else "error", message=out.message)
            record["cost"]["train_wall_s"] = round(out.elapsed_s, 3)
        record["train"]["fitted_batch_size"] = settings["batch_size"]
        record["train"]["fitted_grad_accum"] = settings["grad_accum"]
        record["quality"]["base_key"] = key
        if base_note:
            record["quality"]["note"] = base_note
        return self._append(record, progress)

    def _attempts(self, job: Job, splits, base, zpath, progress):
        """Run the cell; on OOM with back-off on, again in a fresh process with half the micro-batch and twice the
        accumulation (same effective batch) until it fits or min_batch_size is reached."""
        from bench.isolate import call_isolated

        s = self.suite.settings
        settings, attempts = dict(job.cell.train), []
        while True:
            out = call_isolated(_cell_job, job.cell, job.seed, s["device"], splits, base, zpath, settings, s["threads"],
                                timeout_s=settings["timeout_s"], on_event=progress.event, isolate=self.isolate)
            status = out.value["status"] if out.kind == "ok" else out.kind
            attempts.append({"batch_size": settings["batch_size"], "grad_accum": settings["grad_accum"], "status": status,
                             "peak_memory_mb": out.value["cost"].get("peak_memory_mb") if out.kind == "ok" else None})
            if status == "oom" and s["oom_backoff"] and settings["batch_size"] // 2 >= s["min_batch_size"]:
                settings = {**settings, "batch_size": settings["batch_size"] // 2, "grad_accum": settings["grad_accum"] * 2}
                progress.log(f"  out of memory: retrying with batch_size {settings['batch_size']} × grad_accum {settings['grad_accum']}")
                continue
            return out, settings, attempts

    def _record_head(self, job: Job, started: str) -> dict:
        cell = job.cell
        return {
            "schema_version": SCHEMA_VERSION, "cell_id": cell.cell_id, "suite": self.suite.name,
            "suite_file": _display_path(self.suite.path), "run_id": self.run_id, "repeat": job.repeat, "seed": job.seed,
            "model": dict(cell.model), "dataset": dict(cell.dataset), "method": dict(cell.method),
            "train": {**cell.train, "seed": job.seed}, "status": "error", "message": "", "params": {},
            "cost": {"device": self.suite.settings["device"]}, "quality": {}, "loss_curve": [], "diverged_at_step": None,
            "env": {}, "started_at": started,
        }

    def _append(self, record: dict, progress) -> dict:
        record["finished_at"] = _now()
        if not record["env"]:
            record["env"] = _light_env()
        already = {(r["cell_id"], r.get("repeat", 0)) for r in read_records(self.results, warn=False) if not self.retry}
        if (record["cell_id"], record["repeat"]) in already:  # another `bench run` on this file got there first
            progress.log(f"[dim]{record['cell_id']} was recorded by another run meanwhile; not appended twice[/]")
            return record
        append_record(self.results, record)
        progress.finish_item(record)
        return record


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _light_env() -> dict:
    """Environment for records whose cell never reported one (crash, timeout, skip): no CUDA initialisation here."""
    from bench.profile import software

    return {"device_name": None, "device_count": None, **software()}


# -- what runs inside the forked processes ------------------------------------------------------

def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _zoo_job(family: str, threads: int = 0, *, emit):
    from bench import zoo

    _set_threads(threads)

    return zoo.build(family, emit=emit)


def _base_job(cell: Cell, device: str, splits, zoo_path, threads: int = 0, *, emit):
    from bench.cell import evaluate_base, resolve_device

    _set_threads(threads)
    return evaluate_base(cell, device=resolve_device(device), splits=splits, zoo_path=zoo_path)


def _cell_job(cell: Cell, seed: int, device: str, splits, base, zoo_path, settings: dict, threads: int = 0, *, emit):
    from bench.cell import resolve_device, run_cell
    from bench.profile import environment

    _set_threads(threads)
    device = resolve_device(device)
    result = run_cell(cell, seed=seed, device=device, splits=splits, base=base, zoo_path=zoo_path, settings=settings,
                      on_step=lambda s, n, loss: emit("step", s, n, loss))
    result["env"] = environment(device)
    return result
