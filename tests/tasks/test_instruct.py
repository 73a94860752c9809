"""LLaVA instruction task: LLaVA-1.5 prompts, answer-only labels, left-padded generation, VQA accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import solid

from bench.data.sample import DatasetSplits, Sample
from bench.errors import DataError
from bench.models import llava
from bench.models.base import ModelSpec
from bench.tasks import instruct
from bench.tasks.base import TaskSettings

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = TaskSettings(max_seq_len=32, eval_batch_size=4, max_new_tokens=4)

CONVERSATION = Sample(image=solid((255, 0, 0)), turns=(("what color is the circle?", "red"),
                                                       ("how many circles are there?", "two circles")))
QA = Sample(image=solid((0, 0, 255)), question="what color is it?", answers=("blue", "blue", "dark blue"))


def build(seed: int = 0):
    return llava.build(ModelSpec(name="l", family="llava", preset="tiny", weights="random"), seed=seed)


@pytest.fixture(scope="module")
def loaded():
    return build()


def test_interface_constants():
    assert (instruct.TASK, instruct.METRIC, instruct.HIGHER_IS_BETTER) == (llava.TASK, "vqa_acc", True)


def test_prompt_follows_llava_1_5():
    assert instruct.prompt("what color?") == "USER: <image>\nwhat color? ASSISTANT:"
    assert instruct.user_text("and now?", first=False) == "USER: and now? ASSISTANT:"
    assert instruct.assistant_text("red", "</s>") == " red</s>"


def test_only_assistant_answers_and_their_eos_are_learned(loaded):
    encoded = instruct.encode(loaded, [CONVERSATION], SETTINGS)[0]
    ids, labels = encoded["input_ids"], encoded["labels"]
    tok = loaded.processor.tokenizer
    learned = labels[labels != -100]
    assert tok.decode(learned) == "red </s> two circles </s>"
    # image tokens and both user turns are masked
    image_id = loaded.model.config.image_token_id
    assert int((ids == image_id).sum()) == 16 and (labels[ids == image_id] == -100).all()
    # the tiny vocabulary has no USER / ASSISTANT: they are <unk>, and the newline is whitespace
    masked = tok.decode(ids[(labels == -100) & (ids != image_id)])
    assert masked == "<unk> : what color is the circle? <unk> : <unk> : how many circles are there? <unk> :"
    # where labels are kept they equal the inputs (transformers shifts them inside the loss)
    keep = labels != -100
    assert torch.equal(labels[keep], ids[keep])


def test_question_with_answers_trains_as_one_turn_on_the_first_answer(loaded):
    encoded = instruct.encode(loaded, [QA], SETTINGS)[0]
    labels = encoded["labels"]
    assert loaded.processor.tokenizer.decode(labels[labels != -100]) == "blue </s>"


def test_max_seq_len_counts_text_tokens_and_errs_when_no_answer_is_left(loaded):
    full = instruct.encode(loaded, [CONVERSATION], SETTINGS)[0]
    short = instruct.encode(loaded, [CONVERSATION], TaskSettings(max_seq_len=12))[0]
    assert len(short["input_ids"]) == 16 + 12 < len(full["input_ids"])
    assert loaded.processor.tokenizer.decode(short["labels"][short["labels"] != -100]) == "red </s>"
    with pytest.raises(DataError, match=r"train\[0\].*nothing to learn"):
        instruct.encode(loaded, [CONVERSATION], TaskSettings(max_seq_len=6))


def test_samples_without_a_conversation_are_data_errors(loaded):
    with pytest.raises(DataError, match=r"train\[1\]"):
        instruct.encode(loaded, [QA, Sample(image=solid((0, 0, 0)), question="what?")], SETTINGS)
    with pytest.raises(DataError, match=r"eval\[0\]"):
        instruct.evaluate(loaded, loaded.model, DatasetSplits(task="vqa", train=[], eval=[CONVERSATION]), SETTINGS)


def test_training_step_gives_finite_loss_and_gradients():
    fresh = build(seed=1)
    batch = instruct.collate(instruct.encode(fresh, [CONVERSATION, QA], SETTINGS), fresh)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    loss = instruct.loss(fresh.model, batch)
    assert math.isfinite(loss.item())
    loss.backward()
    assert fresh.model.model.multi_modal_projector.linear_2.weight.grad.abs().sum() > 0
    real, padded = instruct.count_tokens(batch)
    assert real == int(batch["attention_mask"].sum()) < padded == batch["input_ids"].numel()


def test_evaluate_untrained_gives_scores_in_range(loaded):
    """Ten answers per question: the official VQA accuracy is the headline; three: exact match is (the official rule
    needs four agreeing answers for full credit), with the VQA accuracy beside it."""
    ten = Sample(image=QA.image, question=QA.question, answers=("blue",) * 8 + ("dark blue",) * 2)
    quality = instruct.evaluate(loaded, loaded.model, DatasetSplits(task="vqa", train=[], eval=[ten, ten]), SETTINGS)
    assert quality.metric == "vqa_acc" and quality.n == 2
    assert 0 <= quality.value <= 100 and 0 <= quality.extra["exact_match"] <= 100
    assert quality.extra["examples"][0]["question"] == QA.question
    few = instruct.evaluate(loaded, loaded.model, DatasetSplits(task="vqa", train=[], eval=[QA, ten]), SETTINGS)
    assert few.metric == "exact_match" and 0 <= few.extra["vqa_acc"] <= 100


def test_left_padded_batch_generates_what_single_prompts_do(loaded):
    from bench.tasks.captioning import generate_texts

    samples = [Sample(image=solid((255, 0, 0)), question="what color is the circle on the left side?"),
               Sample(image=solid((0, 0, 255)), question="what?")]
    batched = generate_texts(loaded, loaded.model, samples, lambda s: instruct.prompt(s.question), SETTINGS)
    single = [generate_texts(loaded, loaded.model, [s], lambda s: instruct.prompt(s.question), SETTINGS)[0] for s in samples]
    assert [i for i, _ in batched] == [0, 1] and [t for _, t in batched] == [t for _, t in single] and all(t for _, t in batched)


def test_a_model_trained_on_two_answers_gives_them_back():
    fresh = build(seed=2)
    train = [Sample(image=solid((255, 0, 0)), question="what color is it?", answers=("red",)),
             Sample(image=solid((0, 0, 255)), question="what color is it?", answers=("blue",))]
    batch = instruct.collate(instruct.encode(fresh, train, SETTINGS), fresh)
    optimizer = torch.optim.AdamW(fresh.model.parameters(), lr=3e-3)
    for _ in range(40):
        instruct.loss(fresh.model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    quality = instruct.evaluate(fresh, fresh.model, DatasetSplits(task="vqa", train=train, eval=train), SETTINGS)
    assert [e["prediction"] for e in quality.extra["examples"]] == ["red", "blue"]  # stops at </s>
    # one answer each: exact match is the headline; the official VQA accuracy gives a lone answer nobody to agree with
    assert quality.metric == "exact_match" and quality.value == pytest.approx(100.0) and quality.extra["vqa_acc"] == 0.0
