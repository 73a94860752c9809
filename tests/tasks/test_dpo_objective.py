"""`objective = "dpo"` (bench/tasks/preference.py): TRL's DPOTrainer used for its collator, its loss and its reference
inside bench's own loop, on a tiny random SmolVLM and the scenes' preference pairs.

- making the trainer leaves Python's, numpy's and torch's random streams as they were (TRL's set_seed reseeds them);
- a collated batch is [chosen rows, rejected rows], its completion_mask on the answers (and the end-of-turn token) only;
- the loss starts at log 2 (policy == reference) with reward_margin 0, and a few AdamW steps on it push the loss below
  log 2 and the margin above 0, changing only the cell's own ("default") adapter: TRL's "ref" copy stays as it began;
- a cell that starts from a kept adapter (`start_adapter`, what start_from sets) has that adapter as its reference;
- preference() gives preference_accuracy in [0, 100], weighted the same whatever the eval batch size;
- under full fine-tuning the reference is a frozen copy of the model.
"""

from __future__ import annotations

import copy
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.data.loader import load_dataset
from bench.errors import DataError
from bench.methods import apply_method
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.tasks import task_for_family
from bench.tasks.base import TaskSettings
from bench.tasks.preference import PREFERENCE_METRICS, Dpo

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY = "smolvlm"
END_OF_TURN = "<end_of_utterance>"
LOG2 = math.log(2)
# no dropout and no parameters trained in full beside the adapter: the adapter is all that may change
LORA = {"name": "lora", "kind": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0, "targets": None, "train_full": []}
FULL = {"name": "full", "kind": "full", "freeze": ["vision"]}
SETTINGS = TaskSettings(max_seq_len=64, eval_batch_size=8)


@pytest.fixture(scope="module")
def splits():
    return load_dataset({"format": "scenes", "task": "preference", "train_size": 8, "eval_size": 8, "image_size": 64},
                        base_dir=Path("."))


def build(method: dict):
    """(loaded, model to train): a fresh tiny random SmolVLM with `method` applied (the same weights each time)."""
    family = get_family(FAMILY)
    loaded = family.build(ModelSpec(name="m", family=FAMILY, preset="tiny", weights="random"), seed=0)
    torch.manual_seed(0)  # peft draws the adapters' initial weights from torch's stream
    return loaded, apply_method(loaded, method, family)


def dpo_for(loaded, model, splits, beta: float = 0.1, max_seq_len: int | None = None) -> Dpo:
    return Dpo(task_for_family(FAMILY), loaded, model, beta=beta, seed=0, device="cpu", pairs=splits.train,
               max_seq_len=SETTINGS.max_seq_len if max_seq_len is None else max_seq_len)


def batch_of(dpo: Dpo, loaded, samples) -> dict:
    return dpo.collate(dpo.encode(loaded, samples, SETTINGS), loaded)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before: dict) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def train_steps(dpo: Dpo, model, batch: dict, steps: int = 6, lr: float = 1e-2) -> list[float]:
    """AdamW on the DPO loss of one batch, as bench's loop would step it; the losses."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = dpo.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def dpo_loss(dpo: Dpo, model, batch: dict) -> float:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return dpo.loss(model, batch).item()
    finally:
        model.train(was)
        dpo.trainer._metrics["eval"].clear()


# ------------------------------------------------------------------------------------------------- random streams


def streams() -> tuple:
    return random.getstate(), np.random.get_state(), torch.random.get_rng_state()


def same_streams(a: tuple, b: tuple) -> bool:
    np_a, np_b = a[1], b[1]
    return (a[0] == b[0] and np_a[0] == np_b[0] and np.array_equal(np_a[1], np_b[1]) and np_a[2:] == np_b[2:]
            and torch.equal(a[2], b[2]))


@pytest.mark.parametrize("method", [LORA, FULL], ids=["lora", "full"])
def test_making_the_trainer_leaves_the_random_streams_as_they_were(splits, method):
    import trl.trainer.dpo_trainer  # noqa: F401  (its first import draws from Python's stream: pinned below)

    loaded, model = build(method)
    random.seed(123)
    np.random.seed(456)
    torch.manual_seed(789)
    random.random(), np.random.rand(), torch.rand(1)  # somewhere along each stream, not at a fresh seed
    before = streams()
    dpo_for(loaded, model, splits)
    assert same_streams(before, streams())
    # and what the cell draws next is what it would have drawn without the trainer
    after = (random.random(), np.random.rand(), torch.rand(3))
    random.setstate(before[0])
    np.random.set_state(before[1])
    torch.random.set_rng_state(before[2])
    assert after[:2] == (random.random(), np.random.rand()) and torch.equal(after[2], torch.rand(3))


FIRST_DPO = """
import random
from pathlib import Path

