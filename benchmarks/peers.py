"""bench's training step against the same step in a bare PyTorch loop, `transformers.Trainer` and TRL's `SFTTrainer`, side by side.

    .venv/bin/python benchmarks/peers.py [--rounds 7] [--steps 40] [--save results/baselines/peers-cpu.json]

Cells: tiny LLaVA + LoRA r=8 (instruction SFT) and tiny BLIP-2 full fine-tuning (captioning), batch 8, AdamW (torch's fused
kernel in every way: bench's on the CPU, and Trainer's default optimizer, adamw_torch_fused),
cosine schedule, fp32, one thread, on the bundled scenes data. Each way trains a fresh copy of the same model
on the same encoded samples:
  bench       bench.train.train over the seeded in-memory batches (what a cell runs)
  bare        for batch: loss = model(**batch).loss; backward; clip; AdamW step; scheduler step; zero_grad
  Trainer     transformers.Trainer with the task's collate as data collator (no eval, no saving, no logging)
  SFTTrainer  (the instruction cell only) TRL's SFTTrainer with the Trainer way's settings, the encoded samples as a
              datasets.Dataset (checked to give back the same tensors), dataset preparation skipped
              (dataset_kwargs={"skip_prepare_dataset": True}, no packing, no padding-free, no truncation) and the
              task's collate as data collator; SFTConfig's own defaults of bf16 and gradient checkpointing turned
              off. It still trains its own way: it patches the model with its fused LM head and computes the loss
              from per-token log-probabilities of the labelled positions only (the same value as the model's own
              loss, to float rounding), plus its per-step entropy and token-accuracy metrics.
Step time is taken around forward, backward and update only (Trainer, SFTTrainer: on_step_begin → on_step_end,
which leaves their batch fetching out too); warm-up steps excluded; the median per run, then the median over
rounds and its range. Printed: bench / bare step-time ratio (≤ 1.02 is the issue's bound) and bench / Trainer and
bench / SFTTrainer samples-per-second ratios (≥ 1.0), each the median of the ratios within a round, with their range.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import time
from pathlib import Path

import torch

from bench.data.scenes import scenes_dataset
from bench.data.stream import in_memory_batches
from bench.methods import apply_method
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.suite.keys import TRAIN_KEYS
from bench.tasks import task_for_family
from bench.tasks.base import TaskSettings
from bench.train import make_optimizer, train

CELLS = {
    "llava-tiny LoRA r=8": ("llava", "vqa", {"name": "lora-r8", "kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                                              "targets": None, "train_full": None}),
    "blip2-tiny full": ("blip2", "caption", {"name": "full", "kind": "full", "freeze": []}),
}
# the peers every cell is trained with; TRL's SFTTrainer is an instruction-SFT trainer, so it runs on the instruction cell only
WAYS = ("bench", "bare", "Trainer")
EXTRA_WAYS = {"llava-tiny LoRA r=8": ("SFTTrainer",)}
BATCH, WARMUP = 8, 5


def settings(steps: int) -> dict:
    return {**{k: key.default for k, key in TRAIN_KEYS.items()}, "steps": steps, "batch_size": BATCH, "lr": 1e-3,
            "warmup_steps": 2, "max_seq_len": 24, "timing_warmup_steps": WARMUP}


def prepare(family: str, task_name: str, method: dict):
    fam, task = get_family(family), task_for_family(family)
    splits = scenes_dataset(task_name, train_size=128, eval_size=1)
    torch.manual_seed(0)
    loaded = fam.build(ModelSpec(name=family, family=family, preset="tiny", weights="random"))
    encoded = task.encode(loaded, splits.train, TaskSettings(max_seq_len=24))
    return fam, task, loaded, method, encoded


def fresh(fam, loaded, method):
    copied = copy.deepcopy(loaded)
    torch.manual_seed(0)
    return copied, apply_method(copied, method, fam)


def run_bench(cell, steps: int) -> list[float]:
    fam, task, loaded, method, encoded = cell
    copied, model = fresh(fam, loaded, method)
    batches = in_memory_batches(encoded, lambda chunk: task.collate(chunk, copied), batch_size=BATCH, seed=0)
    return train(model, task, batches, settings(steps), n_samples=len(encoded), device="cpu").step_times


def run_bare(cell, steps: int) -> list[float]:
    from transformers import get_scheduler

    fam, task, loaded, method, encoded = cell
    copied, model = fresh(fam, loaded, method)
    s = settings(steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, s, "cpu")
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=s["warmup_steps"], num_training_steps=steps)
    batches = in_memory_batches(encoded, lambda chunk: task.collate(chunk, copied), batch_size=BATCH, seed=0)
    model.train()
    times = []
    for _ in range(steps):
        batch = next(batches)
        start = time.perf_counter()
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def _step_times(times: list[float]):
    """A Trainer callback that appends each step's time (on_step_begin -> on_step_end: batch fetching left out)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    return StepTimes()


def _trainer_args(scratch: Path, steps: int) -> dict:
    """What Trainer and SFTTrainer are both given: the bench cell's optimizer, schedule and batch; nothing else runs."""
    return dict(output_dir=str(scratch), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=1e-3,
                lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch_fused",
                use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no",
                dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True)


def run_trainer(cell, steps: int, scratch: Path) -> list[float]:
    from transformers import Trainer, TrainingArguments

    fam, task, loaded, method, encoded = cell
    copied, model = fresh(fam, loaded, method)
    times: list[float] = []
    trainer = Trainer(model=model, args=TrainingArguments(**_trainer_args(scratch, steps)), train_dataset=encoded,
                      data_collator=lambda chunk: task.collate(chunk, copied), callbacks=[_step_times(times)])
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its own summary dict at the end
        trainer.train()
    return times


