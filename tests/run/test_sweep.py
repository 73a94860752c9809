"""A sweep (bench/run/sweep.py): the validation split it picks by is carved from the training data, the evaluation
split takes no part in the pick, and the pick alone is evaluated, once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data.sample import DatasetSplits, Sample
from bench.errors import BenchError
from bench.run.sweep import carve, combinations, run_sweep
from bench.suite.plan import Cell


def samples(labels) -> list[Sample]:
    return [Sample(image=None, label=label) for label in labels]


CELL = Cell("c", {"name": "m", "family": "clip", "weights": "pretrained"}, {"name": "d"}, {"name": "lora", "kind": "lora"},
            {"sweep": {"lr": [1e-4, 1e-3, 1e-2]}, "validation_size": 8})
SETTINGS = dict(CELL.train, precision="fp32", gradient_checkpointing=False)


def outcome(**cost) -> dict:
    return {"status": "ok", "message": "", "params": {}, "loss_curve": [[1, 1.0]], "diverged_at_step": None,
            "cost": {"phases_s": {"train": 1.0, "evaluate": 0.5}, "peak_memory_mb": 1.0, "train_wall_s": 1.0, **cost}}


def fake_training(monkeypatch, seen: dict):
    """attempt and evaluate_trained of bench.run.cell, replaced: a trial scores lr × Σ labels of what it is scored on
    (so which samples decide the pick is visible), keeps its lr as its 'trained state'; every evaluated split noted."""

    def attempt(cell, settings, *, splits, keep=None, **_):
        seen.setdefault("trained_on", []).append(list(splits.train))
        seen.setdefault("scored_on", []).append(list(splits.eval))
        if keep is not None:
            keep["state"] = {"lr": settings["lr"]}
        score = settings["lr"] * sum(s.label for s in splits.eval) * (1 if settings["lr"] != 1e-2 else -1)
        return {**outcome(), "tuned": {"metric": "acc", "value": score, "higher_is_better": True}}

    def evaluate_trained(cell, settings, *, splits, state, **_):
        seen.setdefault("evaluated", []).append((list(splits.eval), state["lr"], settings["lr"]))
        return {"tuned": {"metric": "acc", "value": 50.0, "higher_is_better": True}, "retained": None, "artifact": None,
                "serving": None, "phases": {"evaluate": 0.0, "serve": 0.0}}

    monkeypatch.setattr("bench.run.cell.attempt", attempt)
    monkeypatch.setattr("bench.run.cell.evaluate_trained", evaluate_trained)


@pytest.mark.parametrize("eval_labels", [[0] * 10, [1000] * 10, list(range(10))])
def test_the_evaluation_split_never_touches_the_pick_and_only_the_pick_is_evaluated(monkeypatch, eval_labels):
    seen: dict = {}
    fake_training(monkeypatch, seen)
    train, evaluation = samples(range(100, 140)), samples(eval_labels)
    out = run_sweep(CELL, SETTINGS, seed=0, device="cpu", splits=DatasetSplits("classification", train, evaluation),
                    zoo_path=None, on_step=None, winner=None)
    assert out["sweep"]["chosen"] == {"lr": 1e-3}  # whatever the evaluation split holds
    assert [t["values"]["lr"] for t in out["sweep"]["trials"]] == [1e-4, 1e-3, 1e-2]
    ids = {id(s) for s in evaluation}
    for trained, scored in zip(seen["trained_on"], seen["scored_on"]):
        assert not ids & {id(s) for s in trained + scored}  # the trials never see an evaluation sample
        assert len(scored) == 8 and not {id(s) for s in scored} & {id(s) for s in trained}  # validation: held out
    [(evaluated, state, lr)] = seen["evaluated"]  # one evaluation on the evaluation split: the pick's trained state
    assert evaluated == evaluation and state == lr == 1e-3
    assert out["tuned"]["value"] == 50.0 and out["cost"]["phases_s"]["train"] == 3.0  # every trial's time counted


def test_a_later_repeat_trains_the_pick_on_the_same_split_without_trying_the_rest(monkeypatch):
    seen: dict = {}
    fake_training(monkeypatch, seen)
    train, evaluation = samples(range(40)), samples([1] * 5)
    out = run_sweep(CELL, SETTINGS, seed=1, device="cpu", splits=DatasetSplits("classification", train, evaluation),
                    zoo_path=None, on_step=None, winner={"lr": 1e-2})
    [trained] = seen["trained_on"]
    assert out["sweep"]["picked_by"] == "repeat 0" and out["sweep"]["trials"] == [] and len(trained) == 32
    assert seen["scored_on"] == [evaluation]  # trained with the pick, evaluated as any cell


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 300), size=st.integers(1, 299))
def test_the_validation_split_is_carved_from_training_the_same_for_every_cell(n, size):
    splits = DatasetSplits("classification", samples(range(n)), samples([0]))
    if size >= n:
        with pytest.raises(BenchError, match="validation_size"):
            carve(splits, size)
        return
    rest, held = carve(splits, size)
    assert len(held) == size and len(rest.train) == n - size and rest.eval == splits.eval
    assert sorted(s.label for s in rest.train + held) == list(range(n))
    again_rest, again_held = carve(splits, size)
    assert [s.label for s in again_held] == [s.label for s in held]  # one split per dataset, whatever the cell


def test_combinations_in_the_order_the_suite_lists_them():
    assert combinations({"lr": [1, 2], "weight_decay": [0.0, 0.1]}) == [
        {"lr": 1, "weight_decay": 0.0}, {"lr": 1, "weight_decay": 0.1}, {"lr": 2, "weight_decay": 0.0},
        {"lr": 2, "weight_decay": 0.1}]


def test_every_trial_failing_is_the_cells_failure(monkeypatch):
    def attempt(cell, settings, **_):
        return {**outcome(), "status": "oom", "message": f"out of memory at lr {settings['lr']}"}

    monkeypatch.setattr("bench.run.cell.attempt", attempt)
    out = run_sweep(CELL, SETTINGS, seed=0, device="cpu", splits=DatasetSplits("classification", samples(range(20)), []),
                    zoo_path=None, on_step=None, winner=None)
    assert out["status"] == "oom" and out["message"] == "out of memory at lr 0.0001" and out["sweep"]["chosen"] is None
