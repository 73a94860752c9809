"""One cell end to end: build → apply method → train → evaluate → measure. Runs inside the cell's process.

It never raises: every outcome (ok, oom, diverged, error) comes back as a result dict that the
runner turns into a record. The untuned model's quality is measured separately (evaluate_base)
once per (model, dataset) and passed in.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import replace

from bench.data.stream import Skipped, train_batches
from bench.errors import BenchError
from bench.models.base import model_spec
from bench.models.catalog import METHOD_KINDS
from bench.run.artifacts import save_artifact
from bench.tasks.base import TrainingBatch, task_settings
from bench.turns import waited_s, waited_total


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BenchError("device = \"cuda\" but no CUDA device is visible", fix='use device = "auto" or "cpu"')
    return requested


def _quality_dict(q, task) -> dict:
    from bench.metrics import quality_version

    return {"metric": q.metric, "higher_is_better": q.higher_is_better, "value": round(float(q.value), 4), "extra": q.extra,
            "n": q.n, "version": quality_version(task.TASK, q.metric), "items": [round(float(v), 4) for v in q.items],
            "item_ids": list(q.item_ids)}


def weights_dtype(precision: str):
    """bf16 runs keep frozen weights in bf16 (what users do on GPUs); fp16 autocasts over fp32 weights."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def build_base(model: dict, precision: str, *, device: str, zoo_path, seed: int, quantization=None):
    """The base model of a cell's `model` table, its weights in the dtype `precision` keeps them in (quantised to 4 bits
    with `quantization`, a BitsAndBytesConfig), before any method: what training, serving, composing and export start
    from."""
    from bench.models import get_family

    return get_family(model["family"]).build(model_spec(model, zoo_path), device=device, dtype=weights_dtype(precision),
                                             quantization=quantization, seed=seed)


def build_model(cell, settings: dict, *, device: str, zoo_path, seed: int, sharded: bool = False):
    """(loaded, model to train): the cell's model built and adapted as its method says (`sharded`: for FSDP)."""
    from bench.methods import apply_method, quantization_config
    from bench.models import get_family

    loaded = build_base(cell.model, settings["precision"], device=device, zoo_path=zoo_path, seed=seed,
                        quantization=quantization_config(cell.method, device, sharded=sharded))
    return loaded, apply_method(loaded, cell.method, get_family(cell.model["family"]),
                                gradient_checkpointing=settings["gradient_checkpointing"], sharded=sharded)


def objective(task, cell, loaded, model, splits, settings: dict, *, seed: int, device: str):
    """What the cell's training optimises, as a task: the family's own (SFT), or TRL's DPO over it (bench/tasks/
    preference.py), made once the model to train exists (DPO's reference is a copy of it as training starts)."""
    if cell.method.get("objective", "sft") != "dpo":
        return task
    from bench.tasks.preference import Dpo

    return Dpo(task, loaded, model, beta=cell.method["beta"], seed=seed, device=device, pairs=splits.train,
               max_seq_len=settings["max_seq_len"])


def _evaluate(task, loaded, model, splits, settings: dict, device: str) -> dict:
    """The model's quality on splits.eval, as a record keeps it."""
    return _quality_dict(task.evaluate(loaded, model, splits, task_settings(settings, device, splits)), task)


# when this process began its cell (run_cell), and the seconds it had waited for turns then: what serving may still spend
_started = [time.perf_counter(), 0.0]


