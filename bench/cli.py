"""The `bench` command line. Parses arguments and dispatches; heavy libraries load only in the
commands that train, so `bench --help`, `validate`, `plan`, `report`, `compare` and `gate` are instant.

Exit codes: 0 success; 1 a gate failed, a comparison found something worse, a record could not be saved, or an
unexpected error (one line, the traceback in a log file); 2 bad input (nothing was run or written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from bench.errors import BenchError
from bench.models.catalog import METHOD_KINDS
from bench.suite import zoo


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # logs and pipes: wide enough that tables don't fold every cell
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def cmd_validate(args) -> int:
    from bench.data.problems import reasons_text
    from bench.suite.load import load_suite
    from bench.suite.plan import expand

    for path in args.suites:
        suite = load_suite(path)
        cells = expand(suite)
        print(f"{path}: ok — suite '{suite.name}', {len(cells)} cells × {len(suite.seeds)} repeat(s)")
        for name, counts in suite.left_out.items():  # on_bad_sample = "skip": what the cells will leave out, and why
            print(f"  [datasets.{name}]: {sum(counts.values())} record(s) will be left out ({reasons_text(counts)})")
    return 0


def cmd_plan(args) -> int:
    from bench.run.runner import pending_jobs, recorded
    from bench.suite.load import load_suite
    from bench.suite.plan import expand, results_path

    suite = load_suite(args.suite)
    cells = [c for c in expand(suite) if not args.only or c.matches(args.only)]
    if args.only and not cells:
        raise BenchError(f"--only {args.only!r} matches no cell of {args.suite}", fix="see `bench plan SUITE` for the cell ids and names")
    results = results_path(args.results_dir, suite.name)
    jobs, _ = pending_jobs(suite, results)
    pending = {(j.cell.cell_id, j.repeat) for j in jobs}
    statuses = {key: status for key, (_, status) in recorded(results).items()}
    args.params = args.params or args.trace
    args.estimate = args.estimate or args.trace
    counts, estimates, meta_models = {}, {}, {}  # one meta-device build per model, shared by both
    # a composed cell trains nothing (a fusion needs its sources' files), a skipped one runs nothing: no cost to preview
    trained = [c for c in cells if not (c.sources and METHOD_KINDS[c.method["kind"]].composes) and not c.skip_reason]
    if args.params or args.estimate:
        import bench.run.preload  # noqa: F401  (the model libraries, with their start-up chatter silenced as in `run`)
    if args.params:
        from bench.cost.params import count_cells

        counts = count_cells(trained, meta_models)
    if args.estimate:
        from bench.cost.estimate import estimate_cells
        from bench.cost.preview import target_device

        # a suite that runs on the CPU is estimated for the CPU; any other for a GPU (what the preview is for)
        estimates = estimate_cells(trained, counts or None, meta_models, target_device(suite))
    traces = _trace(suite, [c for c in trained if not c.skip_reason]) if args.trace else {}
    rows = []
    for cell in cells:
        n_pending = sum((cell.cell_id, r) in pending for r in range(len(suite.seeds)))
        failed = sorted({s for r in range(len(suite.seeds)) if (s := statuses.get((cell.cell_id, r))) not in (None, "ok", "skipped")})
        # a recorded failure is "done" for `bench run` (only --retry redoes it): say so instead of "done"
        state = "skip" if cell.skip_reason else ("pending" if n_pending else "failed" if failed else "done")
        row = {"cell_id": cell.cell_id, "model": cell.model["name"], "dataset": cell.dataset["name"], "method": cell.method["name"],
               "state": state, "pending_repeats": n_pending, "repeats": len(suite.seeds),
               "devices": cell.train["devices"], "distributed": cell.train["distributed"]}
        if failed:
            row["failed_statuses"] = failed
        if cell.skip_reason:
            row["skip_reason"] = cell.skip_reason
        if cell.sources:  # combines the adapters these cells keep (kind = "merge"): they run first
            row["sources"] = list(cell.sources)
        if cell.cell_id in counts:
            row["params"] = counts[cell.cell_id]
        if cell.cell_id in estimates:
            row["estimate"] = estimates[cell.cell_id]
        if cell.cell_id in traces:
            from bench.cost.preview import estimate_at_trace, target_device

            row["trace"] = traces[cell.cell_id]
            row["estimate_at_trace"] = estimate_at_trace(cell, row["trace"], meta_models, target_device(suite))
        rows.append(row)
    if args.markdown:
        from bench.cost.preview import render_markdown
        from bench.profile import software

        write_output(args.markdown, render_markdown(suite.name, rows, software()), flag="--markdown")
        print(f"written: {args.markdown}", file=sys.stderr)
    if args.json:
        print(json.dumps({"suite": suite.name, "results": str(results), "cells": rows}, indent=2))
        return _all_counted(rows)
    from bench.suite.plan_view import render_plan

    _console().print(render_plan(suite.name, rows, params=args.params, estimate=args.estimate, trace=args.trace))
    return _all_counted(rows)


def _all_counted(rows: list[dict]) -> int:
    """0 when every cell's parameters could be counted (or none were asked for); else exit 2 with the first reason (an
    unusable checkpoint: no config, a config that is not a model's, one too large to build), after the table."""
    bad = [row for row in rows if "error" in row.get("params", {})]
    if not bad:
        return 0
    first = bad[0]
    reason, _, fix = first["params"]["error"].partition("\n  fix: ")
    raise BenchError(f"{len(bad)} cell(s) cannot be built, so not counted; {first['cell_id']} ({first['model']}/"
                     f"{first['method']}): {reason}", where="--params", fix=fix or "see the table above")


