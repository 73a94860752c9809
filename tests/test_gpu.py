"""GPU-only paths: CUDA memory counters, bf16, QLoRA with paged AdamW. Skipped cleanly without CUDA
(the `gpu` marker; see conftest.py). Run on a GPU machine with: python -m pytest -m gpu tests/test_gpu.py"""

from __future__ import annotations

import pytest
from conftest import MINI_SUITE

from bench.records import read_records
from bench.run.runner import Runner
from bench.suite.load import load_suite
from bench.suite.plan import expand

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


def test_a_fake_trace_predicts_cuda_allocated_memory(write_suite):
    """The CPU trace (bench.cost.trace) against the same two steps on CUDA, counted by the caching allocator."""
    import torch

    from bench.cost.trace import trace_cell
    from bench.data.loader import load_suite_dataset
    from bench.methods import apply_method
    from bench.models import get_family
    from bench.models.base import model_spec
    from bench.tasks import task_for_family
    from bench.tasks.base import encode_kwargs, task_settings
    from bench.train import autocast

    cell = next(c for c in expand(load_suite(write_suite(GPU_SUITE))) if c.method["name"] == "full")
    splits = load_suite_dataset(cell.dataset, ".")
    traced = trace_cell(cell, splits)

    family, task = get_family("clip"), task_for_family("clip")
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loaded = family.build(model_spec(cell.model), device="cuda", dtype=torch.bfloat16)
    model = apply_method(loaded, cell.method, family, gradient_checkpointing=True)
    encoded = task.encode(loaded, splits.train, task_settings(cell.train, "cuda"), **encode_kwargs(task, splits))
    batch = task.collate(sorted(encoded, key=lambda e: -len(e["input_ids"]))[: cell.train["batch_size"]], loaded)
    batch = {k: v.cuda() for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=True)
    for _ in range(2):
        with autocast(cell.train, "cuda"):
            task.loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    measured = (torch.cuda.max_memory_allocated() - base) / 1024**2
    assert traced["peak_mb"] == pytest.approx(measured, rel=0.15)


def _two_gpus() -> bool:
    import torch

    return torch.cuda.device_count() >= 2


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_cell_on_two_gpus_trains_as_one_gpu_accumulating_over_their_batches(write_suite, tmp_path, strategy):
    """NCCL through the same accelerate path the CPU test runs on gloo; FSDP gathers the shards to evaluate."""
    if not _two_gpus():
        pytest.skip("needs two CUDA devices")
    suite = MINI_SUITE.replace('name = "mini"', 'name = "mini"\ndevice = "cuda"').replace(
        "steps = 2", "steps = 4").replace('weights = "random"', "").replace(
        'methods = ["lora", "full"]', 'methods = ["full-2", "full-accum"]') + f"""
[methods.full-2]
kind = "full"
train = {{ devices = 2, distributed = "{strategy}" }}

[methods.full-accum]
kind = "full"
train = {{ grad_accum = 2 }}
"""
    runner = Runner(load_suite(write_suite(suite)), results_dir=tmp_path / "r", reports_dir=tmp_path / "p", show_progress=False)
    assert runner.run().statuses == {"ok": 2}, [r["message"] for r in read_records(runner.results)]
    by = {r["method"]["name"]: r for r in read_records(runner.results)}
    two, one = by["full-2"], by["full-accum"]
    assert two["cost"]["devices"] == 2 and len(two["cost"]["peak_memory_per_device_mb"]) == 2
    # TF32 and NCCL's reduction order move the last digits: close, not equal
    assert max(abs(a - b) for (_, a), (_, b) in zip(two["loss_curve"], one["loss_curve"])) <= 1e-2
    assert two["quality"]["tuned"] is not None