def _serve(cell, settings: dict, **how) -> dict | None:
    """What serving the trained model costs (bench/run/serving.py), where the cell measures it; a failure there is the
    serving section's, not the cell's. A cell past half its timeout_s serves nothing: a timeout now would lose the
    record of what it trained."""
    if not settings["serve"]:
        return None
    # its waits for a turn since the cell began do not count (its timeout clock stood still: bench/isolate.py)
    spent = time.perf_counter() - _started[0] - (waited_total() - _started[1])
    if spent > settings["timeout_s"] / 2:
        return {"notes": [f"not measured: the cell had used {spent:.0f} s of its timeout_s = {settings['timeout_s']:g} "
                          "(serving starts only within the first half)"], "variants": {}, "wall_s": 0.0}
    from bench.run.serving import serve

    clock, waits = time.perf_counter(), []
    try:
        out = serve(cell, settings, waits=waits, **how)
    except Exception as exc:
        out = {"error": failure_message(exc)}
    waited = waited_s(waits)
    if waits:  # beside other cells: the timed rounds waited for their turn (bench/turns.py)
        out["wait_s"] = round(waited, 4)
    out["wall_s"] = round(time.perf_counter() - clock - waited, 4)  # its own time, the wait apart
    return out


def _keep(model, cell, settings: dict, artifact: str | None, beside: set[str] | None = None) -> dict | None:
    """What bench/run/artifacts.py keeps of the trained model, where the cell keeps anything."""
    if not artifact or not settings["save"]:
        return None
    from bench.methods import beside_names

    experts = cell.method.get("experts")  # an X-LoRA fusion: its experts, and the parameters they kept beside them
    if experts is not None:
        beside = beside_names(experts)
    elif cell.method.get("start_adapter") and cell.method.get("objective") == "dpo":
        # DPO trains the adapter alone: what its source kept beside it (the SFT projector) goes with it unchanged
        beside = beside_names([cell.method["start_adapter"]])
    return save_artifact(model, cell.method["kind"], artifact, save_full=settings["save_full"], beside=beside,
                         experts=experts)


def evaluate_base(cell, *, device: str, splits, zoo_path: str | None = None) -> dict:
    """The untuned model's quality on the eval split (full precision, no adapters)."""
    import torch

    from bench.models import get_family
    from bench.tasks import task_for_family

    family = get_family(cell.model["family"])
    task = task_for_family(cell.model["family"])
    torch.manual_seed(cell.train["seed"])
    loaded = family.build(model_spec(cell.model, zoo_path), device=device, seed=cell.train["seed"])
    quality = task.evaluate(loaded, loaded.model, splits, task_settings(cell.train, device, splits))
    return _quality_dict(quality, task)


def run_cell(cell, *, seed: int, device: str, splits, base: dict | None, zoo_path: str | None = None,
             settings: dict | None = None, on_step=None, ranks=None, winner: dict | None = None,
             retention=None, artifact: str | None = None, sources: list[dict] | None = None) -> dict:
    """Train and evaluate one cell once (OOM back-off is the runner's: each attempt gets a fresh process);
    returns the record's variable part. `ranks`: this process is one of the cell's devices (bench/run/launch.py).
    A cell with a sweep runs its trials (bench/run/sweep.py), or only `winner`, repeat 0's pick. `retention`:
    (splits, base quality) of a dataset the tuned model is also evaluated on. `sources`: the records of the cells whose
    kept adapters a composed cell builds on: a merge combines them instead of training (bench/run/compose.py), a fusion
    trains X-LoRA's classifier over them (bench/methods.py)."""
    _started[:] = [time.perf_counter(), waited_total()]
    settings = settings or dict(cell.train)
    retention_splits, retention_base = retention or (None, None)
    if cell.sources and cell.method.get("start_from"):  # trains on from the adapter its source kept (SFT, then DPO)
        cell = replace(cell, method={**cell.method, "start_adapter": sources[0]["artifact"]})
    elif cell.sources and METHOD_KINDS[cell.method["kind"]].trains:  # X-LoRA: trains over its sources' adapters
        cell = replace(cell, method={**cell.method, "experts": [s["artifact"] for s in sources or []]})
    if cell.sources and not METHOD_KINDS[cell.method["kind"]].trains:
        from bench.run.compose import run_composed

        outcome = run_composed(cell, settings, seed=seed, device=device, splits=splits, zoo_path=zoo_path,
                               sources=sources or [], retention=retention_splits, artifact=artifact)
    elif settings.get("sweep"):
        from bench.run.sweep import run_sweep

        outcome = run_sweep(cell, settings, seed=seed, device=device, splits=splits, zoo_path=zoo_path, on_step=on_step,
                            winner=winner, retention=retention_splits, artifact=artifact)
    else:
        outcome = attempt(cell, settings, seed=seed, device=device, splits=splits, zoo_path=zoo_path, on_step=on_step,
                          ranks=ranks, retention=retention_splits, artifact=artifact)
    if cell.sources:  # the cells whose adapters it built on
        outcome.setdefault("composition", {"sources": sources or []})
    outcome["quality"] = _quality_record(cell, base, outcome.pop("tuned", None))
    if outcome.get("text_coverage") is not None:  # how much of the data's text the model reads (bench/tasks/coverage.py)
        outcome["quality"]["text_coverage"] = outcome.pop("text_coverage")
    merged = (outcome.get("serving") or {}).pop("merged_quality", None)
    if merged is not None and outcome["quality"].get("tuned") is not None:  # what merging the adapter changed
        outcome["quality"].update(merged=merged["value"], merged_delta=round(merged["value"] - outcome["quality"]["tuned"], 4))
    retained = outcome.pop("retained", None)
    if retention is not None and cell.model["weights"] != "random":
        outcome["quality"]["retention"] = _retention_record(cell, retention_base, retained)
    return outcome


