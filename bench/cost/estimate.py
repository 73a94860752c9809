"""Predicted peak training memory per cell, before any GPU is rented (seed 001's arithmetic).

    weights      = Σ params × bytes/param (2 for bf16, 4 for fp32; QLoRA: the 4-bit linears, params["quantized"]
                   (every Linear outside the family's QUANTIZATION_SKIP: CLIP's vision tower too), at
                   0.5 B/param + quantisation constants, 0.127 bit/param with double quantisation,
                   0.5 bit/param without, and 4 B for every other parameter, since peft's
                   prepare_model_for_kbit_training casts them to fp32 even in a bf16 run)
    gradients    = trainable params × bytes/param
    optimizer    = trainable params × 2 states × bytes/param (AdamW; SGD keeps one momentum; bitsandbytes'
                   8-bit optimizers 1 B per state, its 32-bit ones 4 B)
    activations  = what the forward keeps for backward, counted per token and block (h = hidden, f = the
                   feed-forward's inner width, a = activation bytes), the way autograd keeps it:
                     every block gradients pass through: the two norms' inputs (2h), q, k, v and the output the
                     attention kernel keeps (4h; flash-style kernels keep no seq×seq matrix), and what the
                     feed-forward's activation keeps (relu f, gelu f, quick_gelu 2f, SwiGLU 3f);
                     trainable linears also keep their inputs (3h, and f for fc2 unless relu's output is it);
                     adapters keep theirs: LoRA's A matrices the projections' shared input (h), or with adapter
                     dropout a dropped-out copy and its mask per adapted linear; IA3 k and v before scaling (2h)
                     and fc2's input (f); residual dropout a mask per element, twice
                   all × a (masks: 1 B on a GPU, `a` on the CPU, where dropout multiplies by a float mask), plus
                   per stack its input embeddings and final norm input (2h), and with gradient checkpointing
                   each block's input (h) and one block in full
                 + the language model's logits over every position it runs (image or query tokens too):
                   tokens × vocab × (a + 4 + 4)  (logits in the compute dtype, their fp32 copy in the loss, the
                   fp32 gradient)
    optimizer_step = trainable params × bytes/state on a GPU: torch's foreach AdamW (its CUDA default) holds one
                   more state-sized buffer during step(), when the activations are gone; on the CPU bench updates
                   with the fused kernel, which holds none (bench.train.adamw_kernel)
    peak         = weights + optimizer + max(activations (+ gradients when micro-batches accumulate),
                                             gradients + optimizer_step)
                   gradients are released after every update (zero_grad(set_to_none=True)), so the forward's
                   activations meet only the gradients of earlier micro-batches of the same step
    per device, on several (train.devices, batch_size per device):
                   DDP: the same, with the gradients alive through every forward (the buckets DDP averages them in;
                   measured on 2 CPU processes: within 2 % for full fine-tuning of tiny LLaVA);
                   FSDP FULL_SHARD: weights, gradients and optimizer state ÷ devices, plus what a device gathers
                   whole: the root unit (parameters outside the blocks) and two blocks (computing, prefetched).
                   The FSDP figure is the model's alone: accelerate runs FSDP on GPUs only, none was measured here
A block is counted when gradients flow through it: it holds trainable parameters or something
trainable sits before it (the vision tower under LoRA on the language model holds no activations).
CLIP's two towers run side by side, not one after the other: each counts only when it is trainable.
A component counts as trainable when over half its parameters train (full fine-tuning, train_full), as
adapted when fewer do. Measured against torch's MemTracker on real tensors (tiny presets, CPU, fp32) the
estimate was within 9 % for every quickstart cell, and within 7.3 % of the fake-tensor trace of the
full-size presets (reports/vlm_costs_random.preview.md).
Records keep estimate and measurement side by side so the estimate's error is visible, and
`bench plan --trace` sets it beside a fake-tensor trace of the same step (reports/*.preview.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.train import adamw_kernel

MB = 1024 * 1024


@dataclass(frozen=True)
class Stack:
    """One transformer stack of a model, as the activation count sees it."""

    component: str
    layers: int
    hidden: int
    heads: int
    seq: int  # tokens per sample through this stack
    ffn: int  # the feed-forward's inner width
    act: str  # its activation: "relu", "gelu", "quick_gelu", or "gated" (SwiGLU: silu(gate) * up)
    dropout: float = 0.0  # on the residual branches: a one-byte mask per element each, kept for backward
    vocab: int = 0  # > 0 for the stack whose logits feed the loss


class NoMemoryModel(ValueError):
    """The estimate does not know this architecture: the cell runs and is measured, with no prediction beside it."""


# language models whose feed-forward is SwiGLU (silu(gate) * up): Llama's shape, SmolLM2's and Qwen2's included
GATED = ("llama", "mistral", "qwen2", "vicuna", "qwen2_vl_text", "qwen2_5_vl_text")
# Qwen2-VL resizes each image to a pixel budget the processor sets (min/max_pixels), so its image tokens follow the
# image: the estimate of a full-size Qwen2-VL assumes this side (a 448 px image: 1,024 patches, 256 image tokens); the
# tiny preset names its own (config.image_size)
QWEN2_VL_NOMINAL_SIDE = 448


def _act(config) -> str:
    name = str(getattr(config, "hidden_act", None) or getattr(config, "activation_function", "gelu"))
    if getattr(config, "model_type", "") in GATED:
        return "gated"
    return "quick_gelu" if name == "quick_gelu" else "relu" if name == "relu" else "gelu"


def _ffn(config) -> int:
    # transformers names it intermediate_size (CLIP, Llama, BERT-style) or ffn_dim (OPT); 4 × hidden is the classic shape
    return getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * config.hidden_size


def stacks(family: str, config, max_seq_len: int) -> list[Stack]:
    """The transformer stacks of a family's config, in forward order. The chat families (and `auto`) are told apart by
    their config's model_type: Idefics3 / SmolVLM, Qwen2-VL and LLaVA have memory models; others raise NoMemoryModel."""
    model_type = getattr(config, "model_type", "")
    if family in ("smolvlm", "qwen2_vl", "auto") and model_type != "llava":
        return _chat_stacks(config, max_seq_len)
    v = config.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    vision = Stack("vision", v.num_hidden_layers, v.hidden_size, v.num_attention_heads, patches + 1, _ffn(v), _act(v))
    t = config.text_config
    text = dict(layers=t.num_hidden_layers, hidden=t.hidden_size, heads=t.num_attention_heads, ffn=_ffn(t), act=_act(t),
                dropout=getattr(t, "dropout", 0.0) or 0.0)
    if family == "clip":  # its text is cut at the text model's positions (77), whatever max_seq_len says
        return [vision, Stack("language", seq=min(max_seq_len, t.max_position_embeddings), **text)]
    if family == "blip2":
        q = config.qformer_config
        n_query = config.num_query_tokens
        return [vision, Stack("qformer", q.num_hidden_layers, q.hidden_size, q.num_attention_heads, n_query, _ffn(q), _act(q),
                              q.hidden_dropout_prob),
                Stack("language", seq=n_query + max_seq_len, vocab=t.vocab_size, **text)]
    if family in ("llava", "auto"):
        return [vision, Stack("language", seq=patches + max_seq_len, vocab=t.vocab_size, **text)]
    raise NoMemoryModel(f"no memory model for family {family!r}")


