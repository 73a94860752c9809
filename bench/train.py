"""One explicit training loop: accumulation, schedule, precision, clipping, timing, divergence.

It reads top to bottom; everything that can move a number comes in through `settings`
(the cell's resolved training table) and goes back out in the record.
"""

from __future__ import annotations

import math
import time
from collections import deque
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

from bench.errors import BenchError
from bench.profile import MemoryProbe, StepTimer
from bench.turns import taking_turns, timed_turn


class Diverged(Exception):
    def __init__(self, step: int, loss: float, losses: list | None = None):
        self.step, self.loss, self.losses = step, loss, losses or []
        super().__init__(f"loss {loss} at step {step}")


class MemoryCapExceeded(Exception):
    """The suite's memory_cap_mb was passed: treated exactly like an out-of-memory error."""


@dataclass
class TrainResult:
    steps: int
    step_times: list[float] = field(default_factory=list)
    turn_waits: list[tuple[float, float]] = field(default_factory=list)  # (asked, got) for the turn to time (bench/turns.py)
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    optimizer_state_bytes: int = 0
    lrs: list[float] = field(default_factory=list)  # the learning rate each optimizer step used (the schedule as run)
    data_waits: list[float] = field(default_factory=list)  # per step, the wait for its batches (a starved device shows here)
    ahead_bytes: int = 0  # bytes of batches made before the turn beyond one step's (beside other cells only)
    longest_input: int = 0  # the most real (unpadded) positions of any training input met
    tracked_input: int = 0  # the same over the tracked step's batches: the shape the tensor peak was measured at
    tracked_step_s: float = 0.0  # the tracked step's time (slowed by MemTracker's hooks; a warm-up step, never timed)
    tensor_peak: dict | None = None  # CPU: MemTracker's peak over the untimed warm-up steps {"Total": bytes, kind: bytes}
    optimizer_kernel: str | None = None  # how the optimizer updated: torch's "fused", "foreach" or "for-loop", else its class


def effective_batch(settings: dict) -> int:
    """Samples per optimizer step: the micro-batch on each device, times accumulation, times devices."""
    return settings["batch_size"] * settings["grad_accum"] * settings.get("devices", 1)


def total_steps(settings: dict, n_samples: int) -> int:
    if settings.get("epochs"):
        per_step = effective_batch(settings)
        return max(1, math.ceil(settings["epochs"] * n_samples / per_step))
    return settings["steps"]


def adamw_kernel(device: str) -> str:
    """Which of torch's AdamW implementations a cell on `device` updates with: on the CPU the fused kernel (what
    transformers.Trainer's default optimizer, `adamw_torch_fused`, is; torch's own CPU default loops over the parameters
    in Python: a tiny model's full fine-tuning step 12-17 % longer, benchmarks/optimizer_kernel.py), on a GPU torch's
    default there, foreach (what the memory estimate and the trace model: its step holds one more state-sized buffer)."""
    return "fused" if device == "cpu" else "foreach"


def kernel_of(optimizer) -> str:
    """The implementation `optimizer` updates with, as it was built (what a record says ran): torch's "fused",
    "foreach" (asked for, or torch's own pick where every parameter is on a GPU) or "for-loop"; else its class."""
    if not type(optimizer).__module__.startswith("torch.optim"):
        return type(optimizer).__name__
    if optimizer.defaults.get("fused"):
        return "fused"
    foreach = optimizer.defaults.get("foreach")
    if foreach is None:  # torch's default: foreach where the parameters are all on CUDA
        foreach = all(p.is_cuda for group in optimizer.param_groups for p in group["params"])
    return "foreach" if foreach else "for-loop"


