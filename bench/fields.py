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

    @property
    def alias(self) -> str:
        """The short name gate rules use: the last part of the path (`peak_memory_mb`, `delta`)."""
        return self.path.rsplit(".", 1)[-1]


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
    Field("cost.mfu", "fraction", "higher"),
    Field("cost.data_wait_s", "s", "lower"),
    Field("cost.data_wait_pct", "%", "lower"),
    Field("quality.delta", "points", "quality", compared=True),
    Field("quality.tuned", "points", "quality", compared=True),
    Field("quality.base", "points", "quality"),
    Field("params.total", "parameters", None),
    Field("params.trainable", "parameters", None, compared=True),
    Field("params.trainable_pct", "%", None),
)
BY_PATH = {f.path: f for f in FIELDS}
NUMERIC_FIELDS = tuple(BY_PATH)
ALIASES = {f.alias: f.path for f in FIELDS}
assert len(ALIASES) == len(FIELDS), "every field's alias must be unique"

# where a number was measured: a difference in the first group makes cost numbers incomparable
ENV_COMPARED = ("device_name", "device_count", "torch", "transformers", "peft", "bitsandbytes")
ENV_KEYS = (*ENV_COMPARED, "git_sha", "git_dirty")  # the report's environment table
