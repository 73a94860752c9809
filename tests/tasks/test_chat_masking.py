"""Answer-only labels, searched for failures: for every family that trains on labels (LLaVA's instruct task, BLIP-2's
captions, the chat families' templates), generated conversations are encoded and the unmasked label tokens decoded
must be exactly the assistant answers, each with the end-of-turn token its format writes, in order, nothing else.

Also truncation (max_seq_len counts text tokens; image tokens are never cut; no answer left is a DataError) and the
chat task's padded batches (pad ids, -100 labels, zero attention, Qwen2-VL's flat patches and grids).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import noise_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.data.sample import Sample
from bench.data.vocabulary import WORDS
from bench.errors import DataError
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.models.chat import CHAT_WORDS
from bench.tasks import captioning, chat, instruct
from bench.tasks.base import TaskSettings

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {"llava": instruct, "blip2": captioning, "smolvlm": chat, "qwen2_vl": chat}
# the token each format writes after an answer (BLIP-2: after the caption)
END_OF_TURN = {"llava": "</s>", "blip2": "</s>", "smolvlm": "<end_of_utterance>", "qwen2_vl": "<|im_end|>"}
# the tokens right before an answer: LLaVA's "ASSISTANT:" (not in the tiny vocabulary: <unk>), SmolVLM's "Assistant:",
# Qwen2-VL's "<|im_start|>assistant\n" (the newline is whitespace to the word-level tokenizer)
HEADER = {"llava": ["<unk>", ":"], "smolvlm": ["assistant", ":"], "qwen2_vl": ["<|im_start|>", "assistant"]}
CONVERSATIONAL = ("llava", "smolvlm", "qwen2_vl")
LONG = TaskSettings(max_seq_len=512)  # nothing is cut
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def models():
    """family -> its tiny model, built when first asked for."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = get_family(family).build(ModelSpec(name="m", family=family, preset="tiny", weights="random"))
        return cache[family]

    return get


def known_words(loaded, family: str) -> tuple[str, ...]:
    """The words of the family's tiny vocabulary that the tokenizer reads as themselves (one token each)."""
    tok = loaded.processor.tokenizer
    pool = WORDS if family in ("llava", "blip2") else CHAT_WORDS
    return tuple(w for w in pool if tok.tokenize(w) == [w])


def texts(pool, max_words: int = 6):
    return st.lists(st.sampled_from(pool), min_size=1, max_size=max_words).map(" ".join)


def images():
    """Small noise images of any aspect: Qwen2-VL's image token count follows it."""
    return st.builds(noise_image, st.integers(0, 2**16), st.integers(8, 96), st.integers(8, 96))


def conversations(pool, max_turns: int = 3):
    return st.lists(st.tuples(texts(pool), texts(pool)), min_size=1, max_size=max_turns).map(tuple)


def runs(mask) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D bool tensor."""
    out, start = [], None
    for i, on in enumerate(mask.tolist() + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            out.append((start, i))
            start = None
    return out


def cleaned(text: str) -> str:
    """What the word-level decoder's cleanup makes of words joined by spaces (no space before . ? ,)."""
    return re.sub(r" ([.?,])", r"\1", text)


def image_id(loaded) -> int:
    return loaded.model.config.image_token_id


def check_answer_only(loaded, family: str, turns, encoded: dict) -> None:
    """The property: the learned tokens are each answer + end of turn, in order, at the answers' places, and nothing
    else; where labels are kept they equal the inputs."""
    tok = loaded.processor.tokenizer
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids.shape == labels.shape
    keep = labels != -100
    assert torch.equal(labels[keep], ids[keep])
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    eot = END_OF_TURN[family]
    spans = runs(keep)
    assert len(spans) == len(turns), (tokens, spans)
    for (start, end), (_, answer) in zip(spans, turns):
        assert tokens[start:end] == answer.split() + [eot], (tokens[start:end], answer)
        assert tokens[start - len(HEADER[family]):start] == HEADER[family], tokens[:start]
    assert spans[-1][1] == len(ids), "tokens after the last answer's end of turn"
    assert not (ids[keep] == image_id(loaded)).any()
    decoded = tok.decode(labels[keep])
    assert decoded == cleaned(" ".join(f"{answer} {eot}" for _, answer in turns)), decoded


# ---------------------------------------------------------------- the masking property, every family


@pytest.mark.parametrize("family", CONVERSATIONAL)
@FAST
@given(data=st.data())
def test_only_the_answers_and_their_end_of_turn_are_learned(models, family, data):
    loaded = models(family)
    turns = data.draw(conversations(known_words(loaded, family)), label="turns")
    sample = Sample(image=data.draw(images(), label="image"), turns=turns)
    check_answer_only(loaded, family, turns, TASKS[family].encode(loaded, [sample], LONG)[0])