def _trace(suite, cells) -> dict:
    """Each cell's traced training step (bench.cost.preview), one line per cell on stderr as it finishes."""
    from bench.cost.preview import trace_cells
    from bench.data.loader import load_suite_dataset

    splits: dict = {}

    def splits_of(cell):
        name = cell.dataset["name"]
        if name not in splits:
            splits[name] = load_suite_dataset(cell.dataset, suite.base_dir)
        return splits[name]

    def done(cell, result):
        what = f"{result['peak_mb']:,.0f} MB" if "peak_mb" in result else result.get("not_traced") or result.get("error", "")
        print(f"traced {cell.cell_id} {cell.model['name']}/{cell.method['name']}: {what.splitlines()[0][:160]}", file=sys.stderr)

    return trace_cells(suite, cells, splits_of, on_done=done)


def cmd_run(args) -> int:
    from rich.markup import escape

    from bench.run.runner import Runner
    from bench.suite.load import load_suite

    suite = load_suite(args.suite)
    console = _console(stderr=True)
    runner = Runner(suite, results_dir=args.results_dir, reports_dir=args.reports_dir, only=args.only, retry=args.retry,
                    console=console, show_progress=not args.no_progress, jobs=args.jobs,
                    cluster=_cluster_options(args, suite.cluster), artifacts_dir=args.artifacts_dir)
    summary = runner.run()
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing to run"
    elsewhere = f"; {summary.taken_elsewhere} taken by another run" if summary.taken_elsewhere else ""
    if summary.left_unrecorded:
        elsewhere += (f"; {summary.left_unrecorded} composed cell-run(s) left for a later run (a source has no record yet: "
                      "run it first)")
    console.print(escape(f"ran {summary.ran} cell-run(s) ({statuses}); {summary.skipped_done} already recorded{elsewhere}; "
                         f"{summary.wall_s:.1f} s"))
    if summary.ran:
        console.print(escape(f"where the time went: {summary.phases_text()}"))
    failed = sum(n for s, n in summary.statuses.items() if s not in ("ok", "skipped"))
    if failed:  # a cell's failure is a measurement (its record says why), not a failed run: exit 0
        console.print(escape(f"{failed} cell-run(s) did not finish ok; their records say why (see the report's failures)"))
    earlier = _failed_records(suite, summary.results, args.only) - failed if summary.skipped_done and not args.retry else 0
    if earlier > 0:  # left as recorded: a fixed input does not run them again by itself
        console.print(escape(f"{earlier} cell-run(s) recorded earlier did not finish ok; `bench run --retry` runs them "
                             "again"))
    if summary.text_coverage_warning:  # once for the run: the cells whose quality does not measure their method
        console.print(f"[yellow]warning:[/] {escape(summary.text_coverage_warning)}", highlight=False)
    console.print(escape(f"records: {summary.results}"))
    if summary.report:
        console.print(escape(f"report:  {summary.report}"))
    return 0


