"""Every key a suite may hold, with its type, default, allowed values and one line of documentation.

One table here drives validation (bench/suite.py), the README's key reference and the record's
resolved config, so a documented key and a checked key cannot drift apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from bench.models.catalog import FAMILIES, METHOD_KINDS

NUMBER = (int, float)
SEED_MAX = 2**63 - 1  # torch, numpy and Python's random all take seeds in 0 … 2^63 − 1
MAX_TEXT = 4096  # longest string value (paths, names, templates): longer is a mistake, not a setting
MAX_DEPTH = 16  # deepest nesting of tables/arrays a suite may have
# a suite name becomes a file name (results/<name>.jsonl, reports/<name>.md): plain characters only
SUITE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_NAMES = ("readme",)  # reports/README.md is the index of pages


@dataclass(frozen=True)
class Key:
    type: type | tuple  # accepted Python types after TOML parsing
    default: Any = None
    doc: str = ""
    choices: tuple = ()
    min: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound
    required: bool = False
    max: float | None = None  # inclusive upper bound: beyond it a value is absurd, not ambitious
    below: float | None = None  # exclusive upper bound

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable for this key (type, finiteness, choices, bounds), or None.
        Every float must be finite: TOML allows nan and inf, and neither means anything as a setting."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            return f"must be {' or '.join(TYPE_WORDS.get(t, t.__name__) for t in types)}, got {type_name(value)} {_short(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return f"is {len(value):,} characters long; at most {MAX_TEXT:,} are accepted"
        if self.choices and value not in self.choices:
            return f"{_short(value)} is not one of {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self._in_range(value):
            return f"must be {self.range_text()}, got {value:,}"
        return None

    def _in_range(self, value) -> bool:
        return ((self.min is None or value >= self.min) and (self.above is None or value > self.above)
                and (self.max is None or value <= self.max) and (self.below is None or value < self.below))

    def range_text(self) -> str:
        lo = (self.min, "included") if self.min is not None else (self.above, "excluded") if self.above is not None else None
        hi = (self.max, "included") if self.max is not None else (self.below, "excluded") if self.below is not None else None
        if lo and hi:
            return f"between {lo[0]:,} ({lo[1]}) and {hi[0]:,} ({hi[1]})"
        if lo:
            return f"{'≥' if lo[1] == 'included' else '>'} {lo[0]:,}"
        return f"{'≤' if hi[1] == 'included' else '<'} {hi[0]:,}"


TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a table"}


def type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__)


def _short(value: Any) -> str:
    """repr of a value, cut: error messages echo what the user wrote, never a page of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def suite_name_problem(name: str) -> str | None:
    """Why `name` cannot name a suite's files, or None."""
    if not isinstance(name, str) or not SUITE_NAME_RE.fullmatch(name):
        return (f"{_short(name)} is not a plain file name (1–100 letters, digits, '-', '_', '.', not starting with "
                "'.' or '-'); it names results/<name>.jsonl and reports/<name>.md")
    if name.lower() in RESERVED_NAMES or name.lower().split(".")[0] in RESERVED_NAMES:
        return f"{name!r} is reserved: reports/README.md is the index of report pages"
    return None


SUITE_KEYS = {
    "name": Key(str, None, "suite name; records go to results/<name>.jsonl (default: the file name)"),
    "description": Key(str, "", "free text shown on the report page"),
    "repeats": Key(int, 1, "runs per cell with seeds seed, seed+1, ...; reports show mean ± spread", min=1, max=1000),
    "seeds": Key(list, None, "explicit seeds per cell (instead of repeats)"),
    "device": Key(str, "auto", "where cells run", choices=("auto", "cpu", "cuda")),
    "isolate": Key(bool, True, "run each cell in its own process (crash and memory isolation)"),
    "threads": Key(int, 0, "CPU threads per cell (0: torch's default); tiny models run fastest on 1", min=0, max=4096),
    "oom_backoff": Key(bool, False, "on out-of-memory halve the micro-batch and double accumulation, keeping the effective batch"),
    "min_batch_size": Key(int, 1, "smallest micro-batch the OOM back-off tries", min=1, max=65536),
}

