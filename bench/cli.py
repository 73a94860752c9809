"""The `bench` command line. Parses arguments and dispatches; heavy libraries load only in the
commands that train, so `bench --help`, `validate`, `plan`, `report`, `compare` and `gate` are instant.

Exit codes: 0 success, 1 a gate or comparison failed, 2 bad input (nothing was run or written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.errors import BenchError


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # logs and pipes: wide enough that tables don't fold every cell
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def cmd_validate(args) -> int:
    from bench.plan import expand
    from bench.suite import load_suite

    for path in args.suites:
        suite = load_suite(path)
        cells = expand(suite)
        print(f"{path}: ok — suite '{suite.name}', {len(cells)} cells × {len(suite.seeds)} repeat(s)")
    return 0


def cmd_plan(args) -> int:
    from bench.plan import expand, results_path
    from bench.runner import pending_jobs
    from bench.suite import load_suite

    suite = load_suite(args.suite)
    cells = [c for c in expand(suite) if not args.only or c.matches(args.only)]
    if args.only and not cells:
        raise BenchError(f"--only {args.only!r} matches no cell of {args.suite}", fix="see `bench plan SUITE` for the cell ids and names")
    results = results_path(args.results_dir, suite.name)
    jobs, _ = pending_jobs(suite, results)
    pending = {(j.cell.cell_id, j.repeat) for j in jobs}
    args.params = args.params or args.trace
    args.estimate = args.estimate or args.trace
    counts, estimates, meta_models = {}, {}, {}  # one meta-device build per model, shared by both
    if args.params or args.estimate:
        import bench.preload  # noqa: F401  (the model libraries, with their start-up chatter silenced as in `run`)
    if args.params:
        from bench.params import count_cells

        counts = count_cells(cells, meta_models)
    if args.estimate:
        from bench.estimate import estimate_cells

        estimates = estimate_cells(cells, counts or None, meta_models)
    traces = _trace(suite, [c for c in cells if not c.skip_reason]) if args.trace else {}
    rows = []
    for cell in cells:
        n_pending = sum((cell.cell_id, r) in pending for r in range(len(suite.seeds)))
        state = "skip" if cell.skip_reason else ("pending" if n_pending else "done")
        row = {"cell_id": cell.cell_id, "model": cell.model["name"], "dataset": cell.dataset["name"], "method": cell.method["name"],
               "state": state, "pending_repeats": n_pending, "repeats": len(suite.seeds)}
        if cell.skip_reason:
            row["skip_reason"] = cell.skip_reason
        if cell.cell_id in counts:
            row["params"] = counts[cell.cell_id]
        if cell.cell_id in estimates:
            row["estimate"] = estimates[cell.cell_id]
        if cell.cell_id in traces:
            from bench.preview import estimate_at_trace

            row["trace"] = traces[cell.cell_id]
            row["estimate_at_trace"] = estimate_at_trace(cell, row["trace"], meta_models)
        rows.append(row)
    if args.markdown:
        from bench.preview import render_markdown
        from bench.profile import software

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(render_markdown(suite.name, rows, software()))
        print(f"written: {args.markdown}", file=sys.stderr)
    if args.json:
        print(json.dumps({"suite": suite.name, "results": str(results), "cells": rows}, indent=2))
        return 0
    from bench.plan_view import render_plan

    _console().print(render_plan(suite.name, rows, params=args.params, estimate=args.estimate, trace=args.trace))
    return 0


def _trace(suite, cells) -> dict:
    """Each cell's traced training step (bench.preview), one line per cell on stderr as it finishes."""
    from bench.data.loader import load_suite_dataset
    from bench.preview import trace_cells

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
    from bench.runner import Runner
    from bench.suite import load_suite

    suite = load_suite(args.suite)
    console = _console(stderr=True)
    runner = Runner(suite, results_dir=args.results_dir, reports_dir=args.reports_dir, only=args.only, retry=args.retry,
                    console=console, show_progress=not args.no_progress)
    summary = runner.run()
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing to run"
    console.print(f"ran {summary.ran} cell-run(s) ({statuses}); {summary.skipped_done} already recorded; {summary.wall_s:.1f} s")
    console.print(f"records: {summary.results}")
    if summary.report:
        console.print(f"report:  {summary.report}")
    return 0


