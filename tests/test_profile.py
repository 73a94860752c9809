"""bench.profile: memory probes, step statistics and the environment fingerprint."""

from __future__ import annotations

import re
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from bench.profile import MemoryProbe, StepTimer, environment, git_state, step_stats

MB = 1024 * 1024


# ---------------------------------------------------------------- memory on the CPU


def test_cpu_probe_sees_a_200_mb_allocation_within_20_percent():
    probe = MemoryProbe("cpu")
    assert probe.kind == "cpu_rss_hwm" and probe.baseline_mb > 0
    probe.start_region()  # resets VmHWM to the current RSS: earlier tests' peaks do not count
    block = np.ones(200 * MB // 8)  # 200 MB of float64, every page touched
    held = probe.current_above_baseline_mb()
    del block
    peak = probe.peak()
    assert peak["memory_kind"] == "cpu_rss_hwm" and peak["peak_reserved_mb"] is None and peak["nvml_used_mb"] is None
    assert 160 <= peak["peak_memory_mb"] <= 240, peak
    assert 160 <= held <= 240, held
    assert probe.current_above_baseline_mb() < held - 150  # freed: RSS drops, the high-water mark stays


def test_cpu_probe_regions_are_independent():
    probe = MemoryProbe("cpu")
    probe.start_region()
    big = np.ones(150 * MB // 8)
    del big
    probe.start_region()  # a new region forgets the 150 MB peak
    small = np.ones(20 * MB // 8)
    peak = probe.peak()["peak_memory_mb"]
    del small
    assert peak < 100, peak


# ---------------------------------------------------------------- time


def test_step_stats_excludes_warmup_and_reports_median_and_iqr():
    times = [9.0, 7.0, 5.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # three slow warm-up steps, then 1..5
    stats = step_stats(times, warmup=3)
    # median of 1..5 is 3; quartiles by statistics.quantiles' default "exclusive" method: 1.5 and 4.5
    assert stats == {"step_s_median": 3.0, "step_s_iqr": 3.0, "steps_timed": 5, "warmup_steps_excluded": 3}


def test_step_stats_with_few_steps_uses_the_range_and_keeps_all_when_warmup_covers_them():
    assert step_stats([5.0, 1.0, 2.0, 4.0], warmup=1) == {
        "step_s_median": 2.0, "step_s_iqr": 3.0, "steps_timed": 3, "warmup_steps_excluded": 1}  # < 4 timed: max - min
    assert step_stats([2.0, 4.0], warmup=3) == {
        "step_s_median": 3.0, "step_s_iqr": 2.0, "steps_timed": 2, "warmup_steps_excluded": 0}
    assert step_stats([], warmup=3) == {"step_s_median": None, "step_s_iqr": None, "steps_timed": 0,
                                        "warmup_steps_excluded": 0}


def test_step_timer_records_one_time_per_step():
    timer = StepTimer("cpu")
    for _ in range(3):
        timer.start()
        time.sleep(0.01)
        assert timer.stop() >= 0.009
    assert len(timer.times) == 3 and all(0.009 <= t < 1.0 for t in timer.times)


# ---------------------------------------------------------------- environment


def test_environment_on_the_cpu_names_the_versions_and_the_checkout():
    env = environment("cpu")
    for key in ("device_name", "device_count", "cpu", "torch_threads", "cuda", "python", "torch", "transformers", "peft",
                "bitsandbytes", "accelerate", "open_clip", "bench", "git_sha", "git_dirty", "hostname", "platform"):
        assert key in env, key
    assert (env["device_name"], env["device_count"], env["cuda"]) == ("cpu", 0, None)
    assert env["transformers"] == metadata.version("transformers") and env["peft"] == metadata.version("peft")
    assert env["open_clip"] == metadata.version("open_clip_torch")
    import torch

    assert env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    sha, dirty = git_state(Path(__file__).parent)
    assert (env["git_sha"], env["git_dirty"]) == (sha, dirty)
    if sha is not None:
        assert re.fullmatch(r"[0-9a-f]{12}", sha) and isinstance(dirty, bool)


def test_git_state_outside_a_repository_is_unknown(tmp_path):
    assert git_state(tmp_path) == (None, None)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.gpu
def test_cuda_probe_sees_a_256_mb_tensor():
    import torch

    torch.cuda.empty_cache()  # nothing cached but unused: the reserved figure must grow by the tensor too
    probe = MemoryProbe("cuda")
    assert probe.kind == "cuda_allocated" and probe.device_used_baseline_mb is not None
    probe.start_region()
    block = torch.ones(256 * MB // 4, device="cuda")  # 256 MB of float32
    peak = probe.peak()
    del block
    assert peak["memory_kind"] == "cuda_allocated"
    assert 256 * 0.98 <= peak["peak_memory_mb"] <= 256 * 1.05, peak
    # every figure is above the probe's baseline (the design's rule), reserved and device-level used included
    assert 256 * 0.98 <= peak["peak_reserved_mb"] <= 256 * 1.1, peak
    assert peak["nvml_used_mb"] >= 256 * 0.98, peak


@pytest.mark.gpu
def test_cuda_timer_waits_for_the_kernels():
    import torch

    a = torch.randn(4096, 4096, device="cuda")
    timer = StepTimer("cuda")
    timer.start()
    for _ in range(20):
        a = a @ a / 64
    elapsed = timer.stop()
    assert elapsed > 1e-4  # with synchronisation the clock sees the matmuls, not just their launch


@pytest.mark.gpu
def test_environment_on_cuda_names_the_device():
    import torch

    env = environment("cuda")
    assert env["device_name"] == torch.cuda.get_device_name(0) and env["device_count"] >= 1
    assert env["cuda"] == torch.version.cuda


def test_the_environment_holds_plain_values_that_read_back_without_torch():
    """A record's environment is unpickled by the runner, which must not import torch to read it."""
    from bench.profile import environment

    env = environment("cpu")
    assert all(type(v) in (str, int, float, bool, type(None)) for v in env.values()), {k: type(v) for k, v in env.items()}
