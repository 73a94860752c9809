"""Pretraining the tiny zoo bases (bench.suite.zoo holds their recipes and cache paths, torch-free): the tiny
architecture with random weights, fully fine-tuned on the source split, saved into the cache."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from bench.suite.zoo import RECIPE_VERSION, RECIPES, recipe_id, zoo_path


def build(family: str, *, emit=None) -> dict:
    """Pretrain the tiny `family` on the source split and save it into the cache (atomic rename)."""
    import torch

    from bench.data.loader import load_dataset
    from bench.data.stream import in_memory_batches
    from bench.methods import apply_method
    from bench.models import get_family
    from bench.models.base import ModelSpec
    from bench.tasks import task_for_family
    from bench.tasks.base import encode_kwargs, task_settings
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
    # the bundled source split is small and in memory: encoded once, batched in this process, as the cache was made
    batches = in_memory_batches(encoded, lambda chunk: task.collate(chunk, loaded), batch_size=settings["batch_size"],
                                seed=settings["seed"])
    result = train(model, task, batches, settings, n_samples=len(encoded), device="cpu", on_step=on_step)
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
