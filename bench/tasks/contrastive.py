"""CLIP's task: train with the contrastive image-text loss, score by zero-shot classification.

Both backends look the same from here: the processor (CLIPProcessor or bench's OpenClipProcessor)
turns images into `pixel_values` and texts into `input_ids` + `attention_mask`, and `loss` picks
the backend's own loss (CLIPModel's return_loss, open_clip's ClipLoss).
"""

from __future__ import annotations

from bench.data.sample import DatasetSplits, Sample
from bench.data.stream import eval_batches
from bench.errors import DataError
from bench.models.base import base_model
from bench.models.clip import backend_of
from bench.tasks.base import Quality, TaskSettings

TASK = "classification"
METRIC = "zero_shot_acc"
HIGHER_IS_BETTER = True
SERVED = "images"  # what a served request yields: images embedded

_IMAGE_CHUNK = 64  # images per processor call in encode: bounds the PIL -> tensor working set


def training_text(sample: Sample, index: int, settings: TaskSettings, classnames) -> str:
    """The sample's first caption, else its class prompt ("a photo of a {}")."""
    if sample.captions:
        return sample.captions[0]
    if sample.label is None or not classnames:
        raise DataError(
            "a CLIP training sample needs a caption or a class label", where=f"train[{index}]",
            fix="give every sample a label (with the dataset's classnames) or at least one caption",
        )
    if not 0 <= sample.label < len(classnames):
        raise DataError(f"label {sample.label} is outside the {len(classnames)} classnames", where=f"train[{index}].label",
                        fix="labels index DatasetSplits.classnames from 0")
    return settings.prompt_template.format(classnames[sample.label])


def encode(loaded, samples: list[Sample], settings: TaskSettings, classnames=()) -> list[dict]:
    """Per-sample CPU tensors: pixel values (through the processor once) and unpadded text tokens."""
    texts = [training_text(s, i, settings, classnames) for i, s in enumerate(samples)]
    pixels = pixel_values(loaded.processor, [s.image for s in samples])
    ids, mask = tokenize(loaded.processor, texts, settings.max_seq_len, loaded.model)
    lengths = mask.sum(1).tolist()
    return [
        {"pixel_values": pixels[i], "input_ids": ids[i, :n].clone(), "attention_mask": mask[i, :n].clone()}
        for i, n in enumerate(lengths)
    ]


def collate(encoded: list[dict], loaded) -> dict:
    """One micro-batch; text padded to the longest (or to open_clip's fixed context length)."""
    import torch

    length = getattr(loaded.processor, "context_length", None) or max(len(e["input_ids"]) for e in encoded)
    pad = pad_token_id(loaded.processor)
    ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[row, :n] = e["input_ids"]
        mask[row, :n] = e["attention_mask"]
    return {"pixel_values": torch.stack([e["pixel_values"] for e in encoded]), "input_ids": ids, "attention_mask": mask}


def loss(model, batch: dict):
    """The symmetric image-text contrastive loss of the backend that built `model`."""
    if backend_of(model) == "open_clip":
        from open_clip.loss import ClipLoss

        image_features, text_features, logit_scale = _open_clip_features(model, batch)
        return ClipLoss()(image_features, text_features, logit_scale)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], return_loss=True)
    return out.loss


def count_tokens(batch: dict) -> tuple[int, int]:
    return int(batch["attention_mask"].sum()), int(batch["input_ids"].numel())


def evaluate(loaded, model, splits: DatasetSplits, settings: TaskSettings) -> Quality:
    """Zero-shot accuracy on splits.eval (0-100): each image gets the class whose prompt embeds closest."""
    import torch

    classnames = tuple(splits.classnames)
    if not classnames:
        raise DataError("zero-shot evaluation needs class names, and this dataset has none",
                        where="classnames", fix="use a classification dataset (one with classnames) for CLIP")
    labels = []
    for i, s in enumerate(splits.eval):
        if s.label is None or not 0 <= s.label < len(classnames):
            raise DataError(f"eval sample has label {s.label!r}, not an index into {len(classnames)} classnames",
                            where=f"eval[{i}].label", fix="give every eval sample a label in range")
        labels.append(s.label)

    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prompts = [settings.prompt_template.format(c) for c in classnames]
            class_emb = torch.cat([
                _text_embeddings(model, loaded.processor, prompts[i:i + settings.eval_batch_size], settings, device)
                for i in range(0, len(prompts), settings.eval_batch_size)
            ])
            hits1 = hits5 = n = 0
            k = min(5, len(classnames))
            items, item_ids = [], []
            chunks = eval_batches(splits.eval, settings.eval_batch_size, ImagePixels(loaded.processor), settings.stream)
            for indices, pixels in chunks:
                scores = _image_embeddings(model, pixels.to(device)) @ class_emb.T
                truth = torch.tensor([labels[i] for i in indices], device=scores.device)
                top = scores.topk(k, dim=1).indices
                right = (top[:, 0] == truth).tolist()
                items += [100.0 * r for r in right]
                item_ids += list(indices)
                hits1 += sum(right)
                hits5 += int((top == truth[:, None]).any(1).sum())
                n += len(indices)
    finally:
        model.train(was_training)

    top1 = 100.0 * hits1 / n if n else 0.0
    extra = {"top1": top1}
    if len(classnames) > 5:
        extra["top5"] = 100.0 * hits5 / n if n else 0.0
    return Quality(metric=METRIC, value=top1, higher_is_better=HIGHER_IS_BETTER, extra=extra, n=n, items=items,
                   item_ids=item_ids)