TRAIN_KEYS = {
    "steps": Key(int, 60, "optimizer steps per cell (ignored when epochs is set)", min=1, max=10**8),
    "epochs": Key(NUMBER, None, "passes over the training split instead of a step count", above=0, max=10**4),
    "batch_size": Key(int, 8, "micro-batch size per step", min=1, max=65536),
    "grad_accum": Key(int, 1, "gradient accumulation steps; effective batch = batch_size × grad_accum", min=1, max=65536),
    "lr": Key(NUMBER, 1e-3, "peak learning rate", above=0, max=10),
    "schedule": Key(str, "cosine", "learning-rate schedule after warm-up", choices=("constant", "linear", "cosine")),
    "warmup_steps": Key(int, 0, "linear learning-rate warm-up steps", min=0, max=10**8),
    "weight_decay": Key(NUMBER, 0.0, "AdamW weight decay", min=0, max=10),
    "max_grad_norm": Key(NUMBER, 1.0, "gradient clipping norm (0 disables)", min=0, max=1e6),
    "optimizer": Key(str, "adamw", "optimizer", choices=("adamw", "sgd", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit")),
    "precision": Key(str, "fp32", "compute precision (bf16/fp16 autocast; fp32 on the CPU is fastest here)", choices=("fp32", "bf16", "fp16")),
    "gradient_checkpointing": Key(bool, False, "recompute activations in backward to save memory"),
    "seed": Key(int, 0, "seed for weights, data order and dropout", min=0, max=SEED_MAX),
    "max_seq_len": Key(int, 48, "maximum text tokens per sample (prompt + answer, image tokens excluded)", min=1, max=2**20),
    "eval_batch_size": Key(int, 32, "batch size for evaluation", min=1, max=65536),
    "max_new_tokens": Key(int, 8, "generation length for captioning and VQA evaluation", min=1, max=65536),
    "num_beams": Key(int, 1, "beam width for generation (1 = greedy)", min=1, max=64),
    "prompt_template": Key(str, "a photo of a {}", "CLIP zero-shot class prompt; {} is the class name"),
    "timing_warmup_steps": Key(int, 3, "first steps left out of step-time statistics", min=0, max=10**8),
    "timeout_s": Key(NUMBER, 1800, "wall-clock limit per cell; past it the cell is recorded as timeout", above=0, max=30 * 86400),
    "diverge_loss": Key(NUMBER, 1e4, "a loss above this (or NaN/inf) stops the cell as diverged", above=0, max=1e30),
    "memory_cap_mb": Key(NUMBER, None, "treat memory above this (MB above the cell's baseline) as out-of-memory", above=0, max=1e9),
}

MODEL_KEYS = {
    "family": Key(str, None, "model family", choices=tuple(FAMILIES), required=True),
    "preset": Key(str, "tiny", "embedded architecture: tiny / small (CPU) or full (the real checkpoint's shape)"),
    "checkpoint": Key(str, None, "Hugging Face id or local directory of real weights"),
    "weights": Key(str, None, "pretrained (load checkpoint), random (architecture only: cost is real, quality n/a), zoo (bench's "
                   "pretrained tiny base); default: pretrained with a checkpoint, zoo without", choices=("pretrained", "random", "zoo")),
    "backend": Key(str, "transformers", "implementation (CLIP also: open_clip)", choices=("transformers", "open_clip")),
    "revision": Key(str, None, "checkpoint revision (branch, tag or commit)"),
    "trust_remote_code": Key(bool, False, "allow the checkpoint's own Python code to run (marked in reports)"),
    "train": Key(dict, None, "training-setting overrides for cells of this model"),
}

METHOD_KEYS = {
    "kind": Key(str, None, "fine-tuning method", choices=tuple(METHOD_KINDS), required=True),
    "r": Key(int, 8, "adapter rank (lora, dora, qlora, loha, lokr, vera)", min=1, max=65536),
    "alpha": Key(NUMBER, None, "LoRA scaling numerator (default 2·r)", above=0, max=1e6),
    "dropout": Key(NUMBER, 0.05, "adapter dropout probability", min=0, below=1),
    "targets": Key(dict, None, "component → module leaf names, e.g. {language = [\"q_proj\", \"v_proj\"]}; default: the family's recipe"),
    "train_full": Key(list, None, "components trained in full beside the adapters (default [\"projector\"]; [] for none)"),
    "freeze": Key(list, [], "components kept frozen under kind = \"full\" (e.g. [\"vision\"])"),
    "quant_type": Key(str, "nf4", "QLoRA 4-bit data type", choices=("nf4", "fp4")),
    "double_quant": Key(bool, True, "QLoRA double quantisation of the quantisation constants"),
    "compute_dtype": Key(str, "auto", "QLoRA compute dtype (auto: bf16 on CUDA, fp32 on the CPU)", choices=("auto", "float32", "bfloat16", "float16")),
    "train": Key(dict, None, "training-setting overrides for cells of this method"),
}

GRID_KEYS = {
    "models": Key(list, None, "model names", required=True),
    "datasets": Key(list, None, "dataset names", required=True),
    "methods": Key(list, None, "method names", required=True),
    "exclude": Key(list, [], "tables {model?, dataset?, method?} of combinations to skip"),
    "train": Key(dict, None, "training-setting overrides for this grid's cells"),
}

GATE_KEYS = {
    "rules": Key(list, None, "regression rules, e.g. [\"peak_memory_mb:+5%\", \"delta:-0.5\", \"status:ok\"]"),
    "baseline": Key(str, None, "baseline results file for `bench gate` (relative to the suite file)"),
}

EXCLUDE_KEYS = {"model": Key(str), "dataset": Key(str), "method": Key(str)}

TOP_LEVEL = ("suite", "defaults", "models", "datasets", "methods", "grid", "gate")


def _fmt_default(k: Key) -> str:
    if k.required:
        return "required"
    if k.default is None:
        return "—"
    if isinstance(k.default, bool):
        return "true" if k.default else "false"
    if isinstance(k.default, str):
        return f'"{k.default}"'
    return str(k.default)


def _fmt_doc(k: Key) -> str:
    doc = k.doc.replace("|", "\\|").replace("<", "&lt;")  # a bare <name> would render as an HTML tag and vanish
    if k.choices:
        doc += " (" + " / ".join(f"`{c}`" for c in k.choices) + ")"
    return doc


def markdown_tables() -> str:
    """The README's key reference, generated from the tables above (a test keeps the README in sync)."""
    from bench.data.loader import DATASET_KEYS

    datasets = DATASET_KEYS
    sections = [("[suite]", SUITE_KEYS), ("[defaults] (and every `train = {...}` override)", TRAIN_KEYS),
                ("[models.NAME]", MODEL_KEYS), ("[datasets.NAME]", datasets), ("[methods.NAME]", METHOD_KEYS),
                ("[[grid]]", GRID_KEYS), ("[gate]", GATE_KEYS)]
    out = []
    for title, spec in sections:
        out += [f"#### {title}", "", "| key | default | meaning |", "|---|---|---|"]
        out += [f"| `{name}` | {_fmt_default(k)} | {_fmt_doc(k)} |" for name, k in spec.items()]
        out.append("")
    return "\n".join(out)


def sync_readme(path: str = "README.md") -> bool:
    """Rewrite the block between the keys markers; True when it changed."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    begin, end = "<!-- keys:begin -->", "<!-- keys:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{markdown_tables()}\n{end}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README.md updated" if sync_readme() else "README.md already up to date")