def _retention_record(cell, base: dict | None, tuned: dict | None) -> dict:
    """Base and tuned quality on the retention dataset, and their difference: what the method forgot (or learnt)."""
    ref = tuned or base or {}
    return {"dataset": (cell.retention or {}).get("name"), "metric": ref.get("metric"), "version": ref.get("version"),
            "base": base["value"] if base else None, "tuned": tuned["value"] if tuned else None,
            "delta": round(tuned["value"] - base["value"], 4) if tuned and base else None, "n_eval": ref.get("n")}


def _quality_record(cell, base: dict | None, tuned: dict | None) -> dict:
    if cell.model["weights"] == "random":
        return {"metric": None, "higher_is_better": None, "base": None, "tuned": None, "delta": None,
                "applicable": False, "note": "random weights: cost is real, quality is not applicable"}
    ref = tuned or base or {}
    out = {"metric": ref.get("metric"), "higher_is_better": ref.get("higher_is_better"), "version": ref.get("version"),
           "base": base["value"] if base else None, "tuned": tuned["value"] if tuned else None,
           "n_eval": ref.get("n"), "applicable": True, "extra": (tuned or {}).get("extra", {}),
           "base_extra": (base or {}).get("extra", {})}
    out["delta"] = round(out["tuned"] - out["base"], 4) if tuned and base else None
    if tuned and base:
        out.update(_paired_items(base, tuned))
    return out


def _paired_items(base: dict, tuned: dict) -> dict:
    """The per-item scores of base and tuned on the items both evaluated (quality.items), and Δ's 95 % interval from a
    paired bootstrap over them (bench/analysis/intervals.py)."""
    from bench.analysis.intervals import delta_interval

    before = dict(zip(base.get("item_ids") or [], base.get("items") or []))
    after = dict(zip(tuned.get("item_ids") or [], tuned.get("items") or []))
    ids = sorted(set(before) & set(after))
    if not ids:
        return {}
    items = {"base": [before[i] for i in ids], "tuned": [after[i] for i in ids]}
    if ids != list(range(len(ids))):
        items["ids"] = ids
    interval = delta_interval([{"quality": {"items": items}}])
    return {"items": items, "delta_ci": [round(interval[0], 4), round(interval[1], 4)] if interval else None}


def _warm_runtime(device: str) -> None:
    """One tiny forward/backward/AdamW step, so thread pools and kernel workspaces that torch allocates on
    first use are part of the baseline rather than charged to the first cell's peak memory."""
    import torch

    layer = torch.nn.Linear(64, 64).to(device)
    opt = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(8, 64, device=device)).square().mean().backward()
    opt.step()
    del layer, opt


