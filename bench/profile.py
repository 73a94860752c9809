"""Memory and time probes, and the environment fingerprint stored with every record.

Memory is measured above a baseline taken before the model is built:
- CUDA: peak allocated and reserved from the caching allocator's counters (reset at the start of
  the measured region) and device-level used memory (cudaMemGetInfo, what NVML reports).
- CPU: the process high-water mark. Writing 5 to /proc/self/clear_refs resets VmHWM to the current
  RSS, so the peak of one region can be read from VmHWM afterwards.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

MB = 1024 * 1024


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Baseline first (before the model exists), then `start_region()` / `peak()` around the measured work."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.kind = "cuda_allocated" if self.cuda else "cpu_rss_hwm"
        self.baseline_mb = self._current_mb()
        self.device_used_baseline_mb = self._device_used_mb()
        self.reserved_baseline_mb = self._reserved_mb()

    def _reserved_mb(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return torch.cuda.memory_reserved() / MB

    def _current_mb(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.memory_allocated() / MB
        rss = _proc_status_kb("VmRSS")
        return (rss or 0) / 1024

    def _device_used_mb(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / MB

    def start_region(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_hwm()

    def current_above_baseline_mb(self) -> float:
        return self._current_mb() - self.baseline_mb

    def peak(self) -> dict:
        """Peak figures in MB above the baseline since start_region()."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            used = self._device_used_mb()
            return {
                "memory_kind": self.kind,
                "peak_memory_mb": round(torch.cuda.max_memory_allocated() / MB - self.baseline_mb, 2),
                "peak_reserved_mb": round(torch.cuda.max_memory_reserved() / MB - self.reserved_baseline_mb, 2),
                "nvml_used_mb": round(used - self.device_used_baseline_mb, 2) if used is not None else None,
            }
        hwm = _proc_status_kb("VmHWM")
        return {
            "memory_kind": self.kind,
            "peak_memory_mb": round((hwm or 0) / 1024 - self.baseline_mb, 2),
            "peak_reserved_mb": None,
            "nvml_used_mb": None,
        }


class StepTimer:
    """Per-step wall times with the device synchronised before each clock read."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.times: list[float] = []
        self._t0 = 0.0

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def start(self):
        self._sync()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        self._sync()
        dt = time.perf_counter() - self._t0
        self.times.append(dt)
        return dt


def step_stats(times: list[float], warmup: int) -> dict:
    """Median and inter-quartile range of step times, warm-up steps excluded (all kept if too few)."""
    timed = times[warmup:] if len(times) > warmup else times
    if not timed:
        return {"step_s_median": None, "step_s_iqr": None, "steps_timed": 0, "warmup_steps_excluded": 0}
    if len(timed) >= 4:
        q = statistics.quantiles(timed, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = max(timed) - min(timed)
    return {
        "step_s_median": round(statistics.median(timed), 6),
        "step_s_iqr": round(iqr, 6),
        "steps_timed": len(timed),
        "warmup_steps_excluded": len(times) - len(timed),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_state(cwd: str | Path | None = None) -> tuple[str | None, bool | None]:
    try:
        # GIT_OPTIONAL_LOCKS=0: `git status` must not take .git/index.lock in the user's checkout (a read, not a write)
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, env=env)
        if sha.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
                               timeout=5, env=env)
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def software() -> dict:
    """Versions, git state of the bench checkout and host: the part of the fingerprint that needs no device."""
    sha, dirty = git_state(Path(__file__).resolve().parent)
    return {
        "cpu": f"{platform.machine()} {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "bitsandbytes": _version("bitsandbytes"),
        "accelerate": _version("accelerate"),
        "open_clip": _version("open_clip_torch"),
        "bench": _version("bench"),
        "git_sha": sha,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }


def listed_gpus(timeout_s: float = 5.0) -> list[str]:
    """The GPU indices nvidia-smi lists (without initialising CUDA in this process); none without a driver, or when its
    output is not a list of indices (an error message printed with exit status 0)."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return []
    lines = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    return lines if listed.returncode == 0 and lines and all(line.isdigit() for line in lines) else []


