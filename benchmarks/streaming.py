"""Streaming against the in-memory path it replaced, side by side, on the quickstart's tiny cells.

    .venv/bin/python benchmarks/streaming.py [--rounds 5] [--steps 60]

For each tiny family (LoRA r=8, the quickstart's data and settings, one thread), interleaved rounds of:
  in-memory   the whole training split encoded up front, batches collated in the training process (bench before
              streaming; bench.data.stream.in_memory_batches)
  streamed    bench's default for in-memory data: batches made in the training process, encodings cached
  workers=1   one DataLoader worker reading and processing beside the training thread
Two throughputs per variant, the medians over rounds and their range:
  step        samples per second of step time (the record's samples_per_s: forward, backward, update)
  end-to-end  samples per second of everything the samples cost: the up-front encoding (in-memory), the waits for
              batches and the steps
and the ratio of each median to in-memory's. The issue's bound: streamed within 5 % of in-memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.data.loader import load_dataset
from bench.data.stream import StreamSettings, in_memory_batches, train_batches
from bench.methods import apply_method
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.suite.keys import TRAIN_KEYS
from bench.tasks import task_for_family
from bench.tasks.base import TaskSettings, TrainingBatch, encode_kwargs
from bench.train import train

CELLS = {  # family -> the quickstart's dataset table for it
    "clip": {"format": "scenes", "task": "classification", "label": "object", "split": "target", "train_size": 256, "eval_size": 8},
    "blip2": {"format": "scenes", "task": "caption", "split": "target", "train_size": 256, "eval_size": 8},
    "llava": {"format": "scenes", "task": "vqa", "split": "target", "train_size": 256, "eval_size": 8},
}
SETTINGS = {**{k: key.default for k, key in TRAIN_KEYS.items()}, "batch_size": 16, "lr": 2e-3, "warmup_steps": 5,
            "max_seq_len": 24, "timing_warmup_steps": 3}
LORA = {"name": "lora-r8", "kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": None, "train_full": None}


def one_run(family: str, variant: str, steps: int) -> dict:
    fam, task = get_family(family), task_for_family(family)
    splits = load_dataset(CELLS[family], base_dir=".", seed=0)
    torch.manual_seed(0)
    loaded = fam.build(ModelSpec(name=family, family=family, preset="tiny", weights="random"))
    model = apply_method(loaded, LORA, fam)
    settings = {**SETTINGS, "steps": steps}
    workers = {"in-memory": 0, "streamed": 0, "workers=1": 1}[variant]
    ts = TaskSettings(max_seq_len=24, stream=StreamSettings(num_workers=workers, cache_mb=512))
    started = time.perf_counter()
    if variant == "in-memory":
        encoded = task.encode(loaded, splits.train, ts, **encode_kwargs(task, splits))
        batches = in_memory_batches(encoded, lambda chunk: task.collate(chunk, loaded), batch_size=16, seed=0)
    else:
        batches = train_batches(splits.train, TrainingBatch(task, loaded, ts, splits), batch_size=16, seed=0, stream=ts.stream)
    upfront = time.perf_counter() - started
    result = train(model, task, batches, settings, n_samples=len(splits.train), device="cpu")
    batches.close()
    timed = slice(settings["timing_warmup_steps"], None)
    step_s = sum(result.step_times[timed])
    all_s = upfront + sum(result.step_times) + sum(result.data_waits)
    return {"step": result.samples / step_s, "end-to-end": steps * 16 / all_s, "loss": result.losses[-1][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the quickstart's threads = 1
    variants = ("in-memory", "streamed", "workers=1")
    for family in CELLS:
        runs = {v: [] for v in variants}
        one_run(family, "in-memory", 5)  # warm the imports and caches before anything is timed
        for r in range(args.rounds):
            for v in variants[r % 3:] + variants[:r % 3]:  # interleaved, the order rotated each round
                runs[v].append(one_run(family, v, args.steps))
        losses = {v: {round(x["loss"], 6) for x in runs[v]} for v in variants}
        print(f"\n{family} (LoRA r=8, batch 16, {args.steps} steps, {args.rounds} rounds); final loss per variant: {losses}")
        print(f"  {'variant':<11} {'step samples/s':>26} {'ratio':>6}   {'end-to-end samples/s':>26} {'ratio':>6}")
        base = {m: statistics.median(x[m] for x in runs["in-memory"]) for m in ("step", "end-to-end")}
        for v in variants:
            cols = []
            for m in ("step", "end-to-end"):
                values = [x[m] for x in runs[v]]
                med = statistics.median(values)
                cols.append(f"{med:>9.0f} ({min(values):>6.0f}–{max(values):>6.0f}) {med / base[m]:>6.3f}")
            print(f"  {v:<11} {cols[0]:>33}   {cols[1]:>33}")


if __name__ == "__main__":
    main()
