"""Shared fixtures. Most tests run in this one process: importing torch + peft + transformers costs ~10 s."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly on machines without CUDA."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


MINI_SUITE = """
[suite]
name = "mini"

[defaults]
steps = 2
batch_size = 4
max_seq_len = 16
eval_batch_size = 16
max_new_tokens = 4
timing_warmup_steps = 0

[models.clip]
family = "clip"
preset = "tiny"
weights = "random"

[datasets.cls]
format = "scenes"
task = "classification"
split = "target"
train_size = 16
eval_size = 8

[methods.lora]
kind = "lora"
r = 4

[methods.full]
kind = "full"

[[grid]]
models = ["clip"]
datasets = ["cls"]
methods = ["lora", "full"]
"""


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite file (dedented TOML) into a temp dir and return its path."""

    def write(text: str, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def mini_suite(write_suite):
    return write_suite(MINI_SUITE, "mini.toml")