def _failed_records(suite, results, only: str | None) -> int:
    """The suite's cell-runs (those --only matches) whose latest record in `results` is not ok (nor skipped)."""
    from bench.run.runner import recorded
    from bench.suite.plan import expand

    cells = {c.cell_id for c in expand(suite) if not only or c.matches(only)}
    return sum(1 for (cell_id, _), (_, status) in recorded(results).items()
               if cell_id in cells and status not in ("ok", "skipped"))


def input_files(paths, *, what: str) -> list[str]:
    """Results files named on the command line: each must be an existing file (exit 2 otherwise)."""
    for p in paths:
        path = Path(p)
        try:
            ok, exists, is_dir = path.is_file(), path.exists(), path.is_dir()
        except OSError:
            ok, exists, is_dir = False, False, False
        if not ok:
            why = "is a folder" if is_dir else "is not a regular file" if exists else "does not exist"
            raise BenchError(f"{what} {p} {why}", fix="name a results .jsonl file (e.g. results/<suite>.jsonl)")
    return list(paths)


def read_results(paths, *, what: str) -> list[dict]:
    """The latest record of every cell-run in `paths`. A file with text but no record is not a results file."""
    from bench.records import iter_records, read_latest

    for p in input_files(paths, what=what):
        if next(iter_records(p, warn=False), None) is None:
            with open(p, "rb") as f:
                if any(line.strip() for line in f):
                    list(iter_records(p))  # warns, line by line, why the first lines are not records
                    raise BenchError(f"{what} {p} holds no bench record: it is not a bench results file",
                                     fix="name a file that `bench run` wrote (results/<suite>.jsonl); the warnings "
                                         "above name the lines and what each lacks")
    return read_latest(paths)


def write_output(path: str | Path, text: str, *, flag: str) -> Path:
    """Write a Markdown page the user named on the command line: a .md file that is new or a page bench
    wrote before (never a results file, a README or a file through a link); a path that cannot be
    written is an input error."""
    from bench.paths import PAGE_MARK, check_page, write_atomic

    path = Path(path)
    if path.suffix != ".md":
        raise BenchError(f"{path} is not a .md file", where=flag, fix=f"give {flag} a Markdown file name, e.g. out/page.md")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_page(path, flag=flag)
        write_atomic(path, text if text.startswith(PAGE_MARK) else f"{PAGE_MARK} page -->\n{text}")
    except OSError as exc:
        raise BenchError(f"cannot write {path} ({exc.strerror or exc})", where=flag,
                         fix=f"give {flag} a path in a folder you can write") from None
    return path


def cmd_report(args) -> int:
    from bench.analysis.report import write_index, write_report
    from bench.paths import inside, page_name, page_target

    records = read_results(args.results, what="results file")
    if not records:
        raise BenchError("no readable records in " + ", ".join(args.results), fix="run `bench run SUITE` first")
    # the page is named by -o, or by the suite's name made safe: a record's field never picks a path
    out = Path(args.output) if args.output else inside(args.reports_dir, f"{page_name(records[-1]['suite'])}.md")
    if out.suffix != ".md" or out.name.lower() == "readme.md":
        raise BenchError(f"-o {out}: a report page is a .md file other than README.md (the index)", where="-o",
                         fix="e.g. -o reports/my-suite.md")
    index = not args.output or out.parent == Path(args.reports_dir)
    try:
        if index:
            page_target(out.parent, "README.md")  # before the page: a refused index leaves nothing half-written
        written = write_report(records, out)
        if index:
            write_index(out.parent)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop met while resolving
        raise BenchError(f"cannot write the report {out} ({getattr(exc, 'strerror', None) or exc})", fix="choose a folder you can write "
                         "with -o or --reports-dir") from None
    for p in written:
        print(p)
    return 0


def cmd_compare(args) -> int:
    from bench.analysis.compare import compare, render_markdown, render_terminal

    base = read_results([args.base], what="base results file")
    current = read_results([args.current], what="current results file")
    if not base or not current:
        raise BenchError(f"no records in {args.base if not base else args.current}", fix="compare two files that `bench run` wrote")
    result = compare(base, current)
    render_terminal(result, _console())
    if args.markdown:
        write_output(args.markdown, render_markdown(result), flag="--markdown")
    return 1 if result.failed else 0