def cmd_report(args) -> int:
    from bench.records import read_many
    from bench.report import write_index, write_report

    records = read_many(args.results)
    if not records:
        raise BenchError("no readable records in " + ", ".join(args.results), fix="run `bench run SUITE` first")
    out = Path(args.output) if args.output else Path(args.reports_dir) / f"{records[-1]['suite']}.md"
    written = write_report(records, out)
    if not args.output or out.parent == Path(args.reports_dir):
        write_index(out.parent)
    for p in written:
        print(p)
    return 0


def cmd_compare(args) -> int:
    from bench.compare import compare, render_markdown, render_terminal
    from bench.records import read_many

    result = compare(read_many([args.base]), read_many([args.current]))
    render_terminal(result, _console())
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(result))
    return 0


def cmd_gate(args) -> int:
    from bench.gate import DEFAULT_RULES, gate, parse_rules
    from bench.records import read_many

    rules = args.rule
    baseline = args.baseline
    if args.suite:
        from bench.suite import load_suite

        suite = load_suite(args.suite)
        rules = rules or suite.gate.get("rules")
        if not baseline and suite.gate.get("baseline"):
            baseline = str(suite.base_dir / suite.gate["baseline"])
    if not baseline:
        raise BenchError("no baseline given", fix="pass --baseline FILE, or --suite SUITE whose [gate] names a baseline")
    if not Path(baseline).is_file():
        raise BenchError(f"baseline file {baseline} does not exist", fix="create one with `bench baseline update SUITE`")
    result = gate(read_many([baseline]), read_many(args.current), parse_rules(rules or DEFAULT_RULES))
    from bench.gate import render_markdown, render_terminal

    render_terminal(result, _console())
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(result))
    return 0 if result.passed else 1


def cmd_baseline_update(args) -> int:
    from bench.baseline import update_baseline

    path = update_baseline(args.suite, results_dir=args.results_dir, output=args.output)
    print(f"baseline written: {path}")
    return 0


def cmd_zoo_build(args) -> int:
    from bench import zoo
    from bench.isolate import call_isolated
    from bench.runner import _zoo_job

    families = args.family or list(zoo.RECIPES)
    for family in families:
        if zoo.is_built(family) and not args.force:
            print(f"{family}: cached at {zoo.zoo_path(family)}")
            continue
        out = call_isolated(_zoo_job, family, args.threads, timeout_s=zoo.RECIPES[family]["train"]["timeout_s"])
        if out.kind != "ok":
            raise BenchError(f"zoo build for {family} failed: {out.message}")
        q = out.value["source_quality"]
        print(f"{family}: built at {zoo.zoo_path(family)} ({q['metric']} on the source split = {q['value']:.1f})")
    return 0


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
    s.add_argument("--only", metavar="PATTERN", help="only cells whose id or model/dataset/method matches this glob")
    s.add_argument("--markdown", metavar="FILE", help="also write the table as a Markdown page (the cost preview)")
    s.add_argument("--results-dir", default="results")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("run", help="run a suite's pending cells, append records, render the report")
    s.add_argument("suite", metavar="SUITE")
    s.add_argument("--results-dir", default="results")
    s.add_argument("--reports-dir", default="reports")
    s.add_argument("--only", metavar="PATTERN", help="run only cells whose id or model/dataset/method matches this glob")
    s.add_argument("--retry", action="store_true", help="run again the cells whose last record is not ok")
    s.add_argument("--no-progress", action="store_true", help="no live display (one line per cell)")
    s.set_defaults(fn=cmd_run)

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

    s = sub.add_parser("zoo", help="bench's pretrained tiny base models")
    zsub = s.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    z = zsub.add_parser("build", help="pretrain the tiny bases on the source split (cached)")
    z.add_argument("--family", action="append", choices=["clip", "blip2", "llava"])
    z.add_argument("--force", action="store_true", help="rebuild even when cached")
    z.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models train fastest on 1)")
    z.set_defaults(fn=cmd_zoo_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except BenchError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: records written so far are kept; `bench run` again resumes with the pending cells", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
