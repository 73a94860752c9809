"""bench.train: the loop on a real tiny LLaVA (scenes VQA) — learning, accumulation, divergence, determinism, schedule."""

from __future__ import annotations

import copy
import math
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bench.data.scenes import scenes_dataset
from bench.data.stream import in_memory_batches
from bench.errors import BenchError, DataError
from bench.methods import apply_method
from bench.models import llava
from bench.models.base import ModelSpec
from bench.suite.keys import TRAIN_KEYS
from bench.tasks import instruct as task
from bench.tasks.base import task_settings
from bench.train import Diverged, total_steps, train

FULL = {"name": "full", "kind": "full", "freeze": []}
LORA = {"name": "lora", "kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.1, "targets": None, "train_full": None}
SETTINGS = {**{k: v.default for k, v in TRAIN_KEYS.items()}, "steps": 3, "batch_size": 4, "max_seq_len": 24,
            "timing_warmup_steps": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two torch threads on a 2-core machine shared with other jobs spin-wait badly (2 s steps instead of 20 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base():
    return llava.build(ModelSpec(name="llava-t", family="llava", preset="tiny", weights="random"))


@pytest.fixture(scope="module")
def encoded(base):
    samples = scenes_dataset("vqa", train_size=16, eval_size=0).train
    out = task.encode(base, samples, task_settings(SETTINGS, "cpu"))
    # every scenes answer is one word + </s>: equal label counts make the mean of micro-batch means the batch mean
    assert {int((e["labels"] != -100).sum()) for e in out} == {2}
    return out


def fresh(base, method=FULL, seed: int = 0):
    """A copy of the base model with the method applied (adapter init drawn from `seed`, as bench.run.cell does)."""
    loaded = copy.deepcopy(base)
    torch.manual_seed(seed)
    return loaded, apply_method(loaded, method, llava)


def fit(model, task, encoded, loaded, settings, *, seed: int = 0, **kwargs):
    """bench.train.train over pre-encoded samples in the seeded order (the in-memory reference of bench.data.stream)."""
    batches = in_memory_batches(encoded, lambda chunk: task.collate(chunk, loaded), batch_size=settings["batch_size"], seed=seed)
    return train(model, task, batches, settings, n_samples=len(encoded), device="cpu", **kwargs)


def run(base, encoded, model_and_loaded=None, *, seed: int = 0, **settings):
    loaded, model = model_and_loaded or fresh(base)
    return model, fit(model, task, encoded, loaded, {**SETTINGS, **settings}, seed=seed)


def batch_loss(model, loaded, encoded) -> float:
    model.eval()
    with torch.no_grad():
        return float(task.loss(model, task.collate(encoded, loaded)))


def test_a_few_steps_lower_the_loss(base, encoded):
    loaded, model = fresh(base)
    before = batch_loss(model, loaded, encoded)
    _, result = run(base, encoded, (loaded, model), steps=12, lr=3e-3)
    after = batch_loss(model, loaded, encoded)
    assert after < 0.8 * before, (before, after)
    assert [s for s, _ in result.losses] == list(range(1, 13))
    assert result.losses[-1][1] < result.losses[0][1]
    assert result.samples == 12 * 4 and result.real_tokens > 0 and result.padded_tokens >= result.real_tokens
    assert len(result.step_times) == 12 and all(t > 0 for t in result.step_times)


def parameter_update(base, encoded, **settings) -> torch.Tensor:
    """All parameters after one optimizer step minus before, flattened."""
    loaded, model = fresh(base)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    run(base, encoded, (loaded, model), steps=1, **settings)
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before


def test_accumulation_4x2_makes_the_same_first_update_as_8x1(base, encoded):
    # SGD: the first update is lr × gradient, so a wrong accumulation scale shows (AdamW's first step is
    # ~lr × sign(g) and would hide it). No clipping, constant lr; the tiny LLaVA has no dropout.
    common = {"optimizer": "sgd", "lr": 0.5, "max_grad_norm": 0, "schedule": "constant", "warmup_steps": 0}
    one = parameter_update(base, encoded, batch_size=8, grad_accum=1, **common)
    accumulated = parameter_update(base, encoded, batch_size=4, grad_accum=2, **common)
    first_half = parameter_update(base, encoded, batch_size=4, grad_accum=1, **common)
    assert one.norm() > 0
    assert (one - accumulated).norm() / one.norm() < 1e-4
    assert (one - first_half).norm() / one.norm() > 0.05  # the test can tell four samples from eight


def test_accumulation_reports_the_mean_micro_batch_loss(base, encoded):
    _, eight = run(base, encoded, steps=1, batch_size=8, grad_accum=1)
    _, four_by_two = run(base, encoded, steps=1, batch_size=4, grad_accum=2)
    assert four_by_two.losses[0][1] == pytest.approx(eight.losses[0][1], abs=1e-5)
    assert four_by_two.samples == eight.samples == 8


def test_the_loss_is_read_once_per_optimizer_step_not_per_micro_batch(base, encoded, monkeypatch):
    """`.item()` waits for the device: with accumulation 4 it must run once per step (3), not per micro-batch (12)."""
    reads = []
    real_item = torch.Tensor.item

    def counted(tensor):
        if sys._getframe(1).f_globals.get("__name__") == "bench.train":  # the loop's own reads, not the model's
            reads.append(tensor.shape)
        return real_item(tensor)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    _, result = run(base, encoded, steps=3, batch_size=2, grad_accum=4)
    assert len(reads) == 3 and len(result.losses) == 3


def test_a_nan_producing_learning_rate_raises_diverged_at_that_step(base, encoded):
    with pytest.raises(Diverged) as info:
        run(base, encoded, steps=6, lr=1e20, optimizer="sgd", max_grad_norm=0, schedule="constant")
    exc = info.value
    assert exc.step == 2 and math.isnan(exc.loss)  # step 1 scores the initial weights; its update blows them up
    assert exc.losses[-1][0] == 2 and math.isfinite(exc.losses[0][1])


def test_a_loss_above_diverge_loss_raises_diverged(base, encoded):
    with pytest.raises(Diverged) as info:
        run(base, encoded, steps=6, lr=1e3, optimizer="sgd", max_grad_norm=0, schedule="constant", diverge_loss=100.0)
    assert info.value.step == 2 and 100.0 < info.value.loss < math.inf
    assert [s for s, _ in info.value.losses] == [1, 2]


def curve(base, encoded, *, init_seed: int, seed: int) -> list:
    _, result = run(base, encoded, fresh(base, LORA, seed=init_seed), seed=seed, steps=5, lr=5e-3)
    return result.losses


def test_the_same_seed_gives_the_same_loss_curve_and_another_seed_another(base, encoded):
    first = curve(base, encoded, init_seed=0, seed=0)
    assert curve(base, encoded, init_seed=0, seed=0) == first  # bit-identical on the CPU, adapter dropout included
    assert curve(base, encoded, init_seed=1, seed=1) != first
    other_order = curve(base, encoded, init_seed=0, seed=1)  # the seed alone reshuffles the batches
    assert other_order != first and other_order[0] != first[0]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_the_schedule_warms_up_then_decays(base, encoded, schedule):
    lr, warmup, steps = 1e-3, 3, 10
    _, result = run(base, encoded, steps=steps, lr=lr, warmup_steps=warmup, schedule=schedule)

    def expected(step: int) -> float:  # transformers' get_scheduler; step k uses the value after k-1 scheduler steps
        k = step - 1
        if k < warmup:
            return lr * k / warmup  # linear warm-up from 0: the first step does not move the weights
        progress = (k - warmup) / (steps - warmup)
        return {"cosine": lr * 0.5 * (1 + math.cos(math.pi * progress)), "linear": lr * (1 - progress), "constant": lr}[schedule]

    assert result.lrs == pytest.approx([expected(s) for s in range(1, steps + 1)], abs=1e-12)
    assert result.lrs[warmup] == pytest.approx(lr)  # the peak is reached right after warm-up


def test_epochs_become_optimizer_steps(base, encoded):
    assert total_steps({"epochs": 2, "batch_size": 4, "grad_accum": 2, "steps": 99}, 16) == 4  # 2 × 16 / 8
    assert total_steps({"epochs": 1, "batch_size": 4, "grad_accum": 1, "steps": 99}, 10) == 3  # a short tail is a step
    assert total_steps({"epochs": 0.1, "batch_size": 8, "grad_accum": 1, "steps": 99}, 16) == 1  # never zero
    assert total_steps({"epochs": None, "batch_size": 8, "grad_accum": 1, "steps": 7}, 16) == 7
    _, result = run(base, encoded, epochs=1.0, steps=50)
    assert result.steps == 4 and len(result.losses) == 4 and len(result.lrs) == 4


def test_the_optimizer_state_is_measured_after_the_first_step(base, encoded):
    # LoRA + projector: every trainable tensor gets a gradient (under full fine-tuning the vision tower's last
    # layer gets none, since LLaVA reads the second-to-last, and AdamW keeps no state for it)
    model, result = run(base, encoded, fresh(base, {**LORA, "dropout": 0.0}), steps=1)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 4 + 8  # projector weights and biases, lora_A and lora_B on 2 layers × (q_proj, v_proj)
    # AdamW keeps exp_avg and exp_avg_sq (fp32) per parameter, plus a 4-byte float32 `step` tensor per tensor
    assert result.optimizer_state_bytes == sum(2 * 4 * p.numel() for p in params) + 4 * len(params)


def test_a_method_that_trains_nothing_is_a_bench_error(base, encoded):
    loaded, model = fresh(base)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(BenchError, match="no trainable parameter"):
        fit(model, task, encoded, loaded, SETTINGS, seed=0)


def test_bitsandbytes_optimizers_need_cuda(base, encoded):
    with pytest.raises(BenchError, match="needs a CUDA device"):
        run(base, encoded, optimizer="paged_adamw_8bit")


FAMILY_DATA = {"clip": "classification", "blip2": "caption", "llava": "vqa"}
METHODS = {
    "full": {"name": "full", "kind": "full", "freeze": []},
    "lora": {"name": "lora", "kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None},
    "ia3": {"name": "ia3", "kind": "ia3", "targets": None, "train_full": None},
    "qlora": {"name": "qlora", "kind": "qlora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None,
              "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"},
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", sorted(FAMILY_DATA))
def test_every_family_trains_a_step_with_every_method(family, method):
    """The issue's matrix: each family × method builds, adapts, and takes optimizer steps that move the trainable weights."""
    import torch

    from bench.data.loader import load_dataset
    from bench.methods import apply_method, quantization_config
    from bench.models import get_family
    from bench.models.base import ModelSpec
    from bench.tasks import task_for_family
    from bench.tasks.base import task_settings

    fam, task = get_family(family), task_for_family(family)
    splits = load_dataset({"format": "scenes", "task": FAMILY_DATA[family], "train_size": 8, "eval_size": 4}, base_dir=".")
    spec = METHODS[method]
    loaded = fam.build(ModelSpec(name="t", family=family, preset="tiny", weights="random"),
                       quantization=quantization_config(spec, "cpu"))
    model = apply_method(loaded, spec, fam)
    settings = {"steps": 2, "batch_size": 4, "grad_accum": 1, "lr": 1e-2, "schedule": "constant", "warmup_steps": 0,
                "weight_decay": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw", "precision": "fp32", "timing_warmup_steps": 0,
                "diverge_loss": 1e4, "epochs": None, "max_seq_len": 16, "eval_batch_size": 4, "max_new_tokens": 2,
                "num_beams": 1, "prompt_template": "a photo of a {}", "gradient_checkpointing": False}
    ts = task_settings(settings, "cpu")
    extra = {"classnames": splits.classnames} if family == "clip" else {}
    encoded = task.encode(loaded, splits.train, ts, **extra)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = fit(model, task, encoded, loaded, settings, seed=0)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "no trainable parameter changed"
    if method != "full":
        assert not any(".vision" in n and "lora" in n for n in moved)  # adapters stay off the vision side


def test_epochs_over_a_stream_show_every_sample_once_per_pass(base):
    """`epochs` with streamed batches: 2 passes over 16 samples at batch 4 are 8 steps, each sample read twice."""
    from collections import Counter

    from bench.data.stream import StreamSettings, train_batches
    from bench.tasks.base import TrainingBatch

    samples = scenes_dataset("vqa", train_size=16, eval_size=0).train
    loaded, model = fresh(base)
    make = TrainingBatch(task, loaded, task_settings(SETTINGS, "cpu"), scenes_dataset("vqa", train_size=1, eval_size=0))
    seen = Counter()

    def prepare(batch):
        seen.update(id(s) for s in batch)
        return make(batch)

    batches = train_batches(samples, prepare, batch_size=4, seed=0, stream=StreamSettings(num_workers=0))
    result = train(model, task, batches, {**SETTINGS, "epochs": 2, "steps": 99}, n_samples=len(samples), device="cpu")
    assert result.steps == len(result.losses) == 8
    assert sorted(seen.values()) == [2] * 16 and set(seen) == {id(s) for s in samples}


def test_tensor_memory_on_the_cpu_is_measured_on_an_untimed_step_and_repeats_exactly(base, encoded):
    """MemTracker over step 2 (the first with optimizer state) when it is a warm-up step: the same bytes on a rerun,
    full fine-tuning above LoRA, and nothing tracked when step 2 would be timed."""
    def peak(method, warmup):
        loaded, model = fresh(base, method)
        result = fit(model, task, encoded, loaded, {**SETTINGS, "timing_warmup_steps": warmup}, track_tensors=True)
        return result.tensor_peak

    full, again, lora = peak(FULL, 2), peak(FULL, 2), peak(LORA, 2)
    assert full["Total"] == again["Total"] > lora["Total"] > 0
    assert peak(FULL, 1) is None
    assert peak(FULL, SETTINGS["steps"]) is None  # no more steps than the warm-up: every step is timed, step 2 too


def test_beside_other_cells_the_timed_steps_wait_for_their_turn_and_the_warm_up_does_not(base, encoded, tmp_path,
                                                                                        monkeypatch):
    """bench/turns.py: another cell holding the turn stops this one after its warm-up steps, not before; the wait is
    reported apart (the timed steps' times do not include it)."""
    import fcntl
    import os
    import threading

    from bench.turns import ENV

    lock = tmp_path / "turns.lock"
    monkeypatch.setenv(ENV, str(lock))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another cell" is timing
    steps: list[int] = []
    loaded, model = fresh(base)
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(result=fit(
        model, task, encoded, loaded, {**SETTINGS, "steps": 5, "timing_warmup_steps": 2},
        on_step=lambda s, n, loss: steps.append(s))))
    worker.start()
    deadline = time.monotonic() + 60
    while len(steps) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    assert steps == [1, 2]  # the warm-up ran; the first timed step waits
    os.close(fd)
    worker.join(60)
    result = done["result"]
    assert [s for s, _ in result.losses] == [1, 2, 3, 4, 5]
    (asked, got), = result.turn_waits
    assert got - asked >= 0.45
    assert max(result.step_times[2:]) < got - asked  # the wait is not in a step's time


def traced_fit(base, encoded, settings, monkeypatch, *, track: bool, make_ahead: bool, slow: int, fail_at: int | None):
    """fit() with a log of the loop's order: ("batch", turn held?, bytes) per micro-batch drawn, ("step", s, turn held?,
    loss) per finished step, "turn" per turn taken. The micro-batches of step `slow` take 40 ms more to make; drawing
    the `fail_at`-th micro-batch raises a DataError. Returns (result or the error raised, log)."""
    from contextlib import contextmanager

    import bench.train as train_module
    from bench.turns import taking_turns

    log, held = [], [False]
    real = train_module.timed_turn

    @contextmanager
    def watched(waits):
        with real(waits):
            if taking_turns():  # alone the timed steps enter it too, and it holds nothing
                log.append("turn")
                held[0] = True
            try:
                yield
            finally:
                held[0] = False

    def drawn(batches):
        for n, batch in enumerate(batches, 1):
            if n == fail_at:
                raise DataError("an image that cannot be read", file="data.jsonl", where=f"batch {n}")
            if (n - 1) // settings["grad_accum"] + 1 == slow:
                time.sleep(0.04)
            log.append(("batch", held[0], sum(v.numel() * v.element_size() for v in batch.values())))
            yield batch

    monkeypatch.setattr(train_module, "timed_turn", watched)
    loaded, model = fresh(base)
    inner = in_memory_batches(encoded, lambda chunk: task.collate(chunk, loaded), batch_size=settings["batch_size"], seed=0)
    try:
        result = train(model, task, drawn(inner), settings, n_samples=len(encoded), device="cpu", track_tensors=track,
                       make_ahead=make_ahead, on_step=lambda s, n, loss: log.append(("step", s, held[0], loss)))
    except BenchError as exc:
        result = exc
    finally:
        monkeypatch.setattr(train_module, "timed_turn", real)
    return result, log


@pytest.mark.parametrize("taking_turns", [True, False])
@given(steps=st.integers(1, 7), warmup=st.integers(0, 4), grad_accum=st.integers(1, 2),
       budget=st.sampled_from([1, 10**5, 10**9]), cap=st.sampled_from([None, 10**6]), track=st.booleans(),
       make_ahead=st.booleans(), slow=st.integers(1, 7), fail_at=st.one_of(st.none(), st.integers(1, 14)))
@example(steps=6, warmup=2, grad_accum=2, budget=10**5, cap=None, track=True, make_ahead=True, slow=5, fail_at=None)
@example(steps=6, warmup=3, grad_accum=1, budget=10**9, cap=None, track=True, make_ahead=True, slow=6, fail_at=None)
@example(steps=6, warmup=3, grad_accum=1, budget=10**9, cap=None, track=True, make_ahead=True, slow=1, fail_at=6)
@example(steps=6, warmup=3, grad_accum=1, budget=10**9, cap=10**6, track=True, make_ahead=True, slow=5, fail_at=None)
@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_beside_other_cells_the_first_timed_steps_batches_are_made_before_the_turn_and_nothing_else_changes(
        base, encoded, tmp_path, monkeypatch, taking_turns, steps, warmup, grad_accum, budget, cap, track, make_ahead,
        slow, fail_at):
    """Beside other cells (a turn file named), with batches made in the cell's process (make_ahead) and a tensor-counted
    memory figure (a tracked step, no memory cap), the batches of the first timed steps are made before the one turn,
    until they hold AHEAD_BYTES; the rest in the turn. Otherwise, and alone, each step's batches are made just before
    it. Whatever the case: the same batches in the same order (the loss curve of a cell alone), every timed step in
    the turn, each step's making time its own data wait, an error making a batch raised at its own step (the steps
    before it trained), and the bytes held beyond one step counted."""
    import bench.train as train_module
    from bench.turns import ENV

    settings = {**SETTINGS, "steps": steps, "timing_warmup_steps": warmup, "grad_accum": grad_accum, "batch_size": 2,
                "memory_cap_mb": cap}
    how = dict(track=track, make_ahead=make_ahead, slow=slow, fail_at=fail_at)
    monkeypatch.delenv(ENV, raising=False)
    alone, alone_log = traced_fit(base, encoded, settings, monkeypatch, **how)
    if taking_turns:
        monkeypatch.setenv(ENV, str(tmp_path / "turns.lock"))
    monkeypatch.setattr(train_module, "AHEAD_BYTES", budget)
    result, log = traced_fit(base, encoded, settings, monkeypatch, **how)

    finished = [(e[1], e[3]) for e in log if e[0] == "step"]
    assert finished == [(e[1], e[3]) for e in alone_log if e[0] == "step"]  # the same steps, the same losses
    failed_at = None if fail_at is None or fail_at > steps * grad_accum else (fail_at - 1) // grad_accum + 1
    if failed_at is not None:
        assert isinstance(result, DataError) and type(alone) is type(result) and [s for s, _ in finished] == list(
            range(1, failed_at))
        return
    assert len(result.data_waits) == steps
    first_timed = warmup + 1 if steps > warmup else 1
    ahead = taking_turns and make_ahead and track and 2 <= warmup < steps and cap is None
    assert [(e[1], e[2]) for e in log if e[0] == "step"] == [(s, taking_turns and s >= first_timed)
                                                             for s in range(1, steps + 1)]
    assert log.count("turn") == len(result.turn_waits) == int(taking_turns)  # one turn, from the first timed step
    batches = [e for e in log if e[0] == "batch"]
    drawn_before = [sum(1 for e in log[:i] if e[0] == "batch") for i, e in enumerate(log) if e[0] == "step"]
    for s in range(1, first_timed):  # warm-up steps: made just before each
        assert drawn_before[s - 1] == grad_accum * s
    made_ahead = sum(1 for e in log[:log.index("turn")] if e[0] == "batch") // grad_accum - (first_timed - 1) if (
        "turn" in log) else 0
    if not ahead:  # made step by step, and in the turn from the first timed step
        assert drawn_before == [grad_accum * s for s in range(1, steps + 1)] and made_ahead == 0
    else:  # made until they held the budget (at least one step), the rest in the turn
        sizes = [sum(b[2] for b in batches[(s - 1) * grad_accum:s * grad_accum]) for s in range(first_timed, steps + 1)]
        reach = next((k for k in range(1, len(sizes) + 1) if sum(sizes[:k]) >= budget), len(sizes))
        assert made_ahead == reach and not any(b[1] for b in batches[:(first_timed - 1 + reach) * grad_accum])
        assert result.ahead_bytes == sum(sizes[1:reach])
    if not ahead:
        assert result.ahead_bytes == 0
    if slow <= steps:  # each step's making time is its own
        assert result.data_waits[slow - 1] >= 0.04
    assert all(w < 0.04 for s, w in enumerate(result.data_waits, 1) if s != slow)


def test_the_wait_for_a_turn_is_kept_when_training_then_diverges(base, encoded, tmp_path, monkeypatch):
    """The caller's list receives the wait even though train() raises: the cell's time split leaves it out of training."""
    from bench.turns import ENV

    monkeypatch.setenv(ENV, str(tmp_path / "turns.lock"))
    waits: list = []
    loaded, model = fresh(base)
    with pytest.raises(Diverged):
        fit(model, task, encoded, loaded, {**SETTINGS, "steps": 6, "timing_warmup_steps": 1, "lr": 1e20, "optimizer": "sgd",
                                           "max_grad_norm": 0, "schedule": "constant"}, turn_waits=waits)
    assert len(waits) == 1 and waits[0][0] <= waits[0][1]


def test_with_no_more_steps_than_the_warm_up_every_step_is_timed_in_the_turn(base, encoded, tmp_path, monkeypatch):
    """step_stats keeps every step when there are no more than the warm-up: they are then the timed ones."""
    from bench.turns import ENV

    monkeypatch.setenv(ENV, str(tmp_path / "turns.lock"))
    seen, steps = [], []
    loaded, model = fresh(base)
    import bench.train as train_module

    real = train_module.timed_turn

    def spy(waits):
        seen.append(len(steps))  # steps finished when the turn was asked for
        return real(waits)

    monkeypatch.setattr(train_module, "timed_turn", spy)
    result = fit(model, task, encoded, loaded, {**SETTINGS, "steps": 2, "timing_warmup_steps": 3},
                 on_step=lambda s, n, loss: steps.append(s))
    assert seen == [0] and len(result.turn_waits) == 1 and steps == [1, 2]
    seen.clear(), steps.clear()
    fit(model, task, encoded, loaded, {**SETTINGS, "steps": 5, "timing_warmup_steps": 3},
        on_step=lambda s, n, loss: steps.append(s))
    assert seen == [3]  # otherwise after the warm-up


def test_on_the_cpu_adamw_updates_with_torch_fused_kernel_and_the_same_arithmetic(base, encoded, monkeypatch):
    """The fused kernel is torch's AdamW, as transformers.Trainer's default optimizer runs it: the loss curve of torch's
    default (a loop over the parameters on the CPU) to float rounding, and the record says which kernel ran."""
    import bench.train

    model, fused = run(base, encoded, steps=6)
    monkeypatch.setattr(bench.train, "make_optimizer", lambda params, s, device: torch.optim.AdamW(
        params, lr=s["lr"], weight_decay=s["weight_decay"]))
    model, looped = run(base, encoded, steps=6)
    assert (fused.optimizer_kernel, looped.optimizer_kernel) == ("fused", "for-loop")
    assert [loss for _, loss in fused.losses] == pytest.approx([loss for _, loss in looped.losses], abs=1e-4)