@pytest.mark.parametrize("family", CONVERSATIONAL)
@FAST
@given(data=st.data())
def test_a_question_with_answers_learns_the_first_answer(models, family, data):
    loaded = models(family)
    pool = known_words(loaded, family)
    question, answers = data.draw(texts(pool)), data.draw(st.lists(texts(pool), min_size=1, max_size=3))
    sample = Sample(image=data.draw(images()), question=question, answers=tuple(answers))
    check_answer_only(loaded, family, ((question, answers[0]),), TASKS[family].encode(loaded, [sample], LONG)[0])


@FAST
@given(data=st.data())
def test_blip2_learns_the_first_caption_and_eos_after_the_image_tokens(models, data):
    loaded = models("blip2")
    tok = loaded.processor.tokenizer
    pool = known_words(loaded, "blip2")
    captions = data.draw(st.lists(texts(pool, max_words=10), min_size=1, max_size=2))
    encoded = captioning.encode(loaded, [Sample(image=data.draw(images()), captions=tuple(captions))], LONG)[0]
    ids, labels = encoded["input_ids"], encoded["labels"]
    keep = labels != -100
    assert torch.equal(labels[keep], ids[keep])
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    assert runs(keep) == [(len(ids) - len(captions[0].split()) - 1, len(ids))]
    assert tokens[keep.nonzero()[0].item():] == captions[0].split() + ["</s>"]
    assert set(tokens[: len(ids) - len(captions[0].split()) - 1]) == {"<image>"}  # the prefix: image tokens only
    assert tok.decode(labels[keep]) == cleaned(f"{captions[0]} </s>")


def test_user_text_that_reads_like_the_template_is_still_masked(models):
    """Role words and the answer's own words in the question: masking is by position, never by searching."""
    for family in ("smolvlm", "qwen2_vl"):
        loaded = models(family)
        turns = (("assistant : red", "red"), ("user assistant system", "assistant"), ("red", "user : red"))
        sample = Sample(image=noise_image(0, 40, 40), turns=turns)
        check_answer_only(loaded, family, turns, chat.encode(loaded, [sample], LONG)[0])


# ---------------------------------------------------------------- truncation


@pytest.mark.parametrize("family", CONVERSATIONAL)
@FAST
@given(data=st.data())
def test_truncation_keeps_every_image_token_or_says_why_not(models, family, data):
    """max_seq_len = m keeps the first n_image + m tokens of the full encoding, labels with them; it raises a DataError
    exactly when that would cut an image token or leave no answer token."""
    loaded = models(family)
    turns = data.draw(conversations(known_words(loaded, family)))
    sample = Sample(image=data.draw(images()), turns=turns)
    full = TASKS[family].encode(loaded, [sample], LONG)[0]
    ids = full["input_ids"]
    positions = (ids == image_id(loaded)).nonzero().flatten()
    n_image, last_image = len(positions), int(positions[-1])
    m = data.draw(st.integers(0, len(ids) - n_image + 2), label="max_seq_len")
    limit = n_image + m
    try:
        out = TASKS[family].encode(loaded, [sample], TaskSettings(max_seq_len=m))[0]
    except DataError as exc:
        if limit <= last_image:
            assert "cuts into the image tokens" in str(exc)
        else:
            assert not (full["labels"][:limit] != -100).any() and "nothing to learn" in str(exc)
        assert "train[0]" in str(exc)
        return
    assert limit > last_image and (full["labels"][:limit] != -100).any()
    assert int((out["input_ids"] == image_id(loaded)).sum()) == n_image
    for key, value in full.items():
        if value.dim() == 1 and len(value) == len(ids):  # every per-token sequence is cut alike
            assert torch.equal(out[key], value[:limit]), key
        else:
            assert torch.equal(out[key], value), key


@pytest.mark.parametrize("family", CONVERSATIONAL)
def test_a_first_answer_beyond_max_seq_len_is_a_data_error(models, family):
    loaded = models(family)
    question = " ".join(["what color is the circle on the left side ?"] * 3)  # 30 text tokens before the answer
    sample = Sample(image=noise_image(1, 40, 40), turns=((question, "red"), ("and ?", "blue")))
    with pytest.raises(DataError, match=r"train\[0\].*nothing to learn"):
        TASKS[family].encode(loaded, [sample], TaskSettings(max_seq_len=20))
    # with room for the first answer only, it is learned and the second is not
    full = TASKS[family].encode(loaded, [sample], LONG)[0]
    first_end = runs(full["labels"] != -100)[0][1]
    n_image = int((full["input_ids"] == image_id(loaded)).sum())
    cut = TASKS[family].encode(loaded, [sample], TaskSettings(max_seq_len=first_end - n_image))[0]
    assert loaded.processor.tokenizer.convert_ids_to_tokens(cut["labels"][cut["labels"] != -100].tolist()) == [
        "red", END_OF_TURN[family]]


