"""The contract of a task module (bench/tasks/contrastive.py, captioning.py, instruct.py).

A task module defines at module level:

    TASK: str                 # classification | caption | vqa  (must equal the family's TASK)
    METRIC: str               # the headline metric's name, e.g. "zero_shot_acc", "CIDEr", "vqa_acc"
    HIGHER_IS_BETTER: bool
                              # (its evaluation's version and metrics: bench.metrics.EVALUATIONS[TASK])

    def encode(loaded: LoadedModel, samples: list[Sample], settings: TaskSettings) -> list[dict]
        # per-sample tensors (CPU), done once before training; the images go through the
        # processor here so the timed loop measures the model, not PIL.
    def collate(encoded: list[dict], loaded: LoadedModel) -> dict
        # one micro-batch: the keyword arguments of the model's forward, padded, on CPU
    def loss(model, batch: dict) -> torch.Tensor
        # scalar training loss (CLIP: contrastive; BLIP-2: caption LM loss; LLaVA: SFT loss
        # with the user turn and image tokens masked to -100)
    def count_tokens(batch: dict) -> tuple[int, int]
        # (real tokens, padded tokens) in the batch, for tokens/s
    def evaluate(loaded: LoadedModel, model, splits: DatasetSplits, settings: TaskSettings) -> Quality
        # quality on splits.eval with the model as it is now (base or tuned)
    SERVED: str               # what one inference request yields, as serving throughput counts it: images | tokens
    def serving_request(loaded: LoadedModel, samples: list[Sample], settings: TaskSettings, device: str)
        # one inference request over `samples` as it is served (CLIP: image embeddings; captioning and VQA: generation
        # of exactly max_new_tokens), inputs prepared once: a callable(model) -> how many SERVED units it made
    def truncated(loaded: LoadedModel, samples: list[Sample], settings: TaskSettings) -> list[bool | None]
        # per training sample, whether encode cuts it at max_seq_len (None: encode refuses it), told from its text
        # alone, by encode's own length rule, no image read: quality.text_coverage (bench/tasks/coverage.py)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from bench.data.stream import StreamSettings, default_workers, on_disk


@dataclass(frozen=True)
class TaskSettings:
    max_seq_len: int = 32
    eval_batch_size: int = 16
    max_new_tokens: int = 8  # captioning / VQA generation
    num_beams: int = 1  # 1 = greedy
    prompt_template: str = "a photo of a {}"  # CLIP zero-shot class prompt
    device: str = "cpu"
    stream: StreamSettings = StreamSettings()  # how batches are read: workers, prefetch, bad samples


@dataclass
class Quality:
    metric: str
    value: float  # on a 0-100 scale ("points"), as the field reports accuracy and CIDEr
    higher_is_better: bool
    extra: dict = field(default_factory=dict)  # other metrics of the same evaluation (BLEU-4, ROUGE-L, ...)
    n: int = 0  # evaluated samples
    # each evaluated sample's share of `value`, on the same scale (value is their mean), and which sample of the eval
    # split it is: what a paired bootstrap of Δ resamples (bench/analysis/intervals.py)
    items: list[float] = field(default_factory=list)
    item_ids: list[int] = field(default_factory=list)


def task_settings(train: dict, device: str, splits=None) -> TaskSettings:
    """The task-facing settings from a cell's resolved [defaults]/training table (`splits`: the data the cell
    reads, which decides the default worker count)."""
    return TaskSettings(
        max_seq_len=train["max_seq_len"], eval_batch_size=train["eval_batch_size"], max_new_tokens=train["max_new_tokens"],
        num_beams=train["num_beams"], prompt_template=train["prompt_template"], device=device,
        stream=stream_settings(train, device, splits.train if splits is not None else []),
    )


def stream_settings(train: dict, device: str, samples: list) -> StreamSettings:
    workers = train.get("num_workers")
    return StreamSettings(
        num_workers=default_workers(device, samples) if workers is None else workers,
        prefetch_factor=train.get("prefetch_factor", 2), pin_memory=device.startswith("cuda"),
        on_bad_sample=train.get("on_bad_sample", "error"),
        # by default only in-memory data is cached (as it was encoded up front before); a dataset on disk is read
        # again each pass, so memory does not grow with it
        cache_mb=train.get("cache_mb") if train.get("cache_mb") is not None else (0 if on_disk(samples) else 512),
    )


class TrainingBatch:
    """What the training stream's workers make of a micro-batch's samples: the task's encode, then its collate."""

    def __init__(self, task, loaded, settings: TaskSettings, splits):
        self.task, self.loaded, self.settings = task, loaded, settings
        self.kwargs = encode_kwargs(task, splits)

    def encode(self, samples: list) -> list[dict]:
        return self.task.encode(self.loaded, samples, self.settings, **self.kwargs)

    def collate(self, encoded: list[dict]) -> dict:
        return self.task.collate(encoded, self.loaded)

    def __call__(self, samples: list) -> dict:
        return self.collate(self.encode(samples))


def encode_kwargs(task, splits) -> dict:
    """Extra arguments a task's encode takes from the dataset (CLIP needs the class names for its prompts)."""
    return {"classnames": splits.classnames} if "classnames" in inspect.signature(task.encode).parameters else {}