def make_optimizer(params, settings: dict, device: str):
    import torch

    name, lr, wd = settings["optimizer"], settings["lr"], settings["weight_decay"]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **{adamw_kernel(device): True})
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if not device.startswith("cuda"):
        raise BenchError(f"optimizer '{name}' (bitsandbytes) needs a CUDA device", fix='use optimizer = "adamw" on the CPU')
    import bitsandbytes as bnb

    cls = {"paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "adamw_8bit": bnb.optim.AdamW8bit}[name]
    return cls(params, lr=lr, weight_decay=wd)


def autocast(settings: dict, device: str):
    import torch

    if settings["precision"] == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if settings["precision"] == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def accumulate(model, task, micro_batches, settings: dict, device: str, *, scaler=None, before_forward=None,
               after_backward=None, ranks=None):
    """The forward and backward passes of one optimizer step, over its micro-batches (the step bench.train runs
    and bench.cost.trace traces). Each loss is divided by grad_accum; the returned sum stays on the device, so reading
    it (one device sync) is the caller's choice, once per step. On several devices (`ranks`) only the last micro-batch's
    backward averages the gradients over them."""
    loss_sum = None
    for i, batch in enumerate(micro_batches):
        if before_forward:
            before_forward()
        with ranks.no_sync(model, last=i == settings["grad_accum"] - 1) if ranks else nullcontext():
            with autocast(settings, device):
                loss = task.loss(model, batch) / settings["grad_accum"]
            (scaler.scale(loss) if scaler else loss).backward()
        # float64, as Python's float sum of per-micro-batch .item() values was: the same numbers, bit for bit
        loss_sum = loss.detach().double() if loss_sum is None else loss_sum + loss.detach().double()
        del loss
        if after_backward:
            after_backward()
    return loss_sum


def update(optimizer, params, settings: dict, *, scaler=None, clip=None) -> None:
    """The end of one optimizer step: unscale (fp16), clip, step, clear the gradients. `clip(params, max_norm)`: how the
    global gradient norm is clipped where it is not torch's over `params` (FSDP: over every device's shard)."""
    import torch

    if scaler:
        scaler.unscale_(optimizer)
    if settings["max_grad_norm"]:
        (clip or torch.nn.utils.clip_grad_norm_)(params, settings["max_grad_norm"])
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _to_device(batch: dict, device: str) -> dict:
    # pinned (page-locked) batches copy to a GPU asynchronously; the copy is ordered before the forward on the stream
    return {k: v.to(device, non_blocking=v.is_pinned()) if hasattr(v, "to") else v for k, v in batch.items()}


TRACKED_STEP = 2  # the steady state: the first step creates the optimizer state, the second runs with it


def train(model, task, batches, settings: dict, *, n_samples: int, device: str,
          probe: MemoryProbe | None = None, on_step=None, track_tensors: bool = False, ranks=None,
          turn_waits: list | None = None, make_ahead: bool = False) -> TrainResult:
    """Train `model` in place for the cell's steps on micro-batches drawn from `batches` (CPU tensors, in the seed's
    order: bench/data/stream.py); raises Diverged or MemoryCapExceeded, lets OOM propagate. The step timer covers the
    forward, backward and update passes; the wait for the step's batches is measured on its own.

    On several devices (`ranks`: bench/ranks.py) `model` is the wrapped one and `batches` this device's share; the
    step's loss is the devices' mean (every device sees the same, so all stop together on divergence) and the sample
    and token counts are the whole cell's.

    Beside other cells on the CPU the timed steps wait for their turn (bench/turns.py; the warm-up steps run beside the
    others' work): `turn_waits` (also result.turn_waits) receives when the turn was asked for and came, even when
    training then raises. With `make_ahead` (batches made in this process, not by DataLoader workers) the batches of
    the first timed steps are made before the turn, so it is held by the steps (`_make_ahead`: where the cell's memory
    figure counts tensors and no memory cap is set)."""
    from transformers import get_scheduler

    steps = total_steps(settings, n_samples)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise BenchError("the method left no trainable parameter", fix="check the method's targets and train_full")
    optimizer = make_optimizer(params, settings, device)
    # transformers' "constant" ignores warm-up; bench's schedule is what follows warm-up, so constant means constant_with_warmup
    schedule = "constant_with_warmup" if settings["schedule"] == "constant" else settings["schedule"]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=settings["warmup_steps"], num_training_steps=steps)
    scaler = _scaler(settings, device, ranks)
    clip = (lambda ps, norm: ranks.clip(model, ps, norm)) if ranks else None
    result = TrainResult(steps=steps, turn_waits=turn_waits if turn_waits is not None else [], optimizer_kernel=kernel_of(optimizer))
    # the first step timed: after the warm-up, or every step where there are no more than the warm-up (all are kept then)
    first_timed = settings["timing_warmup_steps"] + 1 if steps > settings["timing_warmup_steps"] else 1
    timer = StepTimer(device)
    cap = settings.get("memory_cap_mb")

    def check_cap():  # after backward: the activation peak
        if cap and probe is not None and probe.current_above_baseline_mb() > cap:
            raise MemoryCapExceeded(f"{probe.current_above_baseline_mb():.1f} MB above the baseline passed memory_cap_mb = {cap:g}")

    # tensor memory on the CPU: torch's MemTracker over one step, the second (the first with optimizer state), and only
    # when it is left out of the timing: its dispatch hooks slow every op. Garbage collection is paused meanwhile, so
    # the peak does not depend on when the collector runs.
    tracked = TRACKED_STEP if track_tensors and TRACKED_STEP <= settings["timing_warmup_steps"] < steps else None
    tracking, turn = ExitStack(), ExitStack()
    # where the process's RSS is the cell's memory figure (no tensors tracked) or its cap, no batch is held ahead: a
    # neighbour would then change what the cell reports or refuses
    ahead = make_ahead and taking_turns() and tracked is not None and not cap
    made: deque = deque()  # (micro-batches or the error making them raised, seconds) of the steps made ahead
    model.train()
    with turn, tracking:  # tracking closed after the tracked step, or here when training stops early
        for step in range(1, steps + 1):
            if step == first_timed:
                if ahead:
                    made.extend(_make_ahead(batches, settings["grad_accum"], steps - step + 1, result))
                turn.enter_context(timed_turn(result.turn_waits))
            micro, made_s = made.popleft() if made else _make_step(batches, settings["grad_accum"])
            if isinstance(micro, Exception):  # raised at its own step, as alone: the steps before it have trained
                raise micro
            result.data_waits.append(made_s)
            result.longest_input = max([result.longest_input] + [int(b["attention_mask"].sum(1).max()) for b in micro])
            if step > settings["timing_warmup_steps"]:
                for batch in micro:
                    real, padded = task.count_tokens(batch)
                    result.samples += len(batch["input_ids"])
                    result.real_tokens += real
                    result.padded_tokens += padded
            if step == tracked:
                from bench.profile import no_garbage_collection, tensor_tracker

                tracker = tensor_tracker(model, optimizer)
                result.tracked_input = max(int(b["attention_mask"].sum(1).max()) for b in micro)
                tracking.enter_context(tracker)
                tracking.enter_context(no_garbage_collection())
            timer.start()
            on_device = (_to_device(batch, device) for batch in micro)
            loss_sum = accumulate(model, task, on_device, settings, device, scaler=scaler, after_backward=check_cap,
                                  before_forward=tracker.reset_mod_stats if step == tracked else None, ranks=ranks)
            step_loss = (ranks.mean(loss_sum) if ranks else loss_sum).item()
            if not math.isfinite(step_loss) or step_loss > settings["diverge_loss"]:
                raise Diverged(step, step_loss, result.losses + [(step, step_loss)])
            result.lrs.append(optimizer.param_groups[0]["lr"])
            update(optimizer, params, settings, scaler=scaler, clip=clip)
            scheduler.step()
            timer.stop()
            if step == tracked:
                tracking.close()
                result.tracked_step_s = timer.times[-1]
                result.tensor_peak = next(iter(tracker.get_tracker_snapshot("peak").values()), None)
            del micro, on_device
            result.losses.append((step, round(step_loss, 6)))
            if step == 1:
                result.optimizer_state_bytes = _state_bytes(optimizer)
            if on_step:
                on_step(step, steps, step_loss)
    result.step_times = timer.times
    if ranks:
        result.samples, result.real_tokens, result.padded_tokens = ranks.total([result.samples, result.real_tokens,
                                                                               result.padded_tokens])
    return result