def _import_dpo_runtime() -> None:
    """What TRL's DPOTrainer imports and loads on first use (its modules, datasets', PIL's image plugins), done
    before a cell's memory baseline so that a DPO cell's memory is its training's."""
    import datasets  # noqa: F401
    import trl.trainer.dpo_trainer  # noqa: F401
    from PIL import Image

    Image.init()


def attempt(cell, settings: dict, *, seed: int, device: str, splits, zoo_path, on_step, ranks=None,
            keep: dict | None = None, retention=None, artifact: str | None = None) -> dict:
    """Build, train on splits.train, evaluate on splits.eval (and on `retention`'s eval split); the outcome (never
    raises). `keep`: a dict that receives the trained parameters ("state": name -> CPU tensor), for a sweep that
    evaluates its pick afterwards. `artifact`: the folder the trained adapter is kept in (bench/run/artifacts.py)."""
    import torch

    from bench.methods import count_params
    from bench.profile import MemoryProbe
    from bench.tasks import task_for_family
    from bench.train import Diverged, MemoryCapExceeded, train

    _warm_runtime(device)
    if cell.method.get("objective") == "dpo":  # TRL's import (~90 MB on the CPU) is the runtime's, not the cell's
        _import_dpo_runtime()
    probe = MemoryProbe(device)  # baseline before the model exists, after the runtime's one-off allocations
    out: dict = {"status": "ok", "message": "", "params": {}, "cost": {"device": device, "devices": 1}, "loss_curve": [], "diverged_at_step": None}
    phases = out["cost"]["phases_s"] = {}  # where the cell's time went: build, train (with waits for data), evaluate
    clock = time.perf_counter()
    try:
        task = task_for_family(cell.model["family"])
        torch.manual_seed(seed)
        sharded = ranks is not None and ranks.strategy == "fsdp"

        def build():
            return build_model(cell, settings, device=device, zoo_path=zoo_path, seed=seed, sharded=sharded)

        loaded, model = build()
        out["params"] = count_params(model, loaded.components)  # before DPO's reference copy joins the model
        task = objective(task, cell, loaded, model, splits, settings, seed=seed, device=device)
        ts = task_settings(settings, device, splits)
        # before training, at the most text positions max_seq_len allows: an OOM cell keeps its prediction
        out["cost"]["estimate"] = _estimate(cell, loaded, out["params"], settings, None, device)
        out["cost"]["estimate_mb"] = (out["cost"]["estimate"] or {}).get("total_mb")
        skipped = Skipped()
        batches = train_batches(splits.train, TrainingBatch(task, loaded, ts, splits), batch_size=settings["batch_size"],
                                seed=seed, stream=ts.stream, skipped=skipped, shard=(ranks.rank, ranks.world) if ranks else (0, 1))
        trained = ranks.wrap(model) if ranks else model
        probe.start_region()
        phases["build"], clock = round(time.perf_counter() - clock, 4), time.perf_counter()
        began, waits = time.monotonic(), []
        try:
            result = train(trained, task, batches, settings, n_samples=len(splits.train), device=device, probe=probe,
                           on_step=on_step, track_tensors=device == "cpu", ranks=ranks, turn_waits=waits,
                           make_ahead=not ts.stream.num_workers)
        finally:
            batches.close()  # the workers stop here, not when the garbage collector gets to them
            phases["train"], clock = round(time.perf_counter() - clock - waited_s(waits), 4), time.perf_counter()
            if waits:  # beside other cells on the CPU: the timed steps waited for their turn (bench/turns.py)
                phases["wait"] = round(waited_s(waits), 4)
            # when it trained, on the machine's clock: the run counts the wall time some cell was training
            out["spans"] = _apart(began, time.monotonic(), waits)
        # the step MemTracker watched trained like any other, slowed by the hooks: what it took beyond a typical (median)
        # step measured memory
        hooks = max(0.0, result.tracked_step_s - statistics.median(result.step_times)) if result.tracked_step_s else 0.0
        phases["train"], phases["track"] = round(phases["train"] - hooks, 4), round(hooks, 4)
        out["cost"].update(probe.peak())
        out["cost"].update(_tensor_memory(result, out["cost"]))
        # after training, the prediction for what was measured: the tracked step's batch where tensors were tracked
        # (the CPU), else the longest input met (a CUDA peak is over every step)
        measured_at = result.tracked_input if result.tensor_peak else result.longest_input
        out["cost"]["estimate"] = _estimate(cell, loaded, out["params"], settings, measured_at, device)
        out["cost"]["estimate_mb"] = (out["cost"]["estimate"] or {}).get("total_mb")
        out["cost"].update(_throughput(result, settings))
        out["cost"].update(_data_cost(result, settings, ts.stream, skipped))
        out["cost"]["data_held_mb"] = _data_held_mb(splits, batches, result.ahead_bytes)
        out["cost"].update(_mfu(out["params"], out["cost"], settings, device))
        if "breakdown_mb" not in out["cost"]:
            out["cost"]["breakdown_mb"] = _breakdown(model, result, out["cost"]["peak_memory_mb"])
        out["loss_curve"] = _subsample(result.losses)
        if keep is None and (ranks is None or ranks.main):  # a sweep's trial is not the cell: its pick's after_training is
            out["text_coverage"] = _text_coverage(cell, loaded, splits, ts)
        if keep is not None:
            keep["state"] = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        evaluated = _evaluable(ranks, trained, model, loaded, build) if cell.model["weights"] != "random" else None
        if evaluated is not None:  # random weights: cost is real, quality is not; several devices: the main one's
            loaded, model = evaluated
            out["tuned"] = _evaluate(task, loaded, model, splits, settings, device)
            if retention is not None:
                out["retained"] = _evaluate(task, loaded, model, retention, settings, device)
            phases["evaluate"] = round(time.perf_counter() - clock, 4)
            if out["tuned"]["n"] < len(splits.eval):
                out["cost"]["skipped_samples"]["eval"] = len(splits.eval) - out["tuned"]["n"]
        kept = evaluated if evaluated is not None else ((loaded, model) if not sharded else None)  # FSDP: the gathered
        if kept is not None and (ranks is None or ranks.main):
            out["artifact"] = _keep(kept[1], cell, settings, artifact)
            if keep is None:  # a sweep's trial is not served: its pick is, once evaluated (bench/run/sweep.py)
                out["serving"] = _serve(cell, settings, task=task, loaded=kept[0], model=kept[1], splits=splits,
                                        device=device, zoo_path=zoo_path, seed=seed)
                add_phases(phases, serving_phases(out["serving"]))
    except (torch.OutOfMemoryError, MemoryCapExceeded) as exc:
        out.update(status="oom", message=f"out of memory: {str(exc).splitlines()[0][:300]}")
        out["cost"].update(probe.peak())
    except RuntimeError as exc:
        if ranks is not None and is_peer_loss(exc):  # another device is gone: its own failure is the cell's cause
            out.update(status="error", message=_error_message(exc), peer_lost=True)
        elif _is_worker_death(exc):
            out.update(status="error", message=f"a data-loading worker died: {str(exc).splitlines()[0][:300]} (a worker killed "
                       "by the OS is most often out of host memory; fix: lower num_workers or prefetch_factor)")
        elif not _is_oom(exc):
            out.update(status="error", message=_error_message(exc))
        else:  # the CPU allocator's and some CUDA paths' out-of-memory arrive as plain RuntimeError
            out.update(status="oom", message=f"out of memory: {str(exc).splitlines()[0][:300]}")
            out["cost"].update(probe.peak())
    except Diverged as exc:
        out.update(status="diverged", message=f"loss {exc.loss} at step {exc.step}", diverged_at_step=exc.step,
                   loss_curve=[[s, loss if math.isfinite(loss) else None] for s, loss in _subsample(exc.losses)])
        out["cost"].update(probe.peak())
    except Exception as exc:  # a cell's failure must never take the suite down
        out.update(status="error", message=failure_message(exc))
    out["cost"].setdefault("peak_memory_mb", None)
    return out


