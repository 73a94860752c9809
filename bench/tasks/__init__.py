"""One task per family: batches, loss and the quality metric (see base.py)."""

from __future__ import annotations

import importlib

TASK_MODULES = {
    "clip": "bench.tasks.contrastive",
    "blip2": "bench.tasks.captioning",
    "llava": "bench.tasks.instruct",
}


def task_for_family(family: str):
    return importlib.import_module(TASK_MODULES[family])
