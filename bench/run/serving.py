"""What serving a trained cell costs, measured after its evaluation in the cell's process.

The ways an adapter is served, each a model held at once so their requests interleave round by round (the order turned
each round, the first request of each left out as warm-up, the device synchronised around every clock read):

- unmerged: the adapter applied on the fly (PEFT's wrapped layers) over the base it was trained on; for QLoRA, over the
  base in full precision, the way its adapter is shipped;
- merged: the adapter merged into that base (`merge_and_unload`): a plain model again. A full fine-tune is served as
  the plain model it is, under this name;
- 4bit: the base quantised to 4 bits (NF4, double quantisation) with the adapter on the fly: how a QLoRA cell trained,
  and on request (`serve_4bit`) for the other adapters.

For each: latency of one sample's request (batch 1, median of the rounds, min and max beside it), throughput of a
request of serve_batch_size samples (images/s for CLIP's image embedding, generated tokens/s for captioning and VQA at
exactly max_new_tokens), and peak inference memory (the weights as stored plus the peak the batched request adds above
what was allocated before it). The merged model is also evaluated on the evaluation split: `quality.merged`, and its
difference to the tuned score (for QLoRA: that of the 4-bit model it trained on).
"""

from __future__ import annotations

import copy
import statistics
import time

from bench.data.sample import readable
from bench.errors import BenchError
from bench.models.catalog import METHOD_KINDS
from bench.profile import MB
from bench.turns import timed_turn