def cmd_gate(args) -> int:
    from bench.analysis.gate import gate
    from bench.suite.rules import DEFAULT_RULES, parse_rules

    rules = args.rule
    baseline = args.baseline
    if args.suite:
        from bench.suite.load import load_suite

        suite = load_suite(args.suite)
        rules = rules or suite.gate.get("rules")
        if not baseline and suite.gate.get("baseline"):
            baseline = str(suite.base_dir / suite.gate["baseline"])
    if not baseline:
        raise BenchError("no baseline given", fix="pass --baseline FILE, or --suite SUITE whose [gate] names a baseline")
    rules = parse_rules(rules or DEFAULT_RULES)
    result = gate(read_results([baseline], what="baseline"), read_results(args.current, what="results file"), rules)
    from bench.analysis.gate import render_markdown, render_terminal

    render_terminal(result, _console())
    if args.markdown:
        write_output(args.markdown, render_markdown(result), flag="--markdown")
    return 0 if result.passed else 1


def cmd_export(args) -> int:
    from bench.run.export import export, find_record

    records = read_results([args.results], what="results file")
    # the folder `bench run` kept the artifacts in: a record's artifact.path must lie inside it
    root = Path(args.artifacts_dir) if args.artifacts_dir else Path(args.results).parent / "artifacts"
    out = export(find_record(records, args.cell_id, args.repeat), Path(args.out), merged=args.merged, artifacts_root=root,
                 results=args.results, trust_remote_code=args.trust_remote_code)
    print(f"written: {out}")
    return 0


def cmd_baseline_update(args) -> int:
    from bench.analysis.baseline import update_baseline

    path = update_baseline(args.suite, results_dir=args.results_dir, output=args.output)
    print(f"baseline written: {path}")
    return 0


def cmd_zoo_build(args) -> int:
    from bench.run.runner import build_zoo
    from bench.suite import zoo

    families = args.family or list(zoo.RECIPES)
    for family in families:
        q = build_zoo(family, args.threads, force=args.force)
        if q is None:
            print(f"{family}: cached at {zoo.zoo_path(family)}")
        else:
            print(f"{family}: built at {zoo.zoo_path(family)} ({q['metric']} on the source split = {q['value']:.1f})")
    return 0


