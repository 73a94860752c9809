"""`bench run SUITE --jobs N` against `--jobs 1`, side by side in one run: wall time, and the records compared.

    .venv/bin/python benchmarks/side_by_side.py [--suite suites/quickstart.toml] [--jobs 2] [--rounds 1]

Each run writes into a fresh results folder; the first, untimed, makes sure the zoo bases are cached. Rounds
alternate the order. Printed: each run's wall time and its own time split, the ratio of the medians, and whether
the records agree: the same cell-runs, each recorded once, the same Δ and loss curve for the same seed (cells are
seeded and each runs in its own process, so running beside another must not change what it learns), and the
median step time of each side (running beside another cell shares the machine's memory bandwidth and caches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(suite: str, jobs: int) -> tuple[float, Path, str]:
    out = Path(tempfile.mkdtemp(prefix=f"bench-jobs{jobs}-"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench", "run", suite, "--jobs", str(jobs), "--results-dir", str(out),
                           "--reports-dir", str(out / "reports"), "--no-progress"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"--jobs {jobs}: bench run exited {done.returncode}\n{done.stderr[-2000:]}")
    text = done.stdout + done.stderr
    split = " ".join(text.split("where the time went:", 1)[1].split("records:")[0].split()) if "where the time went" in text else ""
    return wall, next(out.glob("*.jsonl")), split


def records(path: Path) -> tuple[int, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return len(lines), {(r["cell_id"], r["seed"]): r for r in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/quickstart.toml")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    run(args.suite, 1)  # untimed: zoo bases cached, page cache warm
    walls: dict[int, list[float]] = {1: [], args.jobs: []}
    last: dict[int, Path] = {}
    for r in range(args.rounds):
        for jobs in ((1, args.jobs) if r % 2 == 0 else (args.jobs, 1)):
            wall, path, split = run(args.suite, jobs)
            walls[jobs].append(wall)
            last[jobs] = path
            print(f"--jobs {jobs}: {wall:6.1f} s  | {split}")
    one, many = statistics.median(walls[1]), statistics.median(walls[args.jobs])
    print(f"median wall: --jobs 1 {one:.1f} s, --jobs {args.jobs} {many:.1f} s: ratio {many / one:.3f}")
    (n1, a), (n2, b) = records(last[1]), records(last[args.jobs])
    same = [k for k in a if k in b and a[k]["quality"].get("delta") == b[k]["quality"].get("delta")
            and a[k]["loss_curve"] == b[k]["loss_curve"]]
    print(f"records: {n1} and {n2} lines, {len(a)} and {len(b)} cell-runs (each once: {n1 == len(a) and n2 == len(b)}); "
          f"same Δ and loss curve: {len(same)} of {len(a)}")
    steps = [(b[k]["cost"]["step_s_median"] / a[k]["cost"]["step_s_median"]) for k in a
             if k in b and a[k]["cost"].get("step_s_median") and b[k]["cost"].get("step_s_median")]
    if steps:
        print(f"step time side by side / alone: median {statistics.median(steps):.3f} (cells {min(steps):.2f}–{max(steps):.2f})")


if __name__ == "__main__":
    main()
