"""A composed cell (`kind = "merge"`): the adapters its source cells kept, combined over their base with PEFT's
add_weighted_adapter, evaluated like a trained cell; nothing trains. Runs inside the cell's process.

Each source's adapter loads from its folder (bench/run/artifacts.py) under its own name; the combination becomes the
cell's adapter ("default", so it is kept and exported like any other); one source at weight 1 is that adapter as it is.
Parameters a source trained in full beside its adapter (`train_full`, e.g. LLaVA's projector) combine the way task
arithmetic does: the base's value plus each source's change from it, weighted. A QLoRA source's adapter composes over
the base in full precision, as it is shipped.
"""

from __future__ import annotations

import time

COMPOSED = "default"  # the combination's adapter name: PEFT keeps "default" at the top of a saved folder


def compose(cell, settings: dict, *, seed: int, device: str, splits, zoo_path, sources: list[dict]):
    """(loaded, the composed PEFT model, the base model's parameters kept beside the adapters) for the cell's sources
    (their records' artifacts, in order)."""
    from peft import PeftModel

    from bench.methods import beside_names, combine_beside
    from bench.run.cell import build_base

    method = cell.method
    loaded = build_base(cell.model, settings["precision"], device=device, zoo_path=zoo_path, seed=seed)
    names = [f"source{i}" for i in range(len(sources))]
    folders = [s["artifact"] for s in sources]
    beside = beside_names(folders)
    weights = method["weights"]
    if len(sources) == 1 and weights[0] == 1.0:
        # the adapter as it is, loaded as the cell's own; PEFT's load puts what it kept beside it in place. (Through
        # add_weighted_adapter it would not be: for one adapter PEFT turns "cat" into "linear", √(weight × scaling) on
        # both matrices, and base + (kept − base) rounds too.)
        model = PeftModel.from_pretrained(loaded.model, sources[0]["artifact"], adapter_name=COMPOSED)
        model.set_adapter(COMPOSED)
        model.eval()
        return loaded, model, sorted(beside)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if n in beside}
    model = PeftModel.from_pretrained(loaded.model, sources[0]["artifact"], adapter_name=names[0])
    for name, source in zip(names[1:], sources[1:]):
        model.load_adapter(source["artifact"], adapter_name=name)
    kwargs = {"density": method["density"]} if method.get("density") is not None else {}
    model.add_weighted_adapter(names, weights, COMPOSED, combination_type=method["combination"], **kwargs)
    model.set_adapter(COMPOSED)
    for name in names:
        model.delete_adapter(name)
    combine_beside(model, before, folders, weights)
    model.eval()
    return loaded, model, sorted(beside)


def run_composed(cell, settings: dict, *, seed: int, device: str, splits, zoo_path, sources: list[dict], retention=None,
                 artifact: str | None = None) -> dict:
    """The composed cell's outcome, as attempt() gives a trained one's (never raises). It trains nothing, so it has no
    training cost: no train_wall_s, no training peak memory, no trainable parameters; composing is its model build
    (cost.phases_s.build)."""
    import torch

    from bench.methods import count_params
    from bench.run.cell import _is_oom, after_training, failure_message
    from bench.tasks import task_for_family

    out: dict = {"status": "ok", "message": "", "params": {}, "cost": {"device": device, "devices": 1}, "loss_curve": [],
                 "diverged_at_step": None, "composition": {"sources": sources}}
    phases = out["cost"]["phases_s"] = {}
    clock = time.perf_counter()
    try:
        task = task_for_family(cell.model["family"])
        loaded, model, beside = compose(cell, settings, seed=seed, device=device, splits=splits, zoo_path=zoo_path,
                                        sources=sources)
        model.requires_grad_(False)  # PEFT's set_adapter marks the combination trainable; nothing here trains it
        out["composition"]["beside"] = beside
        phases["build"] = round(time.perf_counter() - clock, 4)
        out["params"] = count_params(model, loaded.components)
        after = after_training(cell, settings, task=task, loaded=loaded, model=model, splits=splits, retention=retention,
                               artifact=artifact, device=device, zoo_path=zoo_path, seed=seed, beside=set(beside))
        phases.update(after.pop("phases"))
        out.update({k: v for k, v in after.items() if v is not None})
    except Exception as exc:  # a cell's failure must never take the suite down
        oom = isinstance(exc, torch.OutOfMemoryError) or isinstance(exc, RuntimeError) and _is_oom(exc)
        out.update(status="oom" if oom else "error",
                   message=f"out of memory: {str(exc).splitlines()[0][:300]}" if oom else failure_message(exc))
    out["cost"].setdefault("peak_memory_mb", None)
    return out