FOUR_BIT = {"kind": "qlora", "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}


def serve(cell, settings: dict, *, task, loaded, model, splits, device: str, zoo_path, seed: int, state=None,
          waits: list | None = None) -> dict:
    """The serving section of the record ({"variants": {name: figures}, ...}) and, where the weights are not random,
    the merged model's quality ("merged_quality"). `model`: the trained model (PEFT-wrapped for adapters). `waits`
    receives the timed rounds' wait for their turn beside other cells (bench/turns.py)."""
    kind = cell.method["kind"]
    variants, notes = _variants(cell, settings, loaded=loaded, model=model, device=device, zoo_path=zoo_path, seed=seed,
                                state=state)
    # a request holds decoded images, as a server receives them: an image file of the data is read here
    samples = readable(splits.eval, settings["serve_batch_size"], skip=settings["on_bad_sample"] == "skip")
    if not samples:
        raise BenchError("no evaluation sample has a readable image to serve", fix="check the evaluation split's images")
    one, batch = (task.serving_request(loaded, s, _task_settings(settings, device, splits), device)
                  for s in (samples[:1], samples))
    if "4bit" in variants and kind != "qlora":  # built, yet PEFT may have no 4-bit forward for the kind (LoKr)
        try:
            one(variants["4bit"])
        except Exception as exc:
            del variants["4bit"]
            notes.append(_left_out("4bit", exc))
    figures = measure(variants, one, batch, rounds=settings["serve_rounds"], device=device, waits=waits)
    for fig in figures.values():
        fig.update(batch=len(samples), unit=f"{task.SERVED}/s")
    out = {"variants": figures, "rounds": settings["serve_rounds"], "memory_kind": _memory_kind(device)}
    if notes:
        out["notes"] = notes
    if METHOD_KINDS[kind].adapter and "merged" in variants and cell.model["weights"] != "random":
        from bench.run.cell import _evaluate

        out["merged_quality"] = _evaluate(task, loaded, variants["merged"], splits, settings, device)
    return out


def _task_settings(settings: dict, device: str, splits):
    from bench.tasks.base import task_settings

    return task_settings(settings, device, splits)


def _variants(cell, settings: dict, *, loaded, model, device: str, zoo_path, seed: int, state) -> tuple[dict, list[str]]:
    """name -> the model served that way, and notes on the ways left out (and why)."""
    kind = cell.method["kind"]
    if not METHOD_KINDS[kind].adapter:
        return {"merged": _frozen(model)}, []
    variants, notes = {}, []
    if kind == "fusion":  # X-LoRA weighs its experts per token: there is no one merged weight to serve
        return {"unmerged": _frozen(model)}, [
            "merged, 4bit: X-LoRA mixes its experts per token, so no single merged weight exists",
            "unmerged: generated without a key-value cache (PEFT's X-LoRA turns it off), unlike the other cells"]
    if not METHOD_KINDS[kind].mergeable:
        return {"unmerged": _frozen(model)}, [f"merged, 4bit: {kind} has no merged form (PEFT's merge_and_unload folds "
                                              "weight updates, and this method adds none)"]
    if kind == "qlora":  # its adapter over the base in full precision, and as trained: over the 4-bit base
        full = rebuild(cell, settings, device=device, zoo_path=zoo_path, seed=seed, state=_state(model, state), quantize=False)
        variants["unmerged"], variants["4bit"] = full, model
    else:
        variants["unmerged"] = model
    variants["merged"] = copy.deepcopy(variants["unmerged"]).merge_and_unload()
    if METHOD_KINDS[kind].composes and settings["serve_4bit"]:
        notes.append("4bit: a composed adapter is served over the full-precision base it was composed on")
    elif kind != "qlora" and settings["serve_4bit"]:
        try:
            variants["4bit"] = rebuild(cell, settings, device=device, zoo_path=zoo_path, seed=seed,
                                       state=_state(model, state), quantize=True)
        except Exception as exc:  # PEFT has no 4-bit layer for every adapter kind
            notes.append(_left_out("4bit", exc))
    order = ("unmerged", "merged", "4bit")
    return {name: _frozen(variants[name]) for name in order if name in variants}, notes


def _left_out(variant: str, exc: Exception) -> str:
    return f"{variant}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _frozen(model):
    """The model for inference: in eval mode, nothing requiring gradients (MemTracker would hook the parameters that
    do, and a served model trains nothing)."""
    return model.eval().requires_grad_(False)


def _state(model, state: dict | None) -> dict:
    """The trained parameters (name -> tensor) of `model`, unless given."""
    if state is not None:
        return state
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def rebuild(cell, settings: dict, *, device: str, zoo_path, seed: int, state: dict, quantize: bool):
    """A fresh build of the cell's base, in full precision or quantised to 4 bits, with the cell's adapter (a QLoRA
    cell's as the LoRA it is over a base in full precision) holding the trained parameters `state`."""
    from bench.methods import apply_method, quantization_config
    from bench.models import get_family
    from bench.run.cell import _load_trained, build_base

    method = {**cell.method, "kind": "lora"} if cell.method["kind"] == "qlora" else cell.method
    quantization = quantization_config({**FOUR_BIT, **_quant_keys(cell.method)}, device) if quantize else None
    loaded = build_base(cell.model, settings["precision"], device=device, zoo_path=zoo_path, seed=seed,
                        quantization=quantization)
    model = apply_method(loaded, method, get_family(cell.model["family"]))
    _load_trained(model, {n: v.to(device) for n, v in state.items()})
    return model.eval()


def _quant_keys(method: dict) -> dict:
    return {k: method[k] for k in ("quant_type", "double_quant", "compute_dtype") if k in method}


def measure(models: dict, one, batch, *, rounds: int, device: str, waits: list | None = None) -> dict:
    """Interleaved rounds of each model's one-sample and batched request; figures per model. The timed rounds take the
    cell's turn (bench/turns.py); `waits` receives when it was asked for and when it came."""
    sync = _sync(device)
    times = {name: {"one": [], "batch": []} for name in models}
    units = {}
    names = list(models)
    memory = {}
    for name in names:  # warm-up (kernels chosen, workspaces allocated, caches filled), the batched request's memory
        one(models[name])
        units[name], memory[name] = _memory(models[name], batch, device)
    with timed_turn(waits):
        for r in range(rounds):
            turn = names[r % len(names):] + names[: r % len(names)]  # who goes first changes each round
            for name in turn:
                for key, request in (("one", one), ("batch", batch)):
                    sync()
                    start = time.perf_counter()
                    request(models[name])
                    sync()
                    times[name][key].append(time.perf_counter() - start)
    out = {}
    for name in names:
        one_s, batch_s = times[name]["one"], times[name]["batch"]
        out[name] = {"latency_ms": round(1000 * statistics.median(one_s), 3),
                     "latency_ms_range": [round(1000 * min(one_s), 3), round(1000 * max(one_s), 3)],
                     "throughput": round(units[name] / statistics.median(batch_s), 3),
                     "batch_s_range": [round(min(batch_s), 5), round(max(batch_s), 5)], **memory[name]}
    return out


def _sync(device: str):
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _memory_kind(device: str) -> str:
    """Which of fields.SERVING_MEMORY_KINDS _memory counts on `device`."""
    return "cuda_allocated" if device.startswith("cuda") else "cpu_tensors"


def weights_mb(model) -> float:
    """The model's parameters and buffers as stored: 4-bit weights packed two to a byte, with their quantisation state
    (absmax, and with double quantisation its own absmax and code)."""
    tensors = list(model.parameters()) + list(model.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors)
    for p in model.parameters():
        state = getattr(p, "quant_state", None) if type(p).__name__ == "Params4bit" else None
        if state is not None:
            total += sum(v.numel() * v.element_size() for v in state.as_dict(packed=True).values() if hasattr(v, "numel"))
    return total / MB


def _memory(model, batch, device: str) -> tuple[int, dict]:
    """One batched request (what it made), with the weights as stored and the peak it reached: the CUDA allocator's
    above what was allocated before it; on the CPU live tensor bytes counted by torch's MemTracker (the process's RSS
    would not move once earlier requests touched those pages)."""
    weights = weights_mb(model)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        units = batch(model)
        torch.cuda.synchronize()
        above = (torch.cuda.max_memory_allocated() - before) / MB
    else:
        from bench.profile import no_garbage_collection, tensor_kinds, tensor_tracker

        tracker = tensor_tracker(model)
        with tracker, no_garbage_collection(collect=False):
            units = batch(model)
        kinds = tensor_kinds(next(iter(tracker.get_tracker_snapshot("peak").values()), {}))
        above = sum(v for k, v in kinds.items() if k not in ("param", "buffer")) / MB
    return units, {"weights_mb": round(weights, 2), "activations_mb": round(max(0.0, above), 2),
                   "peak_memory_mb": round(weights + max(0.0, above), 2)}
