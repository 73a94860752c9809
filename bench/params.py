"""Parameter counts per cell on the meta device: no weights, no memory, no GPU, seconds per cell.

QLoRA is counted as LoRA on the same targets: quantisation changes bytes per parameter, not the
number of parameters (bitsandbytes packs two 4-bit values per byte; count_params unpacks them).
"""

from __future__ import annotations

import copy

from bench.errors import BenchError
from bench.models.base import LoadedModel


def count_cell(cell, meta_models: dict) -> dict:
    import torch

    from bench.cell import model_spec
    from bench.methods import apply_method, count_params
    from bench.models import get_family

    family = get_family(cell.model["family"])
    key = (cell.model["family"], cell.model["preset"], cell.model["checkpoint"], cell.model["backend"])
    if key not in meta_models:
        spec = model_spec({**cell.model, "weights": "random"})
        meta_models[key] = family.build_meta(spec)
    model = copy.deepcopy(meta_models[key])
    loaded = LoadedModel(model=model, processor=None, family=cell.model["family"], backend=cell.model["backend"],
                         components=family.components(model, cell.model["backend"]))
    method = {**cell.method, "kind": "lora" if cell.method["kind"] == "qlora" else cell.method["kind"]}
    with torch.device("meta"):
        adapted = apply_method(loaded, method, family)
    counts = count_params(adapted, loaded.components)
    if cell.method["kind"] == "qlora":
        counts["quantized"] = quantized_params(meta_models[key], getattr(family, "QUANTIZATION_SKIP", ()))
    return counts


def quantized_params(model, skip: tuple[str, ...]) -> int:
    """Weights bitsandbytes would store in 4 bits: every nn.Linear whose path no skip key matches (transformers'
    rule: a key matches from the path's start up to a '.' boundary, or as a suffix)."""
    import torch

    def skipped(name: str) -> bool:
        return any(name == k or name.startswith(k + ".") or name.endswith(k) for k in skip)

    return sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not skipped(name))


def count_cells(cells) -> dict[str, dict]:
    """cell_id -> params dict (or {'error': ...} for a cell that cannot be counted)."""
    meta_models: dict = {}
    out = {}
    for cell in cells:
        try:
            out[cell.cell_id] = count_cell(cell, meta_models)
        except BenchError as exc:
            out[cell.cell_id] = {"error": exc.render()}
    return out