def cmd_data_make(args) -> int:
    import time

    from bench.data.make import MAKE_FORMATS, make_scenes

    started = time.perf_counter()
    step = max(1, args.n // 20)

    def progress(done: int, total: int) -> None:
        if done % step < 256 or done == total:
            print(f"  {done:,} / {total:,} images", file=sys.stderr, flush=True)

    path = make_scenes(args.out, n=args.n, fmt=args.format, image_size=args.image_size, split=args.split, seed=args.seed,
                       image_format=args.image_format, processes=args.processes, on_progress=progress)
    task = MAKE_FORMATS[args.format][0]
    print(f"wrote {args.n:,} images in {time.perf_counter() - started:.1f} s: {path}")
    print(f'use it in a suite as: format = "{args.format}", task = "{task}", path = "{path}"')
    return 0


def _pattern(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty pattern would match every cell; give a cell id or a glob such as 'clip/*'")
    return text


def _cluster_options(args, table: dict):
    """--executor and its options over the suite's [cluster] table, checked; None when neither names an executor (cells
    forked on this machine)."""
    given = {"executor": args.executor, "partition": args.partition, "gpus_per_cell": args.gpus_per_cell,
             "cpus_per_cell": args.cpus_per_cell, "poll_s": args.poll_s}
    merged = {k: v if v is not None else table.get(k) for k, v in given.items()}
    if merged["executor"] is None:
        flags = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if flags:
            raise BenchError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only with --executor (or [cluster] "
                             "executor in the suite)",
                             fix="add --executor slurm, or drop them")
        return None
    from bench.run.cluster import ClusterOptions
    from bench.suite.keys import CLUSTER_KEYS

    for key in ("gpus_per_cell", "cpus_per_cell", "poll_s"):
        if given[key] is not None and CLUSTER_KEYS[key].problem(given[key]):
            raise BenchError(f"--{key.replace('_', '-')} {given[key]}: {CLUSTER_KEYS[key].problem(given[key])}",
                             fix="e.g. --gpus-per-cell 1 --cpus-per-cell 8 --poll-s 30")
    poll = merged["poll_s"] if merged["poll_s"] is not None else CLUSTER_KEYS["poll_s"].default
    if merged["executor"] == "local" and given["poll_s"] is None and poll == CLUSTER_KEYS["poll_s"].default:
        poll = 1.0  # no scheduler to spare on this machine: 30 s would only make the run wait
    return ClusterOptions(merged["executor"], merged["partition"], merged["gpus_per_cell"] or 0, merged["cpus_per_cell"],
                          float(poll))


def _jobs(text: str) -> int:
    from bench.suite.keys import SUITE_KEYS

    most = SUITE_KEYS["jobs"].max
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give how many cells run at once, e.g. 2, "
                                         "or 0 (as many as fit)") from None
    if not 0 <= value <= most:
        raise argparse.ArgumentTypeError(f"{value} is out of range; give 0 (as many as fit) to {most}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Cost/quality benchmark of PEFT methods on vision-language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", help="check suite files (no torch import)")
    s.add_argument("suites", nargs="+", metavar="SUITE")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("plan", help="list a suite's cells and whether each is done")
    s.add_argument("suite", metavar="SUITE")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--params", action="store_true", help="count total/trainable parameters per cell on the meta device")
    s.add_argument("--estimate", action="store_true", help="predict peak training memory per cell")
    s.add_argument("--trace", action="store_true",
                   help="trace each cell's training step with fake tensors on the CPU (peak memory without weights or "
                        "a GPU; implies --params --estimate; minutes per 7B cell)")
    s.add_argument("--only", metavar="PATTERN", type=_pattern, help="only cells whose id or model/dataset/method matches this glob")
    s.add_argument("--markdown", metavar="FILE", help="also write the table as a Markdown page (the cost preview)")
    s.add_argument("--results-dir", default="results")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("run", help="run a suite's pending cells, append records, render the report")
    s.add_argument("suite", metavar="SUITE")
    s.add_argument("--results-dir", default="results")
    s.add_argument("--reports-dir", default="reports")
    s.add_argument("--only", metavar="PATTERN", type=_pattern, help="run only cells whose id or model/dataset/method matches this glob")
    s.add_argument("--retry", action="store_true", help="run again the cells whose last record is not ok")
    s.add_argument("--no-progress", action="store_true", help="no live display (one line per cell)")
    s.add_argument("--artifacts-dir", default=None, metavar="DIR",
                   help="where cells keep their trained adapters (default: RESULTS_DIR/artifacts), as "
                        "DIR/<suite>/<cell>/<seed>/")
    s.add_argument("--executor", choices=("local", "slurm"), default=None,
                   help="run each cell-run as a submitit job: on Slurm (sbatch), or locally through the same path; the "
                        "driver appends the records, and running it again re-attaches to its jobs")
    s.add_argument("--partition", default=None, help="Slurm partition (with --executor slurm)")
    s.add_argument("--gpus-per-cell", type=int, default=None, metavar="N", help="GPUs each Slurm job asks for (default 0)")
    s.add_argument("--cpus-per-cell", type=int, default=None, metavar="N", help="CPUs each Slurm job asks for")
    s.add_argument("--poll-s", type=float, default=None, metavar="S",
                   help="seconds between the driver's looks at its jobs (default 30; one sacct call for all of them)")
    s.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                   help="run up to N cells at once (default: the suite's `jobs`, 1; 0: as many as fit): each on a GPU of its "
                        "own, or on the CPU with cores ÷ N threads unless the suite sets threads, their timed work (training, "
                        "serving's latency rounds) one cell at a time unless the suite sets time_alone = false")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("export", help="write what a finished cell kept: its adapter, or (--merged) a plain transformers "
                                      "model with the adapter merged in")
    s.add_argument("results", metavar="RESULTS.jsonl")
    s.add_argument("cell_id", metavar="CELL_ID")
    s.add_argument("--repeat", type=int, default=0, help="which repeat's artifact (default 0)")
    s.add_argument("--merged", action="store_true", help="merge the adapter into its base (merge_and_unload)")
    s.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    s.add_argument("--artifacts-dir", default=None, metavar="DIR",
                   help="the folder `bench run --artifacts-dir` kept the artifacts in (default: artifacts/ beside the "
                        "results file); a record's artifact must lie inside it")
    s.add_argument("--trust-remote-code", action="store_true",
                   help="with --merged: allow rebuilding a base whose record says trust_remote_code (runs its code)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("report", help="render the Markdown page (and plots) from records")
    s.add_argument("results", nargs="+", metavar="RESULTS.jsonl")
    s.add_argument("-o", "--output", help="the .md file to write (default reports/<suite>.md)")
    s.add_argument("--reports-dir", default="reports")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("compare", help="compare two results files cell by cell")
    s.add_argument("base")
    s.add_argument("current")
    s.add_argument("--markdown", metavar="FILE", help="also write the diff table as Markdown")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("gate", help="fail (exit 1) when CURRENT regresses against a baseline beyond the rules")
    s.add_argument("current", nargs="+", metavar="CURRENT.jsonl")
    s.add_argument("--baseline", metavar="FILE")
    s.add_argument("--rule", action="append", default=[], metavar="RULE", help="e.g. peak_memory_mb:+5%% (repeatable)")
    s.add_argument("--suite", metavar="SUITE", help="take rules and baseline from the suite's [gate] table")
    s.add_argument("--markdown", metavar="FILE", help="also write the gate table as Markdown")
    s.set_defaults(fn=cmd_gate)

    s = sub.add_parser("baseline", help="manage gate baselines")
    bsub = s.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    b = bsub.add_parser("update", help="copy a suite's latest records into its baseline file, on purpose")
    b.add_argument("suite", metavar="SUITE")
    b.add_argument("--results-dir", default="results")
    b.add_argument("-o", "--output", help="baseline file (default: the suite's [gate] baseline)")
    b.set_defaults(fn=cmd_baseline_update)

    s = sub.add_parser("data", help="datasets on disk")
    dsub = s.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    d = dsub.add_parser("make", help="write N bundled scenes to disk in an on-disk format (large test data)")
    d.add_argument("source", choices=["scenes"], help="the generator (the bundled scenes)")
    d.add_argument("--n", type=int, required=True, help="number of images")
    d.add_argument("--format", required=True, choices=["coco_captions", "llava", "vqa_jsonl", "csv", "image_folder"])
    d.add_argument("--out", required=True, help="a new or empty folder")
    d.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224)")
    d.add_argument("--image-format", default="jpg", choices=["jpg", "png"])
    d.add_argument("--split", default="target", choices=["source", "target"], help="the scenes distribution")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--processes", type=int, default=None, help="render processes (default: the usable cores)")
    d.set_defaults(fn=cmd_data_make)

    s = sub.add_parser("zoo", help="bench's pretrained tiny base models")
    zsub = s.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    z = zsub.add_parser("build", help="pretrain the tiny bases on the source split (cached)")
    z.add_argument("--family", action="append", choices=list(zoo.RECIPES))
    z.add_argument("--force", action="store_true", help="rebuild even when cached")
    z.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models train fastest on 1)")
    z.set_defaults(fn=cmd_zoo_build)
    return p


