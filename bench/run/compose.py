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
    from bench.models import get_family
    from bench.models.base import model_spec
    from bench.run.cell import weights_dtype

    method = cell.method
    family = get_family(cell.model["family"])
    loaded = family.build(model_spec(cell.model, zoo_path), device=device, dtype=weights_dtype(settings["precision"]),
                          seed=seed)
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
    """The composed cell's outcome, as attempt() gives a trained one's (never raises)."""
    from bench.methods import count_params
    from bench.profile import MemoryProbe
    from bench.run.cell import _evaluate, _keep, _serve, failure_message
    from bench.tasks import task_for_family

    probe = MemoryProbe(device)
    out: dict = {"status": "ok", "message": "", "params": {}, "cost": {"device": device, "devices": 1}, "loss_curve": [],
                 "diverged_at_step": None, "composition": {"sources": sources}}
    phases = out["cost"]["phases_s"] = {}
    clock = time.perf_counter()
    try:
        task = task_for_family(cell.model["family"])
        probe.start_region()
        loaded, model, beside = compose(cell, settings, seed=seed, device=device, splits=splits, zoo_path=zoo_path,
                                        sources=sources)
        out["composition"]["beside"] = beside
        phases["build"] = round(time.perf_counter() - clock, 4)
        out["cost"].update(probe.peak())
        out["cost"]["train_wall_s"] = phases["build"]  # what making the cell's model took: composing, no training
        out["params"] = count_params(model, loaded.components)
        clock = time.perf_counter()
        if cell.model["weights"] != "random":
            out["tuned"] = _evaluate(task, loaded, model, splits, settings, device)
            if retention is not None:
                out["retained"] = _evaluate(task, loaded, model, retention, settings, device)
        phases["evaluate"] = round(time.perf_counter() - clock, 4)
        out["artifact"] = _keep(model, cell, settings, artifact, beside=set(beside))
        out["serving"] = _serve(cell, settings, task=task, loaded=loaded, model=model, splits=splits, device=device,
                                zoo_path=zoo_path, seed=seed)
        phases["serve"] = (out["serving"] or {}).get("wall_s", 0.0)
    except Exception as exc:  # a cell's failure must never take the suite down
        out.update(status="error", message=failure_message(exc))
    out["cost"].setdefault("peak_memory_mb", None)
    return out