def evaluate_trained(cell, settings: dict, *, seed: int, device: str, splits, zoo_path, state: dict,
                     retention=None, artifact: str | None = None) -> dict:
    """The quality on splits.eval ("tuned"; on `retention`'s: "retained") of the cell's model with `state` (its trained
    parameters) loaded into a fresh build, what bench/run/artifacts.py kept of it in `artifact` ("artifact") and what
    serving it costs ("serving", bench/run/serving.py)."""
    import torch

    from bench.tasks import task_for_family

    torch.manual_seed(seed)
    loaded, model = build_model(cell, settings, device=device, zoo_path=zoo_path, seed=seed)
    # DPO's reference is the model as training started: taken before the trained parameters are loaded
    task = objective(task_for_family(cell.model["family"]), cell, loaded, model, splits, settings, seed=seed,
                     device=device)
    _load_trained(model, state)
    return after_training(cell, settings, task=task, loaded=loaded, model=model, splits=splits, retention=retention,
                          artifact=artifact, device=device, zoo_path=zoo_path, seed=seed, state=state)


def after_training(cell, settings: dict, *, task, loaded, model, splits, retention, artifact: str | None, device: str,
                   zoo_path, seed: int, state: dict | None = None, beside: set[str] | None = None) -> dict:
    """What a cell measures once its model is made (trained, or composed): quality on splits.eval ("tuned", none for
    random weights) and on `retention`'s ("retained"), what bench/run/artifacts.py keeps ("artifact"), what serving it
    costs ("serving"), and the seconds those took ("phases": evaluate, serve)."""
    clock = time.perf_counter()
    out: dict = {"tuned": None, "retained": None,
                 "text_coverage": _text_coverage(cell, loaded, splits, task_settings(settings, device, splits))}
    if cell.model["weights"] != "random":
        out["tuned"] = _evaluate(task, loaded, model, splits, settings, device)
        if retention is not None:
            out["retained"] = _evaluate(task, loaded, model, retention, settings, device)
    evaluated = time.perf_counter() - clock
    out["artifact"] = _keep(model, cell, settings, artifact, beside=beside)
    out["serving"] = _serve(cell, settings, task=task, loaded=loaded, model=model, splits=splits, device=device,
                            zoo_path=zoo_path, seed=seed, state=state)
    out["phases"] = {"evaluate": round(evaluated, 4), **serving_phases(out["serving"])}
    return out


