"""Run a suite's pending cells, one process per cell, and append a record for each.

The runner owns the order of work: preflight (checkpoints), zoo bases, the untuned model's
quality once per (model, dataset), then every pending (cell, repeat). A cell's failure becomes a
record with a status; only the user's own input errors (raised before anything runs) stop a run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import pickle
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from bench import turns
from bench.errors import BenchError, OutputError
from bench.paths import ensure_writable_folder, inside, page_target, require_plain
from bench.records import SCHEMA_VERSION, RecordNotSaved, append_record, latest_lines, line_count, locked, read_latest
from bench.run.claims import Claims
from bench.suite.compose import waves
from bench.suite.plan import Cell, base_key, expand, results_path, retention_cell
from bench.tasks.coverage import low_coverage
from bench.tasks.coverage import warning as coverage_warning
from bench.train import effective_batch
from bench.turns import ENV as TURNS_ENV


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


TURNS_FILE = "timed-turns.lock"  # in the results folder: cells side by side on the CPU take turns at timing with it
# a cell's cost.phases_s (bench/run/cell.py) -> how the run's time split names them
NOT_YET = "a source cell has no record yet"  # sources_for: the composed cell is left for a later run, unrecorded

CELL_PHASES = {"build": "model build", "train": "training", "track": "memory tracking (hooks on one step)",
               "evaluate": "tuned evaluation", "serve": "serving measurement (and the merged model's evaluation)",
               "wait": "waiting for a turn to time (beside other cells)"}


@dataclass(frozen=True)
class Slot:
    """Where one of the cells that run side by side runs: its line of the progress display, its CPU threads and, on a
    machine with GPUs, the device(s) its process sees."""

    index: int
    threads: int
    env: dict = field(default_factory=dict)


class Cancelled(Exception):
    """The run is being interrupted: the cell's process was killed and nothing is recorded for it."""


@dataclass
class Job:
    cell: Cell
    repeat: int
    seed: int


@dataclass
class RunSummary:
    ran: int = 0
    skipped_done: int = 0
    taken_elsewhere: int = 0  # claimed or recorded by another `bench run` of the same results file
    left_unrecorded: int = 0  # composed cells whose sources have no record yet (e.g. left out by --only): a later run
    statuses: dict = field(default_factory=dict)
    results: Path | None = None
    report: Path | None = None
    wall_s: float = 0.0
    phases_s: dict = field(default_factory=dict)  # where the wall time went (see Runner.phases)
    jobs: int = 1  # cells run at once
    turns: bool = False  # side by side, their timed work took turns (bench/turns.py)
    training_s: float = 0.0  # wall time during which at least one cell was training
    text_coverage_warning: str | None = None  # cells whose data the model's tokenizer misses or max_seq_len cuts

    def count(self, status: str) -> None:
        """One more cell-run recorded with this status."""
        self.ran += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def phases_text(self) -> str:
        """'training 40.1 s (62 %), tuned evaluation 6.0 s (9 %), ...', largest first, as shares of the wall time; with
        cells side by side, how they ran said first (their shares then add up to jobs × 100 %)."""
        parts = sorted(((k, v) for k, v in self.phases_s.items() if v >= 0.05), key=lambda kv: -kv[1])
        text = ", ".join(f"{k} {v:.1f} s ({100 * v / self.wall_s:.0f} %)" for k, v in parts) if self.wall_s else ""
        if self.jobs == 1:
            return text
        how = "timed work one cell at a time" if self.turns else "training at the same time"
        busy = f"{100 * self.training_s / self.wall_s:.0f} %" if self.wall_s else "—"
        return (f"{self.jobs} cells at a time ({how}): a cell was training during {self.training_s:.1f} s of the wall time "
                f"({busy}); per phase, summed over the cells (so adding up to {100 * self.jobs} % of the wall time): {text}")


def recorded(results: Path) -> dict[tuple[str, int], tuple[int, str]]:
    """(cell_id, repeat) -> (line number, status) of its latest record."""
    return {key: (lineno, r["status"]) for key, (lineno, r) in latest_lines(results, warn=False).items()}


def wanted(latest: tuple[int, str] | None, *, retry: bool, retry_before: int | None = None) -> bool:
    """Whether a cell-run with this latest record still needs running: never recorded, or, with --retry,
    last recorded as not ok on a line before `retry_before` (so two retrying runs do not both redo it)."""
    if latest is None:
        return True
    order, status = latest
    return retry and status != "ok" and (retry_before is None or order < retry_before)


def pending_jobs(suite, results: Path, *, only: str | None = None, retry: bool = False) -> tuple[list[Job], int]:
    """Jobs without a record yet (with --retry, also those whose last record is not ok)."""
    latest = recorded(results)
    jobs, done = [], 0
    for cell in expand(suite):
        if only and not cell.matches(only):
            continue
        for repeat, seed in enumerate(suite.seeds):
            if not wanted(latest.get((cell.cell_id, repeat)), retry=retry):
                done += 1
                continue
            jobs.append(Job(cell, repeat, seed))
    return jobs, done


def preflight(suite, jobs: list[Job]) -> None:
    """Stop before any training when a named checkpoint cannot be had: one message per missing checkpoint."""
    from bench.models.hub import looks_like_path, preflight_checkpoint

    problems, seen = [], set()
    for job in jobs:
        m = job.cell.model
        if not m["checkpoint"] or m["checkpoint"] in seen:
            continue
        seen.add(m["checkpoint"])
        where = f"[models.{m['name']}] key 'checkpoint'"
        # random weights on a local folder's shape need that folder (its config.json) as much as pretrained ones
        if m["weights"] != "pretrained" and not looks_like_path(m["checkpoint"]):
            continue
        try:
            preflight_checkpoint(m["checkpoint"], revision=m.get("revision"), where=where, file=str(suite.path))
        except BenchError as exc:
            problems.append(exc.render())
    if problems:
        raise BenchError(
            f"{len(problems)} checkpoint(s) cannot be loaded on this machine; nothing was run:\n" + "\n".join(f"- {p}" for p in problems)
        )


