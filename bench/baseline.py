"""Gate baselines: a suite's latest records copied, on purpose, into a committed file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.errors import BenchError
from bench.plan import results_path
from bench.records import latest_per_cell, read_records


def default_baseline(suite) -> Path:
    if suite.gate.get("baseline"):
        return (suite.base_dir / suite.gate["baseline"]).resolve()
    return Path("results") / "baselines" / f"{suite.name}.jsonl"


def update_baseline(suite_path: str, *, results_dir: str = "results", output: str | None = None) -> Path:
    """Write the newest record of every (cell, repeat) of the suite's results as its baseline (atomic replace)."""
    from bench.suite import load_suite

    suite = load_suite(suite_path)
    source = results_path(results_dir, suite.name)
    records = latest_per_cell(read_records(source))
    if not records:
        raise BenchError(f"no records in {source}", fix=f"run `bench run {suite_path}` first")
    target = Path(output) if output else default_baseline(suite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(target)
    return target
