"""Forward-pass overhead of PEFT adapters and of 4-bit weights, measured with pytest-benchmark.

What it measures (CPU, float32, batch 32 through a stack of four Linear(256, 256)):
  group "adapter-overhead": base | LoRA unmerged | LoRA merged (merge_and_unload) | IA3
  group "linear4bit-cpu":   torch nn.Linear | bitsandbytes Linear4bit (NF4, dequantised on the fly,
                            float32 compute: the path QLoRA training takes)
Each benchmark also checks behaviour (merged == unmerged within 1e-4, IA3 starts as the identity,
Linear4bit equals a float Linear over its dequantised weight), so a fast wrong path cannot pass.
Each benchmark makes a fixed 40 rounds x 5 calls (see `run`), so the file takes a few seconds
inside the normal test run, also on a busy machine.

Save a baseline (written to .benchmarks/<machine>/0001_adapters.json):

    .venv/bin/python -m pytest tests/benchmarks/test_adapter_overhead.py --benchmark-only --benchmark-save=adapters

Compare a later run against the newest saved one and fail on a >25 % slower minimum:

    .venv/bin/python -m pytest tests/benchmarks/test_adapter_overhead.py --benchmark-only \\
        --benchmark-compare --benchmark-compare-fail=min:25%

(`--benchmark-compare=0001` picks a specific saved run; `min` is the least noisy statistic on a
shared machine.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

WIDTH, DEPTH, BATCH = 256, 4, 32
# one_thread (conftest.py): single-threaded timings are the reproducible ones on a shared CPU
pytestmark = [pytest.mark.benchmark(group="adapter-overhead"), pytest.mark.usefixtures("one_thread")]


def run(benchmark, model, x):
    """A fixed number of calls (pedantic), not pytest-benchmark's max_time loop: that loop sizes its
    rounds from the fastest calibration call (max_time / ~50 us = thousands of rounds), which on a
    busy shared CPU stretches one 0.2 s benchmark to 8 s. 40 rounds x 5 calls stays bounded."""
    return benchmark.pedantic(forward, args=(model, x), rounds=40, iterations=5, warmup_rounds=2)


class Stack(nn.Module):
    """Linear layers with ReLU between them: the shape of an MLP block, the layers PEFT adapts."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < DEPTH - 1:
                x = torch.relu(x)
        return x


TARGETS = r"layers\.\d+"  # a regex is matched against the full module name


def forward(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def x():
    return torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return Stack().eval()


@pytest.fixture(scope="module")
def lora(base):
    from peft import LoraConfig, get_peft_model

    # random B (init_lora_weights=False) so the adapter changes the output and the merge has work to do
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
    torch.manual_seed(1)
    return get_peft_model(copy.deepcopy(base), config).eval()


def test_base_forward(benchmark, base, x):
    out = run(benchmark, base, x)
    assert out.shape == (BATCH, WIDTH)


def test_lora_unmerged_forward(benchmark, base, lora, x):
    out = run(benchmark, lora, x)
    assert lora.get_nb_trainable_parameters()[0] == DEPTH * 2 * 8 * WIDTH
    assert not torch.allclose(out, forward(base, x), atol=1e-3)  # the adapter is really in the path


def test_lora_merged_forward(benchmark, lora, x):
    unmerged = forward(lora, x)
    merged = copy.deepcopy(lora).merge_and_unload()
    assert all(type(m) is nn.Linear for m in merged.layers)  # plain layers again: no adapter overhead left
    out = run(benchmark, merged, x)
    torch.testing.assert_close(out, unmerged, atol=1e-4, rtol=0)


def test_ia3_forward(benchmark, base, x):
    from peft import IA3Config, get_peft_model

    config = IA3Config(target_modules=TARGETS, feedforward_modules=[])
    ia3 = get_peft_model(copy.deepcopy(base), config).eval()
    out = run(benchmark, ia3, x)
    assert ia3.get_nb_trainable_parameters()[0] == DEPTH * WIDTH  # one scaling vector per layer
    torch.testing.assert_close(out, forward(base, x), atol=1e-6, rtol=0)  # IA3 vectors start at 1


@pytest.fixture(scope="module")
def float_linear():
    torch.manual_seed(2)
    return nn.Linear(WIDTH, WIDTH).eval()


@pytest.fixture(scope="module")
def linear4bit(float_linear):
    bnb = pytest.importorskip("bitsandbytes")
    q = bnb.nn.Linear4bit(WIDTH, WIDTH, bias=True, compute_dtype=torch.float32, quant_type="nf4")
    q.load_state_dict(float_linear.state_dict())
    # moving the module is what quantises Params4bit, also to the CPU. Kept in train mode: in eval
    # mode without grad, on a CPU with AVX512-BF16, bitsandbytes 0.50 repacks the weight in place at
    # the first forward and computes in bf16 (outputs ~1e-2 off float32), which is neither the path
    # QLoRA training takes nor the float32 compute this benchmark compares against.
    return q.to("cpu").train()


@pytest.mark.benchmark(group="linear4bit-cpu")
def test_float_linear_forward(benchmark, float_linear, x):
    out = run(benchmark, float_linear, x)
    assert out.shape == (BATCH, WIDTH)


@pytest.mark.benchmark(group="linear4bit-cpu")
def test_linear4bit_forward(benchmark, linear4bit, float_linear, x):
    import bitsandbytes as bnb

    assert linear4bit.weight.dtype == torch.uint8 and linear4bit.weight.numel() == WIDTH * WIDTH // 2  # 2 weights a byte
    dequantised = bnb.functional.dequantize_4bit(linear4bit.weight.data, linear4bit.weight.quant_state)
    out = run(benchmark, linear4bit, x)
    torch.testing.assert_close(out, nn.functional.linear(x, dequantised, linear4bit.bias), atol=1e-4, rtol=1e-4)
    # NF4 is lossy but close: the error is a small fraction of the signal
    reference = forward(float_linear, x)
    assert (out - reference).abs().mean() < 0.15 * reference.abs().mean()
