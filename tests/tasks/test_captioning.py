"""BLIP-2 captioning task: masking, batching, loss, generation and CIDEr on hand-made samples."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import solid

from bench.data.sample import DatasetSplits, Sample
from bench.errors import DataError
from bench.models import blip2
from bench.models.base import ModelSpec
from bench.tasks import captioning
from bench.tasks.base import TaskSettings

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = TaskSettings(max_seq_len=16, eval_batch_size=4, max_new_tokens=6)

TRAIN = [Sample(image=solid((255, 0, 0)), captions=("a red square", "red")),
         Sample(image=solid((0, 0, 255)), captions=("two blue circles on the left",))]


def build(seed: int = 0):
    return blip2.build(ModelSpec(name="b", family="blip2", preset="tiny", weights="random"), seed=seed)


@pytest.fixture(scope="module")
def loaded():
    return build()


def test_interface_constants():
    assert (captioning.TASK, captioning.METRIC, captioning.HIGHER_IS_BETTER) == (blip2.TASK, "CIDEr", True)


def test_encode_masks_the_image_tokens_and_learns_caption_and_eos(loaded):
    encoded = captioning.encode(loaded, TRAIN, SETTINGS)
    tok = loaded.processor.tokenizer
    q, image_id = loaded.model.config.num_query_tokens, loaded.model.config.image_token_id
    for e, sample in zip(encoded, TRAIN):
        ids, labels = e["input_ids"], e["labels"]
        assert ids[:q].tolist() == [image_id] * q
        assert (labels[:q] == -100).all()
        learned = labels[labels != -100]
        assert image_id not in learned.tolist()
        assert learned[-1] == tok.eos_token_id  # the model learns to stop
        assert tok.decode(learned, skip_special_tokens=True) == sample.captions[0]  # first caption only
        assert e["pixel_values"].shape == (3, 32, 32)


def test_collate_pads_right_with_masked_labels(loaded):
    batch = captioning.collate(captioning.encode(loaded, TRAIN, SETTINGS), loaded)
    short = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"].shape[1] > short  # the first caption is the shorter one
    assert (batch["labels"][0, short:] == -100).all()
    assert (batch["input_ids"][0, short:] == loaded.processor.tokenizer.pad_token_id).all()
    assert captioning.count_tokens(batch) == (int(batch["attention_mask"].sum()), batch["input_ids"].numel())


def test_max_seq_len_truncates_text_but_keeps_eos(loaded):
    encoded = captioning.encode(loaded, TRAIN, TaskSettings(max_seq_len=3))
    q = loaded.model.config.num_query_tokens
    long = encoded[1]["input_ids"]
    assert len(long) == q + 3
    assert long[-1] == loaded.processor.tokenizer.eos_token_id


def test_sample_without_caption_is_a_data_error(loaded):
    with pytest.raises(DataError, match=r"train\[1\]\.captions"):
        captioning.encode(loaded, [TRAIN[0], Sample(image=solid((0, 0, 0)))], SETTINGS)


def test_training_step_gives_finite_loss_and_gradients():
    fresh = build(seed=1)
    loss = captioning.loss(fresh.model, captioning.collate(captioning.encode(fresh, TRAIN, SETTINGS), fresh))
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in fresh.model.parameters() if p.grad is not None)
    assert fresh.model.language_projection.weight.grad.abs().sum() > 0


def test_evaluate_untrained_gives_scores_in_range(loaded):
    splits = DatasetSplits(task="caption", train=TRAIN, eval=TRAIN + TRAIN[:1])
    loaded.model.train()
    quality = captioning.evaluate(loaded, loaded.model, splits, SETTINGS)
    assert quality.metric == "CIDEr" and quality.higher_is_better and quality.n == 3
    assert quality.value >= 0  # CIDEr x 100 can pass 100; BLEU and ROUGE cannot
    assert 0 <= quality.extra["BLEU-4"] <= 100 and 0 <= quality.extra["ROUGE-L"] <= 100
    assert len(quality.extra["examples"]) == 3 and quality.extra["examples"][0]["reference"] == "a red square"
    assert loaded.model.training  # evaluate restores the mode it found


def test_a_model_trained_on_two_captions_generates_them_and_stops():
    fresh = build(seed=2)
    batch = captioning.collate(captioning.encode(fresh, TRAIN, SETTINGS), fresh)
    optimizer = torch.optim.AdamW(fresh.model.parameters(), lr=3e-3)
    for _ in range(50):
        captioning.loss(fresh.model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    splits = DatasetSplits(task="caption", train=TRAIN, eval=TRAIN)
    quality = captioning.evaluate(fresh, fresh.model, splits, SETTINGS)
    assert [e["prediction"] for e in quality.extra["examples"]] == [s.captions[0] for s in TRAIN]
    assert quality.value > 100 and quality.extra["ROUGE-L"] == pytest.approx(100.0)