from bench.data.loader import load_dataset
from bench.errors import DataError
from bench.methods import apply_method
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.tasks import task_for_family
from bench.tasks.preference import Dpo

family = get_family("smolvlm")
loaded = family.build(ModelSpec(name="m", family="smolvlm", preset="tiny", weights="random"), seed=0)
model = apply_method(loaded, {method!r}, family)
splits = load_dataset({{"format": "scenes", "task": "preference", "train_size": 2, "eval_size": 2, "image_size": 64}},
                      base_dir=Path("."))
random.seed(7)
before = random.getstate()
Dpo(task_for_family("smolvlm"), loaded, model, beta=0.1, seed=0, device="cpu", pairs=splits.train, max_seq_len=64)
print("SAME" if random.getstate() == before else "MOVED")
"""


@pytest.mark.slow
@pytest.mark.ci_only  # a fresh Python process: ~8 s of imports
def test_the_first_trainer_of_a_process_leaves_pythons_stream_as_it_was(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "first_dpo.py"
    script.write_text(FIRST_DPO.format(method=LORA))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "SAME"


# ------------------------------------------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def lora_dpo(splits):
    loaded, model = build(LORA)
    return loaded, model, dpo_for(loaded, model, splits)


def answer_tokens(tok, text: str) -> list[str]:
    return tok.tokenize(text.strip()) + [END_OF_TURN]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(picks=st.lists(st.integers(0, 7), min_size=1, max_size=5))
def test_a_batch_is_chosen_rows_then_rejected_rows_with_only_the_answers_completed(lora_dpo, splits, picks):
    loaded, _, dpo = lora_dpo
    samples = [splits.train[i] for i in picks]
    batch = batch_of(dpo, loaded, samples)
    n = len(samples)
    tok = loaded.processor.tokenizer
    ids, mask, attention = batch["input_ids"], batch["completion_mask"], batch["attention_mask"]
    assert ids.shape[0] == mask.shape[0] == attention.shape[0] == 2 * n
    assert batch["pixel_values"].shape[0] == 2 * n  # each pair's image, once per row
    assert set(batch) >= {"input_ids", "attention_mask", "completion_mask", "pixel_values"}
    for row in range(2 * n):
        sample = samples[row % n]
        answer = sample.answers[0] if row < n else sample.rejected
        completed = tok.convert_ids_to_tokens(ids[row][mask[row] == 1].tolist())
        assert completed == answer_tokens(tok, answer), (row, completed, answer)
        assert bool((attention[row][mask[row] == 1] == 1).all())  # no padding is completed
        # the completion is one run: the real tokens' last ones, right after the assistant's header
        real = attention[row].nonzero().flatten()
        done = mask[row].nonzero().flatten()
        assert done.tolist() == list(range(int(done[0]), int(done[0]) + len(done)))
        assert int(done[-1]) == int(real[-1])
        assert tok.convert_ids_to_tokens(ids[row][int(done[0]) - 2:int(done[0])].tolist()) == ["assistant", ":"]
    # a pair's two rows share its prompt
    for i in range(n):
        prompt = [ids[r][(attention[r] == 1) & (mask[r] == 0)].tolist() for r in (i, i + n)]
        assert prompt[0] == prompt[1]
    assert int(mask.sum()) < int(attention.sum())


def test_collating_leaves_the_encoded_examples_as_they_were(lora_dpo, splits):
    loaded, _, dpo = lora_dpo
    encoded = dpo.encode(loaded, splits.train[:3], SETTINGS)
    kept = copy.deepcopy(encoded)
    first = dpo.collate(encoded, loaded)
    assert [{k: v for k, v in e.items() if k != "image"} for e in encoded] == \
        [{k: v for k, v in e.items() if k != "image"} for e in kept]
    again = dpo.collate(encoded, loaded)  # a cached encoding is collated once per pass
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_count_tokens_counts_both_rows_of_each_pair(lora_dpo, splits):
    loaded, _, dpo = lora_dpo
    batch = batch_of(dpo, loaded, splits.train[:4])
    real, padded = dpo.count_tokens(batch)
    assert real == int(batch["attention_mask"].sum()) and padded == batch["input_ids"].numel() >= real


def test_max_seq_len_bounds_a_dpo_batch(splits):
    loaded, model = build(LORA)
    limit = 4
    dpo = dpo_for(loaded, model, splits, max_seq_len=limit)
    try:
        batch = dpo.collate(dpo.encode(loaded, splits.train[:2], TaskSettings(max_seq_len=limit)), loaded)
    except DataError:  # refusing, as the SFT task does when nothing is left to learn, would do too
        return
    text = (batch["attention_mask"] == 1) & (batch["input_ids"] != loaded.model.config.image_token_id)
    assert int(text.sum(dim=1).max()) <= limit


# ------------------------------------------------------------------------------------------------- the loss


def adapter_names(model, adapter: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if f".{adapter}." in n}


def test_the_loss_starts_at_log_2_and_training_moves_only_the_cells_own_adapter(splits):
    loaded, model = build(LORA)
    dpo = dpo_for(loaded, model, splits)
    assert set(model.peft_config) == {"default", "ref"}
    default, ref = adapter_names(model, "default"), adapter_names(model, "ref")
    assert ref and len(ref) == len(default)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == default
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], params[n.replace(".ref.", ".default.")]) for n in ref)  # a copy as training starts

    batch = batch_of(dpo, loaded, splits.train)
    assert dpo_loss(dpo, model, batch) == pytest.approx(LOG2, abs=1e-6)
    start = dpo.preference(loaded, model, splits.train, SETTINGS)
    assert set(start) == set(PREFERENCE_METRICS)
    assert start["reward_margin"] == 0 and start["preference_accuracy"] == 0  # equal rewards: no pair is preferred
    reference = [t.clone() for t in dpo.trainer.compute_ref_log_probs(model, batch)]
    before = snapshot(model)

    losses = train_steps(dpo, model, batch)
    assert losses[0] == pytest.approx(LOG2, abs=1e-6)
    assert dpo_loss(dpo, model, batch) < LOG2 - 1e-3
    end = dpo.preference(loaded, model, splits.train, SETTINGS)
    assert end["reward_margin"] > 0 and end["preference_accuracy"] > 50
    moved = changed(model, before)
    assert moved and moved <= default
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in ref)
    # the reference is what it was: its log-probabilities of the same batch too
    assert all(torch.equal(a, b) for a, b in zip(reference, dpo.trainer.compute_ref_log_probs(model, batch)))


def test_a_larger_beta_scales_the_rewards(splits):
    """TRL's implicit reward is β·(log π − log π_ref): the same trained policy, read with β and 2β, gives margins in
    the ratio 1:2."""
    loaded, model = build(LORA)
    dpo = dpo_for(loaded, model, splits, beta=0.1)
    train_steps(dpo, model, batch_of(dpo, loaded, splits.train), steps=3)
    one = dpo.preference(loaded, model, splits.train, SETTINGS)["reward_margin"]
    dpo.trainer.beta = 0.2
    two = dpo.preference(loaded, model, splits.train, SETTINGS)["reward_margin"]
    assert one != 0 and two == pytest.approx(2 * one, rel=1e-3, abs=1e-5)


def test_under_dpo_the_adapter_trains_alone_and_the_reference_stays_fixed(splits):
    # the seeds' default trains the projector beside the adapter; it would be shared with TRL's reference adapter
    loaded, model = build({**LORA, "train_full": None, "objective": "dpo"})
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapter_names(model, "default")
    dpo = dpo_for(loaded, model, splits)
    batch = batch_of(dpo, loaded, splits.train[:4])
    model.train()
    reference = [t.clone() for t in dpo.trainer.compute_ref_log_probs(model, batch)]
    train_steps(dpo, model, batch, steps=3)
    after = dpo.trainer.compute_ref_log_probs(model, batch)
    assert all(torch.allclose(a, b) for a, b in zip(reference, after))


def test_a_cell_that_starts_from_a_kept_adapter_has_it_as_its_reference(splits, tmp_path):
    """start_from: the source's kept adapter is loaded trainable (bench/methods.py _adapted) and TRL's reference is a
    copy of it, not the base model."""
    from bench.run.artifacts import save_artifact

    loaded, source = build(LORA)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter stands in for the SFT cell's
        for p in source.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    kept = save_artifact(source, "lora", str(tmp_path / "sft"), save_full=False)
    assert kept["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]

    loaded, model = build({**LORA, "start_adapter": kept["path"]})
    trained = {n: p for n, p in source.named_parameters() if p.requires_grad}
    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == set(trained)
    assert all(torch.equal(params[n], trained[n]) for n in trained)
    dpo = dpo_for(loaded, model, splits)
    params = dict(model.named_parameters())  # with TRL's "ref" adapter now
    assert all(torch.equal(params[n.replace(".default.", ".ref.")], trained[n]) for n in trained)

    batch = batch_of(dpo, loaded, splits.train)
    assert dpo_loss(dpo, model, batch) == pytest.approx(LOG2, abs=1e-6)
    model.eval()
    with torch.no_grad():
        reference = dpo.trainer.compute_ref_log_probs(model, batch)
        with model.disable_adapter():
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
            base = model(**inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs.sum(dim=1).chunk(2)
    assert not all(torch.allclose(r, b) for r, b in zip(reference, base))  # the SFT adapter, not the base model

    before = snapshot(model)
    train_steps(dpo, model, batch, steps=4)
    assert dpo_loss(dpo, model, batch) < LOG2
    assert changed(model, before) <= adapter_names(model, "default")
    assert all(torch.equal(params[n.replace(".default.", ".ref.")], trained[n]) for n in trained)


# ------------------------------------------------------------------------------------------------- preference metrics


def test_preference_metrics_are_in_range_and_weighted_by_pairs_whatever_the_eval_batch(splits):
    loaded, model = build(LORA)
    dpo = dpo_for(loaded, model, splits)
    train_steps(dpo, model, batch_of(dpo, loaded, splits.train), steps=4)
    model.train()
    whole = dpo.preference(loaded, model, splits.eval, TaskSettings(eval_batch_size=8))
    assert model.training  # put back as it was
    assert not any(dpo.trainer._metrics["eval"].values())
    assert 0 <= whole["preference_accuracy"] <= 100 and math.isfinite(whole["reward_margin"])
    for size in (1, 3, 5):  # chunks of unequal sizes: each batch's mean weighted by its pairs
        part = dpo.preference(loaded, model, splits.eval, TaskSettings(eval_batch_size=size))
        assert part["preference_accuracy"] == pytest.approx(whole["preference_accuracy"], abs=1e-3)
        assert part["reward_margin"] == pytest.approx(whole["reward_margin"], rel=1e-3, abs=1e-5)
    assert dpo.preference(loaded, model, [], SETTINGS) == {}
    one = dpo.preference(loaded, model, splits.eval[:1], SETTINGS)
    assert one["preference_accuracy"] in (0.0, 100.0)


def test_each_held_out_pairs_accuracy_and_margin_are_kept_in_order_whatever_the_eval_batch(splits):
    """evaluate() keeps every eval pair's accuracy (0 or 100) and reward margin (quality.extra.preference_items, what
    the report's intervals resample): they average to TRL's statistics and are each pair's own, in batches or alone."""
    from bench.fields import PREFERENCE_ITEMS, PREFERENCE_STATS
    from bench.tasks.base import Quality

    loaded, model = build(LORA)
    dpo = dpo_for(loaded, model, splits)
    train_steps(dpo, model, batch_of(dpo, loaded, splits.train), steps=4)
    per_pair: dict = {}
    whole = dpo.preference(loaded, model, splits.eval, TaskSettings(eval_batch_size=3), per_pair=per_pair)
    assert "gather" not in vars(dpo.trainer.accelerator)  # TRL's own gather is back
    assert set(per_pair) == set(PREFERENCE_STATS.values())  # the names the report reads (bench/fields.py)
    accuracy, margin = per_pair["accuracy"], per_pair["margin"]
    assert len(accuracy) == len(margin) == len(splits.eval) and set(accuracy) <= {0.0, 100.0}
    assert sum(accuracy) / len(accuracy) == pytest.approx(whole["preference_accuracy"], abs=1e-3)
    assert sum(margin) / len(margin) == pytest.approx(whole["reward_margin"], rel=1e-3, abs=1e-5)
    assert len(set(margin)) > 1  # each pair its own, not the batch's mean
    for i in (0, len(splits.eval) - 1):
        alone: dict = {}
        dpo.preference(loaded, model, splits.eval[i:i + 1], SETTINGS, per_pair=alone)
        assert alone["accuracy"] == [accuracy[i]] and alone["margin"][0] == pytest.approx(margin[i], rel=1e-3, abs=1e-5)

    class Family:  # the family task's own evaluation (generation) is not what this checks
        def evaluate(self, loaded, model, splits, settings):
            return Quality(metric="vqa_acc", value=50.0, higher_is_better=True, extra={"exact_match": 40.0}, n=1)

    dpo.task = Family()
    extra = dpo.evaluate(loaded, model, splits, TaskSettings(eval_batch_size=8)).extra
    assert extra[PREFERENCE_ITEMS]["margin"] == pytest.approx(margin, rel=1e-3, abs=1e-5)
    assert extra["exact_match"] == 40.0 and extra["reward_margin"] == pytest.approx(whole["reward_margin"], rel=1e-3)