def run_sft_trainer(cell, steps: int, scratch: Path) -> list[float]:
    """TRL's SFTTrainer on the already-encoded samples: preparation skipped, the task's collate as data collator, and
    every training setting the Trainer way has (SFTConfig's own defaults turn on bf16, gradient checkpointing and
    truncation at 1024 tokens, so they are turned off here)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    fam, task, loaded, method, encoded = cell
    copied, model = fresh(fam, loaded, method)
    times: list[float] = []
    args = SFTConfig(**_trainer_args(scratch, steps), bf16=False, activation_checkpointing=False, max_length=None,
                     packing=False, padding_free=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=model, args=args, train_dataset=encoded_dataset(encoded, Dataset),
                         data_collator=lambda chunk: task.collate(chunk, copied), processing_class=loaded.processor,
                         callbacks=[_step_times(times)])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    return times


def encoded_dataset(encoded: list[dict], dataset_cls):
    """The encoded samples as a `datasets.Dataset` (SFTTrainer takes nothing else) that gives back the same tensors:
    same values, dtypes and shapes, checked here."""
    dataset = dataset_cls.from_list([{k: v.numpy() for k, v in e.items()} for e in encoded]).with_format("torch")
    for e, row in zip(encoded, dataset):
        if e.keys() != row.keys() or any(e[k].dtype != row[k].dtype or not torch.equal(e[k], row[k]) for k in e):
            raise AssertionError("the encoded samples did not survive the round trip through datasets.Dataset")
    return dataset


RUNNERS = {"bench": run_bench, "bare": run_bare, "Trainer": run_trainer, "SFTTrainer": run_sft_trainer}


def run_way(way: str, cell, steps: int, scratch: Path) -> list[float]:
    if way in ("bench", "bare"):
        return RUNNERS[way](cell, steps)
    return RUNNERS[way](cell, steps, scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when bench's step is over 1.5 × the bare loop's or its samples/s under 0.67 × Trainer's or "
                             "SFTTrainer's (generous: .ci/run's short form catches a gross regression, not this machine's noise)")
    parser.add_argument("--save", default=None, help="write the medians and ratios as JSON (e.g. results/baselines/peers-cpu.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    report = {"rounds": args.rounds, "steps": args.steps, "batch_size": BATCH, "threads": 1, "cells": {}}
    for name, (family, task_name, method) in CELLS.items():
        ways = WAYS + EXTRA_WAYS.get(name, ())
        cell = prepare(family, task_name, method)
        medians: dict[str, list[float]] = {w: [] for w in ways}
        run_bench(cell, WARMUP + 2)  # imports and first-use costs before anything is timed
        for r in range(args.rounds):
            for way in ways[r % len(ways):] + ways[:r % len(ways)]:  # interleaved, the order rotated each round
                times = run_way(way, cell, args.steps, scratch)
                medians[way].append(statistics.median(times[WARMUP:]))
        med = {w: statistics.median(v) for w, v in medians.items()}
        # ratios paired within each round (the ways ran back to back), then their median and range: a machine that
        # slows down for a while moves all the ways of a round together. bench / bare compares step times (over 1 is
        # bench slower); bench / Trainer and bench / SFTTrainer compare samples/s (over 1 is bench faster)
        ratios = {"bench_over_bare_step": [b / r for b, r in zip(medians["bench"], medians["bare"])]}
        for peer, key in (("Trainer", "bench_over_trainer_samples_per_s"), ("SFTTrainer", "bench_over_sft_trainer_samples_per_s")):
            if peer in ways:
                ratios[key] = [t / b for t, b in zip(medians[peer], medians["bench"])]
        print(f"\n{name} (batch {BATCH}, {args.steps} steps, {args.rounds} rounds): median step time")
        for w in ways:
            print(f"  {w:<10} {med[w] * 1e3:7.2f} ms  (rounds {min(medians[w]) * 1e3:.2f}–{max(medians[w]) * 1e3:.2f})  "
                  f"{BATCH / med[w]:7.1f} samples/s")
        for key, values in ratios.items():
            label = "bench / bare step time" if key == "bench_over_bare_step" else \
                f"bench / {'SFTTrainer' if 'sft' in key else 'Trainer'} samples/s"
            print(f"  {label:<30} {statistics.median(values):.3f}  (rounds {min(values):.3f}–{max(values):.3f})")
        report["cells"][name] = {"median_step_ms": {w: round(med[w] * 1e3, 3) for w in ways},
                                 "range_step_ms": {w: [round(min(v) * 1e3, 3), round(max(v) * 1e3, 3)] for w, v in medians.items()},
                                 **{key: round(statistics.median(v), 4) for key, v in ratios.items()},
                                 "range_ratios": {key: [round(min(v), 4), round(max(v), 4)] for key, v in ratios.items()}}
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nsaved: {args.save}")
    if args.check:
        bad = [n for n, c in report["cells"].items()
               if c["bench_over_bare_step"] > 1.5 or c["bench_over_trainer_samples_per_s"] < 0.67
               or c.get("bench_over_sft_trainer_samples_per_s", 1.0) < 0.67]
        if bad:
            raise SystemExit(f"bench's training step regressed against its peers on: {', '.join(bad)}")
        print("peer check passed")


if __name__ == "__main__":
    main()
