"""The chat families' task (smolvlm, qwen2_vl, auto): conversations written by the processor's own chat template.

A sample's turns become messages, the image in the first user turn,

    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
     {"role": "assistant", "content": [{"type": "text", "text": answer}]}, ...]

and the processor renders them (apply_chat_template) and expands the image placeholder. Only the assistant's
answers are learned, each with the end-of-turn token its template writes after it (<|im_end|>, <end_of_utterance>):
an answer's tokens start where the template's rendering of the conversation before it, with the generation prompt,
ends, and stop where the rendering up to and including it ends, less what the template writes after the
end-of-turn token (a newline). Every such prefix is checked to be where the full encoding begins, so a template or
tokenizer that breaks the rule is an error, never a silently wrong mask; tests decode the unmasked tokens for
every family.

Evaluation renders one user turn with the generation prompt, generates and scores as bench/tasks/instruct.py
does (the data's own answer metric, else VQA accuracy or exact match).
"""

from __future__ import annotations

from bench.data.sample import DatasetSplits, Sample
from bench.errors import DataError
from bench.tasks.base import Quality, TaskSettings
from bench.tasks.captioning import IGNORE, SERVED, check_prefix, count_tokens, image_token_id, loss, pad_token_id  # noqa: F401
from bench.tasks.captioning import serving_request as captioning_request
from bench.tasks.instruct import HIGHER_IS_BETTER, METRIC, answer_quality, training_turns  # noqa: F401

TASK = "vqa"
# per-token sequences a processor returns beside input_ids, padded like it (0: what a padded position reads)
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")


def messages(turns, *, image: bool = True) -> list[dict]:
    """The conversation as chat-template messages, the image at the start of the first user turn."""
    out = []
    for t, (user, assistant) in enumerate(turns):
        content = ([{"type": "image"}] if image and t == 0 else []) + [{"type": "text", "text": user.strip()}]
        out.append({"role": "user", "content": content})
        if assistant is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": assistant.strip()}]})
    return out


def render(processor, conversation: list[dict], *, generation_prompt: bool = False) -> str:
    return processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)


def prompt(processor, question: str) -> str:
    """The evaluation prompt: one user turn with the image, then the template's generation prompt."""
    return render(processor, messages(((question, None),)), generation_prompt=True)


def answer_spans(processor, conversation: list[dict], ids, *, where: str) -> list[tuple[int, int]]:
    """[start, end) of each assistant answer in `ids` (the processor's encoding of the full conversation), end-of-turn
    token included, what the template writes after it (whitespace) left out.

    The renderings are tokenized as text, their image placeholder unexpanded (the image is processed once, by the
    caller): the image sits in the first user turn, before every answer, so its expansion shifts every answer by the
    same count, and each answer's tokens are checked to be the same in both encodings."""
    import torch

    tokenizer = processor.tokenizer

    def text_ids(text: str):
        return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)

    full = text_ids(render(processor, conversation))
    shift = len(ids) - len(full)  # what expanding the image placeholder added
    spans = []
    for j, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        before = text_ids(render(processor, conversation[:j], generation_prompt=True))
        through = text_ids(render(processor, conversation[: j + 1]))
        check_prefix(full, before, where=where)
        check_prefix(full, through, where=where)
        start, end = len(before) + shift, len(through) + shift
        if shift < 0 or not torch.equal(ids[start:end], full[len(before):len(through)]):
            raise DataError("the answer's tokens differ between the processor's encoding and the text's, so the answer "
                            "cannot be found by length (an image after an answer?)", where=where,
                            fix="put the image in the first user turn")
        spans.append((start, _trimmed(tokenizer, ids, start, end)))
    return spans


def _trimmed(tokenizer, ids, start: int, end: int) -> int:
    """`end` moved back past the tokens that decode to whitespace alone (what a template writes after an answer)."""
    while end > start and not tokenizer.decode(ids[end - 1: end]).strip():
        end -= 1
    return end


def encode(loaded, samples: list[Sample], settings: TaskSettings) -> list[dict]:
    """Per-sample CPU tensors: the processor's outputs for the rendered conversation, and labels on the answers."""
    processor = loaded.processor
    image_id = image_token_id(loaded)
    out = []
    for i, s in enumerate(samples):
        conversation = messages(training_turns(s, i))
        try:
            enc = processor(images=[s.image], text=[render(processor, conversation)], return_tensors="pt")
        except ValueError as exc:  # an image the processor refuses (Qwen2-VL: an aspect ratio over 200)
            raise DataError(f"the processor cannot take this sample: {exc}", where=f"train[{i}]",
                            fix="drop or re-crop the image (or set on_bad_sample = \"skip\")") from None
        keep = enc["attention_mask"][0].bool()
        ids = enc["input_ids"][0][keep]
        labels = ids.new_full(ids.shape, IGNORE)
        for start, end in answer_spans(processor, conversation, ids, where=f"train[{i}]"):
            labels[start:end] = ids[start:end]
        image_positions = (ids == image_id).nonzero().flatten() if image_id is not None else ids[:0]
        limit = len(image_positions) + settings.max_seq_len  # max_seq_len counts text tokens only
        if len(image_positions) and limit <= int(image_positions[-1]):
            raise DataError(f"max_seq_len = {settings.max_seq_len} cuts into the image tokens", where=f"train[{i}]",
                            fix="raise max_seq_len")
        if not bool((labels[:limit] != IGNORE).any()):
            raise DataError(f"the first answer starts after max_seq_len = {settings.max_seq_len} text tokens, so "
                            "the sample has nothing to learn", where=f"train[{i}]", fix="raise max_seq_len")
        row = {k: v for k, v in enc.items() if k not in SEQUENCE_KEYS}
        row.update({k: enc[k][0][keep][:limit] for k in SEQUENCE_KEYS if k in enc})
        row["labels"] = labels[:limit]
        out.append(row)
    return out


