"""Fine-tuning methods: each turns a loaded model into a trainable one through peft / bitsandbytes.

Targets are component-aware: a method names leaf modules per component ({language = ["q_proj",
"v_proj"]}) and they are matched by module path under that component's prefixes, so LLaVA's
vision tower, which also has q_proj/v_proj, is never adapted by accident.
"""

from __future__ import annotations

import math
import re

from bench.errors import BenchError
from bench.models.base import LoadedModel, base_model, component_of

PEFT_PREFIX = "base_model.model."
REENTRANT_OFF = {"use_reentrant": False}  # recomputation that works with frozen inputs, no input-grad hook needed


def target_regex(components: dict[str, tuple[str, ...]], targets: dict[str, list[str]]) -> str:
    """A full-match regex for peft's target_modules: leaf names, only under the named components."""
    alternatives = []
    for comp, leaves in targets.items():
        prefixes = "|".join(re.escape(p) for p in components[comp])
        names = "|".join(re.escape(leaf) for leaf in leaves)
        alternatives.append(rf"(?:{prefixes})(?:\..+)?\.(?:{names})")
        # a leaf that is the component's own root module (LLaVA's lm_head, CLIP's visual_projection)
        alternatives += [re.escape(p) for p in components[comp] if p.rsplit(".", 1)[-1] in leaves]
    return "^(?:" + "|".join(alternatives) + ")$"


def resolve_targets(method: dict, family, backend: str, loaded: LoadedModel | None = None) -> dict[str, list[str]]:
    """The method's own targets, else the family's default for this kind on this backend (kinds differ:
    open_clip's LoRA wraps nn.MultiheadAttention, which DoRA and the others cannot) and, for the chat families, the
    loaded model's layer names."""
    targets = method.get("targets") or family.default_targets(method["kind"], backend, loaded=loaded)
    return {comp: list(leaves) for comp, leaves in targets.items()}


def check_targets(model, components: dict, targets: dict[str, list[str]], method_name: str) -> None:
    """Every (component, leaf) pair must match at least one module; say which leaf names exist if not."""
    unknown = [c for c in targets if c not in components]
    if unknown:
        raise BenchError(
            f"method '{method_name}': unknown component(s) {unknown} in targets",
            fix=f"use components of this model: {', '.join(components)}",
        )
    names = [n for n, _ in model.named_modules()]
    for comp, leaves in targets.items():
        under = [n for n in names if component_of(n, {comp: components[comp]}) == comp]
        present = {n.rsplit(".", 1)[-1] for n in under}
        missing = [leaf for leaf in leaves if leaf not in present]
        if missing:
            under_set = set(under)
            adaptable = ("Linear", "Linear4bit", "MultiheadAttention", "Conv1D")
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n in under_set and type(m).__name__.endswith(adaptable)})
            raise BenchError(
                f"method '{method_name}': targets.{comp} = {missing} match no module in the {comp} component",
                fix=f"layer names found there: {', '.join(linear[:20])}",
            )


def quantization_config(method: dict, device: str, *, sharded: bool = False):
    """A BitsAndBytesConfig for QLoRA (NF4, double quantisation, compute dtype), else None. `sharded` (FSDP): the 4-bit
    weights are stored as the compute dtype, so FSDP can flatten them with the rest (peft's FSDP-QLoRA recipe)."""
    if method["kind"] != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(method["compute_dtype"])
    if dtype is None:  # auto: bf16 on CUDA; fp32 on the CPU, where bf16 compute is ~30x slower here
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method["quant_type"],
        bnb_4bit_use_double_quant=method["double_quant"],
        bnb_4bit_compute_dtype=dtype,
        **({"bnb_4bit_quant_storage": dtype} if sharded else {}),
    )


