"""bench's training step on the CPU with torch's default AdamW (a Python loop over the parameters there) against the fused
kernel bench updates with (bench.train.adamw_kernel), side by side.

    .venv/bin/python benchmarks/optimizer_kernel.py [--rounds 5] [--steps 30]

Cells: tiny LLaVA, BLIP-2 and CLIP, full fine-tuning and LoRA r=8, batch 8, one thread, on the bundled scenes data (the
peers benchmark's set-up: benchmarks/peers.py). Each way trains a fresh copy of the same model on the same batches
through bench.train.train; the only difference is the optimizer object. Rounds alternate the order. Printed per cell:
each way's median step time (the median over rounds of each run's median timed step, with the rounds' range), the
ratio fused / default within each round (median and range), and the largest difference of the two ways' losses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (the same cells, batches and settings as the peer comparison)

import bench.train  # noqa: E402
from bench.data.stream import in_memory_batches  # noqa: E402

LORA = {"name": "lora-r8", "kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": None, "train_full": None}
FULL = {"name": "full", "kind": "full", "freeze": []}
CELLS = {
    "llava-tiny full": ("llava", "vqa", FULL),
    "llava-tiny LoRA r=8": ("llava", "vqa", LORA),
    "blip2-tiny full": ("blip2", "caption", FULL),
    "blip2-tiny LoRA r=8": ("blip2", "caption", LORA),
    "clip-tiny full": ("clip", "classification", FULL),
}


def torch_default(params, settings: dict, device: str):
    return torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])


WAYS = {"default": torch_default, "fused": bench.train.make_optimizer}


def run(cell, way: str, steps: int) -> tuple[float, list[float], str]:
    fam, task, loaded, method, encoded = cell
    copied, model = peers.fresh(fam, loaded, method)
    batches = in_memory_batches(encoded, lambda chunk: task.collate(chunk, copied), batch_size=peers.BATCH, seed=0)
    bench.train.make_optimizer = WAYS[way]  # train() builds its optimizer through this name
    try:
        result = bench.train.train(model, task, batches, peers.settings(steps), n_samples=len(encoded), device="cpu")
    finally:
        bench.train.make_optimizer = WAYS["fused"]
    return statistics.median(result.step_times[peers.WARMUP:]), [loss for _, loss in result.losses], result.optimizer_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, (family, task_name, method) in CELLS.items():
        cell = peers.prepare(family, task_name, method)
        steps = {way: [] for way in WAYS}
        ratios, drift, kernels = [], 0.0, {}
        for r in range(args.rounds):
            losses = {}
            for way in (WAYS if r % 2 == 0 else reversed(list(WAYS))):
                step, losses[way], kernels[way] = run(cell, way, args.steps)
                steps[way].append(step)
            ratios.append(steps["fused"][-1] / steps["default"][-1])
            drift = max([drift] + [abs(a - b) for a, b in zip(losses["default"], losses["fused"])])
        print(f"\n{name} (batch {peers.BATCH}, {args.steps} steps, {args.rounds} rounds): median step time")
        for way in WAYS:
            print(f"  {way:<8} ({kernels[way]:<8}) {1e3 * statistics.median(steps[way]):7.2f} ms  "
                  f"(rounds {1e3 * min(steps[way]):.2f}–{1e3 * max(steps[way]):.2f})")
        print(f"  fused / default step time  {statistics.median(ratios):.3f}  (rounds {min(ratios):.3f}–{max(ratios):.3f})"
              f"   largest loss difference {drift:.2e}")


if __name__ == "__main__":
    main()