def main(argv: list[str] | None = None) -> int:
    """Every command behind one guard: input errors exit 2 with the file, key and fix; anything unexpected
    exits 1 with one line and the traceback in a log file, never a bare traceback."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return args.fn(args)
    except BenchError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: records written so far are kept; `bench run` again resumes with the pending cells", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (the guard: a bug must still end in one clear line)
        log = _crash_log(args)
        print(f"error: unexpected {type(exc).__name__}: {str(exc)[:300]}\n  the full traceback is in {log}\n"
              "  this is a bench bug: please report it with that file", file=sys.stderr)
        return 1


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a skipped torn record, a library's notice) as one plain line, without a source excerpt."""
    print(f"warning: {message}", file=file or sys.stderr)


def _crash_log(args) -> str:
    """Write the traceback under the results folder (the temp folder when that cannot be written)."""
    import datetime as dt
    import tempfile
    import traceback

    name = f"bench-error-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{os.getpid()}.log"
    text = f"bench {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}"
    # the results folder of a command that has one (run, plan, baseline); the temp folder for the others
    for folder in [f for f in (getattr(args, "results_dir", None), tempfile.gettempdir()) if f]:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder).resolve() / name
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(nowhere: neither the results folder nor the temp folder could be written)"


if __name__ == "__main__":
    sys.exit(main())