def apply_method(loaded: LoadedModel, method: dict, family, *, gradient_checkpointing: bool = False, sharded: bool = False):
    """Freeze / adapt `loaded.model` as the method says; returns the model to train. `sharded` (FSDP): QLoRA keeps
    its other weights in their stored dtype, as TRL does for FSDP-QLoRA, so FSDP can flatten each unit whole."""
    import peft

    model, components, kind = loaded.model, loaded.components, method["kind"]
    if gradient_checkpointing:
        if hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=REENTRANT_OFF)
            _drop_input_grad_hooks(model)
        elif hasattr(model, "set_grad_checkpointing"):  # open_clip (non-reentrant too); skipping it would hide a setting
            model.set_grad_checkpointing(True)
        else:
            raise BenchError(f"method '{method['name']}': this model has no gradient checkpointing",
                             fix="set gradient_checkpointing = false for it")
    if kind == "full":
        frozen = set(method.get("freeze") or ())
        unknown = sorted(frozen - set(components))
        if unknown:  # a misspelt component would otherwise freeze nothing, silently
            raise BenchError(f"method '{method['name']}': freeze names unknown component(s) {unknown}",
                             fix=f"use components of this model: {', '.join(components)}")
        for name, p in model.named_parameters():
            p.requires_grad_(component_of(name, components) not in frozen)
        return model

    if kind == "fusion":
        return _fusion(loaded, method)
    if kind == "prompt_tuning":  # learnt virtual tokens before the input; the rest stays frozen
        model = _adapted(model, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                        num_virtual_tokens=method["num_virtual_tokens"]), method)
        _drop_input_grad_hooks(model.get_base_model())
        return model
    targets = resolve_targets(method, family, loaded.backend, loaded)
    check_targets(model, components, targets, method["name"])
    regex = target_regex(components, targets)
    if kind == "qlora" and not sharded:
        # without the kwargs peft re-enables checkpointing with torch's default, the reentrant variant
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                     gradient_checkpointing_kwargs=REENTRANT_OFF)
        _drop_input_grad_hooks(model)
    if kind in ("lora", "dora", "qlora"):
        config = peft.LoraConfig(r=method["r"], lora_alpha=method["alpha"], lora_dropout=method["dropout"],
                                 target_modules=regex, use_dora=kind == "dora", bias="none")
    elif kind == "ia3":
        ff = family.feedforward_modules(loaded.backend, loaded=loaded)
        ff_targets = {c: [leaf for leaf in leaves if leaf in ff] for c, leaves in targets.items()}
        ff_targets = {c: v for c, v in ff_targets.items() if v}
        config = peft.IA3Config(target_modules=regex, feedforward_modules=target_regex(components, ff_targets) if ff_targets else [])
    elif kind == "loha":
        config = peft.LoHaConfig(r=method["r"], alpha=method["alpha"], rank_dropout=method["dropout"], target_modules=regex)
    elif kind == "lokr":
        config = peft.LoKrConfig(r=method["r"], alpha=method["alpha"], rank_dropout=method["dropout"], target_modules=regex)
    elif kind == "vera":
        config = peft.VeraConfig(r=method["r"], vera_dropout=method["dropout"], target_modules=regex)
    else:
        raise BenchError(f"unknown method kind {kind!r}")
    model = _adapted(model, config, method)
    _drop_input_grad_hooks(model.get_base_model())
    train_full = method.get("train_full")
    if train_full is None:  # the seeds' recipe trains the projector beside the adapter; DPO trains the adapter alone
        train_full = [] if method.get("objective") == "dpo" else ["projector"]
    unknown = [c for c in train_full if c not in components]
    if unknown:
        raise BenchError(f"method '{method['name']}': train_full names unknown component(s) {unknown}",
                         fix=f"use components of this model: {', '.join(components)}")
    for name, p in model.get_base_model().named_parameters():
        if component_of(name, components) in train_full and p.is_floating_point():
            p.requires_grad_(True)
    return model


def _adapted(model, config, method: dict):
    """`model` with a fresh adapter of `config`, or, when the method starts from another cell's (`start_adapter`: the
    folder it kept, SFT before DPO), that adapter loaded trainable, what it trained beside it put back in place."""
    import peft

    if not method.get("start_adapter"):
        return peft.get_peft_model(model, config)
    return peft.PeftModel.from_pretrained(model, method["start_adapter"], is_trainable=True)


