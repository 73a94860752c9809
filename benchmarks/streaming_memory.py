"""Host memory of a streamed run against dataset size: a LoRA cell on 50,000 images on disk vs a 1,000-image copy.

    .venv/bin/python benchmarks/streaming_memory.py [--n 50000] [--small 1000] [--rounds 2] [--work DIR]

`--num-workers 0` runs the same with batches made in the training process (no worker process).

Writes the bundled scenes to disk as a LLaVA JSON dataset (`bench data make`, 224 px JPEG, timed), then
runs the same suite twice per round, interleaved: tiny LLaVA (the zoo base) with LoRA r=8, 100 steps of
batch 8, evaluated on the same 512 held-out records, once on all the other records and once on the first
`--small` of them. A poller samples the whole process tree of `bench run` every 0.1 s (the runner, its
forkserver, the cell's process and its DataLoader workers) and keeps the peak of the summed RSS (what the
issue bounds; pages shared between the processes count once per process, so this over-counts) and of the
summed PSS (shared pages split between their sharers: the tree's real footprint). The issue's bounds:
the large run's peak RSS within 10 % of the small run's, and under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SUITE = """
[suite]
name = "{name}"

[defaults]
steps = 100
batch_size = 8
max_seq_len = 32
eval_batch_size = 64
max_new_tokens = 8
timeout_s = 1800
{workers}
[models.llava-tiny]
family = "llava"
preset = "tiny"

[datasets.disk]
format = "llava"
path = "{train}"
eval_path = "{eval}"

[methods.lora-r8]
kind = "lora"
r = 8

[[grid]]
models = ["llava-tiny"]
datasets = ["disk"]
methods = ["lora-r8"]
"""


class TreePeak:
    """Peak summed RSS and PSS (MB) of a process and all its descendants, sampled on a thread."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.root, self.every_s = psutil.Process(pid), every_s
        self.rss = self.pss = 0.0
        self.most_processes = 0
        self.at_peak: list[tuple[str, float, float]] = []  # (process, RSS MB, PSS MB) when the summed RSS peaked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            procs, each = [], []
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                pass
            for p in procs:
                try:
                    info = p.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                    each.append((_role(p), info.rss / 2**20, info.pss / 2**20))
                except psutil.Error:  # a process that ended between the listing and the read
                    pass
            if rss / 2**20 > self.rss:
                self.at_peak = each
            self.rss, self.pss = max(self.rss, rss / 2**20), max(self.pss, pss / 2**20)
            self.most_processes = max(self.most_processes, len(procs))
            time.sleep(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _role(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    return "forkserver" if "forkserver" in cmd else "resource_tracker" if "resource_tracker" in cmd else \
        "bench run" if " run " in cmd else f"pid {p.pid}"


def make_data(work: Path, n: int, small: int) -> dict:
    data = work / "data"
    if not (data / "llava.json").exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench", "data", "make", "scenes", "--n", str(n), "--format", "llava",
                        "--out", str(data), "--image-size", "224"], check=True)
        print(f"made {n:,} images at 224 px in {time.perf_counter() - started:.0f} s "
              f"({sum(f.stat().st_size for f in (data / 'images').iterdir()) / 2**20:.0f} MB on disk)")
    records = json.loads((data / "llava.json").read_text())
    held_out, rest = records[-512:], records[:-512]
    files = {"eval": held_out, "large": rest, "small": rest[:small]}
    for name, recs in files.items():
        (data / f"{name}.json").write_text(json.dumps(recs))
    return {name: len(recs) for name, recs in files.items()}


def run_once(work: Path, size: str, workers: int | None) -> dict:
    name = f"stream-{size}"
    suite = work / f"{name}.toml"
    suite.write_text(SUITE.format(name=name, train=work / "data" / f"{size}.json", eval=work / "data" / "eval.json",
                                  workers="" if workers is None else f"num_workers = {workers}"))
    results = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--results-dir", str(results / "results"),
                             "--reports-dir", str(results / "reports")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = TreePeak(proc.pid)
    out, _ = proc.communicate()
    peak.stop()
    record = [json.loads(line) for line in (results / "results" / f"{name}.jsonl").read_text().splitlines()][-1]
    cost = record["cost"]
    return {"size": size, "rc": proc.returncode, "wall_s": time.perf_counter() - started, "rss_mb": peak.rss,
            "pss_mb": peak.pss, "processes": peak.most_processes, "at_peak": peak.at_peak, "status": record["status"],
            "message": record.get("message", "")[:200], "train": record["dataset"].get("train_size"),
            "eval_n": (record.get("quality") or {}).get("n_eval"), "samples_per_s": cost.get("samples_per_s"),
            "data_wait_pct": cost.get("data_wait_pct"), "num_workers": cost.get("num_workers"), "tail": out[-400:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=None, help="the suite's num_workers (default: bench's own)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench-streaming-memory"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = make_data(work, args.n, args.small)
    print(f"records: {sizes}")
    runs = []
    for r in range(args.rounds):
        for size in (("large", "small") if r % 2 == 0 else ("small", "large")):
            run = run_once(work, size, args.num_workers)
            runs.append(run)
            print(f"  {size:<5} rc {run['rc']} {run['status']:<5} train {run['train']:>6,} eval {run['eval_n']} | "
                  f"peak tree RSS {run['rss_mb']:7.0f} MB, PSS {run['pss_mb']:7.0f} MB, {run['processes']} processes | "
                  f"{run['wall_s']:5.0f} s, {run['samples_per_s']} samples/s, data wait {run['data_wait_pct']} %, "
                  f"workers {run['num_workers']} {run['message']}")
            print("        at the peak: " + ", ".join(f"{name} {rss:.0f}/{pss:.0f}" for name, rss, pss in run["at_peak"]))
            if run["rc"] != 0 or run["status"] != "ok":
                print(run["tail"])
    for metric in ("rss_mb", "pss_mb"):
        large = statistics.median(r[metric] for r in runs if r["size"] == "large")
        small = statistics.median(r[metric] for r in runs if r["size"] == "small")
        print(f"median peak {metric[:3].upper()}: {large:.0f} MB ({sizes['large']:,} records) vs {small:.0f} MB "
              f"({sizes['small']:,}): ratio {large / small:.3f}")


if __name__ == "__main__":
    main()