def visible_gpus(listed: list[str] | None = None) -> list[str]:
    """The GPUs cells may use, as CUDA_VISIBLE_DEVICES names them: its entries when it is set (read as CUDA reads them:
    up to the first that is not an index or a GPU-/MIG- UUID), else what nvidia-smi lists (`listed`, when the caller
    has already asked it)."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is None:
        return listed_gpus() if listed is None else listed
    ids = []
    for entry in named.split(","):
        entry = entry.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break  # "-1", "", "abc": CUDA sees no device from here on
        ids.append(entry)
    return ids


def environment(device: str) -> dict:
    """The fingerprint of where a number was measured: the device, then software()."""
    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else 0,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        **software(),
        # the imported build (e.g. +cu132), not only the distribution's version; a plain str: unpickling a TorchVersion
        # would import torch in the runner, which reads the result (1.5 s and 500 MB, once per run)
        "torch": str(torch.__version__),
    }


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, for MFU.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.0}


def device_peak_tflops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, peak in BF16_PEAK_TFLOPS.items():  # most specific names first
        if key in device_name:
            return peak
    return None


def model_flops_per_token(total_params: int, trainable_params: int, checkpointing: bool) -> float:
    """Forward 2N, backward 2N for activation gradients + 2N_trainable for weight gradients (frozen weights
    need none), and one more forward when activations are recomputed."""
    return (2 + 2 + (2 if checkpointing else 0)) * total_params + 2 * trainable_params


def tensor_kinds(snapshot: dict) -> dict[str, int]:
    """A MemTracker snapshot of one device as {kind: bytes} with plain lower-case kinds ("param", "act", "opt", ...)."""
    return {str(k).split(".")[-1].lower(): v for k, v in snapshot.items() if str(k) != "Total"}


def tensor_tracker(model, optimizer=None):
    """torch's MemTracker over a model and its optimizer (if any): live tensor bytes by kind (parameters, gradients, optimizer
    state, activations, temporaries), with the two changes a PEFT cell at full size needs (see _PeakTracker). Used by
    the fake-tensor trace (bench/cost/trace.py) and, on real tensors, by training and serving on the CPU (bench/train.py,
    bench/run/serving.py)."""
    from collections import OrderedDict

    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker
    from torch.utils.hooks import RemovableHandle

    class _PeakTracker(MemTracker):
        """- Only the device-wide peak is kept: MemTracker also keeps a peak per module, re-scanning every tracked
             module after every op (a 7B model: 3 minutes instead of 10 seconds); nothing here reads them.
           - Frozen parameters get no gradient hook: MemTracker (torch 2.15) hooks every parameter a module owns
             and fails on frozen ones ("cannot register a hook on a tensor that doesn't require gradient"); a
             no-op handle entered for each makes it skip them (and for one swapped in later: see _pre_fw_hook).
           - A root module may be called again (generation; DPO runs the policy, then the reference, before one
             backward): see _pre_fw_hook. Backward then meets modules of the first call whose stats were reset:
             they are skipped (the backward hooks keep per-module stats only; the device-wide peak counts on)."""

        def _pre_fw_hook(self, module, inputs) -> None:
            # a root module called again outside backward is the next iteration (generation calls forward once per
            # token): its module stats start again, the device-wide peak stays
            name = self._mod_tracker.get_known_fqn(module)
            if module in self.memory_tracking and not self._mod_tracker.is_bw and \
                    set(self._mod_tracker.parents) - {name} == {"Global"}:
                self.reset_mod_stats()
            if module not in self.memory_tracking:  # its parameters are about to be hooked: a frozen one may be new
                skip_frozen(self, module)  # (PEFT's DoRA over a 4-bit layer on the CPU replaces its weight every call)
            super()._pre_fw_hook(module, inputs)

        def _pre_bw_hook(self, module, args) -> None:
            if module is None or module in self.memory_tracking:
                super()._pre_bw_hook(module, args)

        def _post_bw_hook(self, module, args) -> None:
            if module is None or module in self.memory_tracking:
                super()._post_bw_hook(module, args)

        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

    no_hooks: OrderedDict = OrderedDict()

    def skip_frozen(tracker, module) -> None:
        for p in module.parameters():
            if not p.requires_grad and p not in tracker._param_to_grad_hook_handles:
                tracker._param_to_grad_hook_handles[p] = (RemovableHandle(no_hooks), RemovableHandle(no_hooks))

    tracker = _PeakTracker()
    tracker.track_external(*(x for x in (model, optimizer) if x is not None))
    skip_frozen(tracker, model)
    return tracker


@contextmanager
def no_garbage_collection(collect: bool = True):
    """Tensors caught in reference cycles die when Python's collector happens to run, which differs between a
    fake and a real run (and from run to run): with it paused the peak is deterministic, equal for fake and real
    tensors, and an upper bound of what a run holds."""
    import gc

    if collect:  # a peak compared between runs starts from no garbage
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
