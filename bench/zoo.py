"""Base checkpoints worth adapting for the tiny presets.

No real weights can be downloaded here, and a Δ measured from random weights says how fast a
method trains from scratch, not how well it adapts. So bench pretrains each tiny family on the
*source* split of its bundled scenes data, caches the result, and suites fine-tune it on the
shifted *target* split. A cache entry is keyed by a hash of its recipe: it is rebuilt only when
the recipe (or RECIPE_VERSION, bumped when the model code changes what a recipe produces) changes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bench.plan import stable_hash

RECIPE_VERSION = 1

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
}


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def recipe_id(family: str) -> str:
    return stable_hash({"family": family, "recipe": RECIPES[family], "version": RECIPE_VERSION})


def zoo_path(family: str) -> Path:
    return cache_root() / "zoo" / f"{family}-tiny-{recipe_id(family)}"


def is_built(family: str) -> bool:
    return (zoo_path(family) / "zoo.json").is_file()


def build(family: str, *, emit=None) -> dict:
    """Pretrain the tiny `family` on the source split and save it into the cache (atomic rename)."""
    import torch

    from bench.cell import encode_kwargs, task_settings
    from bench.data.loader import load_dataset
    from bench.methods import apply_method
    from bench.models import get_family
    from bench.models.base import ModelSpec
    from bench.tasks import task_for_family
    from bench.train import train

    recipe = RECIPES[family]
    settings = recipe["train"]
    fam, task = get_family(family), task_for_family(family)
    splits = load_dataset(recipe["dataset"], base_dir=Path.cwd(), seed=settings["seed"])
    torch.manual_seed(settings["seed"])
    loaded = fam.build(ModelSpec(name=f"{family}-zoo", family=family, preset="tiny", weights="random"), device="cpu")
    model = apply_method(loaded, {"name": "zoo", "kind": "full", "freeze": []}, fam)
    ts = task_settings(settings, "cpu")
    encoded = task.encode(loaded, splits.train, ts, **encode_kwargs(task, splits))
    on_step = (lambda s, n, loss: emit("step", s, n, loss)) if emit else None
    torch.manual_seed(settings["seed"])
    result = train(model, task, encoded, loaded, settings, device="cpu", seed=settings["seed"], on_step=on_step)
    quality = task.evaluate(loaded, model, splits, ts)
    target = zoo_path(family)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=target.parent))
    fam.save(loaded, tmp)
    meta = {"family": family, "recipe_id": recipe_id(family), "recipe": recipe, "recipe_version": RECIPE_VERSION,
            "final_loss": result.losses[-1][1], "source_quality": {"metric": quality.metric, "value": quality.value}}
    (tmp / "zoo.json").write_text(json.dumps(meta, indent=2))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return meta