# ------------------------------------------------------------------------------------------------- full fine-tuning


def test_full_fine_tuning_holds_a_frozen_copy_as_its_reference(splits):
    loaded, model = build(FULL)
    dpo = dpo_for(loaded, model, splits)
    reference = dpo.trainer.ref_model
    assert reference is not None and reference is not model and not hasattr(model, "peft_config")
    ref_params = dict(reference.named_parameters())
    assert not any(p.requires_grad for p in ref_params.values()) and not reference.training
    assert not any(p is q for p in model.parameters() for q in ref_params.values())
    assert all(torch.equal(p, ref_params[n]) for n, p in model.named_parameters())  # a copy as training starts
    frozen = snapshot(reference)

    batch = batch_of(dpo, loaded, splits.train)
    assert dpo_loss(dpo, model, batch) == pytest.approx(LOG2, abs=1e-4)  # exactly log 2: the reference runs in the cell's precision
    before = snapshot(model)
    losses = train_steps(dpo, model, batch, steps=4, lr=1e-3)
    assert dpo_loss(dpo, model, batch) < min(LOG2, losses[0]) - 1e-3
    assert changed(model, before)
    assert not changed(reference, frozen)
    assert not any(".vision_model." in n for n in changed(model, before))  # freeze = ["vision"] holds under DPO too
    assert dpo.preference(loaded, model, splits.train, SETTINGS)["reward_margin"] > 0


