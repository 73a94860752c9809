"""Parameter counts per cell on the meta device: no weights, no memory, no GPU, seconds per cell.

QLoRA is counted as LoRA on the same targets: quantisation changes bytes per parameter, not the
number of parameters (bitsandbytes packs two 4-bit values per byte; count_params unpacks them).
"""

from __future__ import annotations

import copy

from bench.errors import BenchError
from bench.models.base import LoadedModel


def meta_model(cell, cache: dict):
    """The cell's architecture on the meta device, built once per model and shared through `cache`
    (counting and estimating both read it). Callers must not modify it: copy before adapting."""
    from bench.models import get_family
    from bench.models.base import model_spec

    key = tuple(cell.model.get(k) for k in ("family", "preset", "checkpoint", "backend", "revision"))
    if key not in cache:
        cache[key] = get_family(cell.model["family"]).build_meta(model_spec({**cell.model, "weights": "random"}))
    return cache[key]


def count_cell(cell, meta_models: dict) -> dict:
    import torch

    from bench.methods import apply_method, count_params
    from bench.models import get_family

    family = get_family(cell.model["family"])
    base = meta_model(cell, meta_models)
    model = copy.deepcopy(base)
    override = cell.model.get("components")  # a chat family's own components, as the run will use them
    if override:
        from bench.models.chat import components_or_override

        components = components_or_override(model, override, cell.model["family"])
    else:
        components = family.components(model, cell.model["backend"])
    loaded = LoadedModel(model=model, processor=None, family=cell.model["family"], backend=cell.model["backend"],
                         components=components)
    method = {**cell.method, "kind": "lora" if cell.method["kind"] == "qlora" else cell.method["kind"]}
    with torch.device("meta"):
        adapted = apply_method(loaded, method, family)
    counts = count_params(adapted, loaded.components)
    if cell.method["kind"] == "qlora":
        counts["quantized"] = quantized_params(base, getattr(family, "QUANTIZATION_SKIP", ()))
    return counts


def quantized_params(model, skip: tuple[str, ...]) -> int:
    """Weights bitsandbytes would store in 4 bits: every nn.Linear whose path no skip key matches (transformers'
    rule, quantizers_utils.should_convert_module: a key matches as a regex from the path's start up to a '.'
    boundary, or as a suffix)."""
    import re

    import torch

    def skipped(name: str) -> bool:
        return any(re.match(rf"(?:{k})(?:(?<=\.)|(?=\.|$))", name) or name.endswith(k) for k in skip)

    return sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not skipped(name))


def count_cells(cells, meta_models: dict | None = None) -> dict[str, dict]:
    """cell_id -> params dict (or {'error': ...} for a cell that cannot be counted)."""
    meta_models = {} if meta_models is None else meta_models
    out = {}
    for cell in cells:
        try:
            out[cell.cell_id] = count_cell(cell, meta_models)
        except BenchError as exc:
            out[cell.cell_id] = {"error": exc.render()}
    return out
