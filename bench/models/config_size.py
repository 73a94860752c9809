"""Bounds on the size a checkpoint's config describes, checked before anything is built from it (bench/models/hub.py
`local_config`, the one reader of a checkpoint's config.json / open_clip_config.json).

A config is data: `num_hidden_layers = 1000000` would make even a meta-device build (`bench plan --params`) create
millions of modules and exhaust memory (measured: a meta-device LLaMA layer costs ~1.3 ms and ~40 KB, so a million layers
take ~40 GB and half an hour; Llama-2-70B's 80 layers take 0.1 s), and `hidden_size = 10**7` describes a model no
machine holds. The bounds are far above every real model (the largest VLMs have under 200 layers in all and at most a
few hundred experts per layer; the largest published models ~2·10^12 parameters) and far below what hurts. The
parameter count is the config's arithmetic — per (sub-)config, layers × (4·h² + 3·h·ffn·experts; an expert's ffn is
moe_intermediate_size where given) + (vocabulary + positions) × h — an estimate good to a small factor, which is all a
bound needs. Pure Python: no torch."""

from __future__ import annotations

import math

MAX_LAYERS = 2_000  # layers in all, over the vision tower, the language model and any other sub-config
MAX_EXPERT_BLOCKS = 100_000  # Σ layers × experts (DeepSeek-V3: 61 × 256 = 15,616)
MAX_PARAMS = 10**13  # the config's arithmetic: 10 trillion

LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
              "num_encoder_layers", "num_decoder_layers", "depth", "layers")
WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "width", "embed_dim", "dim")
FFN_KEYS = ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim", "mlp_dim")
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "context_length")
_CAP = 1e30  # numbers beyond this count as this (no float overflow, still far past every bound)
_MAX_DEPTH = 32


def _number(value) -> float:
    """A config value as a non-negative count: numbers as they are, a list of numbers (open_clip's ResNet `layers`) as
    their sum, anything else 0 (its own validation is transformers')."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int):
        return float(min(max(value, 0), int(_CAP)))
    if isinstance(value, float):
        return min(value, _CAP) if math.isfinite(value) and value > 0 else (_CAP if value == math.inf else 0.0)
    if isinstance(value, list) and len(value) <= 64:
        return min(sum(_number(v) for v in value if not isinstance(v, list)), _CAP)
    return 0.0


def _first(node: dict, keys) -> float:
    return max((_number(node[k]) for k in keys if k in node), default=0.0)


def _nodes(obj, path: str = "", depth: int = 0):
    """Every dict in a config (the config and its sub-configs) with its dotted path."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            if isinstance(v, dict | list):
                yield from _nodes(v, f"{path}.{k}" if path else str(k), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:1000]):
            yield from _nodes(v, f"{path}[{i}]", depth + 1)


def size_problem(config: dict) -> str | None:
    """Why the model `config` (a config.json's dict) describes is too large to build, or None."""
    layers = blocks = params = 0.0
    deepest = ("", "", 0.0)  # (sub-config, key, layers) that contributes the most layers
    for path, node in _nodes(config):
        counts = {k: _number(node[k]) for k in LAYER_KEYS if k in node}
        depth = min(sum(counts.values()), _CAP)
        width = _first(node, WIDTH_KEYS)
        ffn = _first(node, FFN_KEYS) or 4 * width
        experts = max(1.0, _first(node, EXPERT_KEYS))
        if experts > 1:  # a mixture of experts: each expert's feed-forward is its own (smaller) size where one is given
            ffn = _first(node, ("moe_intermediate_size",)) or ffn
        positions = _first(node, POSITION_KEYS)
        image, patch = _number(node.get("image_size")), _number(node.get("patch_size"))
        if image and patch >= 1:
            positions += min((image / patch) ** 2, _CAP)
        layers += depth
        blocks += depth * experts
        params += depth * (4 * width * width + 3 * width * ffn * experts) + (_first(node, ("vocab_size",)) + positions) * width
        if counts and depth > deepest[2]:
            key = max(counts, key=counts.get)
            deepest = (path, key, depth)
    where = f"{deepest[1]} of {deepest[0]}" if deepest[0] else deepest[1]
    if layers > MAX_LAYERS:
        return (f"it describes {_count(layers)} layers in all (the most: {where} = {_count(deepest[2])}); bench builds at "
                f"most {MAX_LAYERS:,} (the largest real vision-language models have under 200)")
    if blocks > MAX_EXPERT_BLOCKS:
        return (f"it describes {_count(blocks)} layer × expert blocks; bench builds at most {MAX_EXPERT_BLOCKS:,} "
                "(DeepSeek-V3 has 15,616)")
    if params > MAX_PARAMS:
        return (f"its sizes (hidden sizes, layers, vocabulary) make ~{params:.1e} parameters; bench builds at most "
                f"{MAX_PARAMS:.0e} (the largest published models have ~2e12)")
    return None


def _count(value: float) -> str:
    return f"{int(value):,}" if value < 1e15 else f"{value:.1e}"