def _text_coverage(cell, loaded, splits, ts) -> dict:
    """How much of the data's target text the model's tokenizer knows and max_seq_len keeps (bench/tasks/coverage.py),
    counted once the model is trained, outside the timed steps and the memory-measured region (its time counts in the
    evaluate phase); a failure to count is the field's (its `error`), never the cell's."""
    from bench.tasks import task_for_family
    from bench.tasks.coverage import text_coverage

    try:
        return text_coverage(task_for_family(cell.model["family"]), loaded, splits, ts)
    except Exception as exc:  # noqa: BLE001
        return {"error": failure_message(exc)}


def _apart(start: float, end: float, waits: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) less the waits inside it, as spans."""
    spans, at = [], start
    for asked, got in waits:
        spans.append((at, asked))
        at = got
    return spans + [(at, end)]


def serving_phases(serving: dict | None) -> dict:
    """The seconds serving took (`serve`) and, beside other cells, waited for its turn to time (`wait`)."""
    out = {"serve": (serving or {}).get("wall_s", 0.0)}
    if (serving or {}).get("wait_s"):
        out["wait"] = serving["wait_s"]
    return out


def add_phases(phases: dict, more: dict) -> None:
    """Add `more`'s seconds per phase to `phases`."""
    for phase, seconds in more.items():
        phases[phase] = round(phases.get(phase, 0.0) + seconds, 4)


