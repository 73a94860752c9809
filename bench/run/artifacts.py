"""What a cell trained, kept: its adapter in PEFT's own format (`save_pretrained`: adapter_config.json and
adapter_model.safetensors), or a full fine-tune's whole model on request, under
`<results folder>/artifacts/<suite>/<cell>/<seed>/`. Written into a temporary folder beside it and renamed into place,
so a folder there is always whole; its size in bytes is the files' on disk. Runs in the cell's process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.models.catalog import METHOD_KINDS


def save_artifact(model, method_kind: str, folder: str, *, save_full: bool, beside: set[str] | None = None,
                  experts: list[str] | None = None) -> dict | None:
    """Save the trained `model` (the cell's, PEFT-wrapped for adapters) to `folder`; what the record keeps of it, or
    None when the method keeps nothing (a full fine-tune without save_full). `beside`: the base model's parameters kept
    with the adapter (default: those trained, requires_grad). `experts`: an X-LoRA fusion's expert folders."""
    adapter = METHOD_KINDS[method_kind].adapter
    if not adapter and not save_full:
        return None
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if experts is not None:
        _save_fusion(model, staging, experts, beside or set())
    elif hasattr(model, "save_pretrained"):
        # only the cell's own adapter: a DPO cell's model also holds TRL's frozen reference copy ("ref")
        only = {"selected_adapters": ["default"]} if "default" in (getattr(model, "peft_config", None) or {}) else {}
        model.save_pretrained(staging, safe_serialization=True, **only)
        if adapter:
            _add_trained_beside_adapter(model, staging / "adapter_model.safetensors", beside)
    else:  # open_clip's models have no save_pretrained: their state dict, as safetensors
        from safetensors.torch import save_model

        staging.mkdir()
        save_model(model, str(staging / "model.safetensors"))
    shutil.rmtree(target, ignore_errors=True)  # a retry replaces what an earlier attempt kept
    staging.rename(target)
    files = sorted(p for p in target.rglob("*") if p.is_file())
    return {"kind": "adapter" if adapter else "full", "path": str(target),
            "bytes": sum(p.stat().st_size for p in files), "files": [p.relative_to(target).as_posix() for p in files]}


XLORA_WEIGHTS = "xlora_weights.safetensors"
XLORA_CONFIG = "xlora_config.json"


def _save_fusion(model, staging: Path, experts: list[str], beside: set[str]) -> None:
    """An X-LoRA fusion as plain files: its experts (the source adapters' folders, copied whole), its config with the
    experts' folders relative to it, and its trained classifier with the parameters kept beside the experts (their mean
    change) in one file, loaded with `model.load_state_dict(..., strict=False)` after `peft.get_peft_model(base,
    XLoraConfig(**config))`. (PEFT's own X-LoRA save_pretrained, 0.21, writes the experts' base weights rather than
    their adapters.)"""
    import json

    from safetensors.torch import save_file

    from bench.methods import PEFT_PREFIX

    staging.mkdir()
    adapters = {}
    for i, folder in enumerate(experts):
        shutil.copytree(folder, staging / "experts" / str(i))
        adapters[str(i)] = f"experts/{i}"
    config = {k: v for k, v in model.peft_config["default"].to_dict().items() if k in ("hidden_size", "xlora_depth",
              "xlora_size", "enable_softmax", "layerwise_scalings", "top_k_lora", "softmax_temperature", "task_type")}
    (staging / XLORA_CONFIG).write_text(json.dumps({**config, "adapters": adapters}, indent=2, sort_keys=True))
    kept = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()
            if p.requires_grad or n.removeprefix(PEFT_PREFIX).removeprefix("base_model.lora_model.model.") in beside}
    save_file(kept, str(staging / XLORA_WEIGHTS), metadata={"format": "pt"})


def _add_trained_beside_adapter(model, file: Path, beside: set[str] | None = None) -> None:
    """Parameters trained in full beside the adapter (`train_full`, e.g. LLaVA's projector) are not PEFT modules, so
    save_pretrained leaves them out; they go into the adapter's file under their own names, which PEFT's loader
    (`PeftModel.from_pretrained`, a non-strict load of that file) puts back in place."""
    from safetensors.torch import load_file, save_file

    config = getattr(model, "peft_config", {}).get("default")
    if getattr(config, "is_prompt_learning", False):  # prompt tuning: its virtual tokens are all it trains, and saved
        return
    saved = load_file(str(file))
    from bench.methods import PEFT_PREFIX

    def kept(name: str, p) -> bool:
        return p.requires_grad if beside is None else name.removeprefix(PEFT_PREFIX) in beside

    extra = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()
             if kept(name, p) and not _saved_forms(name, saved)}
    if extra:
        save_file({**saved, **extra}, str(file), metadata={"format": "pt"})


def _saved_forms(name: str, saved: dict) -> list[str]:
    """The keys of `saved` that stand for parameter `name` (PEFT drops the adapter's name: lora_A.default.weight is
    saved as lora_A.weight)."""
    bare = name.replace(".default", "")
    return [k for k in (bare, name) if k in saved]
