"""Gate baselines: a suite's latest records copied, on purpose, into a committed file."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from bench.paths import inside, write_atomic
from bench.records import encode, iter_records, read_latest
from bench.suite.plan import results_path


def default_baseline(suite, results_dir: str | Path) -> Path:
    """The suite's [gate] baseline, else <results-dir>/baselines/<suite>.jsonl (inside the folder the user gave)."""
    if suite.gate.get("baseline"):
        return (suite.base_dir / suite.gate["baseline"]).resolve()
    return inside(Path(results_dir) / "baselines", f"{suite.name}.jsonl")


def update_baseline(suite_path: str, *, results_dir: str = "results", output: str | None = None) -> Path:
    """Write the newest record of every (cell, repeat) of the suite's results as its baseline (atomic replace).
    Only a .jsonl file is written, and an existing file only when it is a bench results file itself."""
    from bench.suite.load import load_suite

    suite = load_suite(suite_path)
    source = results_path(results_dir, suite.name)
    records = read_latest([source])
    if not records:
        raise BenchError(f"no records in {source}", fix=f"run `bench run {suite_path}` first")
    target = Path(output) if output else default_baseline(suite, results_dir)
    where = "-o" if output else f"{suite_path}: [gate] key 'baseline'"
    if target.resolve() == source.resolve():
        raise BenchError(f"{target} is the suite's results file itself; a baseline is a copy of it", where=where,
                         fix="name another file, e.g. results/baselines/<suite>.jsonl")
    if target.is_symlink():
        raise BenchError(f"{target} is a symbolic link; bench does not write through links", where=where,
                         fix="give a plain file path")
    if target.suffix != ".jsonl":
        raise BenchError(f"{target} is not a .jsonl file; a baseline is a results file", where=where,
                         fix="name a .jsonl file, e.g. results/baselines/<suite>.jsonl")
    if target.exists() and not _is_results_file(target):
        raise BenchError(f"{target} exists and is not a bench results file; it is not overwritten", where=where,
                         fix="choose a new file name, or remove that file yourself if it is really yours to replace")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, b"".join(encode(r) for r in records))
    except OSError as exc:
        raise BenchError(f"cannot write the baseline {target} ({exc.strerror or exc})", where=where,
                         fix="choose a folder you can write") from None
    return target


def _is_results_file(path: Path) -> bool:
    """A regular file whose every non-blank line is a bench record (an empty file counts)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return lines == sum(1 for _ in iter_records(path, warn=False))
