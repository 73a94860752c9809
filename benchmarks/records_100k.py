"""How long `bench report`, `compare` and `gate` take on a 100,000-line results file, and how much memory.

    .venv/bin/python benchmarks/records_100k.py [--lines 100000] [--rounds 3]

Two shapes of file, both 100k lines of real-sized records (tests/record-fixture.json, ~2.4 kB a line):
  reruns    100 cells × 10 repeats, each cell-run recorded 100 times (a long-lived results file)
  distinct  100,000 distinct cell-runs (a huge sweep) — report is left out: a page of 100k rows and plots
            is not a page anyone reads, and its rendering is not what this measures.
Beside the commands, the reader alone side by side: parsing every line and keeping the newest per
cell-run (`latest_per_cell(read_records(...))`, what report/compare/gate did before) against the lazy
reader (`read_latest`), each in a fresh process, interleaved, with the ratio of medians.
Each command runs in a fresh process (interleaved over the rounds); the table shows the median and the
range of wall time and the peak RSS (ru_maxrss of the child). The issue's bound: ≤ 5 s and ≤ 500 MB.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_file(path: Path, lines: int, shape: str) -> None:
    base = json.loads((REPO / "tests" / "record-fixture.json").read_text())
    with open(path, "w") as f:
        for i in range(lines):
            r = copy.deepcopy(base) if i < 2 else base  # the same dict re-serialised: only ids change
            if shape == "reruns":
                cell, repeat = i % 100, (i // 100) % 10
            else:
                cell, repeat = i, 0
            r["cell_id"], r["repeat"] = f"{cell:012x}", repeat
            r["cost"]["peak_memory_mb"] = 100.0 + (i % 7)
            f.write(json.dumps(r, sort_keys=True) + "\n")


READERS = {
    "read: every line (before)": "from bench.records import latest_per_cell, read_records; latest_per_cell(read_records(sys.argv[1]))",
    "read: lazy (now)": "from bench.records import read_latest; read_latest([sys.argv[1]])",
}


def measure(argv: list[str], cwd: Path, reader: str | None = None) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit code) of `bench ARGV` (or of one reader on ARGV[0]) in a fresh process."""
    call = f"{READERS[reader]}; c = 0" if reader else "from bench.cli import main; c = main(sys.argv[1:])"
    code = (f"import resource, sys, time, warnings; warnings.simplefilter('ignore'); {call}; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, c, file=sys.stderr)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    last = proc.stderr.strip().splitlines()[-1].split()
    return wall, float(last[0]), int(last[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for shape in ("reruns", "distinct"):
            path = tmp / f"{shape}.jsonl"
            write_file(path, args.lines, shape)
            mb = path.stat().st_size / 2**20
            commands = {"compare": ["compare", str(path), str(path)],
                        "gate": ["gate", str(path), "--baseline", str(path)]}
            if shape == "reruns":
                commands["report"] = ["report", str(path), "--reports-dir", str(tmp / "reports")]
            runs = {name: [] for name in [*commands, *READERS]}
            for _ in range(args.rounds):
                for name, argv in commands.items():  # interleaved: each round runs every command once
                    runs[name].append(measure(argv, tmp))
                for name in READERS:
                    runs[name].append(measure([str(path)], tmp, reader=name))
            for name, samples in runs.items():
                walls = [s[0] for s in samples]
                rows.append((shape, f"{mb:.0f}", name, statistics.median(walls), min(walls), max(walls),
                             max(s[1] for s in samples), {s[2] for s in samples}))
    print(f"{args.lines:,} lines per file, {args.rounds} rounds, fresh process per command (imports included)\n")
    medians = {(shape, name): med for shape, _, name, med, *_ in rows}
    for shape in ("reruns", "distinct"):
        before, now = medians[(shape, "read: every line (before)")], medians[(shape, "read: lazy (now)")]
        print(f"{shape}: the lazy reader takes {now / before:.2f}× the time of reading every line")
    print()
    print("| file | MB | command | wall s (median) | range | peak RSS MB | exit |")
    print("|---|---:|---|---:|---|---:|---|")
    for shape, mb, name, med, lo, hi, rss, codes in rows:
        print(f"| {shape} | {mb} | {name} | {med:.2f} | {lo:.2f}–{hi:.2f} | {rss:.0f} | {','.join(map(str, sorted(codes)))} |")


if __name__ == "__main__":
    main()