def serving_request(loaded, samples: list, settings: TaskSettings, device: str):
    """CLIP served as an image embedder (the class prompts' embeddings are computed once and cached in serving): a
    callable(model) -> images embedded."""
    import torch

    pixels = pixel_values(loaded.processor, [s.image for s in samples]).to(device)

    def request(model) -> int:
        with torch.no_grad():
            return int(_image_embeddings(model, pixels).shape[0])

    return request


# ---------------------------------------------------------------- helpers


def pixel_values(processor, images):
    import torch

    chunks = [processor(images=images[i:i + _IMAGE_CHUNK], return_tensors="pt")["pixel_values"]
              for i in range(0, len(images), _IMAGE_CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def tokenize(processor, texts: list[str], max_length: int, model=None):
    """(input_ids, attention_mask) as right-padded LongTensors, truncated to max_length (end token kept), and never past
    the text model's positions (CLIP's 77): a longer text would index past its position embeddings."""
    out = processor(text=texts, padding=True, truncation=True, max_length=text_length(max_length, model),
                    return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def text_length(max_length: int, model=None) -> int:
    """The most text tokens tokenize keeps: max_length, never past the text model's positions."""
    limit = text_positions(model) if model is not None else None
    return min(max_length, limit) if limit else max_length


def truncated(loaded, samples: list[Sample], settings: TaskSettings, classnames=()) -> list[bool | None]:
    """Per training sample, whether encode cuts its text (first caption or class prompt) at max_seq_len or the text
    model's positions (None: encode refuses the sample): its tokens with the tokenizer's start and end tokens, against
    tokenize's length (and open_clip's context length, which its processor keeps to as well)."""
    from bench.tasks.coverage import text_tokenizer, token_ids

    processor = loaded.processor
    limit = text_length(settings.max_seq_len, loaded.model)
    context = getattr(processor, "context_length", None)
    limit = min(limit, context) if context else limit
    texts = []
    for i, s in enumerate(samples):
        try:
            texts.append(training_text(s, i, settings, classnames))
        except DataError:
            texts.append(None)
    lengths = iter(len(ids) for ids in token_ids(text_tokenizer(processor), [t for t in texts if t is not None],
                                                 special=True))
    return [None if t is None else next(lengths) > limit for t in texts]


def text_positions(model) -> int | None:
    """How many text positions the model has (transformers: its text config's max_position_embeddings; open_clip:
    its context length, which its own tokenizer already keeps to)."""
    base = base_model(model)
    text_config = getattr(getattr(base, "config", None), "text_config", None)
    if text_config is not None:
        return getattr(text_config, "max_position_embeddings", None)
    return getattr(base, "context_length", None)


def pad_token_id(processor) -> int:
    pad = getattr(processor, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(processor, "tokenizer", None), "pad_token_id", None)
    return 0 if pad is None else int(pad)


def _device_of(model):
    return next(p.device for p in model.parameters())


def _float_dtype(module):
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _open_clip_features(model, batch: dict):
    base = base_model(model)
    pixels = batch["pixel_values"].to(_float_dtype(base.visual))
    out = model(image=pixels, text=batch["input_ids"])
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _text_embeddings(model, processor, texts, settings: TaskSettings, device):
    import torch.nn.functional as F

    ids, mask = tokenize(processor, texts, settings.max_seq_len, model)
    ids, mask = ids.to(device), mask.to(device)
    if backend_of(model) == "open_clip":
        emb = model.encode_text(ids)
    else:
        emb = _pooled(model.get_text_features(input_ids=ids, attention_mask=mask))
    return F.normalize(emb.float(), dim=-1)


class ImagePixels:
    """What the evaluation stream's workers make of a chunk of samples: the processor's pixel values."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples: list):
        return pixel_values(self.processor, [s.image for s in samples])


def _image_embeddings(model, pixels):
    import torch.nn.functional as F

    if backend_of(model) == "open_clip":
        base = base_model(model)
        emb = model.encode_image(pixels.to(_float_dtype(base.visual)))
    else:
        emb = _pooled(model.get_image_features(pixel_values=pixels))
    return F.normalize(emb.float(), dim=-1)


def _pooled(out):
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x returned the tensor
    return out.pooler_output if hasattr(out, "pooler_output") else out
