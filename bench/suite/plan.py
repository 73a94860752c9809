"""Expand a suite into cells. A cell is one (model, dataset, method, training settings) point.

Its id is a stable hash of its resolved configuration (names included), so a re-run skips
what is already recorded and any changed setting gives a new id. Repeats share the cell id
and differ by `repeat` (and seed). Nothing here imports torch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from bench.models.catalog import FAMILIES, METHOD_KINDS


@dataclass(frozen=True)
class Cell:
    cell_id: str
    model: dict
    dataset: dict
    method: dict
    train: dict
    skip_reason: str | None = None
    retention: dict | None = None  # a dataset also evaluated on, base and tuned (it does not name the cell)
    sources: tuple[str, ...] = ()  # a composed cell (kind = "merge"): the ids of the cells whose adapters it combines

    @property
    def label(self) -> str:
        return f"{self.model['name']} × {self.dataset['name']} × {self.method['name']}"

    def matches(self, pattern: str) -> bool:
        """--only: a glob over the cell id or 'model/dataset/method'."""
        key = f"{self.model['name']}/{self.dataset['name']}/{self.method['name']}"
        return fnmatch.fnmatch(self.cell_id, pattern) or fnmatch.fnmatch(key, pattern) or pattern in key


def stable_hash(obj, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def expand(suite) -> list[Cell]:
    cells: dict[str, Cell] = {}
    for grid in suite.grids:
        for m in grid.models:
            model = suite.models[m]
            for d in grid.datasets:
                dataset = suite.datasets[d]
                for k in grid.methods:
                    if any(_match(ex, m, d, k) for ex in grid.exclude):
                        continue
                    method = suite.methods[k]
                    train = {**suite.defaults, **model.train, **dataset.train, **method.train, **grid.train}
                    cell = make_cell(model.config, dataset.config, method.config, train)
                    if grid.retention is not None:
                        cell = replace(cell, retention=suite.datasets[grid.retention].config)
                    cells.setdefault(cell.cell_id, cell)  # the same point named by two grids runs once
    from bench.suite.compose import resolve

    return resolve(list(cells.values()))


def make_cell(model: dict, dataset: dict, method: dict, train: dict) -> Cell:
    from bench.suite.keys import TRAIN_KEYS

    if train.get("devices", 1) == 1 and "distributed" in train:
        # one device splits nothing: a strategy set for the suite's multi-device cells neither names nor changes this one
        train = {**train, "distributed": TRAIN_KEYS["distributed"].default}
    if not METHOD_KINDS[method["kind"]].trains:  # a merge trains nothing: a suite-wide sweep or devices skip it
        train = {**train, "sweep": None, "devices": 1, "distributed": TRAIN_KEYS["distributed"].default}
    if not train.get("sweep") and "validation_size" in train:  # likewise: without a sweep nothing is held out
        train = {**train, "validation_size": TRAIN_KEYS["validation_size"].default}
    cell_id = stable_hash({"model": model, "dataset": dataset, "method": method, "train": identity(train)})
    return Cell(cell_id, model, dataset, method, train, _skip_reason(model, method))


def identity(train: dict) -> dict:
    """The training keys that name a cell (see Key.in_id): how its batches are read is not what it measures."""
    from bench.suite.keys import TRAIN_KEYS

    def counts(k, v) -> bool:
        rule = TRAIN_KEYS[k].in_id if k in TRAIN_KEYS else "always"
        return rule == "always" or rule == "unless_default" and v != TRAIN_KEYS[k].default

    return {k: v for k, v in train.items() if counts(k, v)}


def _skip_reason(model: dict, method: dict) -> str | None:
    why = FAMILIES[model["family"]].unsupported_methods.get(method["kind"])
    if why:
        return f"{method['kind']} is not supported on the {model['family']} family: {why}"
    return None


def _match(ex: dict, model: str, dataset: str, method: str) -> bool:
    return all(ex.get(k) in (None, v) for k, v in (("model", model), ("dataset", dataset), ("method", method)))


def base_key(cell: Cell) -> str:
    """Identifies the untuned model's evaluation, shared by every method and repeat on the same (model, dataset).

    Pretrained and zoo weights are fixed, so the seed plays no part; random weights have no quality at all. The task's
    and its metrics' versions are part of it.
    """
    from bench.metrics import evaluation_versions

    evaluation = {k: cell.train[k] for k in ("max_new_tokens", "num_beams", "prompt_template", "max_seq_len", "eval_batch_size")}
    # a revised evaluation or metric measures the base again rather than reuse a number that meant something else
    evaluation["versions"] = evaluation_versions(cell.dataset["task"])
    return stable_hash({"model": cell.model, "dataset": cell.dataset, "eval": evaluation})


def retention_cell(cell: Cell) -> Cell:
    """The cell as it would be on its retention dataset: what keys and measures the untuned quality there."""
    return make_cell(cell.model, cell.retention, cell.method, cell.train)


def results_path(results_dir: str | Path, suite_name: str) -> Path:
    from bench.paths import inside

    return inside(results_dir, f"{suite_name}.jsonl")
