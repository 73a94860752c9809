"""BLIP-2's task: train on captions with the language-model loss, score generated captions with CIDEr.

A training sequence is what Blip2Processor makes of (image, caption + eos): `num_query_tokens`
image tokens, whatever the tokenizer puts first (OPT's </s> as bos; nothing for bench's tiny
tokenizer), the caption and eos, so the model learns to stop. Generation starts from the same
prefix, the processor's encoding of (image, ""), so training and evaluation agree for tiny
presets and real checkpoints alike. The prefix is found by its encoded length, not by searching
for a marker, and its labels are -100 with the padding's.

The batching and generation helpers here are shared with bench/tasks/instruct.py (LLaVA).
"""

from __future__ import annotations

from bench.data.sample import DatasetSplits, Sample
from bench.errors import BenchError, DataError
from bench.tasks.base import Quality, TaskSettings

TASK = "caption"
METRIC = "CIDEr"
HIGHER_IS_BETTER = True
SERVED = "tokens"  # what a served request yields: generated tokens

IGNORE = -100  # the label transformers' loss skips
EXAMPLES = 3  # predictions kept in Quality.extra, to eyeball what a score means
_IMAGE_CHUNK = 64  # images per processor call in encode: bounds the PIL -> tensor working set


def encode(loaded, samples: list[Sample], settings: TaskSettings) -> list[dict]:
    """Per-sample CPU tensors: pixel values, input ids (prefix + first caption + eos) and their labels."""
    processor = loaded.processor
    eos = processor.tokenizer.eos_token or ""
    captions = []
    for i, s in enumerate(samples):
        if not s.captions or not s.captions[0].strip():
            raise DataError("a captioning sample needs at least one non-empty caption", where=f"train[{i}].captions",
                            fix="give every training sample a caption (the first one is trained on)")
        captions.append(s.captions[0].strip())
    if not samples:
        return []
    prefix = prompt_ids(processor, samples[0].image, "")
    out = []
    for start in range(0, len(samples), _IMAGE_CHUNK):
        chunk = samples[start:start + _IMAGE_CHUNK]
        enc = processor(images=[s.image for s in chunk], text=[c + eos for c in captions[start:start + len(chunk)]],
                        padding=True, return_tensors="pt")
        for row in range(len(chunk)):
            ids = enc["input_ids"][row][enc["attention_mask"][row].bool()]
            check_prefix(ids, prefix, where=f"train[{start + row}]")
            ids = truncate(ids, keep=len(prefix), max_text=settings.max_seq_len, image_token_id=image_token_id(loaded))
            labels = ids.clone()
            labels[: len(prefix)] = IGNORE
            out.append({"pixel_values": enc["pixel_values"][row], "input_ids": ids, "labels": labels})
    return out


def collate(encoded: list[dict], loaded) -> dict:
    """One right-padded micro-batch: input_ids, attention_mask, labels (-100 on padding) and pixel_values."""
    import torch

    pad = pad_token_id(loaded.processor)
    length = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[row, :n] = e["input_ids"]
        mask[row, :n] = 1
        labels[row, :n] = e["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.stack([e["pixel_values"] for e in encoded])}


def loss(model, batch: dict):
    """The model's own next-token loss over the unmasked labels (transformers shifts them)."""
    return model(**batch).loss


def count_tokens(batch: dict) -> tuple[int, int]:
    """(real, padded): real = every non-pad position the language model runs on, image/query tokens and
    prompt included (they cost compute like the caption tokens do); padded = all positions of the batch."""
    return int(batch["attention_mask"].sum()), int(batch["input_ids"].numel())


def evaluate(loaded, model, splits: DatasetSplits, settings: TaskSettings) -> Quality:
    """CIDEr (0-100 scale, IDF from these references) of captions generated for splits.eval; BLEU-4 and ROUGE-L in extra."""
    from bench.metrics import caption_scores_per_image

    references = []
    for i, s in enumerate(splits.eval):
        refs = [c for c in s.captions if c.strip()]
        if not refs:
            raise DataError("a captioning eval sample needs at least one reference caption",
                            where=f"eval[{i}].captions", fix="give every eval sample one or more captions")
        references.append(refs)
    generated = generate_texts(loaded, model, splits.eval, lambda s: "", settings)
    predictions = [text for _, text in generated]
    references = [references[i] for i, _ in generated]  # a skipped unreadable sample is left out of the score
    scores, per_image = caption_scores_per_image(predictions, references)
    extra = {k: v for k, v in scores.items() if k != METRIC}
    extra["examples"] = [{"prediction": p, "reference": r[0]} for p, r in zip(predictions[:EXAMPLES], references)]
    return Quality(metric=METRIC, value=float(scores[METRIC]), higher_is_better=HIGHER_IS_BETTER, extra=extra,
                   n=len(predictions), items=per_image, item_ids=[i for i, _ in generated])


# ---------------------------------------------------------------- shared with instruct.py


class PromptInputs:
    """What the evaluation stream's workers make of a chunk of samples: the processor's inputs for (image, prompt),
    left-padded so every row's continuation starts at the same column."""

    def __init__(self, processor, prompt_of):
        self.processor, self.prompt_of = processor, prompt_of

    def __call__(self, samples: list) -> dict:
        return dict(self.processor(images=[s.image for s in samples], text=[self.prompt_of(s) for s in samples],
                                   padding=True, padding_side="left", return_tensors="pt"))


def generate_texts(loaded, model, samples: list, prompt_of, settings: TaskSettings) -> list[tuple[int, str]]:
    """(sample index, generated text) for the samples, each prompted with prompt_of(sample): greedy (num_beams=1) or
    beam generation in eval batches, only the new tokens decoded. A sample skipped as unreadable has no entry."""
    import torch

    from bench.data.stream import eval_batches

    processor = loaded.processor
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    kwargs = {"max_new_tokens": settings.max_new_tokens, "num_beams": settings.num_beams, "do_sample": False,
              "eos_token_id": eos_token_ids(tokenizer, model), "pad_token_id": pad_token_id(processor)}
    texts = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            chunks = eval_batches(samples, settings.eval_batch_size, PromptInputs(processor, prompt_of), settings.stream)
            for indices, inputs in chunks:
                inputs = {k: v.to(device) for k, v in inputs.items()}
                out = model.generate(**inputs, **kwargs)
                new = out[:, inputs["input_ids"].shape[1]:]  # generate returns prompt + continuation
                texts += zip(indices, [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)])
    finally:
        model.train(was_training)
    return texts


