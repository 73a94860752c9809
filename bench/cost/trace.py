"""Peak training memory of a cell, traced on the CPU with fake tensors: no weights, no GPU.

The cell's own code runs — family build (random weights), method, task collate and loss, autocast,
gradient checkpointing, clipping, the optimizer — inside torch's FakeTensorMode, so every tensor has
its real shape and dtype but no storage. torch's MemTracker counts the bytes that would be live
after every op; its peak is what the CUDA caching allocator's `max_memory_allocated` would report,
less allocator rounding and fragmentation (and the CUDA context, which no allocator counter sees).

What differs from a CUDA run, and why the trace still holds:
- The fake device is the CPU (autograd's engine needs a real CUDA context for CUDA tensors), so
  autocast is CPU autocast, with nearly the same bf16 op list as CUDA's, and attention takes the
  CPU flash kernel, which like CUDA's flash/memory-efficient kernels keeps no seq×seq matrix.
- AdamW runs the kernel a cell on the target device runs (bench.train.adamw_kernel): foreach on CUDA,
  as torch picks there, whose step holds one extra copy of the optimizer state's size for a moment;
  fused on the CPU, which holds none.
- QLoRA is not traced: bitsandbytes quantises real weight data, which fake tensors do not have. Nor are the chat
  families (SmolVLM, Qwen2-VL, auto): their forward reads token and image-token values (nonzero, .item()), which
  fake tensors do not have; nor DPO cells, whose step is TRL's.

Two steps run: the first creates the optimizer state, the second is the steady state the
profiler measures. Each micro-batch is made of the batch_size longest training samples (the
longest batch the run can meet), so the trace is the run's worst step.
"""

from __future__ import annotations

from contextlib import contextmanager

from bench.cost.estimate import MB
from bench.isolate import environ
from bench.profile import tensor_kinds
from bench.train import adamw_kernel

TRACE_STEPS = 2

TRACE_SAMPLES = 1024  # training samples searched for the longest batch


class NotTraceable(Exception):
    """A cell whose memory cannot be traced with fake tensors (the reason is the message)."""


