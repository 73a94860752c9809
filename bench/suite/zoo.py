"""Base checkpoints worth adapting for the tiny presets.

No real weights can be downloaded here, and a Δ measured from random weights says how fast a
method trains from scratch, not how well it adapts. So bench pretrains each tiny family on the
*source* split of its bundled scenes data, caches the result, and suites fine-tune it on the
shifted *target* split. A cache entry is keyed by a hash of its recipe: it is rebuilt only when
the recipe (or RECIPE_VERSION, bumped when the model code changes what a recipe produces) changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.suite.plan import stable_hash

# 2: the vocabulary gained the digits (VQA count answers); 3: pretraining updates with torch's fused AdamW on the CPU
# (647cae9), so a base built since differs at float rounding from one built before, and the greedy answers of what is
# fine-tuned from it differ by points: a base cached before that must not stand in for one built now under one id
RECIPE_VERSION = 3

_COMMON = {"schedule": "cosine", "warmup_steps": 20, "weight_decay": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw",
           "precision": "fp32", "gradient_checkpointing": False, "seed": 1234, "grad_accum": 1, "epochs": None,
           "timing_warmup_steps": 0, "diverge_loss": 1e4, "memory_cap_mb": None, "eval_batch_size": 64,
           "max_new_tokens": 8, "num_beams": 1, "prompt_template": "a photo of a {}", "timeout_s": 900}

RECIPES = {
    "clip": {"dataset": {"format": "scenes", "task": "classification", "split": "source", "label": "object", "train_size": 2048,
                         "eval_size": 128},
             "train": {**_COMMON, "steps": 600, "batch_size": 32, "lr": 2e-3, "max_seq_len": 16}},
    "blip2": {"dataset": {"format": "scenes", "task": "caption", "split": "source", "train_size": 2048, "eval_size": 64},
              "train": {**_COMMON, "steps": 500, "batch_size": 32, "lr": 2e-3, "max_seq_len": 24}},
    "llava": {"dataset": {"format": "scenes", "task": "vqa", "split": "source", "train_size": 2048, "eval_size": 64},
              "train": {**_COMMON, "steps": 500, "batch_size": 32, "lr": 2e-3, "max_seq_len": 24}},
    # the chat families read charts: SmolVLM x ChartQA is the documents' experiment (suites/smolvlm_chartqa.toml)
    "smolvlm": {"dataset": {"format": "charts", "task": "vqa", "split": "source", "train_size": 2048, "eval_size": 64},
                "train": {**_COMMON, "steps": 500, "batch_size": 32, "lr": 2e-3, "max_seq_len": 48}},
    "qwen2_vl": {"dataset": {"format": "charts", "task": "vqa", "split": "source", "train_size": 2048, "eval_size": 64},
                 "train": {**_COMMON, "steps": 500, "batch_size": 32, "lr": 2e-3, "max_seq_len": 48}},
}


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def recipe_id(family: str) -> str:
    return stable_hash({"family": family, "recipe": RECIPES[family], "version": RECIPE_VERSION})


def zoo_path(family: str) -> Path:
    return cache_root() / "zoo" / f"{family}-tiny-{recipe_id(family)}"


def is_built(family: str) -> bool:
    return (zoo_path(family) / "zoo.json").is_file()