def serving_request(loaded, samples: list, settings: TaskSettings, device: str, prompt_of=lambda s: ""):
    """Generation of exactly max_new_tokens for each of `samples` (greedy, the end token held back so every variant
    generates as many tokens): a callable(model) -> tokens generated."""
    import torch

    inputs = {k: v.to(device) for k, v in PromptInputs(loaded.processor, prompt_of)(samples).items()}
    kwargs = {"max_new_tokens": settings.max_new_tokens, "min_new_tokens": settings.max_new_tokens, "num_beams": 1,
              "do_sample": False, "pad_token_id": pad_token_id(loaded.processor)}

    def request(model) -> int:
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs)
        return int(out[:, inputs["input_ids"].shape[1]:].numel())

    return request


def prompt_ids(processor, image, text: str):
    """The processor's unpadded input ids for one (image, text): image tokens expanded, special tokens added."""
    enc = processor(images=[image], text=[text], return_tensors="pt")
    return enc["input_ids"][0][enc["attention_mask"][0].bool()]


def check_prefix(ids, prefix, *, where: str) -> None:
    """Label masking is by length: the prompt's own encoding must be where the full sequence begins."""
    if len(ids) < len(prefix) or not bool((ids[: len(prefix)] == prefix).all()):
        raise BenchError(
            "the tokenizer encodes the prompt differently alone than inside the full sequence, so the prompt "
            "tokens cannot be masked by length", where=where,
            fix="use a tokenizer that does not merge tokens across the prompt/answer boundary",
        )


def truncate(ids, *, keep: int, max_text: int, image_token_id: int | None):
    """At most `max_text` tokens besides the image tokens; the last (eos) token is kept when cutting.
    Never cuts into the first `keep` tokens (image tokens and prompt must match the image features)."""
    import torch

    n_image = int((ids == image_token_id).sum()) if image_token_id is not None else 0
    limit = kept_length(n_image=n_image, keep=keep, max_text=max_text)
    if len(ids) <= limit:
        return ids
    return torch.cat([ids[: limit - 1], ids[-1:]])


def kept_length(*, n_image: int, keep: int, max_text: int) -> int:
    """How many tokens truncate leaves a sequence of `n_image` image tokens: max_text text tokens besides them, and
    never fewer than the `keep` prefix tokens and one more."""
    return max(n_image + max_text, keep + 1)


def truncated(loaded, samples: list[Sample], settings: TaskSettings) -> list[bool | None]:
    """Per training sample, whether encode cuts its caption at max_seq_len (None: encode refuses the sample), from the
    text alone, no image read: the processor puts its image tokens before the tokenizer's encoding of caption + eos,
    and the prefix prompt_ids finds is those image tokens and the tokenizer's encoding of ""."""
    tokenizer = loaded.processor.tokenizer
    eos = tokenizer.eos_token or ""
    keep = len(tokenizer("")["input_ids"])
    limit = kept_length(n_image=0, keep=keep, max_text=settings.max_seq_len)
    captions = [s.captions[0].strip() if s.captions else "" for s in samples]
    lengths = iter(len(ids) for ids in tokenizer([c + eos for c in captions if c])["input_ids"]) if any(captions) else None
    return [next(lengths) > limit if c else None for c in captions]


def image_token_id(loaded) -> int | None:
    config = loaded.model.config
    return getattr(config, "image_token_id", None)


def pad_token_id(processor) -> int:
    pad = getattr(processor.tokenizer, "pad_token_id", None)
    if pad is None:  # e.g. a Llama tokenizer without a pad token: padding is masked anyway
        pad = processor.tokenizer.eos_token_id
    return 0 if pad is None else int(pad)


def eos_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's eos (what training appends) and the model's own (e.g. BLIP-2 OPT's newline), deduplicated."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))