def _load_report_libraries() -> None:
    """What rendering the page imports (matplotlib's figure and Agg canvas, the report's modules: ~0.6 s on a 2-core CPU)."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401

        import bench.analysis.after_training  # noqa: F401
        import bench.analysis.plots  # noqa: F401
        import bench.analysis.report  # noqa: F401
    except Exception:  # noqa: BLE001  a head start only: rendering imports them again and says what is wrong
        pass


class Runner:
    def __init__(self, suite, *, results_dir="results", reports_dir="reports", only=None, retry=False, console=None, show_progress=True,
                 jobs: int | None = None, cluster=None, artifacts_dir=None):
        self.suite = suite
        self.results = results_path(results_dir, suite.name)
        # what cells keep of their training (adapters): <artifacts>/<suite>/<cell>/<seed>/, beside the records
        # (absolute: a record's path must find its folder from wherever `bench export` or a composed cell reads it)
        self.artifacts = (Path(artifacts_dir) if artifacts_dir is not None else Path(results_dir) / "artifacts").absolute()
        self.reports_dir = Path(reports_dir)
        self.only, self.retry = only, retry
        self.console = console
        self.show_progress = show_progress
        self.run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        self.isolate = suite.settings["isolate"]
        self.claims = Claims(self.results, self.run_id)
        self._splits: dict[str, object] = {}
        self._split_errors: dict[str, str] = {}  # dataset -> why it could not be loaded (each of its cells says so)
        self._seen: dict = {}  # the results file's latest lines, as last read under the lock
        self._time: dict[str, float] = {}  # seconds per phase of the run, summed over cells (see phases)
        self._training: list[tuple[float, float]] = []  # when cells trained (time.monotonic): their union is wall time
        self.jobs = suite.settings["jobs"] if jobs is None else jobs  # cells at once (--jobs, else the suite's; 0: as fit)
        self.turns: Path | None = None  # the lock cells side by side on the CPU take turns at timing with (_slots)
        self._lock = threading.Lock()  # the state cells running side by side share: times, claims, bases, counts
        self._key_locks: dict = {}  # one lock per dataset and per base: each is loaded / measured once
        self._cancel = threading.Event()  # set when the run is interrupted: running cells are killed
        self.cluster = cluster  # bench.run.cluster.ClusterOptions: cells as submitit jobs instead of forked here
        self._picks: dict[str, threading.Event] = {}  # sweep cells whose repeat 0 runs now: set once it is recorded
        self._low_coverage: list[dict] = []  # records' text coverage above the warning's threshold (tasks/coverage.py)

    def _start_processes(self, families: set[str]) -> None:
        """Start the server that forks cells (it imports torch and the model libraries, once) before the first job,
        so its start-up is its own line in the time split rather than part of whichever job came first. Meanwhile (it
        imports on one core) the report's libraries load here: the page is rendered once every cell is done, with
        nothing left to overlap it. `families`: the model families the run's cells build, which the server warms up."""
        from bench.isolate import WARM_FAMILIES, call_isolated, environ

        if self.isolate:
            threading.Thread(target=_load_report_libraries, name="report-imports", daemon=True).start()
            # the families the server warms up, read from its environment as it starts (a server already running keeps
            # what it warmed); this process's environment as it was afterwards
            with environ({WARM_FAMILIES: ",".join(sorted(families))}):
                self._took("start-up (imports, once)", call_isolated(_ready, timeout_s=LOAD_TIMEOUT_S).elapsed_s)

    def _took(self, phase: str, seconds: float) -> None:
        with self._lock:
            self._time[phase] = self._time.get(phase, 0.0) + seconds

    def _key_lock(self, key) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def phases(self, wall_s: float) -> dict[str, float]:
        """The run's wall time split: reading data, untuned evaluation, and per cell its model build, training (the
        loop, waits for data included), tuned evaluation and its process's start, hand-over and exit; the report; the
        rest (set-up, zoo, records) as other."""
        t = dict(self._time)
        cells = t.pop("cells", 0.0)
        inside = sum(t.get(k, 0.0) for k in CELL_PHASES.values())
        out = {**t, "cell processes (start, hand-over, exit)": max(0.0, cells - inside)}
        # side by side, the capacity no cell used (start-up, zoo, the last cells finishing alone) is part of the rest
        out["other" if self.jobs == 1 else "other, and slots left idle"] = max(0.0, wall_s * self.jobs - sum(out.values()))
        return out

    # -- data ------------------------------------------------------------------------------
    def splits(self, dataset: dict, on_bad_sample: str = "error"):
        """Each dataset loaded once per run (and per on_bad_sample its cells say) and handed to its cells. The data file
        is parsed in a process of its own: parsing 100k records leaves the parser's heap fragmented, and only the
        compact result comes back here."""
        key = (dataset["name"], on_bad_sample)
        with self._key_lock(("data", key)):
            return self._load_splits(dataset, key)

    def _load_splits(self, dataset: dict, key: tuple[str, str]):
        from bench.isolate import call_isolated

        if key in self._split_errors:
            raise BenchError(self._split_errors[key])
        if key not in self._splits:
            # cancellable: side by side a slot's thread loads, and an interrupt must not wait for a big file's last record
            out = call_isolated(load_job, dataset, self.suite.base_dir, key[1], timeout_s=LOAD_TIMEOUT_S,
                                isolate=self.isolate, cancel=self._cancel)
            self._took("reading data", out.elapsed_s)
            if out.kind == "cancelled":  # nothing learnt about the data: no error kept for its cells
                raise Cancelled(out.message)
            error = out.value[1] if out.kind == "ok" and out.value[0] == "error" else None
            if out.kind != "ok":
                error = BenchError(f"loading dataset '{key[0]}' failed: {out.message}")
            if error is not None:  # data met mid-run (a file changed since validation): this dataset's cells fail
                self._split_errors[key] = error.render()
                raise error
            self._splits[key] = out.value[1]
        return self._splits[key]

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        from bench.isolate import environ

        # whether a cell takes turns is this run's to say (its slot's environment), also for cells run in this process
        # (isolate = false): a BENCH_TIMED_TURNS the caller exported is set aside meanwhile
        with environ({TURNS_ENV: None}):
            return self._run()

    def _run(self) -> RunSummary:
        start = time.monotonic()
        retry_before = line_count(self.results) + 1  # --retry redoes failures recorded on lines before this one
        jobs, done = pending_jobs(self.suite, self.results, only=self.only, retry=self.retry)
        if self.only and not jobs and not done:
            example = expand(self.suite)[0]
            raise BenchError(f"--only {self.only!r} matches no cell of suite '{self.suite.name}'",
                             fix=f"match a cell id or model/dataset/method, e.g. --only '{example.model['name']}/*'")
        if self.cluster is None and jobs:
            # no more slots than cell-runs: an idle slot would only thin each cell's threads, add a blank display line,
            # count as capacity in the time split and make records claim more neighbours than they had
            self.jobs = min(self._jobs_wanted(jobs), len(jobs))
        self.jobs = self.jobs or 1  # as many as fit, where nothing runs here (a cluster, or nothing left to run): one
        summary = RunSummary(skipped_done=done, results=self.results, jobs=self.jobs)
        # a sweep cell's later repeats train repeat 0's pick: they wait for it, so every repeat 0 goes first
        self._picks = {j.cell.cell_id: threading.Event() for j in jobs if j.cell.train["sweep"] and j.repeat == 0}
        jobs.sort(key=lambda j: j.repeat > 0 and j.cell.cell_id in self._picks)
        if jobs:
            preflight(self.suite, jobs)
            slots = self._slots(jobs)
            self._check_outputs()
            with self._progress(len(jobs), len(slots)) as progress:
                if self.cluster is None:
                    self._start_processes({j.cell.model["family"] for j in jobs})
                self._ensure_zoo(jobs, progress)
                bases = self._known_bases()
                for wave in waves(jobs):  # composed cells after the cells whose adapters they combine
                    if self.cluster is not None:
                        self._on_cluster(wave, bases, progress, retry_before, summary)
                    elif len(slots) == 1:
                        for job in wave:
                            self._run_one(job, bases, progress, slots[0], retry_before, summary)
                    else:
                        self._side_by_side(wave, bases, progress, slots, retry_before, summary)
        self._sweep()
        rendering = time.monotonic()
        try:
            summary.report = self.render_report()
        except (BenchError, OSError) as exc:  # the records are written; only the page is missing
            why = exc.render() if isinstance(exc, BenchError) else (exc.strerror or str(exc))
            raise OutputError(f"the records are saved in {self.results}, but the report could not be written: {why}",
                              fix=f"fix that, then `bench report {self.results}`") from None
        self._took("report", time.monotonic() - rendering)
        summary.wall_s = time.monotonic() - start
        summary.turns = self.turns is not None
        summary.training_s = turns.busy_s(self._training)
        summary.phases_s = self.phases(summary.wall_s)
        summary.text_coverage_warning = coverage_warning(self._low_coverage)
        return summary

    def _run_one(self, job: Job, bases: dict, progress, slot: Slot, retry_before: int, summary: RunSummary) -> None:
        try:
            self._claim_and_run(job, bases, progress, slot, retry_before, summary)
        finally:  # recorded, failed, or taken by another run: a later repeat waiting for repeat 0's pick may look now
            if job.repeat == 0 and job.cell.cell_id in self._picks:
                self._picks[job.cell.cell_id].set()

    def _claim_and_run(self, job: Job, bases: dict, progress, slot: Slot, retry_before: int, summary: RunSummary) -> None:
        with self._lock:  # claims and the results file's latest lines are read and taken one cell at a time
            claim = self._claim(job, retry_before)
            if not isinstance(claim, str):
                bases.update(self._known_bases(self._seen))  # another run may have measured one meanwhile
        if isinstance(claim, str):
            with self._lock:
                summary.taken_elsewhere += 1
            progress.pass_item(f"{job.cell.label} (repeat {job.repeat})", claim)
            return
        try:
            record = self._run_job(job, bases, progress, slot)
        finally:
            with self._lock:
                self._release(claim)
        with self._lock:
            if record is None:
                summary.left_unrecorded += 1
            else:
                summary.count(record["status"])

    def _side_by_side(self, jobs: list[Job], bases: dict, progress, slots: list[Slot], retry_before: int,
                      summary: RunSummary) -> None:
        """Up to len(slots) cells at once, in the suite's order, each in its own process on its own slot. A failure that
        stops a run (a record that cannot be saved, an interrupt) kills the cells still running and is raised."""
        free: queue.Queue = queue.Queue()
        for slot in slots:
            free.put(slot)

        def work(job: Job) -> None:
            if self._cancel.is_set():
                return
            slot = free.get()
            try:
                self._run_one(job, bases, progress, slot, retry_before, summary)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="bench-cell") as pool:
            futures = [pool.submit(work, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException as first:
                self._cancel.set()  # the running cells' processes are killed; the threads return within a poll
                for future in futures:
                    future.cancel()
                raise _with_others(first, futures) from None

    def _on_cluster(self, jobs: list[Job], bases: dict, progress, retry_before: int, summary: RunSummary) -> None:
        from bench.run.driver import ClusterDriver

        ClusterDriver(self, bases, progress, summary).run(jobs, retry_before)

    def _slots(self, jobs: list[Job]) -> list[Slot]:
        """One slot per cell run at once. Side by side on the CPU each cell gets cores // jobs threads (unless the suite
        sets threads); with GPUs each its own device(s), through CUDA_VISIBLE_DEVICES in its process (this process never
        initialises CUDA). More devices than this machine has (cells at once × a cell's devices) is refused before
        anything runs."""
        s = self.suite.settings
        need = max(job.cell.train["devices"] for job in jobs)  # every slot can take any cell
        if self.cluster is not None:
            from bench.run.cluster import check_executor

            if self.jobs != 1:
                raise BenchError(f"--jobs {self.jobs} runs cells side by side on this machine; with --executor "
                                 f"{self.cluster.executor} the scheduler decides how many run at once", fix="drop --jobs")
            check_executor(self.cluster, devices=need, device=s["device"])
            return [Slot(0, s["threads"], {TURNS_ENV: None})]
        if self.jobs == 1 and need == 1:  # no turns to take (a BENCH_TIMED_TURNS the cell server inherited: unset)
            return [Slot(0, s["threads"], {TURNS_ENV: None})]
        if self.jobs > 1 and not self.isolate:  # threads of this process would share torch's settings, and no timeout or Ctrl-C reaches them
            raise BenchError(f"{self.jobs} cells at once (--jobs or the suite's jobs) run each in a process of its own, but "
                             f"suite '{self.suite.name}' sets isolate = false (cells run inside this process)",
                             fix="run one cell at a time (--jobs 1), or drop isolate = false")
        gpus = self._gpus
        cores = len(os.sched_getaffinity(0))  # the cores this process may use, as jobs = 0 counts them
        if s["device"] == "cuda" and not gpus:
            raise BenchError('the suite sets device = "cuda", and no GPU is visible here',
                             fix='use device = "auto" (the CPU where there is no GPU), or run where nvidia-smi lists one')
        if gpus and len(gpus) < self.jobs * need:
            raise BenchError(f"{self._asked(need)} {self.jobs * need} GPU(s), and {len(gpus)} GPU(s) are visible ({', '.join(gpus)})",
                             fix=f"use --jobs {max(1, len(gpus) // need)} or fewer, fewer devices per cell, or set "
                             "CUDA_VISIBLE_DEVICES to the GPUs to use" if len(gpus) >= need else
                             f"set devices = {len(gpus)} or fewer (or run on a machine with {need} GPUs)")
        if not gpus:
            self._check_cpu_devices(jobs, need, cores)
        threads = s["threads"] if self.jobs == 1 else s["threads"] or max(1, cores // self.jobs)
        # side by side on the CPU, timed work takes turns (bench/turns.py) unless the suite lets cells train at once
        self.turns = inside(self.results.parent, TURNS_FILE) if self.jobs > 1 and not gpus and s["time_alone"] else None
        # whether a cell takes turns is its slot's to say: a BENCH_TIMED_TURNS the user exported would have every cell
        # lock a file wherever it points
        turn = {TURNS_ENV: str(self.turns.absolute()) if self.turns else None}
        return [Slot(i, threads, {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * need:(i + 1) * need]), **turn} if gpus else turn)
                for i in range(self.jobs)]

    def _jobs_wanted(self, jobs: list[Job]) -> int:
        """Cells at once: --jobs, else the suite's `jobs`; 0 is as many as fit: one per GPU (per a cell's devices), on
        the CPU as many as the cores this process may use hold at the suite's `threads` each, a cell on several devices
        a core per device at least (one where threads is 0: torch's default takes every core)."""
        if self.jobs or not self.isolate:  # isolate = false: cells run inside this process, one at a time
            return self.jobs or 1
        s, gpus = self.suite.settings, self._gpus
        need = max(job.cell.train["devices"] for job in jobs)
        if gpus:
            return max(1, len(gpus) // need)
        return max(1, len(os.sched_getaffinity(0)) // max(s["threads"], need)) if s["threads"] else 1

    @functools.cached_property
    def _gpus(self) -> list[str]:
        """The GPUs this run's cells may use, asked of nvidia-smi once per run (jobs = 0 and the slots both need them):
        none where the suite says device = "cpu"; with device = "auto" none unless nvidia-smi lists one, whatever a
        CUDA_VISIBLE_DEVICES says (no GPU behind it)."""
        from bench.profile import listed_gpus, visible_gpus

        device = self.suite.settings["device"]
        listed = [] if device == "cpu" else listed_gpus()
        return [] if device == "cpu" or (device == "auto" and not listed) else visible_gpus(listed)

    def _asked(self, need: int) -> str:
        cells = f"--jobs {self.jobs} runs {self.jobs} cells at once" if self.jobs > 1 else "one cell at a time"
        return f"{cells}, each on {need} device(s) of its own: that takes"

    def _check_cpu_devices(self, jobs: list[Job], need: int, cores: int) -> None:
        """On the CPU a cell's device is a process with a core of its own at least, and FSDP does not run there."""
        sharded = next((job.cell for job in jobs if job.cell.train["devices"] > 1 and job.cell.train["distributed"] == "fsdp"), None)
        if sharded is not None:
            raise BenchError(f"cell {sharded.label} sets distributed = \"fsdp\", which shards over GPUs (accelerate runs "
                             "FSDP on CUDA only), and no GPU is visible here", fix='use distributed = "ddp" on the CPU')
        if need > 1 and self.jobs * need > cores:
            fix = (f"set devices = {cores // self.jobs} or fewer" if cores // self.jobs > 1 else
                   "run one cell at a time (--jobs 1)" if self.jobs > 1 and need <= cores else
                   f"set devices = {cores} or fewer")
            raise BenchError(f"{self._asked(need)} {self.jobs * need} CPU processes, and this machine has {cores} core(s) "
                             "(no GPU is visible)", fix=fix)

    def _check_outputs(self) -> None:
        """Before anything trains (exit 2 otherwise, and the folders this made are removed again): both output
        folders take files and have room; the results file, its lock, the claims folder, the pages and the
        plots folder are what they should be."""
        made = [f for f in (self.results.parent, self.reports_dir) if not f.exists()]
        # the artifacts folder too (cells keep their adapters there as they finish): a file there, or a folder that
        # cannot be written, is found now rather than once every cell has trained; made only for the check
        kept = {p for f in (self.results.parent, self.reports_dir) for p in (f.absolute(), *f.absolute().parents)}
        artifacts_made = [f for f in (self.artifacts, *self.artifacts.parents)
                          if f not in kept and not f.exists() and not f.is_symlink()]
        try:
            ensure_writable_folder(self.results.parent, what="results", flag="--results-dir")
            ensure_writable_folder(self.reports_dir, what="reports", flag="--reports-dir")
            ensure_writable_folder(self.artifacts, what="artifacts", flag="--artifacts-dir")
            for page in (f"{self.suite.name}.md", "README.md"):
                page_target(self.reports_dir, page, flag="--reports-dir")
            self._check_files()
        except BenchError:
            for folder in [*artifacts_made, *reversed(made)]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if still empty: "nothing was written"
            raise
        for folder in artifacts_made:  # the first cell that keeps an adapter makes it again
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _check_files(self) -> None:
        fix = "move it away, or choose other folders with --results-dir / --reports-dir"
        for path, kind, what in ((self.results, "file", "records"), (Path(str(self.results) + ".lock"), "file", "lock"),
                                 (self.claims.folder, "folder", "claims"), (self._jobs_folder(), "folder", "job ids"),
                                 (inside(self.reports_dir, self.suite.name), "folder", "plots"),
                                 (inside(self.results.parent, TURNS_FILE), "file", "timing turns' lock")):
            require_plain(path, kind, what=what, fix=fix)

    def _jobs_folder(self) -> Path:
        """Where a cluster driver keeps which job runs which cell-run (bench/run/cluster.py)."""
        return inside(self.results.parent, f"{self.suite.name}.jobs")

    def _claim(self, job: Job, retry_before: int):
        """Take the cell-run under the results lock, or say why not (bench.run.claims)."""
        key = (job.cell.cell_id, job.repeat)

        def still_wanted() -> bool:
            self._seen = latest_lines(self.results, warn=False)  # one read per claim, under the lock; bases come from it too
            latest = self._seen.get(key)
            return wanted(latest and (latest[0], latest[1]["status"]), retry=self.retry, retry_before=retry_before)

        # room for the OOM back-off's retries and the base evaluation before the claim counts as abandoned
        ttl = job.cell.train["timeout_s"] * (2 + job.cell.train["batch_size"].bit_length()) + 600
        try:
            return self.claims.take(*key, still_wanted=still_wanted, ttl_s=ttl)
        except OSError as exc:
            raise RecordNotSaved(f"cannot claim cell {key[0]} in {self.claims.folder} ({exc.strerror or exc}); "
                                 "the run stopped before training it",
                                 fix=f"free space or fix permissions; if {self.claims.folder} holds something that is not a "
                                     "claim file, move it away; then run again") from None

    def _release(self, claim) -> None:
        try:
            with locked(self.results):
                self.claims.release(claim)
        except OSError:
            pass  # a claim left behind is released as stale once this process is gone

    def _sweep(self) -> None:
        """At the end of a run: remove claims left by processes that are gone, and leftovers of interrupted writes."""
        if not self.claims.folder.is_dir():
            return
        try:
            with locked(self.results):
                self.claims.sweep()
        except OSError:
            pass

    def render_report(self) -> Path | None:
        from bench.analysis.report import write_index, write_report

        records = read_latest([self.results])
        if not records:
            return None
        out = inside(self.reports_dir, f"{self.suite.name}.md")
        write_report(records, out)
        write_index(self.reports_dir)
        return out

    def _progress(self, total: int, slots: int = 1):
        from bench.run.progress import SuiteProgress

        return SuiteProgress(total, console=self.console, enabled=self.show_progress, slots=slots)

    def _ensure_zoo(self, jobs: list[Job], progress) -> None:
        from bench.suite import zoo

        families = sorted({j.cell.model["family"] for j in jobs if j.cell.model["weights"] == "zoo" and not j.cell.skip_reason})
        for family in families:
            if not zoo.is_built(family):
                self._build_zoo(family, progress)


    def _build_zoo(self, family: str, progress) -> None:
        from bench.suite import zoo

        progress.start_item(f"pretraining the tiny {family} base (zoo, once)", zoo.RECIPES[family]["train"]["steps"])
        quality = build_zoo(family, self.suite.settings["threads"], on_event=progress.event, isolate=self.isolate)
        if quality:
            progress.log(f"zoo: tiny {family} base ready ({quality['metric']} on source = {quality['value']:.1f})")

    def _known_bases(self, seen: dict | None = None) -> dict:
        """Base qualities already measured in this results file (`seen`: its latest_lines, already read)."""
        bases = {}
        for _, r in (seen if seen is not None else latest_lines(self.results, warn=False)).values():
            q = r["quality"]
            if r["status"] != "ok" or not isinstance(q.get("higher_is_better"), bool):
                continue
            if (known := _recorded_base(q, q["higher_is_better"])) is not None:
                bases[known[0]] = known[1]
            if isinstance(q.get("retention"), dict) and (known := _recorded_base(q["retention"], q["higher_is_better"])):
                bases.setdefault(*known)  # a base of the retention dataset, measured for this cell
        return bases

    def _base_for(self, cell: Cell, bases: dict, progress, slot: Slot) -> tuple[str, dict | None, str]:
        key = base_key(cell)
        if cell.model["weights"] == "random":
            return key, None, ""
        with self._key_lock(("base", key)):  # cells side by side wait for one measurement of their base
            if key in bases:
                return key, bases[key], ""
            return self._measure_base(cell, key, bases, progress, slot)

    def _retention_for(self, cell: Cell, bases: dict, progress, slot: Slot) -> tuple[tuple | None, str]:
        """((the retention dataset's splits, its untuned quality), "") for a cell with one; (None, why) when it cannot
        be had (the cell still runs, its record says why); (None, "") without one (or with random weights)."""
        if cell.retention is None or cell.model["weights"] == "random":
            return None, ""
        try:
            splits = self.splits(cell.retention, cell.train["on_bad_sample"])
        except BenchError as exc:
            return None, f"retention dataset '{cell.retention['name']}' could not be loaded: {exc.render()}"
        _, base, note = self._base_for(retention_cell(cell), bases, progress, slot)
        return ((splits, base), "") if base is not None else (None, note or "no untuned quality on the retention dataset")

    def _measure_base(self, cell: Cell, key: str, bases: dict, progress, slot: Slot) -> tuple[str, dict | None, str]:
        from bench.isolate import call_isolated
        from bench.suite import zoo

        progress.start_item(f"{cell.model['name']} × {cell.dataset['name']}: untuned quality", 0, slot.index)
        zpath = str(zoo.zoo_path(cell.model["family"])) if cell.model["weights"] == "zoo" else None
        out = call_isolated(_base_job, cell, self.suite.settings["device"],
                            self.splits(cell.dataset, cell.train["on_bad_sample"]), zpath,
                            slot.threads, timeout_s=cell.train["timeout_s"], isolate=self.isolate, env=slot.env,
                            cancel=self._cancel)
        self._took("untuned evaluation", out.elapsed_s)
        if out.kind == "cancelled":
            raise Cancelled(out.message)
        if out.kind == "ok":
            bases[key] = out.value
            return key, out.value, ""
        return key, None, f"base evaluation failed: {out.message}"

    def _run_job(self, job: Job, bases: dict, progress, slot: Slot) -> dict:
        from bench.suite import zoo

        cell = job.cell
        started = _now()
        record = self._record_head(job, started)
        sources, missing = self.sources_for(job)
        if missing is NOT_YET:
            progress.pass_item(f"{cell.label} (repeat {job.repeat})", "left for a later run: a source cell has no record yet "
                               "(run it first, e.g. without --only)")
            return None
        if cell.skip_reason or missing:
            record.update(status="skipped", message=cell.skip_reason or missing)
            return self._append(record, progress)
        try:
            splits = self.splits(cell.dataset, cell.train["on_bad_sample"])
        except BenchError as exc:  # this cell's data cannot be read now: its record says why, the suite goes on
            record.update(status="error", message=f"loading dataset '{cell.dataset['name']}' failed: {exc.render()}")
            return self._append(record, progress)
        record["dataset"].update(splits.provenance)
        key, base, base_note = self._base_for(cell, bases, progress, slot)
        retention, retention_note = self._retention_for(cell, bases, progress, slot)
        progress.start_item(f"{cell.label} (repeat {job.repeat})" if len(self.suite.seeds) > 1 else cell.label, None,
                            slot.index)
        zpath = str(zoo.zoo_path(cell.model["family"])) if cell.model["weights"] == "zoo" else None
        out, settings, attempts = self._attempts(job, splits, base, zpath, progress, slot, self._pick_for(job), retention,
                                                 sources)
        record["cost"]["attempts"] = attempts
        if out.kind == "ok":
            _merge_result(record, out.value)
        else:
            record.update(status="timeout" if out.kind == "timeout" else "error", message=out.message)
            record["cost"]["train_wall_s"] = round(out.elapsed_s, 3)
        record["train"]["fitted_batch_size"] = settings["batch_size"]
        record["train"]["fitted_grad_accum"] = settings["grad_accum"]
        record["train"]["effective_batch"] = effective_batch(settings)
        record["quality"]["base_key"] = key
        if base_note:
            record["quality"]["note"] = base_note
        if retention_note:
            record["quality"]["retention"] = {"dataset": cell.retention["name"], "note": retention_note}
        elif isinstance(record["quality"].get("retention"), dict):
            record["quality"]["retention"]["base_key"] = base_key(retention_cell(cell))
        return self._append(record, progress)

    def _pick_for(self, job: Job) -> dict | None:
        """A sweep cell's later repeat: repeat 0's pick (waited for when repeat 0 runs now), or None to sweep itself
        (no repeat 0 recorded ok with a pick)."""
        cell = job.cell
        if not cell.train["sweep"] or job.repeat == 0:
            return None
        done = self._picks.get(cell.cell_id)
        while done is not None and not done.wait(0.25):
            if self._cancel.is_set():
                raise Cancelled("the run was interrupted")
        with self._lock:
            latest = latest_lines(self.results, warn=False).get((cell.cell_id, 0))
        record = latest[1] if latest else None
        chosen = (record.get("sweep") or {}).get("chosen") if record and record["status"] == "ok" else None
        return chosen if isinstance(chosen, dict) and set(chosen) == set(cell.train["sweep"]) else None

    def sources_for(self, job: Job) -> tuple[list[dict] | None, str | None]:
        """A composed cell's sources as their records of the same repeat say (id, names, the kept adapter's folder), or
        why the cell cannot run: a source not ok, or without its adapter; NOT_YET when a source has no record (one that
        another run is training is waited for)."""
        if not job.cell.sources:
            return None, None
        out = []
        for source_id in job.cell.sources:
            record = self._source_record(source_id, job.repeat)
            if record is None:
                return None, NOT_YET
            label = f"{record['model']['name']} × {record['dataset']['name']} × {record['method']['name']}"
            if record["status"] != "ok":
                return None, (f"source cell {label} (repeat {job.repeat}) is {record['status']}: "
                              f"{str(record.get('message') or '')[:200]}")
            artifact = record.get("artifact")
            if not isinstance(artifact, dict) or not Path(str(artifact.get("path"))).is_dir():
                return None, f"source cell {label} (repeat {job.repeat}) kept no adapter, or its folder is gone"
            out.append({"cell_id": source_id, "repeat": job.repeat, "model": record["model"]["name"],
                        "dataset": record["dataset"]["name"], "method": record["method"]["name"], "artifact": artifact["path"]})
        return out, None

    def _source_record(self, cell_id: str, repeat: int) -> dict | None:
        """The latest record of a source cell-run; while another run holds its claim, waited for."""
        while True:
            with self._lock:
                found = latest_lines(self.results, warn=False).get((cell_id, repeat))
                owner = self.claims.owner(cell_id, repeat) if found is None else None
            if found is not None or owner is None or owner.get("run_id") == self.run_id:
                return found[1] if found else None
            if self._cancel.wait(0.5):
                raise Cancelled("the run was interrupted")

    def _attempts(self, job: Job, splits, base, zpath, progress, slot: Slot, pick: dict | None = None, retention=None,
                  sources: list[dict] | None = None):
        """Run the cell; on OOM with back-off on, again in a fresh process with half the micro-batch and twice the
        accumulation (same effective batch) until it fits or min_batch_size is reached."""
        from bench.isolate import call_isolated

        s = self.suite.settings
        settings, attempts = dict(job.cell.train), []
        while True:
            # a cell on several devices: their processes' files in a folder removed here, even when the cell is killed
            scratch = tempfile.mkdtemp(prefix="bench-devices-") if settings["devices"] > 1 else None
            artifact = str(self.artifacts / self.suite.name / job.cell.cell_id / str(job.seed))
            cell_job = CellJob(job.cell, job.seed, s["device"], splits, base, zpath, settings, slot.threads, scratch, pick,
                               retention, artifact, sources)
            try:
                out = call_isolated(run_cell_job, cell_job, timeout_s=settings["timeout_s"],
                                    on_event=progress.events_of(slot.index), isolate=self.isolate, env=slot.env,
                                    cancel=self._cancel)
            finally:
                if scratch:
                    shutil.rmtree(scratch, ignore_errors=True)
            self._took("cells", out.elapsed_s)
            if out.kind == "cancelled":
                raise Cancelled(out.message)
            if out.kind == "ok":
                for phase, name in CELL_PHASES.items():
                    self._took(name, out.value["cost"].get("phases_s", {}).get(phase, 0.0))
                with self._lock:
                    self._training.extend(out.value.pop("spans", None) or [])
            status = out.value["status"] if out.kind == "ok" else out.kind
            attempts.append({"batch_size": settings["batch_size"], "grad_accum": settings["grad_accum"], "status": status,
                             "peak_memory_mb": out.value["cost"].get("peak_memory_mb") if out.kind == "ok" else None})
            if status == "oom" and s["oom_backoff"] and settings["batch_size"] // 2 >= s["min_batch_size"]:
                settings = {**settings, "batch_size": settings["batch_size"] // 2, "grad_accum": settings["grad_accum"] * 2}
                progress.log(f"  {job.cell.label} (repeat {job.repeat}): out of memory; retrying with batch_size "
                             f"{settings['batch_size']} × grad_accum {settings['grad_accum']}")
                continue
            return out, settings, attempts

    def _record_head(self, job: Job, started: str) -> dict:
        cell = job.cell
        return {
            "schema_version": SCHEMA_VERSION, "cell_id": cell.cell_id, "suite": self.suite.name,
            "suite_file": _display_path(self.suite.path), "run_id": self.run_id, "repeat": job.repeat, "seed": job.seed,
            "model": dict(cell.model), "dataset": dict(cell.dataset), "method": dict(cell.method),
            "train": {**cell.train, "seed": job.seed}, "status": "error", "message": "", "params": {},
            "cost": {"device": self.suite.settings["device"], "devices": cell.train["devices"], "concurrent_cells": self.jobs,
                     "timed_alone": self.jobs == 1 or self.turns is not None},
            "quality": {}, "loss_curve": [],
            "diverged_at_step": None,
            "env": {}, "started_at": started,
        }

    def _append(self, record: dict, progress) -> dict:
        record["finished_at"] = _now()
        if not record["env"]:
            record["env"] = _light_env()
        append_record(self.results, record)  # the claim made this process the only writer of this cell-run
        if (low := low_coverage(record)) is not None:
            self._low_coverage.append(low)
        progress.finish_item(record)
        return record


def _with_others(first: BaseException, futures) -> BaseException:
    """The error that stopped a run of cells side by side; when other cells' records could not be saved either, the
    message names every side file that keeps one (each RecordNotSaved says where its record went)."""
    from concurrent.futures import wait

    if not isinstance(first, RecordNotSaved):
        return first
    wait(futures)
    others = [f.exception() for f in futures if not f.cancelled() and f.exception() not in (None, first)]
    others = [e for e in others if isinstance(e, RecordNotSaved)]
    if not others:
        return first
    return RecordNotSaved(first.message + "".join(f"\n- also: {e.message}" for e in others), fix=first.fix)


def _recorded_base(section: dict, higher_is_better: bool) -> tuple[str, dict] | None:
    """(base key, the base as a cell takes it) from a record's quality section or its retention part; None unless whole
    and finite: a hand-edited or foreign line must not become every method's base."""
    from bench.analysis.stats import number

    if number(section.get("base")) is None or not isinstance(section.get("base_key"), str) or not isinstance(section.get("metric"), str):
        return None
    items = section.get("items") if isinstance(section.get("items"), dict) else {}
    base_items = items.get("base") if isinstance(items.get("base"), list) else []
    ids = items.get("ids") if isinstance(items.get("ids"), list) else list(range(len(base_items)))
    extra = section.get("base_extra") if isinstance(section.get("base_extra"), dict) else {}
    return section["base_key"], {"metric": section["metric"], "higher_is_better": higher_is_better, "value": section["base"],
                                 "extra": extra, "n": section.get("n_eval"), "version": section.get("version"),
                                 "items": base_items, "item_ids": ids}


def _merge_result(record: dict, result: dict) -> None:
    """A cell's result (bench/run/cell.py's run_cell, with its environment) into the record the runner began."""
    record.update(status=result["status"], message=result["message"], params=result["params"], quality=result["quality"],
                  loss_curve=result["loss_curve"], diverged_at_step=result["diverged_at_step"], env=result["env"])
    record["cost"].update(result["cost"])
    if result.get("artifact"):  # what the cell kept of its training: bench/run/artifacts.py
        record["artifact"] = result["artifact"]
    if result.get("serving"):  # what serving the trained model costs: bench/run/serving.py
        record["serving"] = result["serving"]
    if result.get("composition"):  # a composed cell: the source cells it combined (bench/run/compose.py)
        record["composition"] = result["composition"]
    if "sweep" in result:  # what was tried and picked; the training settings as the pick ran
        record["sweep"] = result["sweep"]
        record["train"].update(result["sweep"]["chosen"] or {})


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


def _ready(*, emit) -> list[str]:
    """Forked from the cell server once it is up: the model families it warmed up (bench/run/preload.py)."""
    import sys

    preload = sys.modules.get("bench.run.preload")
    return list(preload.WARMED) if preload is not None else []


LOAD_TIMEOUT_S = 3600  # reading, checking and fingerprinting a data file: minutes at most, even at 1M records


@dataclass(frozen=True)
class SharedSplits:
    """A dataset's splits as the runner holds and hands them on: pickled once, in the process that read the data file,
    and passed to every cell as these bytes (copying bytes costs milliseconds; pickling 50k samples took 0.38 s per
    cell, and the runner held every sample besides). Only a cell's process turns them back into samples."""

    payload: bytes
    fingerprint: str
    train_size: int
    eval_size: int
    skipped: dict = field(default_factory=dict)  # {reason: records} left out as the data was read (on_bad_sample)

    @classmethod
    def of(cls, splits) -> SharedSplits:
        return cls(pickle.dumps(splits, protocol=pickle.HIGHEST_PROTOCOL), splits.fingerprint, len(splits.train),
                   len(splits.eval), dict(splits.info.get("skipped") or {}))

    def load(self):
        return pickle.loads(self.payload)

    @property
    def provenance(self) -> dict:
        """What a record's `dataset` says of the data the cell read: its fingerprint, split sizes and the records left
        out by reason as it was read (samples whose image fails to decode in a batch are the cell's own count:
        cost.skipped_samples)."""
        return {"fingerprint": self.fingerprint, "train_size": self.train_size, "eval_size": self.eval_size,
                "skipped": dict(self.skipped)}


def load_job(dataset: dict, base_dir, on_bad_sample: str = "error", *, emit):
    """("ok", SharedSplits) or ("error", the BenchError that names the file and record): run in a process of its own."""
    from bench.data.loader import load_suite_dataset

    try:
        return "ok", SharedSplits.of(load_suite_dataset(dataset, base_dir, on_bad_sample))
    except BenchError as exc:
        return "error", exc


def zoo_job(family: str, threads: int = 0, *, emit):
    from bench.run import pretrain

    _set_threads(threads)
    return pretrain.build(family, emit=emit)


def _base_job(cell: Cell, device: str, splits, zoo_path, threads: int = 0, *, emit):
    from bench.run.cell import evaluate_base, resolve_device

    _set_threads(threads)
    return evaluate_base(cell, device=resolve_device(device), splits=splits.load(), zoo_path=zoo_path)


@dataclass(frozen=True)
class CellJob:
    """What one cell-run's process needs, passed across the process boundary as one object."""

    cell: Cell
    seed: int
    device: str  # as the suite says it (auto / cpu / cuda); resolved inside the cell's process
    splits: SharedSplits  # read once per run, unpickled here only
    base: dict | None  # the untuned model's quality, when known
    zoo_path: str | None
    settings: dict  # the cell's training settings after any OOM back-off
    threads: int = 0
    scratch: str | None = None  # a cell on several devices: where its processes write (the runner removes it)
    pick: dict | None = None  # a sweep cell's later repeat: the values repeat 0 picked
    retention: tuple | None = None  # (SharedSplits, untuned quality) of the dataset retention is measured on
    artifact: str | None = None  # the folder the trained adapter is kept in
    sources: list | None = None  # a composed cell: its sources' records ({cell_id, repeat, artifact, ...}), in order

    def retention_loaded(self) -> tuple | None:
        """(splits, untuned quality) of the retention dataset, its samples unpickled here, in the cell's process."""
        return (self.retention[0].load(), self.retention[1]) if self.retention else None


def run_cell_job(job: CellJob, *, emit):
    from bench.isolate import PAUSE

    turns.listen(lambda waiting: emit(PAUSE, waiting))  # the cell's timeout clock stands still while it waits its turn
    try:
        return _run_cell_job(job, emit)
    finally:  # in-process (isolate = false) nothing of this cell stays behind
        turns.listen(None)


def _run_cell_job(job: CellJob, emit):
    from bench.profile import environment
    from bench.run.cell import add_phases, resolve_device, run_cell

    devices = job.settings.get("devices", 1)
    if devices > 1:  # CUDA's availability asked of NVML: an initialised CUDA would not survive the fork of the devices
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    device = resolve_device(job.device)
    if devices > 1:
        from bench.run.launch import device_threads, run_on_devices

        # beside other cells, its device processes train in step (a rank waiting for a turn would stall the others in a
        # collective): the whole cell takes one turn, and its processes take none
        waits: list = []
        with turns.timed_turn(waits):
            os.environ.pop(TURNS_ENV, None)
            result = run_on_devices(job, device, emit)
        if waits:
            add_phases(result["cost"].setdefault("phases_s", {}), {"wait": turns.waited_s(waits)})
        result["env"] = {**environment(device), "torch_threads": device_threads(job.threads, devices)}
        return result
    else:
        _set_threads(job.threads)
        result = run_cell(job.cell, seed=job.seed, device=device, splits=job.splits.load(), base=job.base,
                          zoo_path=job.zoo_path, settings=job.settings, on_step=lambda s, n, loss: emit("step", s, n, loss),
                          winner=job.pick, retention=job.retention_loaded(),
                          artifact=job.artifact, sources=job.sources)
    result["env"] = environment(device)
    return result


def build_zoo(family: str, threads: int, *, force: bool = False, on_event=None, isolate: bool = True) -> dict | None:
    """Pretrain the tiny `family` base in its own process, under the zoo's lock (concurrent runs: one builds, the
    others wait and find it built); its source quality, or None when it was built already (and not `force`)."""
    from bench.suite import zoo

    with locked(zoo.zoo_path(family)):
        if zoo.is_built(family) and not force:
            return None
        return _build_zoo_now(family, threads, on_event=on_event, isolate=isolate)


def _build_zoo_now(family: str, threads: int, *, on_event, isolate: bool) -> dict:
    from bench.isolate import call_isolated
    from bench.suite import zoo

    out = call_isolated(zoo_job, family, threads, timeout_s=zoo.RECIPES[family]["train"]["timeout_s"], on_event=on_event,
                        isolate=isolate)
    if out.kind != "ok":
        raise BenchError(f"building the tiny {family} zoo base failed: {out.message}", fix="run `bench zoo build` to see the full error")
    return out.value["source_quality"]
