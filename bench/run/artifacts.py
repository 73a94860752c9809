"""What a cell trained, kept: its adapter in PEFT's own format (`save_pretrained`: adapter_config.json and
adapter_model.safetensors), or a full fine-tune's whole model on request, under
`<results folder>/artifacts/<suite>/<cell>/<seed>/`. Written into a temporary folder beside it and renamed into place,
so a folder there is always whole; its size in bytes is the files' on disk. Runs in the cell's process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.models.catalog import METHOD_KINDS


def save_artifact(model, method_kind: str, folder: str, *, save_full: bool) -> dict | None:
    """Save the trained `model` (the cell's, PEFT-wrapped for adapters) to `folder`; what the record keeps of it, or
    None when the method keeps nothing (a full fine-tune without save_full)."""
    adapter = METHOD_KINDS[method_kind].adapter
    if not adapter and not save_full:
        return None
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(staging, safe_serialization=True)
        if adapter:
            _add_trained_beside_adapter(model, staging / "adapter_model.safetensors")
    else:  # open_clip's models have no save_pretrained: their state dict, as safetensors
        from safetensors.torch import save_model

        staging.mkdir()
        save_model(model, str(staging / "model.safetensors"))
    shutil.rmtree(target, ignore_errors=True)  # a retry replaces what an earlier attempt kept
    staging.rename(target)
    files = sorted(p for p in target.rglob("*") if p.is_file())
    return {"kind": "adapter" if adapter else "full", "path": str(target),
            "bytes": sum(p.stat().st_size for p in files), "files": [p.relative_to(target).as_posix() for p in files]}


def _add_trained_beside_adapter(model, file: Path) -> None:
    """Parameters trained in full beside the adapter (`train_full`, e.g. LLaVA's projector) are not PEFT modules, so
    save_pretrained leaves them out; they go into the adapter's file under their own names, which PEFT's loader
    (`PeftModel.from_pretrained`, a non-strict load of that file) puts back in place."""
    from safetensors.torch import load_file, save_file

    saved = load_file(str(file))
    extra = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()
             if p.requires_grad and not _saved_forms(name, saved)}
    if extra:
        save_file({**saved, **extra}, str(file), metadata={"format": "pt"})


def _saved_forms(name: str, saved: dict) -> list[str]:
    """The keys of `saved` that stand for parameter `name` (PEFT drops the adapter's name: lora_A.default.weight is
    saved as lora_A.weight)."""
    bare = name.replace(".default", "")
    return [k for k in (bare, name) if k in saved]
