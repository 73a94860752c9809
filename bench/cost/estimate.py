"""Predicted peak training memory per cell, before any GPU is rented (seed 001's arithmetic).

    weights      = Σ params × bytes/param (2 for bf16, 4 for fp32; QLoRA: the 4-bit linears, params["quantized"]
                   (every Linear outside the family's QUANTIZATION_SKIP: CLIP's vision tower too), at
                   0.5 B/param + quantisation constants, 0.127 bit/param with double quantisation,
                   0.5 bit/param without, and 4 B for every other parameter, since peft's
                   prepare_model_for_kbit_training casts them to fp32 even in a bf16 run)
    gradients    = trainable params × bytes/param
    optimizer    = trainable params × 2 states × bytes/param (AdamW; SGD keeps one momentum; bitsandbytes'
                   8-bit optimizers 1 B per state, its 32-bit ones 4 B)
    activations  = Σ over transformer blocks that backward passes through of
                   tokens × hidden × (34 + 5·heads·seq/hidden) × act_bytes / 2      (Korthikanti et al. 2022)
                   with gradient checkpointing: 2 × tokens × hidden × act_bytes per block + one full block
                 + the language model's logits over every position it runs (image or query tokens too):
                   tokens × vocab × (act_bytes + 4 + 4)  (logits in the compute dtype, their fp32 copy in the
                   loss, the fp32 gradient)
    optimizer_step = trainable params × bytes/state: torch's foreach AdamW (its CUDA default) holds one more
                   state-sized buffer during step(), when the activations are gone
    peak         = weights + gradients + optimizer + max(activations, optimizer_step)
A block is counted when gradients flow through it: it holds trainable parameters or something
trainable sits before it (the vision tower under LoRA on the language model holds no activations).
CLIP's two towers run side by side, not one after the other: each counts only when it is trainable.
Records keep estimate and measurement side by side so the estimate's error is visible, and
`bench plan --trace` sets it beside a fake-tensor trace of the same step (reports/*.preview.md).
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class Stack:
    """One transformer stack of a model, as the activation formula sees it."""

    component: str
    layers: int
    hidden: int
    heads: int
    seq: int  # tokens per sample through this stack
    vocab: int = 0  # > 0 for the stack whose logits feed the loss


def stacks(family: str, config, max_seq_len: int) -> list[Stack]:
    """The transformer stacks of a family's config, in forward order."""
    v = config.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    vision = Stack("vision", v.num_hidden_layers, v.hidden_size, v.num_attention_heads, patches + 1)
    t = config.text_config
    if family == "clip":
        return [vision, Stack("language", t.num_hidden_layers, t.hidden_size, t.num_attention_heads, max_seq_len)]
    if family == "blip2":
        q = config.qformer_config
        n_query = config.num_query_tokens
        return [vision, Stack("qformer", q.num_hidden_layers, q.hidden_size, q.num_attention_heads, n_query),
                Stack("language", t.num_hidden_layers, t.hidden_size, t.num_attention_heads, n_query + max_seq_len, t.vocab_size)]
    if family == "llava":
        return [vision, Stack("language", t.num_hidden_layers, t.hidden_size, t.num_attention_heads, patches + max_seq_len, t.vocab_size)]
    raise ValueError(f"no memory model for family {family!r}")


