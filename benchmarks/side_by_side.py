"""Cells one at a time against cells side by side, in one run: wall time, training's share of it, and what running
beside another cell does to the timed figures.

    .venv/bin/python benchmarks/side_by_side.py [--suite suites/quickstart.toml] [--jobs 2] [--rounds 2]

Three ways of running the same suite, each round in a turned order (one untimed run first caches the zoo bases):
- alone: `--jobs 1`, one cell at a time;
- turns: `--jobs N`, cells side by side, their timed work (training steps, serving's latency rounds) one at a time
  (the default, `time_alone = true`: bench/turns.py);
- at once: `--jobs N` with `time_alone = false` (a copy of the suite with that key set), cells training together.
Printed per run: wall time and the run's own time split. Per way: the median wall time, and each cell-run's median step
time and serving latency (batch 1) over alone's *in the same round* (median of those ratios, the range beside it), so
the machine's drift between rounds cancels. Records must agree too: each cell-run recorded once, the same Δ and loss
curve for the same seed as alone (cells are seeded and each runs in its own process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def at_once_copy(suite: str) -> str:
    """The suite with time_alone = false, beside a temporary folder's copy (its relative paths resolve from there
    only for suites that read bundled data, as the shipped ones do)."""
    text = (REPO / suite).read_text()
    if "time_alone" in tomllib.loads(text).get("suite", {}):
        raise SystemExit(f"{suite} sets time_alone already; compare with a suite that does not")
    copy = Path(tempfile.mkdtemp(prefix="bench-at-once-")) / Path(suite).name
    copy.write_text(text.replace("[suite]\n", "[suite]\ntime_alone = false\n", 1))
    return str(copy)


def run(suite: str, jobs: int) -> tuple[float, Path, str]:
    out = Path(tempfile.mkdtemp(prefix=f"bench-jobs{jobs}-"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench", "run", suite, "--jobs", str(jobs), "--results-dir", str(out),
                           "--reports-dir", str(out / "reports"), "--no-progress"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{suite} --jobs {jobs}: bench run exited {done.returncode}\n{done.stderr[-2000:]}")
    text = done.stdout + done.stderr
    split = " ".join(text.split("where the time went:", 1)[1].split("records:")[0].split()) if "where the time went" in text else ""
    return wall, next(out.glob("*.jsonl")), split


def records(path: Path) -> tuple[int, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return len(lines), {(r["cell_id"], r["seed"]): r for r in lines}


def latencies(record: dict) -> dict:
    return {name: v["latency_ms"] for name, v in ((record.get("serving") or {}).get("variants") or {}).items()}


def ratios(alone: dict, other: dict) -> tuple[list[float], list[float]]:
    """Per cell-run: other's median step time / alone's, and per served variant other's latency / alone's."""
    steps, lat = [], []
    for key, a in alone.items():
        b = other.get(key)
        if b is None:
            continue
        if a["cost"].get("step_s_median") and b["cost"].get("step_s_median"):
            steps.append(b["cost"]["step_s_median"] / a["cost"]["step_s_median"])
        la, lb = latencies(a), latencies(b)
        lat += [lb[v] / la[v] for v in la if v in lb and la[v]]
    return steps, lat


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.2f}–{max(values):.2f}, {len(values)} figures)" if values else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/quickstart.toml")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ways = {"alone": (args.suite, 1), "turns": (args.suite, args.jobs), "at once": (at_once_copy(args.suite), args.jobs)}
    run(args.suite, 1)  # untimed: zoo bases cached, page cache warm
    walls: dict[str, list[float]] = {w: [] for w in ways}
    steps: dict[str, list[float]] = {w: [] for w in ways if w != "alone"}
    lat: dict[str, list[float]] = {w: [] for w in ways if w != "alone"}
    agree: dict[str, list[str]] = {w: [] for w in ways if w != "alone"}
    names = list(ways)
    for r in range(args.rounds):
        got = {}
        for way in names[r % 3:] + names[:r % 3]:
            wall, path, split = run(*ways[way])
            walls[way].append(wall)
            got[way] = records(path)
            print(f"round {r + 1} {way:<8} {wall:6.1f} s  | {split}")
        n_alone, alone = got["alone"]
        for way in steps:
            n, other = got[way]
            s, lt = ratios(alone, other)
            steps[way] += s
            lat[way] += lt
            same = sum(1 for k in alone if k in other and alone[k]["loss_curve"] == other[k]["loss_curve"]
                       and alone[k]["quality"].get("delta") == other[k]["quality"].get("delta"))
            agree[way].append(f"{n} lines, {len(other)} cell-runs, {same}/{len(alone)} with alone's Δ and loss curve")
    base = statistics.median(walls["alone"])
    for way in ways:
        wall = statistics.median(walls[way])
        line = f"{way:<8} median wall {wall:6.1f} s (× {wall / base:.3f} of alone's)"
        if way != "alone":
            line += (f"; step time / alone's, same round: {spread(steps[way])}; serving latency / alone's: "
                     f"{spread(lat[way])}; records: {'; '.join(agree[way])}")
        print(line)


if __name__ == "__main__":
    main()
