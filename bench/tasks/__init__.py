"""One task per family: batches, loss and the quality metric (see base.py)."""

from __future__ import annotations

import importlib

from bench.models.catalog import FAMILIES

TASK_MODULES = {name: info.task_module for name, info in FAMILIES.items()}


def task_for_family(family: str):
    return importlib.import_module(TASK_MODULES[family])