def _load_trained(model, state: dict) -> None:
    """Trained parameters into a fresh build of the same model: every trainable parameter given, nothing else."""
    import torch

    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(state) != trainable:
        raise BenchError(f"the kept parameters do not fit a fresh build ({len(set(state) ^ trainable)} differ)",
                         fix="report this: the method's build is not deterministic")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _evaluable(ranks, trained, model, loaded, build):
    """What evaluates the tuned model, once: (loaded, model) on one device, or on the main one of several (DDP's copies
    are all the same model); FSDP's shards gathered whole into a fresh build on the main device. None elsewhere."""
    if ranks is None:
        return loaded, model
    if ranks.strategy != "fsdp":
        return (loaded, model) if ranks.main else None
    state = ranks.full_state(trained)  # every device takes part in the gather
    if not ranks.main:
        return None
    fresh_loaded, fresh = build()
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or any(p.requires_grad for n, p in fresh.named_parameters() if n in set(missing)):
        raise BenchError(f"the gathered FSDP weights do not fit a fresh build ({len(unexpected)} unexpected, "
                         f"{len(missing)} missing keys)", fix='report this; distributed = "ddp" evaluates without gathering')
    return fresh_loaded, fresh


# what a collective step says when a peer device's process is gone (gloo's transport, NCCL's abort)
_PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport", "NCCL communicator",
              "NCCL error")


def is_peer_loss(exc: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(exc, getattr(dist, "DistNetworkError", ())) or any(s in str(exc) for s in _PEER_LOSS)


def _is_worker_death(exc: BaseException) -> bool:
    # torch's DataLoader: "DataLoader worker (pid 123) is killed by signal: Killed." / "... exited unexpectedly"
    return str(exc).startswith("DataLoader worker")


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def failure_message(exc: BaseException) -> str:
    """A cell's error as its record says it: a BenchError's own message and fix, else the exception and where."""
    return exc.render() if isinstance(exc, BenchError) else _error_message(exc)


def _error_message(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno} in {where.name})" if where else ""
    return f"{type(exc).__name__}: {str(exc)[:600]}{at}"


def _estimate(cell, loaded, params: dict, settings: dict, longest_input: int | None, device: str) -> dict | None:
    """The memory prediction for this cell at its longest training input, kept beside the measurement (None where
    no memory model exists). `bench plan --estimate`, which has no data, assumes max_seq_len text positions."""
    from bench.cost.estimate import NoMemoryModel, estimate_memory, text_positions

    config = getattr(loaded.model, "config", None)
    if config is None or not hasattr(config, "vision_config"):
        return None
    family = cell.model["family"]
    try:
        return estimate_memory(family, config, params, {**settings, **cell.method}, cell.method["kind"],
                               text_len=None if longest_input is None else text_positions(family, config, longest_input),
                               device="cpu" if device == "cpu" else "cuda")
    except NoMemoryModel:  # an `auto` architecture the estimate does not know: measured all the same
        return None


def _data_held_mb(splits, batches, ahead_bytes: int) -> float:
    """Data the cell holds beside the training's tensors (not in peak_memory_mb): the splits' images in memory (decoded
    pixels or encoded bytes; files on disk hold none), the encoded samples cached for later passes and, beside other
    cells, the batches made before the turn beyond the one step a cell alone holds (bench/train.py)."""
    from bench.data.sample import held_bytes

    held = held_bytes(splits.train) + held_bytes(splits.eval) + batches.cached_bytes + ahead_bytes
    return round(held / 2**20, 3)


def _data_cost(result, settings: dict, stream, skipped) -> dict:
    """How the batches were read and what waiting for them cost: over the timed steps (those step_s_median is
    taken over), as a share of their time; the first step's wait (worker start-up, first reads) apart."""
    from bench.profile import step_stats

    excluded = step_stats(result.step_times, settings["timing_warmup_steps"])["warmup_steps_excluded"]
    wait = sum(result.data_waits[excluded:])
    busy = wait + sum(result.step_times[excluded:])
    return {
        "num_workers": stream.num_workers,
        "data_wait_s": round(wait, 4),
        "data_wait_pct": round(100 * wait / busy, 2) if busy else None,
        "data_start_s": round(result.data_waits[0], 4) if result.data_waits else None,
        "skipped_samples": dict(skipped.counts),
    }