def trace_cell(cell, splits, *, target_device: str = "cuda") -> dict:
    """{"peak_mb", "by_kind_mb", "text_len", ...} for one cell's training step, traced on the CPU."""
    import torch
    from transformers.initialization import no_init_weights

    from bench.cost.estimate import text_positions
    from bench.methods import apply_method, count_params
    from bench.models import get_family
    from bench.models.base import model_spec
    from bench.models.catalog import FAMILIES
    from bench.tasks import task_for_family
    from bench.tasks.base import encode_kwargs, task_settings

    if cell.method["kind"] == "qlora":
        raise NotTraceable("bitsandbytes quantises real weight data; fake tensors have none")
    if FAMILIES[cell.model["family"]].chat_template:
        raise NotTraceable("the chat families' forward reads the input's values (Idefics3 places image features with "
                           "nonzero, Qwen2-VL builds its rotary positions from the token ids in Python), which fake "
                           "tensors do not have; the estimate stands alone")
    if cell.method.get("objective") == "dpo":
        raise NotTraceable("a DPO step runs TRL's trainer (pairs, reference forward), which the trace does not drive")
    settings = {**cell.train}
    family = get_family(cell.model["family"])
    task = task_for_family(cell.model["family"])
    dtype = torch.bfloat16 if settings["precision"] == "bf16" else torch.float32
    with fake_session() as mode:
        with mode:
            with no_init_weights():  # fake tensors have no values to draw (BLIP-2's trunc_normal_ reads some)
                loaded = family.build(model_spec({**cell.model, "weights": "random"}), device="cpu", dtype=dtype, seed=0)
            if hasattr(loaded.model, "tie_weights"):
                loaded.model.tie_weights()  # no_init_weights skips tying too: OPT's lm_head would be a second matrix
            model = apply_method(loaded, cell.method, family, gradient_checkpointing=settings["gradient_checkpointing"])
            params = count_params(model, loaded.components)
        # the processor's tensors are real (encoding reads values); the mode turns them into fake ones
        # the longest batch among the first TRACE_SAMPLES (shuffled at load): encoding 100k samples would take minutes
        samples = [s.decoded() for s in splits.train[:TRACE_SAMPLES]]
        encoded = task.encode(loaded, samples, task_settings(settings, "cpu"), **encode_kwargs(task, splits))
        batch = task.collate(sorted(encoded, key=lambda e: -len(e["input_ids"]))[: settings["batch_size"]], loaded)
        with mode:
            peak = _traced_steps(model, task, batch, settings, target_device)
    snap = next(iter(peak.values()))  # one device: the fake CPU
    by_kind = {k: round(v / MB, 2) for k, v in tensor_kinds(snap).items()}
    return {
        "peak_mb": round(snap["Total"] / MB, 2),
        "by_kind_mb": {k: v for k, v in by_kind.items() if v},
        "params": params,
        "text_len": text_positions(cell.model["family"], getattr(model, "config", None), batch["input_ids"].shape[1]),
        "batch": {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")},
        "optimizer_kernel": adamw_kernel(target_device) if settings["optimizer"] == "adamw" else settings["optimizer"],
    }


def _traced_steps(model, task, batch: dict, settings: dict, target_device: str) -> dict:
    """bench.train's optimizer step (train.accumulate + train.update), minus what reads values (the loss, the
    schedule), under MemTracker."""
    from bench.profile import no_garbage_collection, tensor_tracker
    from bench.train import accumulate, update

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _trace_optimizer(trainable, settings, target_device)
    tracker = tensor_tracker(model, optimizer)
    model.train()
    with tracker, no_garbage_collection():
        for _ in range(TRACE_STEPS):
            # MemTracker refuses a second forward of a tracked module; its global peak stays
            accumulate(model, task, [batch] * settings["grad_accum"], settings, "cpu", before_forward=tracker.reset_mod_stats)
            update(optimizer, trainable, settings)
    return tracker.get_tracker_snapshot("peak")


def _trace_optimizer(params, settings: dict, target_device: str):
    """The suite's optimizer as a cell on the target device builds it (AdamW: that device's kernel), on fake CPU tensors."""
    from bench.train import make_optimizer

    if settings["optimizer"] in ("adamw", "sgd"):
        return make_optimizer(params, settings, target_device)
    raise NotTraceable(f"optimizer {settings['optimizer']!r} is bitsandbytes' and runs CUDA kernels on real data")


@contextmanager
def fake_session():
    """A FakeTensorMode (entered by the caller, as often as needed) in which the model code runs unchanged, and the two things it needs for that:

    - Module.to() on fake parameters swaps tensors, which torch refuses while FakeTensorMode's memo
      (and, for tensors made from Python numbers, its constant map) holds a weak reference to them
      (pytorch#148977); those entries of the two tensors are dropped just before each swap (they are
      fake-born, nothing looks them up again).
    - transformers' shape checks that read tensor values (LLaVA's image-token count) are switched off
      with its own TRANSFORMERS_DISABLE_TORCH_CHECK; fake tensors have no values.
    Both are undone on exit."""
    import torch
    import torch.utils
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    converter = mode.fake_tensor_converter
    swap = torch.utils.swap_tensors

    def swap_without_memo(t1, t2):
        memo = converter.meta_converter.tensor_memo
        for key, value in list(memo.items()):
            if value is t1 or value is t2:
                del memo[key]
        for refs in converter.constant_storage_mapping.values():  # torch.tensor(3.0) parameters (CLIP's logit_scale)
            refs[:] = [r for r in refs if r() is not t1 and r() is not t2]
        return swap(t1, t2)

    torch.utils.swap_tensors = swap_without_memo
    try:
        with environ({"TRANSFORMERS_DISABLE_TORCH_CHECK": "1"}):
            yield mode
    finally:
        torch.utils.swap_tensors = swap