def _chat_stacks(config, max_seq_len: int) -> list[Stack]:
    """Idefics3 / SmolVLM: a SigLIP tower over one image's patches (no class token; SmolVLM's split tiles each add as
    much again), the connector's pixel shuffle leaving patches / scale_factor² image tokens. Qwen2-VL: its ViT over
    the image's patches, the merger leaving patches / merge² tokens."""
    v, t = config.vision_config, config.text_config
    text = dict(layers=t.num_hidden_layers, hidden=t.hidden_size, heads=t.num_attention_heads, ffn=_ffn(t), act=_act(t))
    patches, tokens = image_tokens_of(config)
    if config.model_type in ("idefics3", "smolvlm"):
        vision = Stack("vision", v.num_hidden_layers, v.hidden_size, v.num_attention_heads, patches, _ffn(v), _act(v))
    elif config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        ffn = getattr(v, "intermediate_size", None) or int(v.embed_dim * v.mlp_ratio)
        vision = Stack("vision", v.depth, v.embed_dim, v.num_heads, patches, ffn, _act(v))
    else:
        raise NoMemoryModel(f"no memory model for model_type {config.model_type!r}")
    return [vision, Stack("language", seq=tokens + max_seq_len, vocab=t.vocab_size, **text)]


def image_tokens_of(config) -> tuple[int, int]:
    """(vision patches, image tokens in the language model's input) for one image of a chat family's model."""
    v = config.vision_config
    if config.model_type in ("idefics3", "smolvlm"):
        patches = (v.image_size // v.patch_size) ** 2
        return patches, patches // config.scale_factor ** 2
    if config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        side = getattr(config, "image_size", None) or QWEN2_VL_NOMINAL_SIDE
        patches = (side // v.patch_size) ** 2
        return patches, patches // v.spatial_merge_size ** 2
    raise NoMemoryModel(f"no memory model for model_type {config.model_type!r}")


def _block_params(s: Stack) -> int:
    """Parameters of one block of a stack: q, k, v and output projections, and the feed-forward (SwiGLU: three)."""
    return 4 * s.hidden * s.hidden + (3 if s.act == "gated" else 2) * s.hidden * s.ffn


def text_positions(family: str, config, input_len: int) -> int:
    """Text positions of a padded input: its length less the image placeholders the processor put in it
    (LLaVA: one per patch; BLIP-2: one per query token). Models without a config (open_clip): all of it."""
    if config is None or not hasattr(config, "vision_config"):
        return input_len
    if family == "llava" or getattr(config, "model_type", "") == "llava":  # an `auto` LLaVA too, as stacks() has it
        v = config.vision_config
        return input_len - (v.image_size // v.patch_size) ** 2
    if family == "blip2":
        return input_len - config.num_query_tokens
    if getattr(config, "model_type", "") in ("idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl"):
        return input_len - image_tokens_of(config)[1]
    return input_len


# elements per token a feed-forward's activation keeps for backward, in units of its inner width: relu its output,
# gelu its input, quick_gelu (x * sigmoid(1.702 x)) its input and the sigmoid, SwiGLU silu's input and output and up's
_ACT_KEEPS = {"relu": 1, "gelu": 1, "quick_gelu": 2, "gated": 3}


@dataclass(frozen=True)
class Held:
    """How a block's weights are held, as far as what backward needs from the forward goes."""

    weights: str  # "trainable" (linears keep their inputs for weight gradients), "adapted" (frozen, adapters on some
    #               of them) or "frozen" (gradients only pass through, to something trainable before the block)
    adapter: str | None = None  # "lora" (the LoRA family) or "ia3"
    adapted: int = 0  # linears per block an adapter sits on
    dropout: float = 0.0  # the adapter's dropout on its input


def _kept_bytes_per_token(s: Stack, held: Held, act_bytes: int, mask_bytes: int) -> float:
    """Bytes one block keeps for backward per token. A dropout keeps its mask: one byte per element on a GPU
    (torch's fused native_dropout), a mask in the activations' dtype on the CPU (input × scaled Bernoulli draw)."""
    h, f = s.hidden, s.ffn
    kept = 2 * h + 4 * h + _ACT_KEEPS[s.act] * f  # two norms' inputs; q, k, v and the output the attention kernel keeps
    if held.weights == "trainable":
        kept += 3 * h + (0 if s.act == "relu" else f)  # qkv's, out's and fc1's (gate-up's) inputs; fc2's unless relu kept it
    elif held.adapter == "ia3":
        kept += 2 * h + (0 if s.act == "relu" else f)  # k and v before their scaling; fc2's input before its scaling
    elif held.adapter == "lora" and not held.dropout:
        kept += h  # the A matrices read their projections' input, which q, k and v share
    nbytes = kept * act_bytes + (2 * h * mask_bytes if s.dropout else 0)  # residual dropout, twice
    if held.adapter == "lora" and held.dropout:
        nbytes += held.adapted * h * (act_bytes + mask_bytes)  # each adapter's dropped-out copy of its input, its mask
    return nbytes


def _block_activation_bytes(s: Stack, batch: int, act_bytes: int, mask_bytes: int, checkpointing: bool, held: Held) -> float:
    tokens = batch * s.seq
    one = tokens * _kept_bytes_per_token(s, held, act_bytes, mask_bytes)
    ends = 2 * tokens * s.hidden * act_bytes  # the stack's input embeddings and its final norm's input
    if checkpointing:  # each block keeps its input; the one being recomputed holds everything
        return ends + s.layers * tokens * s.hidden * act_bytes + one
    return ends + s.layers * one


def _held(family: str, component: str, counts: dict, train: dict, method_kind: str) -> Held:
    trains = counts.get("trainable", 0)
    if not trains:
        return Held("frozen")
    if method_kind == "full" or trains * 2 > counts.get("total", 1):  # full fine-tuning, or a component in train_full
        return Held("trainable")
    from bench.models import get_family

    targets = train.get("targets") or get_family(family).default_targets(method_kind, "transformers")
    return Held("adapted", "ia3" if method_kind == "ia3" else "lora", len(targets.get(component, ())),
                train.get("dropout") or 0.0)


def estimate_memory(family: str, config, params: dict, train: dict, method_kind: str, text_len: int | None = None,
                    device: str = "cuda") -> dict:
    """Predicted peak MB for one cell; `params` is bench.methods.count_params output (per component).
    `text_len`: the text positions of the longest batch when the data is known (else max_seq_len, the most).
    `device`: "cpu" or a GPU; it decides how large a dropout mask is and which AdamW kernel updates. The arithmetic is
    SFT's: a DPO cell (objective = "dpo": each pair twice through the model, a reference forward, TRL's chunked
    log-probabilities) has none (NoMemoryModel), and is measured all the same."""
    if train.get("objective") == "dpo":
        raise NoMemoryModel("the memory model counts supervised fine-tuning; DPO's pairs and reference are not in it")
    bf16 = train["precision"] == "bf16"
    wbytes = 2 if bf16 else 4
    act_bytes = 2 if train["precision"] in ("bf16", "fp16") else 4
    mask_bytes = act_bytes if device == "cpu" else 1
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
    # foreach AdamW's sqrt(exp_avg_sq), held through step(); the fused kernel a CPU cell updates with holds none
    optimizer_step = trainable * opt_bytes if train["optimizer"] == "adamw" and adamw_kernel(device) == "foreach" else 0

    activations, flowing = 0.0, False
    batch = train["batch_size"]
    seq = min(text_len, train["max_seq_len"]) if text_len else train["max_seq_len"]
    # prompt tuning: its virtual tokens lengthen the language model's input, and their gradient comes back through every
    # one of its (frozen) blocks
    prompt = method_kind == "prompt_tuning"
    seq += train.get("num_virtual_tokens", 0) if prompt else 0
    parallel = family == "clip"  # image and text towers: gradients never pass from one into the other
    for s in stacks(family, config, seq):
        counts = by_comp.get(s.component, {})
        flowing = (flowing and not parallel) or counts.get("trainable", 0) > 0 or prompt and s.component == "language"
        if flowing:
            held = _held(family, s.component, counts, train, method_kind)
            activations += _block_activation_bytes(s, batch, act_bytes, mask_bytes, train["gradient_checkpointing"], held)
        if s.vocab and flowing:
            activations += batch * s.seq * s.vocab * (act_bytes + 4 + 4)

    # gradients are released (set to None) after each update, so a forward's activations meet the gradients only when
    # micro-batches accumulate; the update itself holds the gradients and the optimizer's step buffer
    live_grads = gradients if train.get("grad_accum", 1) > 1 else 0
    devices = train.get("devices", 1)
    if devices > 1 and train.get("distributed") == "fsdp":
        # FULL_SHARD: each device keeps 1/N of the weights, gradients and optimizer state, and gathers whole the units
        # it computes: the root (what no block holds: embeddings, head, projector, kept gathered through the forward)
        # and two blocks at a time (one computing, the next prefetched). A model: no FSDP run was measured here
        block = max(_block_params(st) for st in stacks(family, config, seq))
        root = max(0, total - sum(st.layers * _block_params(st) for st in stacks(family, config, seq)))
        gathered = (root + 2 * block) * wbytes
        weights, gradients, optimizer = weights / devices + gathered, gradients / devices, optimizer / devices
        optimizer_step, live_grads = optimizer_step / devices, live_grads / devices
    elif devices > 1:  # DDP: a full copy per device, and the buckets gradients are averaged in, alive from the start
        live_grads = gradients
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
             "optimizer_step": optimizer_step}
    out = {k: round(v / MB, 2) for k, v in parts.items()}
    out["total_mb"] = round((weights + optimizer + max(activations + live_grads, gradients + optimizer_step)) / MB, 2)
    out["text_len"] = seq
    return out


def estimate_cells(cells, counts: dict | None = None, meta_models: dict | None = None, device: str = "cuda") -> dict[str, dict]:
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
        try:
            out[cell.cell_id] = estimate_memory(cell.model["family"], config, p, {**cell.train, **cell.method},
                                                cell.method["kind"], device=device)
        except NoMemoryModel:  # an `auto` architecture the estimate does not know: the preview shows none
            continue
    return out