def _throughput(result, settings: dict) -> dict:
    """Samples and tokens per second of the median timed step (a few slow steps do not drag it), the mean's beside."""
    from bench.profile import step_stats

    stats = step_stats(result.step_times, settings["timing_warmup_steps"])
    timed = sum(result.step_times[stats["warmup_steps_excluded"]:]) or float("nan")
    counted = max(0, result.steps - settings["timing_warmup_steps"])  # the steps whose samples and tokens were counted
    median = stats["step_s_median"]

    def rates(total: int, name: str, digits: int) -> dict:
        if not total or not counted or not median:
            return {name: None, f"{name}_mean": None}
        return {name: round(total / counted / median, digits), f"{name}_mean": round(total / timed, digits)}

    return {
        "train_wall_s": round(sum(result.step_times), 4),
        **stats,
        **rates(result.samples, "samples_per_s", 3),
        **rates(result.real_tokens, "tokens_per_s", 2),
        **rates(result.padded_tokens, "padded_tokens_per_s", 2),
        "optimizer_steps": result.steps,
        "optimizer_kernel": result.optimizer_kernel,
    }


def _mfu(params: dict, cost: dict, settings: dict, device: str) -> dict:
    """Model FLOPs utilisation against the device's dense bf16 peak (GPU only: a CPU has no such figure)."""
    from bench.profile import device_peak_tflops, model_flops_per_token

    if not device.startswith("cuda") or not cost.get("padded_tokens_per_s"):
        return {"mfu": None, "model_tflops_per_s": None}
    import torch

    flops = model_flops_per_token(params["total"], params["trainable"], settings["gradient_checkpointing"])
    achieved = flops * cost["padded_tokens_per_s"] / 1e12
    peak = device_peak_tflops(torch.cuda.get_device_name(0))
    return {"mfu": round(achieved / peak, 4) if peak else None, "model_tflops_per_s": round(achieved, 2)}


# MemTracker's kinds -> the breakdown's names (as bench plan --trace reports them)
TENSOR_KINDS = {"param": "weights", "buffer": "buffers", "grad": "gradients", "opt": "optimizer", "act": "activations",
                "temp": "temporaries"}


def _tensor_memory(result, cost: dict) -> dict:
    """On the CPU, the training's own memory: live tensor bytes at their peak over the tracked warm-up steps (torch's
    MemTracker: weights, gradients, optimizer state, activations, temporaries) as `peak_memory_mb`, the process's RSS
    high-water mark above its baseline kept beside it. Without a tracked step (step 2 timed): RSS only."""
    if not result.tensor_peak:
        return {}
    mb = 1024 * 1024
    from bench.profile import tensor_kinds

    by_kind = {TENSOR_KINDS.get(k, k): round(size / mb, 3) for k, size in tensor_kinds(result.tensor_peak).items() if size}
    return {"memory_kind": "cpu_tensors", "peak_memory_mb": round(result.tensor_peak["Total"] / mb, 3),
            "rss_peak_mb": cost.get("peak_memory_mb"), "breakdown_mb": by_kind}


def _breakdown(model, result, peak_mb: float | None) -> dict:
    """Where the memory went: parameter storage, trainable copy, gradients, optimizer state; activations = the rest."""
    mb = 1024 * 1024
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / mb
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / mb
    optimizer = result.optimizer_state_bytes / mb
    known = weights + trainable + optimizer  # gradients take as much as the trainable parameters
    return {
        "weights": round(weights, 3),
        "trainable": round(trainable, 3),
        "gradients": round(trainable, 3),
        "optimizer": round(optimizer, 3),
        "activations": round(max(0.0, peak_mb - known), 3) if peak_mb is not None else None,
    }


def _subsample(losses: list, most: int = 100) -> list:
    if len(losses) <= most:
        return [list(x) for x in losses]
    stride = len(losses) / most
    picked = [losses[int(i * stride)] for i in range(most)]
    if picked[-1] != losses[-1]:
        picked.append(losses[-1])
    return [list(x) for x in picked]