def text_positions(family: str, config, input_len: int) -> int:
    """Text positions of a padded input: its length less the image placeholders the processor put in it
    (LLaVA: one per patch; BLIP-2: one per query token). Models without a config (open_clip): all of it."""
    if config is None or not hasattr(config, "vision_config"):
        return input_len
    if family == "llava":
        v = config.vision_config
        return input_len - (v.image_size // v.patch_size) ** 2
    if family == "blip2":
        return input_len - config.num_query_tokens
    return input_len


def _block_activation_bytes(s: Stack, batch: int, act_bytes: int, checkpointing: bool) -> float:
    tokens = batch * s.seq
    full_block = tokens * s.hidden * (34 + 5 * s.heads * s.seq / s.hidden) * act_bytes / 2
    if checkpointing:
        return s.layers * 2 * tokens * s.hidden * act_bytes / 2 + full_block
    return s.layers * full_block


def estimate_memory(family: str, config, params: dict, train: dict, method_kind: str, text_len: int | None = None) -> dict:
    """Predicted peak MB for one cell; `params` is bench.methods.count_params output (per component).
    `text_len`: the text positions of the longest batch when the data is known (else max_seq_len, the most)."""
    bf16 = train["precision"] == "bf16"
    wbytes = 2 if bf16 else 4
    act_bytes = 2 if train["precision"] in ("bf16", "fp16") else 4
    by_comp = params["by_component"]
    total, trainable = params["total"], params["trainable"]

    if method_kind == "qlora":
        quantised = params.get("quantized")
        if quantised is None:  # counts without the 4-bit figure: the language model's frozen part less embeddings + lm_head
            quantised = by_comp.get("language", {}).get("total", 0) - by_comp.get("language", {}).get("trainable", 0)
            quantised -= getattr(config.text_config, "vocab_size", 0) * getattr(config.text_config, "hidden_size", 0) * 2
            quantised = max(0, quantised)
        const_bits = 0.127 if train.get("double_quant", True) else 0.5
        # peft's prepare_model_for_kbit_training casts every parameter that is not 4-bit to fp32, whatever the precision
        wbytes = 4
        weights = quantised * (0.5 + const_bits / 8) + (total - quantised) * wbytes
    else:
        weights = total * wbytes
    grad_bytes = wbytes  # trainable parameters share their dtype with the rest (QLoRA: fp32, see above)
    gradients = trainable * grad_bytes
    states = 1 if train["optimizer"] == "sgd" else 2
    opt_bytes = 1 if "8bit" in train["optimizer"] else 4 if "32bit" in train["optimizer"] else grad_bytes
    optimizer = trainable * states * opt_bytes
    optimizer_step = trainable * opt_bytes if train["optimizer"] == "adamw" else 0  # foreach's sqrt(exp_avg_sq)

    activations, flowing = 0.0, False
    batch = train["batch_size"]
    seq = min(text_len, train["max_seq_len"]) if text_len else train["max_seq_len"]
    parallel = family == "clip"  # image and text towers: gradients never pass from one into the other
    for s in stacks(family, config, seq):
        flowing = (flowing and not parallel) or by_comp.get(s.component, {}).get("trainable", 0) > 0
        if flowing:
            activations += _block_activation_bytes(s, batch, act_bytes, train["gradient_checkpointing"])
        if s.vocab and flowing:
            activations += batch * s.seq * s.vocab * (act_bytes + 4 + 4)

    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
             "optimizer_step": optimizer_step}
    out = {k: round(v / MB, 2) for k, v in parts.items()}
    out["total_mb"] = round((weights + gradients + optimizer + max(activations, optimizer_step)) / MB, 2)
    out["text_len"] = seq
    return out


def estimate_cells(cells, counts: dict | None = None, meta_models: dict | None = None) -> dict[str, dict]:
    """cell_id -> estimate, from meta-device parameter counts (computed here when not given). Pass the
    `meta_models` cache that count_cells used, and no architecture is built twice."""
    from bench.cost.params import count_cells, meta_model

    meta_models = {} if meta_models is None else meta_models
    counts = counts or count_cells(cells, meta_models)
    out = {}
    for cell in cells:
        p = counts.get(cell.cell_id)
        if not p or "error" in p:
            continue
        config = getattr(meta_model(cell, meta_models), "config", None)
        if config is None or not hasattr(config, "vision_config"):  # open_clip models: no memory model (as in cell.py)
            continue
        out[cell.cell_id] = estimate_memory(cell.model["family"], config, p, {**cell.train, **cell.method}, cell.method["kind"])
    return out
