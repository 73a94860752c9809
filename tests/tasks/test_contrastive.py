"""bench.tasks.contrastive: encode, collate, the contrastive loss and zero-shot accuracy, on both CLIP backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.sample import DatasetSplits, Sample
from bench.errors import DataError
from bench.models import clip
from bench.models.base import ModelSpec, component_of
from bench.tasks import contrastive as task
from bench.tasks.base import TaskSettings

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
CLASSNAMES = tuple(COLORS)
SETTINGS = TaskSettings(max_seq_len=16, eval_batch_size=4)


def colour_image(name: str, rng) -> Image.Image:
    """A flat colour with noise: a task a tiny CLIP learns in a few dozen steps."""
    pixels = np.array(COLORS[name], dtype=int) + rng.integers(-25, 25, (36, 36, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def samples(n: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(image=colour_image(CLASSNAMES[i % 3], rng), label=i % 3) for i in range(n)]


@pytest.fixture(scope="module")
def splits():
    return DatasetSplits(task="classification", train=samples(12, 0), eval=samples(9, 1), classnames=CLASSNAMES)


def build(backend: str):
    return clip.build(ModelSpec(name="clip-test", family="clip", preset="tiny", weights="random", backend=backend))


def test_task_declares_its_metric():
    assert (task.TASK, task.METRIC, task.HIGHER_IS_BETTER) == ("classification", "zero_shot_acc", True)
    assert task.TASK == clip.TASK


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_encode_uses_the_caption_else_the_class_prompt(backend, splits):
    loaded = build(backend)
    captioned = Sample(image=splits.train[0].image, label=0, captions=("two blue squares", "ignored"))
    encoded = task.encode(loaded, [splits.train[1], captioned], SETTINGS, classnames=CLASSNAMES)
    tok = clip.clip_tokenizer()
    assert tok.decode(encoded[0]["input_ids"], skip_special_tokens=True) == "a photo of a green"
    assert tok.decode(encoded[1]["input_ids"], skip_special_tokens=True) == "two blue squares"
    for e in encoded:  # unpadded: every kept token is real and the last one is </s>
        assert e["attention_mask"].all() and e["input_ids"][-1] == tok.eos_token_id
        assert e["pixel_values"].shape == (3, 32, 32)


def test_encode_without_label_or_caption_names_the_sample(splits):
    loaded = build("transformers")
    bad = [splits.train[0], Sample(image=splits.train[0].image)]
    with pytest.raises(DataError) as err:
        task.encode(loaded, bad, SETTINGS, classnames=CLASSNAMES)
    assert err.value.where == "train[1]"
    with pytest.raises(DataError, match="outside the 3 classnames"):
        task.encode(loaded, [Sample(image=splits.train[0].image, label=7)], SETTINGS, classnames=CLASSNAMES)


def test_collate_pads_to_the_longest_on_transformers_and_to_the_context_on_open_clip(splits):
    texts = [Sample(image=s.image, captions=(c,)) for s, c in zip(splits.train, ["red", "a large blue circle on the left"])]
    for backend, width in (("transformers", 9), ("open_clip", 64)):
        loaded = build(backend)
        batch = task.collate(task.encode(loaded, texts, SETTINGS), loaded)
        assert batch["input_ids"].shape == (2, width) and batch["pixel_values"].shape == (2, 3, 32, 32)
        assert batch["attention_mask"].sum(1).tolist() == [3, 9]
        assert (batch["input_ids"][0, 3:] == 0).all()  # right-padded with <pad>
        assert task.count_tokens(batch) == (12, 2 * width)


def test_truncation_keeps_the_end_token(splits):
    loaded = build("open_clip")
    long = Sample(image=splits.train[0].image, captions=(" ".join(["red"] * 40),))
    (encoded,) = task.encode(loaded, [long], SETTINGS)
    assert len(encoded["input_ids"]) == SETTINGS.max_seq_len
    assert encoded["input_ids"][-1] == clip.clip_tokenizer().eos_token_id


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_a_text_longer_than_the_models_positions_is_cut_at_them_on_both_backends(backend, splits):
    """A 120-word caption with max_seq_len = 128 (as suites/vlm_costs.toml sets): cut at the text model's positions
    (CLIP's 77; the tiny preset's 64) with its end token kept, and it trains and evaluates instead of raising."""
    loaded = build(backend)
    limit = task.text_positions(loaded.model)
    assert limit == clip.PRESETS["tiny"]["text_config"]["max_position_embeddings"] == 64
    words = ["red", "circle", "on", "the", "left", "and", "a", "blue", "square", "at", "top", "of", "it"]
    long = Sample(image=splits.train[0].image, captions=(" ".join(words[i % len(words)] for i in range(120)),), label=0)
    settings = TaskSettings(max_seq_len=128, eval_batch_size=4)
    (encoded,) = task.encode(loaded, [long], settings)
    assert len(encoded["input_ids"]) == limit and encoded["input_ids"][-1] == clip.clip_tokenizer().eos_token_id
    batch = task.collate([encoded, encoded], loaded)
    assert torch.isfinite(task.loss(loaded.model, batch))
    long_names = DatasetSplits(task="classification", train=[], eval=splits.eval[:2],
                               classnames=tuple(" ".join(["red"] * 120) + f" {c}" for c in CLASSNAMES))
    assert 0 <= task.evaluate(loaded, loaded.model, long_names, settings).value <= 100


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_a_training_step_gives_a_finite_loss_and_gradients_on_both_towers(backend, splits):
    loaded = build(backend)
    batch = task.collate(task.encode(loaded, splits.train[:4], SETTINGS, classnames=CLASSNAMES), loaded)
    loss = task.loss(loaded.model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in loaded.model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    by_component = {c: 0.0 for c in loaded.components}
    for name, g in grads.items():
        by_component[component_of(name, loaded.components)] += float(g.abs().sum())
    assert all(v > 0 for v in by_component.values()), by_component


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_zero_shot_accuracy_is_a_percentage_and_rises_with_fine_tuning(backend, splits):
    loaded = build(backend)
    model = loaded.model
    base = task.evaluate(loaded, model, splits, SETTINGS)
    assert base.metric == "zero_shot_acc" and base.higher_is_better and base.n == 9
    assert 0.0 <= base.value <= 100.0 and base.extra["top1"] == base.value
    assert model.training  # evaluate restores the mode it found

    encoded = task.encode(loaded, splits.train, SETTINGS, classnames=CLASSNAMES)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        start = (step * 4) % len(encoded)
        loss = task.loss(model, task.collate(encoded[start:start + 4], loaded))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    tuned = task.evaluate(loaded, model, splits, SETTINGS)
    assert not model.training
    assert tuned.value >= 66.0 and tuned.value > base.value, (base.value, tuned.value)


def test_evaluate_needs_classnames_and_labels(splits):
    loaded = build("transformers")
    no_names = DatasetSplits(task="classification", train=splits.train, eval=splits.eval)
    with pytest.raises(DataError, match="class names"):
        task.evaluate(loaded, loaded.model, no_names, SETTINGS)
    unlabeled = DatasetSplits(task="classification", train=splits.train,
                              eval=[splits.eval[0], Sample(image=splits.eval[0].image)], classnames=CLASSNAMES)
    with pytest.raises(DataError) as err:
        task.evaluate(loaded, loaded.model, unlabeled, SETTINGS)
    assert err.value.where == "eval[1].label"


def test_evaluate_sees_a_peft_wrapped_model(splits):
    from peft import LoraConfig, get_peft_model

    loaded = build("open_clip")
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=r"^transformer\.resblocks\.\d+\.attn$"))
    assert clip.backend_of(model) == "open_clip"
    quality = task.evaluate(loaded, model, splits, SETTINGS)
    assert 0.0 <= quality.value <= 100.0 and quality.n == len(splits.eval)
