"""bench.cost.trace: the fake-tensor trace counts what the same steps on real tensors count, and says what it cannot trace."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from bench.cost.params import count_cell
from bench.cost.trace import NotTraceable, _traced_steps, fake_session, trace_cell
from bench.data.loader import load_suite_dataset
from bench.methods import apply_method
from bench.models import get_family
from bench.models.base import model_spec
from bench.suite.load import load_suite
from bench.suite.plan import expand
from bench.tasks import task_for_family
from bench.tasks.base import encode_kwargs, task_settings

SUITE = """
[suite]
name = "trace"

[defaults]
batch_size = 4
grad_accum = 1
max_seq_len = 16

[models.llava]
family = "llava"
preset = "tiny"
weights = "random"

[models.clip]
family = "clip"
preset = "tiny"
weights = "random"

[models.blip2]
family = "blip2"
preset = "tiny"
weights = "random"

[datasets.caption]
format = "scenes"
task = "caption"
train_size = 12
eval_size = 4

[datasets.vqa]
format = "scenes"
task = "vqa"
train_size = 12
eval_size = 4

[datasets.cls]
format = "scenes"
task = "classification"
train_size = 12
eval_size = 4

[methods.full]
kind = "full"

[methods.lora]
kind = "lora"
r = 4

[methods.qlora]
kind = "qlora"
r = 4

[[grid]]
models = ["llava"]
datasets = ["vqa"]
methods = ["full", "lora", "qlora"]

[[grid]]
models = ["blip2"]
datasets = ["caption"]
methods = ["lora"]

[[grid]]
models = ["clip"]
datasets = ["cls"]
methods = ["lora"]
"""


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "suite.toml"
    path.write_text(SUITE)
    suite = load_suite(path)
    return {f"{c.model['name']}/{c.method['name']}": c for c in expand(suite)}


def splits_of(cell):
    return load_suite_dataset(cell.dataset, ".")


def with_train(cell, **train):
    return dataclasses.replace(cell, train={**cell.train, **train})


def real_trace(cell, target_device: str = "cuda") -> float:
    """The same two steps on a real (random-weight) model and real tensors, counted by the same tracker."""
    family = get_family(cell.model["family"])
    task = task_for_family(cell.model["family"])
    loaded = family.build(model_spec(cell.model), seed=0)
    model = apply_method(loaded, cell.method, family, gradient_checkpointing=cell.train["gradient_checkpointing"])
    splits = splits_of(cell)
    encoded = task.encode(loaded, splits.train, task_settings(cell.train, "cpu"), **encode_kwargs(task, splits))
    batch = task.collate(sorted(encoded, key=lambda e: -len(e["input_ids"]))[: cell.train["batch_size"]], loaded)
    peak = _traced_steps(model, task, batch, cell.train, target_device)
    return next(iter(peak.values()))["Total"] / 1024**2


@pytest.mark.parametrize("name", ["llava/full", "llava/lora", "blip2/lora", "clip/lora"])
def test_fake_trace_counts_what_real_tensors_count(cells, name):
    cell = cells[name]
    fake = trace_cell(cell, splits_of(cell))
    # equal, but for what reads values: a real run drops the 4-D attention mask of a batch without padding
    assert fake["peak_mb"] == pytest.approx(real_trace(cell), rel=0.01, abs=0.006)
    assert fake["peak_mb"] >= sum(fake["by_kind_mb"].values()) - 0.05  # the kinds add up to the peak
    assert fake["by_kind_mb"]["param"] > 0


def test_a_cpu_suite_traces_the_fused_adamw_its_cells_update_with(cells):
    """On fake tensors too: what real tensors count with the fused kernel, and no foreach step buffer."""
    cell = cells["llava/full"]
    cpu = trace_cell(cell, splits_of(cell), target_device="cpu")
    assert cpu["optimizer_kernel"] == "fused" and trace_cell(cell, splits_of(cell))["optimizer_kernel"] == "foreach"
    assert cpu["peak_mb"] == pytest.approx(real_trace(cell, "cpu"), rel=0.01, abs=0.006)


@pytest.mark.parametrize("name", ["llava/full", "blip2/lora"])
def test_trace_sees_real_shapes(cells, name):
    """The traced model has the meta-device count's parameters (OPT's tied lm_head stays tied), the peak holds their
    bytes, and the batch is batch_size of the longest samples."""
    cell = cells[name]
    out = trace_cell(cell, splits_of(cell))
    assert out["params"]["total"] == count_cell(cell, {})["total"]
    assert out["batch"]["pixel_values"][0] == cell.train["batch_size"]
    assert out["params"]["total"] * 4 / 1024**2 == pytest.approx(out["by_kind_mb"]["param"], rel=0.01)
    assert 0 < out["text_len"] <= cell.train["max_seq_len"]


def test_accumulation_keeps_gradients_alive_through_the_next_micro_batch(cells):
    """With grad_accum = 2 the second forward runs while the first micro-batch's gradients are held."""
    one = trace_cell(cells["llava/full"], splits_of(cells["llava/full"]))
    two = trace_cell(with_train(cells["llava/full"], grad_accum=2), splits_of(cells["llava/full"]))
    grads_mb = one["params"]["trainable"] * 4 / 1024**2
    assert two["peak_mb"] > one["peak_mb"] + 0.5 * grads_mb


def test_bf16_halves_the_frozen_weights(cells):
    cell = cells["llava/lora"]
    fp32 = trace_cell(cell, splits_of(cell))
    bf16 = trace_cell(with_train(cell, precision="bf16"), splits_of(cell))
    assert bf16["by_kind_mb"]["param"] == pytest.approx(fp32["by_kind_mb"]["param"] / 2, rel=0.1)


def test_what_cannot_be_traced_says_why(cells):
    with pytest.raises(NotTraceable, match="bitsandbytes quantises real weight data"):
        trace_cell(cells["llava/qlora"], splits_of(cells["llava/qlora"]))
    cell = with_train(cells["llava/lora"], optimizer="paged_adamw_8bit")
    with pytest.raises(NotTraceable, match="bitsandbytes"):
        trace_cell(cell, splits_of(cell))


def test_fake_session_puts_torch_back():
    swap = torch.utils.swap_tensors
    before = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    with fake_session() as mode:
        with mode:
            layer = torch.nn.Linear(4, 4).to(torch.bfloat16)  # the swap torch refuses without the session
        assert layer.weight.dtype == torch.bfloat16
        assert os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] == "1"
    assert torch.utils.swap_tensors is swap
    assert os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK") == before