def test_full_fine_tuning_reference_runs_in_the_cells_precision(splits):
    loaded, model = build(FULL)
    dpo = dpo_for(loaded, model, splits)
    batch = batch_of(dpo, loaded, splits.train)
    model.eval()
    with torch.no_grad():
        reference = dpo.trainer.compute_ref_log_probs(model, batch)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
        policy = model(**inputs, labels=labels, use_cache=False, fused_lm_head=True).log_probs.sum(dim=1).chunk(2)
    assert all(torch.allclose(r, p, atol=1e-5, rtol=0) for r, p in zip(reference, policy))
    assert dpo_loss(dpo, model, batch) == pytest.approx(LOG2, abs=1e-6)


def test_making_the_trainer_adds_no_input_gradient_hooks(splits):
    # TRL's default gradient checkpointing would make the embeddings' outputs require grad, sending backward through
    # the frozen vision tower; bench's own checkpointing needs no such hook
    loaded, model = build(LORA)
    dpo_for(loaded, model, splits)
    embeddings = model.get_base_model().get_input_embeddings()
    assert not embeddings(torch.tensor([[1, 2]])).requires_grad


def test_qlora_keeps_the_cells_precision_under_dpo(splits):
    from bench.methods import quantization_config

    method = {"name": "q", "kind": "qlora", "r": 8, "alpha": 16.0, "dropout": 0.0, "targets": None, "train_full": None,
              "objective": "dpo", "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    family = get_family(FAMILY)
    loaded = family.build(ModelSpec(name="m", family=FAMILY, preset="tiny", weights="random"), seed=0,
                          quantization=quantization_config(method, "cpu"))
    model = apply_method(loaded, method, family)
    before = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    dpo_for(loaded, model, splits)  # TRL casts a 4-bit model's trainable parameters to bf16
    assert before and {n: p.dtype for n, p in model.named_parameters() if p.requires_grad} == before
    assert set(before.values()) == {torch.float32}