def _fusion(loaded: LoadedModel, method: dict):
    """PEFT's X-LoRA over the adapters in method["experts"] (folders a source cell kept): the experts frozen, a classifier
    on the language model's hidden states learns how much of each to apply per token. Parameters the experts trained in
    full beside their adapters (LLaVA's projector) are their mean change from the base (task arithmetic at 1/n)."""
    import peft

    experts = list(method["experts"])
    model = loaded.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in beside_names(experts)}
    config = getattr(model.config, "text_config", None) or model.config
    model.config.use_cache = False  # X-LoRA's scaling pass runs the model twice per step; a cache would be reused
    fused = peft.get_peft_model(model, peft.XLoraConfig(
        task_type="CAUSAL_LM", hidden_size=config.hidden_size, xlora_depth=1,
        adapters={str(i): path for i, path in enumerate(experts)}))  # peft 0.21 names experts by position
    combine_beside(fused, before, experts, [1 / len(experts)] * len(experts))
    return fused


def beside_names(folders: list[str]) -> set[str]:
    """Names (in the base model) of the parameters that adapters kept in `folders` trained in full beside themselves
    (bench/run/artifacts.py adds them to the adapter's file under PEFT's prefix)."""
    from safetensors import safe_open

    names: set[str] = set()
    for folder in folders:
        with safe_open(f"{folder}/adapter_model.safetensors", framework="pt") as f:
            names |= {k[len(PEFT_PREFIX):] for k in f.keys() if k.startswith(PEFT_PREFIX) and not _adapter_key(k)}
    return names


def _adapter_key(key: str) -> bool:
    return any(part.startswith(("lora_", "ia3_")) for part in key.split("."))


def combine_beside(model, before: dict, folders: list[str], weights: list[float]) -> None:
    """Each parameter of `before` (name in the base model -> its base value) = the base value + Σ weight × (the value
    kept in that folder − the base value); a folder without it adds nothing."""
    import torch
    from safetensors import safe_open

    if not before:
        return
    params = dict(base_model(model).named_parameters())
    combined = {n: v.clone().float() for n, v in before.items()}
    for folder, weight in zip(folders, weights):
        with safe_open(f"{folder}/adapter_model.safetensors", framework="pt") as f:
            keys = set(f.keys())
            for name, base in before.items():
                if PEFT_PREFIX + name in keys:
                    combined[name] += weight * (f.get_tensor(PEFT_PREFIX + name).to(base.device).float() - base.float())
    missing = sorted(set(combined) - set(params))
    if missing:
        raise BenchError(f"an adapter's file holds {missing[0]}, which the base model has no parameter for",
                         fix="compose adapters trained on this cell's base model")
    with torch.no_grad():
        for name, value in combined.items():
            params[name].copy_(value.to(params[name].dtype))


def _drop_input_grad_hooks(model) -> None:
    """Undo enable_input_require_grads, which transformers (checkpointing on) and peft (wrapping) each call.

    It hooks every input embedding, the vision towers' patch embeddings too, so that their outputs require grad:
    reentrant checkpointing needs that. bench's checkpointing is non-reentrant, and with the hooks backward runs
    through frozen vision towers, keeping their activations. Called after each call that may add hooks: each
    call replaces the list of hooks that disable_input_require_grads removes."""
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()


def _numel(p) -> int:
    # bitsandbytes packs two 4-bit values per byte: count the parameters the layer stands for, from the
    # original shape it keeps (exact for odd sizes; a Params4bit not yet quantised has no quant_state)
    state = getattr(p, "quant_state", None) if type(p).__name__ == "Params4bit" else None
    if state is not None:
        return math.prod(state.shape)
    return p.numel()


def count_params(model, components: dict[str, tuple[str, ...]]) -> dict:
    """Total / trainable parameters, overall and per component (adapter weights count in their component)."""
    by_comp: dict[str, dict[str, int]] = {c: {"total": 0, "trainable": 0} for c in components}
    total = trainable = quantized = 0
    for name, p in model.named_parameters():
        name = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        n = _numel(p)
        total += n
        if type(p).__name__ == "Params4bit":
            quantized += n
        comp = component_of(name, components) or "other"
        slot = by_comp.setdefault(comp, {"total": 0, "trainable": 0})
        slot["total"] += n
        if p.requires_grad:
            trainable += n
            slot["trainable"] += n
    out = {
        "total": total,
        "trainable": trainable,
        "trainable_pct": round(100.0 * trainable / total, 4) if total else 0.0,
        "by_component": by_comp,
    }
    if quantized:  # 4-bit weights (QLoRA): the memory estimate prices them at 0.5 B/param
        out["quantized"] = quantized
    return out
