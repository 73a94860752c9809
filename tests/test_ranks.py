"""FSDP's units for a model (bench/ranks.py): accelerate runs FSDP on GPUs only, so the units it would be given are
checked here on the CPU through torch's own FSDP on a one-process gloo group: a bf16 model with fp32 adapters, full
fine-tuning and QLoRA (4-bit weights stored as bf16, as bench builds them for FSDP) wrap, train a step and keep every
unit of one dtype."""

from __future__ import annotations

import pytest
import torch
from conftest import solid

from bench.data.sample import Sample
from bench.methods import apply_method, quantization_config
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.ranks import fsdp_wrap_policy
from bench.tasks import instruct
from bench.tasks.base import TaskSettings


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("fsdp") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


METHOD = {"name": "m", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None, "freeze": [],
          "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}


@pytest.mark.parametrize("kind", ["lora", "full", "qlora"])
def test_a_bf16_model_wraps_in_units_of_one_dtype_and_trains_a_step(group, kind):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy

    family = get_family("llava")
    method = {**METHOD, "kind": kind}
    loaded = family.build(ModelSpec(name="l", family="llava", preset="tiny", weights="random"), device="cpu",
                          dtype=torch.bfloat16, quantization=quantization_config(method, "cpu", sharded=True))
    model = apply_method(loaded, method, family, sharded=True)
    wrapped = FSDP(model, auto_wrap_policy=fsdp_wrap_policy(model), use_orig_params=True,
                   sharding_strategy=ShardingStrategy.FULL_SHARD, device_id=torch.device("cpu"))
    units = FSDP.fsdp_modules(wrapped)
    assert len(units) > 3  # the blocks, and under PEFT the adapters' layers, each a unit of its own
    settings = TaskSettings(max_seq_len=32, eval_batch_size=2, max_new_tokens=2)
    sample = Sample(image=solid((255, 0, 0)), question="what color is it?", answers=("red",))
    batch = instruct.collate(instruct.encode(loaded, [sample, sample], settings), loaded)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = instruct.loss(wrapped, batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for p in wrapped.parameters() if p.requires_grad)


def test_without_peft_the_units_are_the_models_own_blocks_that_it_holds():
    family = get_family("llava")
    loaded = family.build(ModelSpec(name="l", family="llava", preset="tiny", weights="random"), device="cpu")
    policy = fsdp_wrap_policy(loaded.model)
    blocks = {type(m).__name__ for m in loaded.model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)}
    assert blocks == {"LlamaDecoderLayer", "CLIPEncoderLayer", "CLIPVisionEmbeddings"}  # named, held; CLIPTextEmbeddings: absent