AHEAD_BYTES = 32 * 2**20  # batches made before the turn: steps are made until they hold this much (at least one step)


def _make_step(batches, grad_accum: int) -> tuple[list, float]:
    """One optimizer step's micro-batches and the seconds they took to make."""
    started = time.perf_counter()
    micro = [next(batches) for _ in range(grad_accum)]
    return micro, time.perf_counter() - started


def _make_ahead(batches, grad_accum: int, steps: int, result: TrainResult) -> list[tuple[list | Exception, float]]:
    """The micro-batches of up to `steps` timed steps, made before the turn is taken: beside other cells the turn is
    then held by the steps, while making their batches runs beside the others' timed steps (as the untimed work does).
    The turn is taken once, as alone (no neighbour's step between two of this cell's): the steps are made until they
    hold AHEAD_BYTES, and the rest in the turn. Each step's making time is its data wait; an error making one is kept
    at its place (its step raises it). result.ahead_bytes: what they hold beyond the one step a cell alone holds."""
    made, held, first = [], 0, None
    while len(made) < steps and held < AHEAD_BYTES:
        try:
            micro, seconds = _make_step(batches, grad_accum)
        except Exception as exc:  # noqa: BLE001  a bad sample, the end of a finite stream: its step's, not before
            made.append((exc, 0.0))
            break
        made.append((micro, seconds))
        held += _held_bytes(micro, set())
        first = held if first is None else first
    result.ahead_bytes = held - (first or 0)
    return made


def _held_bytes(value, seen: set) -> int:
    """Bytes of the tensors in a batch (dicts, lists, tuples), each storage once: a view keeps its whole storage."""
    if isinstance(value, dict):
        return sum(_held_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_held_bytes(v, seen) for v in value)
    if not hasattr(value, "untyped_storage"):
        return 0
    storage = value.untyped_storage()
    if storage.data_ptr() in seen:
        return 0
    seen.add(storage.data_ptr())
    return storage.nbytes()


def _scaler(settings: dict, device: str, ranks):
    """fp16 on CUDA scales the loss; FSDP's scaler knows its gradients are shards."""
    if settings["precision"] != "fp16" or not device.startswith("cuda"):
        return None
    if ranks and ranks.strategy == "fsdp":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler()
    import torch

    return torch.amp.GradScaler("cuda")


def _state_bytes(optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if hasattr(v, "element_size") and hasattr(v, "numel"):
                total += v.element_size() * v.numel()
    return total