@pytest.mark.parametrize("family", CONVERSATIONAL)
def test_max_seq_len_that_would_cut_the_image_is_a_data_error(models, family):
    loaded = models(family)
    sample = Sample(image=noise_image(2, 40, 40), turns=(("what ?", "red"),))
    with pytest.raises(DataError, match="cuts into the image tokens"):
        TASKS[family].encode(loaded, [sample], TaskSettings(max_seq_len=0))


@FAST
@given(data=st.data())
def test_blip2_truncation_keeps_the_image_tokens_and_eos(models, data):
    loaded = models("blip2")
    tok = loaded.processor.tokenizer
    caption = data.draw(texts(known_words(loaded, "blip2"), max_words=12))
    m = data.draw(st.integers(0, 14))
    sample = Sample(image=data.draw(images()), captions=(caption,))
    out = captioning.encode(loaded, [sample], TaskSettings(max_seq_len=m))[0]
    tokens = tok.convert_ids_to_tokens(out["input_ids"].tolist())
    n_image = loaded.model.config.num_query_tokens
    assert tokens[:n_image] == ["<image>"] * n_image and "<image>" not in tokens[n_image:]
    learned = tok.convert_ids_to_tokens(out["labels"][out["labels"] != -100].tolist())
    words = caption.split()
    assert learned == tokens[n_image:] and learned[-1] == "</s>"
    assert learned[:-1] == words[: len(learned) - 1] and len(learned) - 1 == min(len(words), max(m - 1, 0))


# ---------------------------------------------------------------- the chat task's batches


def mixed_samples():
    """Different lengths and image shapes (Qwen2-VL: different image token counts)."""
    return [Sample(image=noise_image(0, 30, 70), turns=(("what color is it ?", "red"), ("how many ?", "two circles"),
                                                        ("where ?", "left"))),
            Sample(image=noise_image(1, 64, 64), question="what ?", answers=("blue",)),
            Sample(image=noise_image(2, 90, 20), turns=(("which shape is on the right side ?", "a large square"),))]


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_collate_pads_right_and_the_batch_loss_is_the_samples_loss(models, family):
    loaded = models(family)
    encoded = chat.encode(loaded, mixed_samples(), LONG)
    batch = chat.collate(encoded, loaded)
    pad = loaded.processor.tokenizer.pad_token_id
    lengths = [len(e["input_ids"]) for e in encoded]
    assert len(set(lengths)) == 3 and batch["input_ids"].shape == (3, max(lengths))
    for row, (e, n) in enumerate(zip(encoded, lengths)):
        assert torch.equal(batch["input_ids"][row, :n], e["input_ids"]) and (batch["input_ids"][row, n:] == pad).all()
        assert torch.equal(batch["labels"][row, :n], e["labels"]) and (batch["labels"][row, n:] == -100).all()
        assert (batch["attention_mask"][row, :n] == 1).all() and (batch["attention_mask"][row, n:] == 0).all()
        if "mm_token_type_ids" in e:
            assert torch.equal(batch["mm_token_type_ids"][row, :n], e["mm_token_type_ids"])
            assert (batch["mm_token_type_ids"][row, n:] == 0).all()
    if family == "qwen2_vl":
        assert torch.equal(batch["pixel_values"], torch.cat([e["pixel_values"] for e in encoded]))
        assert torch.equal(batch["image_grid_thw"], torch.cat([e["image_grid_thw"] for e in encoded]))
        assert batch["image_grid_thw"].shape == (3, 3)
        # one image token per merged 2x2 patch group of that sample's grid
        tokens = [int((e["input_ids"] == image_id(loaded)).sum()) for e in encoded]
        assert tokens == [int(g.prod()) // 4 for g in batch["image_grid_thw"]] and len(set(tokens)) > 1
    else:
        assert batch["pixel_values"].shape[0] == 3 and batch["pixel_attention_mask"].shape[0] == 3
    model = loaded.model
    model.eval()
    with torch.no_grad():
        loss = chat.loss(model, batch)
        assert math.isfinite(loss.item())
        # padding changes nothing: the batch loss is the token-weighted mean of the samples' own losses
        total = weight = 0.0
        for e in encoded:
            one = chat.collate([e], loaded)
            n = int((one["labels"][:, 1:] != -100).sum())
            total, weight = total + chat.loss(model, one).item() * n, weight + n
    assert loss.item() == pytest.approx(total / weight, rel=1e-4)
    real, padded = chat.count_tokens(batch)
    assert real == sum(lengths) < padded == 3 * max(lengths)


def test_smolvlm_training_step_reaches_every_component(models):
    loaded = get_family("smolvlm").build(ModelSpec(name="m", family="smolvlm", preset="tiny", weights="random"), seed=4)
    batch = chat.collate(chat.encode(loaded, mixed_samples()[:2], LONG), loaded)
    chat.loss(loaded.model, batch).backward()
    grads = {n: p.grad for n, p in loaded.model.named_parameters()}
    for prefix in ("model.vision_model.", "model.connector.", "model.text_model.", "lm_head."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix
