"""The measured fields of a record, written once: dotted path, short alias, unit, which way is better,
whether `bench compare` shows it, which record field names its kind (peak memory: RSS or tensor bytes);
and the environment keys that say where a number was measured.

stats (what is summarised), gate (rule names), compare (which fields and which direction) and report
(the environment table) all read these tables. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    path: str  # dotted path into a record, e.g. "cost.peak_memory_mb"
    unit: str
    better: str | None  # "lower", "higher", "quality" (the record's own higher_is_better), None (neutral)
    compared: bool = False  # a row of `bench compare`'s table
    kind: str | None = None  # the record field naming what the number counts; numbers of two kinds never compare
    short: str | None = None  # the short name, where the path's last part is another field's

    @property
    def alias(self) -> str:
        """The short name gate rules use: the last part of the path (`peak_memory_mb`, `delta`), unless it has its own."""
        return self.short or self.path.rsplit(".", 1)[-1]


FIELDS = (
    Field("cost.peak_memory_mb", "MB", "lower", compared=True, kind="cost.memory_kind"),
    Field("cost.peak_reserved_mb", "MB", "lower"),
    Field("cost.nvml_used_mb", "MB", "lower"),
    Field("cost.estimate_mb", "MB", "lower"),
    Field("cost.train_wall_s", "s", "lower", compared=True),
    Field("cost.step_s_median", "s", "lower", compared=True),
    Field("cost.step_s_iqr", "s", "lower"),
    Field("cost.samples_per_s", "samples/s", "higher", compared=True),
    Field("cost.tokens_per_s", "tokens/s", "higher", compared=True),
    Field("cost.padded_tokens_per_s", "tokens/s", "higher"),
    Field("cost.samples_per_s_per_device", "samples/s", "higher"),
    Field("cost.tokens_per_s_per_device", "tokens/s", "higher"),
    Field("cost.mfu", "fraction", "higher"),
    Field("cost.data_wait_s", "s", "lower"),
    Field("cost.data_wait_pct", "%", "lower"),
    Field("cost.data_held_mb", "MB", None),
    Field("quality.delta", "points", "quality", compared=True, kind="quality.version"),
    Field("quality.tuned", "points", "quality", compared=True, kind="quality.version"),
    Field("quality.base", "points", "quality", kind="quality.version"),
    Field("quality.retention.delta", "points", "quality", compared=True, kind="quality.retention.version",
          short="retention_delta"),
    Field("quality.merged_delta", "points", "quality", kind="quality.version"),
    Field("quality.text_coverage.unknown_token_pct", "%", "lower"),
    Field("quality.text_coverage.truncated_pct", "%", "lower"),
    Field("serving.variants.unmerged.latency_ms", "ms", "lower", short="unmerged_latency_ms"),
    Field("serving.variants.merged.latency_ms", "ms", "lower", short="merged_latency_ms"),
    Field("serving.variants.4bit.latency_ms", "ms", "lower", short="quantized_latency_ms"),
    Field("serving.variants.merged.peak_memory_mb", "MB", "lower", short="merged_memory_mb", kind="serving.memory_kind"),
    Field("artifact.bytes", "bytes", "lower", short="artifact_bytes"),
    Field("params.total", "parameters", None),
    Field("params.trainable", "parameters", None, compared=True),
    Field("params.trainable_pct", "%", None),
)
BY_PATH = {f.path: f for f in FIELDS}
NUMERIC_FIELDS = tuple(BY_PATH)
ALIASES = {f.alias: f.path for f in FIELDS}
assert len(ALIASES) == len(FIELDS), "every field's alias must be unique"



# the record fields that name what a number counts (Field.kind), and why two of them do not compare
KIND_MEANINGS = {
    "cost.memory_kind": "the two sides count peak memory differently (see MEMORY_KINDS)",
    "serving.memory_kind": "the two sides count serving memory differently (see SERVING_MEMORY_KINDS)",
    "quality.retention.version": "the retention dataset's evaluation or metric was revised in between",
    "quality.version": "the task's evaluation or its metric was revised in between (a version in bench/metrics.py's "
                       "METRICS or EVALUATIONS): the two sides' quality numbers measure different things",
}


@dataclass(frozen=True)
class MemoryKind:
    label: str  # how a plot's axis names it
    counts: str  # what the number is, as the report and the README say it
    tensor_bytes: bool  # counts tensors, as the memory estimate does (so the estimate's error means something)


# cost.memory_kind: what a record's peak_memory_mb counts, per device
MEMORY_KINDS = {
    "cuda_allocated": MemoryKind(
        "CUDA peak allocated", "torch.cuda.max_memory_allocated over the training, above what was allocated before the "
        "model was built: weights, gradients, optimizer state, activations, temporaries (not the CUDA context nor the "
        "allocator's cached free blocks: peak_reserved_mb and nvml_used_mb stand beside it)", True),
    "cpu_tensors": MemoryKind(
        "CPU tensor bytes", "live tensor bytes at their peak over one untimed warm-up step (the second, the first with "
        "optimizer state), counted by torch's MemTracker: weights, gradients, optimizer state, activations, temporaries; "
        "the same bytes in every run of the same batch. The process's RSS high-water mark stands beside it as "
        "rss_peak_mb (it also holds the libraries' pages and the data)", True),
    "cpu_rss_hwm": MemoryKind(
        "process RSS high-water mark", "the process's resident-set high-water mark above its baseline before the model: "
        "CPU runs with no untimed warm-up step to track (timing_warmup_steps < 2, or no more steps than that); it "
        "includes pages of code and data the training touched first, and moves between runs with the allocator", False),
}

# where a number was measured: a difference in the first group makes cost numbers incomparable
ENV_COMPARED = ("device_name", "device_count", "torch", "transformers", "peft", "bitsandbytes")
ENV_KEYS = (*ENV_COMPARED, "git_sha", "git_dirty")  # the report's environment table

# serving.memory_kind: what a serving variant's activations_mb (and so peak_memory_mb, with the weights) counts
SERVING_MEMORY_KINDS = {
    "cuda_allocated": "CUDA allocated tensor bytes (`torch.cuda.max_memory_allocated`) above what was allocated before "
                      "the request",
    "cpu_tensors": "live tensor bytes at their peak during the request, counted by torch's MemTracker (the process's RSS "
                   "does not move once earlier requests touched the pages)",
}

# quality.text_coverage: how much of a dataset's target text (answers, captions, class names) the model's tokenizer
# maps to its unknown token, and how many training answers max_seq_len cut. Above this share (percent) a Δ on the data
# does not measure the method: the run warns once and the report shows a banner
TEXT_COVERAGE_WARN_PCT = 5.0

# a DPO cell's quality.extra (bench/tasks/preference.py): TRL's reward statistics on the held-out pairs -> the name of
# each pair's value in quality.extra.preference_items ({"accuracy": [0 or 100, ...], "margin": [...]}, in the order of
# the evaluation split), which the report's intervals resample
PREFERENCE_ITEMS = "preference_items"
PREFERENCE_STATS = {"preference_accuracy": "accuracy", "reward_margin": "margin"}
