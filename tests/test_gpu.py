"""GPU-only paths: CUDA memory counters, bf16, QLoRA with paged AdamW. Skipped cleanly without CUDA
(the `gpu` marker; see conftest.py). Run on a GPU machine with: python -m pytest -m gpu tests/test_gpu.py"""

from __future__ import annotations

import pytest

from bench.plan import expand
from bench.records import read_records
from bench.runner import Runner
from bench.suite import load_suite
from conftest import MINI_SUITE

pytestmark = pytest.mark.gpu

GPU_SUITE = MINI_SUITE.replace('name = "mini"', 'name = "mini"\ndevice = "cuda"').replace(
    "steps = 2", 'steps = 6\nprecision = "bf16"\ngradient_checkpointing = true').replace(
    'methods = ["lora", "full"]', 'methods = ["lora", "full", "qlora"]') + """
[methods.qlora]
kind = "qlora"
r = 4
train = { optimizer = "paged_adamw_8bit" }
"""


def test_cuda_memory_probe_sees_an_allocation():
    import torch

    from bench.profile import MemoryProbe

    probe = MemoryProbe("cuda")
    probe.start_region()
    x = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")  # 256 MB
    peak = probe.peak()
    del x
    assert peak["memory_kind"] == "cuda_allocated"
    assert 250 <= peak["peak_memory_mb"] <= 300
    assert peak["nvml_used_mb"] is not None and peak["peak_reserved_mb"] >= peak["peak_memory_mb"]


def test_bf16_checkpointing_and_qlora_cells_run_on_cuda(write_suite, tmp_path):
    suite = load_suite(write_suite(GPU_SUITE, "gpu.toml"))
    assert len(expand(suite)) == 3
    runner = Runner(suite, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports", show_progress=False)
    runner.run()
    records = {r["method"]["name"]: r for r in read_records(runner.results)}
    assert all(r["status"] == "ok" for r in records.values()), {k: r["message"] for k, r in records.items()}
    for r in records.values():
        assert r["cost"]["memory_kind"] == "cuda_allocated" and r["env"]["device_count"] >= 1
        assert r["cost"]["peak_reserved_mb"] >= r["cost"]["peak_memory_mb"] > 0
    assert records["qlora"]["cost"]["breakdown_mb"]["weights"] < records["full"]["cost"]["breakdown_mb"]["weights"]
