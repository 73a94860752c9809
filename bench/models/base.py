"""What every model family provides, and what a built model looks like to the rest of bench.

A family module (bench/models/clip.py, blip2.py, llava.py) defines at module level:

    FAMILY: str                       # "clip" | "blip2" | "llava"
    TASK: str                         # the dataset task it trains on: classification | caption | vqa
    PRESETS: dict[str, dict]          # preset name -> embedded architecture config; "tiny" and "small"
                                      # for the CPU, "full" matching the real checkpoint's architecture
    DEFAULT_CHECKPOINTS: dict[str, str]  # preset -> Hugging Face id whose architecture it copies
    BACKENDS: tuple[str, ...]         # e.g. ("transformers", "open_clip") for CLIP

    def build(spec: ModelSpec, *, device: str = "cpu", dtype=torch.float32,
              quantization=None) -> LoadedModel
        # quantization: a transformers.BitsAndBytesConfig or None. With a checkpoint, the real
        # weights load with from_pretrained; with weights="random" the architecture of the preset
        # (or of the checkpoint's config.json) is built with random weights.
    def build_meta(spec: ModelSpec) -> torch.nn.Module
        # the same architecture on the meta device: parameter counts without memory or weights
    def components(model, backend) -> dict[str, tuple[str, ...]]   # see LoadedModel.components

The transformers side of building (checkpoint loading, random weights from a seed, 4-bit re-quantisation)
is shared in bench/models/hf.py; a family describes itself there as an hf.Arch. The helpers at the end
of this file answer components() and default_targets() from a family's tables.

A task module (bench/tasks/*.py) turns samples into batches, a loss and a quality score for one
family; see bench/tasks/base.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.errors import SuiteError

COMPONENTS = ("vision", "projector", "language")


@dataclass(frozen=True)
class ModelSpec:
    """A suite's [models.NAME] table, resolved."""

    name: str
    family: str
    preset: str | None = "tiny"
    checkpoint: str | None = None  # Hugging Face id or local directory; None builds the preset from config
    weights: str = "pretrained"  # "pretrained" (load the checkpoint), "random" (architecture only), "zoo" (bench's own tiny base)
    backend: str = "transformers"  # "transformers" | "open_clip" (CLIP only)
    trust_remote_code: bool = False
    revision: str | None = None
    # the chat families' override of discovered components: ((component, (prefix, ...)), ...); empty: discover them
    components: tuple = ()


@dataclass
class LoadedModel:
    model: Any  # torch.nn.Module
    processor: Any  # a real transformers processor (CLIPProcessor, Blip2Processor, LlavaProcessor) or open_clip's pair
    family: str
    backend: str
    # component -> module-name prefixes (as in model.named_modules()), e.g. for LLaVA in transformers 5:
    # {"vision": ("model.vision_tower",), "projector": ("model.multi_modal_projector",),
    #  "language": ("model.language_model", "lm_head")}. Methods use these to target modules
    # by path, so a bare "q_proj" never silently adapts the vision tower as well.
    components: dict[str, tuple[str, ...]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # provenance: checkpoint, revision, preset, config hash, image size


def base_model(model):
    """The model itself, looking through a data-parallel wrapper (DDP, FSDP: bench/ranks.py) and a PEFT one."""
    if type(model).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def component_of(module_name: str, components: dict[str, tuple[str, ...]]) -> str | None:
    """Which component a module or parameter name belongs to (longest matching prefix wins)."""
    best, best_len = None, -1
    for comp, prefixes in components.items():
        for prefix in prefixes:
            if (module_name == prefix or module_name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = comp, len(prefix)
    return best


# ---------------------------------------------------------------- helpers the families answer the interface with


def present_components(model, table: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Component -> those of its prefixes that exist in `model` (a parameter or module name matches by prefix)."""
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_modules()}
    return {
        comp: tuple(p for p in prefixes if any(n == p or n.startswith(p + ".") for n in names))
        for comp, prefixes in table.items()
    }


def check_backend(backend: str, backends: tuple[str, ...], label: str) -> str:
    """`backend`, when the family (`label`, as messages name it) has it; else a SuiteError."""
    if backend not in backends:
        raise SuiteError(f"{label} has no backend {backend!r}", fix=f"set backend to one of {list(backends)}")
    return backend


def targets_from(table: dict[str, dict | None], kind: str, what: str) -> dict[str, tuple[str, ...]]:
    """A family's default targets for `kind`: its own row when the table has one (None: no default), else the
    row of the kind's target group (catalog.METHOD_KINDS: "attention" or "ia3"). A SuiteError naming `what`
    ("BLIP-2 targets") when there is none."""
    from bench.models.catalog import METHOD_KINDS

    if kind in table:  # the family's own row for this kind (None: no default for it)
        row = table[kind]
    elif kind in METHOD_KINDS:  # else the row of the kind's target group
        row = table.get(METHOD_KINDS[kind].targets)
    else:
        row = None
    if row is None:
        kinds = [k for k, m in METHOD_KINDS.items() if m.targets and table.get(k, table.get(m.targets)) is not None]
        raise SuiteError(f"method kind {kind!r} has no default {what}",
                         fix=f"use one of {kinds}, or give the method explicit `targets`")
    return dict(row)


def model_spec(model_cfg: dict, zoo_path: str | None = None) -> ModelSpec:
    """The family-facing spec; a zoo model becomes a local checkpoint directory."""
    cfg = {k: model_cfg.get(k) for k in ("name", "family", "preset", "checkpoint", "weights", "backend", "trust_remote_code", "revision")}
    cfg["components"] = tuple((comp, tuple(prefixes)) for comp, prefixes in (model_cfg.get("components") or {}).items())
    if cfg["weights"] == "zoo":
        cfg["checkpoint"], cfg["weights"] = zoo_path, "pretrained"
    return ModelSpec(**cfg)