def truncated(loaded, samples: list[Sample], settings: TaskSettings) -> list[bool | None]:
    """Per training sample, whether encode cuts its last answer at max_seq_len (None: encode refuses the sample), from
    the text, no image of the data read: encode keeps max_seq_len tokens besides the image tokens, so the answer is cut
    when the rendered conversation's other tokens up to its end, with the text tokens the processor's image expansion
    adds (Idefics3's markers around the image), exceed it. Those are counted once, on a blank image the size of the
    first sample's (its header read): exact where every image expands alike (Qwen2-VL, the tiny presets' SmolVLM,
    which does not split images into tiles), the first image's tiles standing for all where a processor splits."""
    import torch

    processor = loaded.processor
    image_id = image_token_id(loaded)
    extra, out = None, []
    for i, s in enumerate(samples):
        try:
            conversation = messages(training_turns(s, i))
            text = render(processor, conversation)
            ids = torch.tensor(processor.tokenizer(text)["input_ids"], dtype=torch.long)
            if extra is None:
                extra = _expansion_text_tokens(processor, s.image, text, ids, image_id)
            end = _trimmed(processor.tokenizer, ids, 0, len(ids))  # the last answer's end, as answer_spans finds it
            others = end - (int((ids[:end] == image_id).sum()) if image_id is not None else 0)
            out.append(others + extra > settings.max_seq_len)
        except (DataError, ValueError):  # encode's own refusals, and a processor's (an image it cannot take)
            out.append(None)
    return out


def _expansion_text_tokens(processor, image, text: str, ids, image_id: int | None) -> int:
    """How many tokens other than image tokens the processor's encoding of (an image of `image`'s size, `text`) has
    beyond the tokenizer's `ids` of the text alone."""
    from PIL import Image

    size = image.size if hasattr(image, "getbands") else image.header_size()
    enc = processor(images=[Image.new("RGB", size)], text=[text], return_tensors="pt")
    full = enc["input_ids"][0][enc["attention_mask"][0].bool()]
    if image_id is None:
        return len(full) - len(ids)
    return int((full != image_id).sum()) - int((ids != image_id).sum())


def collate(encoded: list[dict], loaded) -> dict:
    """One right-padded micro-batch: the sequences padded (labels with -100), the image tensors concatenated along
    the processor's first dimension (Idefics3's per-sample image stacks padded to the most images with zeros, which
    the model skips as padding)."""
    import torch

    pads = {"input_ids": pad_token_id(loaded.processor), "labels": IGNORE}
    length = max(len(e["input_ids"]) for e in encoded)
    batch = {}
    for key in SEQUENCE_KEYS:
        if key in encoded[0]:
            padded = torch.full((len(encoded), length), pads.get(key, 0), dtype=encoded[0][key].dtype)
            for row, e in enumerate(encoded):
                padded[row, : len(e[key])] = e[key]
            batch[key] = padded
    for key in encoded[0]:
        if key not in SEQUENCE_KEYS:
            batch[key] = torch.cat(_same_count([e[key] for e in encoded]))
    return batch


def _same_count(tensors: list) -> list:
    """Per-sample image stacks [1, n_images, ...] padded with zeros to the largest n_images."""
    import torch

    if tensors[0].dim() < 4:  # flat patches (Qwen2-VL) or grids: concatenated as they are
        return tensors
    most = max(t.shape[1] for t in tensors)
    return [t if t.shape[1] == most else torch.cat([t, t.new_zeros((t.shape[0], most - t.shape[1], *t.shape[2:]))], 1)
            for t in tensors]


def evaluate(loaded, model, splits: DatasetSplits, settings: TaskSettings) -> Quality:
    """Answers generated for the eval questions from the chat template's prompt, scored as instruct.answer_quality."""
    return answer_quality(loaded, model, splits, settings, lambda s: prompt(loaded.processor, s.question))


def serving_request(loaded, samples: list, settings: TaskSettings, device: str):
    """Answers of exactly max_new_tokens to the samples' questions (captioning's request with the chat prompt)."""
    return captioning_request(loaded, samples, settings, device, prompt_of=lambda s: prompt(loaded.processor, s.question))
