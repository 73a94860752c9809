"""A cell whose training settings sweep some keys (`sweep = {lr = [1e-4, 3e-4, 1e-3]}`): each combination is
trained on the training split less a validation split carved from it, scored there by the task's metric, and only
the pick is evaluated on the evaluation split, which therefore takes no part in the choice.

The validation split is the same for every method and repeat of a dataset: the samples a permutation drawn with a
fixed seed puts last. The pick's trained parameters are kept (on the CPU) while the other trials train, and loaded
into a fresh build for the evaluation. The cell's costs are the pick's (what training that method once costs; the
time split of the run counts every trial); every trial is in the record with its values, validation score and
costs. Repeats after the first train only repeat 0's pick (`winner`) on the same training split. Runs inside the
cell's process.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import replace

from bench.errors import BenchError

VALIDATION_SEED = 0  # one validation split per dataset, whatever the cell's seed


def combinations(sweep: dict) -> list[dict]:
    """Every combination of the swept values, in the order the suite lists them."""
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def carve(splits, size: int):
    """(splits with `size` training samples fewer, those samples): the validation split, never the evaluation one."""
    n = len(splits.train)
    if size >= n:
        raise BenchError(f"validation_size = {size} holds out the whole training split ({n} samples)",
                         where="key 'validation_size'", fix=f"set validation_size below {n}, or use a larger train_size")
    order = list(range(n))
    random.Random(VALIDATION_SEED).shuffle(order)
    held = set(order[n - size:])
    return (replace(splits, train=[s for i, s in enumerate(splits.train) if i not in held]),
            [s for i, s in enumerate(splits.train) if i in held])


def run_sweep(cell, settings: dict, *, seed: int, device: str, splits, zoo_path, on_step, winner: dict | None,
              retention=None, artifact: str | None = None) -> dict:
    """The cell's outcome for its pick (or for `winner`), with `sweep` saying what was tried and chosen."""
    from bench.run.cell import add_phases, attempt, evaluate_trained

    train_splits, validation = carve(splits, settings["validation_size"])
    fixed = {k: v for k, v in settings.items() if k != "sweep"}
    if winner is not None:  # a later repeat: repeat 0's pick, trained on the same data, evaluated as usual
        out = attempt(cell, {**fixed, **winner}, seed=seed, device=device, splits=train_splits, zoo_path=zoo_path,
                      on_step=on_step, retention=retention, artifact=artifact)
        out["sweep"] = _summary(settings, [], winner, len(validation), picked_by="repeat 0")
        return out
    choosing = replace(train_splits, eval=validation)
    trials, outcomes, pick, kept = [], [], None, None
    for values in combinations(settings["sweep"]):
        keep: dict = {}
        out = attempt(cell, {**fixed, **values}, seed=seed, device=device, splits=choosing, zoo_path=zoo_path,
                      on_step=on_step, keep=keep)
        scored = out.pop("tuned", None)
        trials.append(_trial(values, out, scored))
        outcomes.append(out)
        if out["status"] == "ok" and scored is not None and (pick is None or _better(scored, trials[pick]["score"])):
            pick, kept = len(trials) - 1, keep.get("state")
    ok = [i for i, o in enumerate(outcomes) if o["status"] == "ok"]
    if ok and pick is None:  # random weights score nothing: the first trial that trained stands for the cell's cost
        pick = ok[0]
    out = outcomes[pick] if ok else outcomes[0]  # nothing to pick: the first failure is the cell's
    # the time every trial took is the cell's, and every trial trained
    phases = out["cost"]["phases_s"] = _summed_phases(outcomes)
    out["spans"] = [span for o in outcomes for span in o.get("spans", [])]
    out["sweep"] = _summary(settings, trials, trials[pick]["values"] if ok else None, len(validation))
    if not ok:
        return out
    if cell.model["weights"] != "random":  # random weights have no quality: the first trial that ran is the pick
        clock = time.perf_counter()
        out.update(evaluate_trained(cell, {**fixed, **trials[pick]["values"]}, seed=seed, device=device, splits=train_splits,
                                    zoo_path=zoo_path, state=kept, retention=retention, artifact=artifact))
        after = out.pop("phases")  # the pick's build counts as evaluation here: it is rebuilt to be evaluated
        after["evaluate"] = time.perf_counter() - clock - after["serve"] - after.get("wait", 0.0)
        add_phases(phases, after)
    return out


def _better(scored: dict, than: dict) -> bool:
    higher = scored["higher_is_better"]
    return scored["value"] > than["value"] if higher else scored["value"] < than["value"]


def _trial(values: dict, out: dict, scored: dict | None) -> dict:
    cost = out["cost"]
    curve = out.get("loss_curve") or []
    return {"values": values, "status": out["status"], "message": out["message"],
            "validation": scored["value"] if scored else None, "score": scored,
            "peak_memory_mb": cost.get("peak_memory_mb"), "train_wall_s": cost.get("train_wall_s"),
            "final_loss": curve[-1][1] if curve else None}


def _summed_phases(outcomes: list[dict]) -> dict:
    """Where the cell's time went, over every trial: the run's time split counts all of it."""
    from bench.run.cell import add_phases

    total: dict = {}
    for o in outcomes:
        add_phases(total, o["cost"].get("phases_s") or {})
    return total


def _summary(settings: dict, trials: list[dict], chosen: dict | None, validation: int, picked_by: str = "validation") -> dict:
    metric = next((t["score"]["metric"] for t in trials if t["score"]), None)
    return {"keys": list(settings["sweep"]), "chosen": chosen, "picked_by": picked_by, "metric": metric,
            "validation_size": validation, "trials": [{k: v for k, v in t.items() if k != "score"} for t in trials]}
