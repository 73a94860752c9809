"""Shared fixtures. Most tests run in this one process: importing torch + peft + transformers costs ~10 s."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_RECORD = json.loads((REPO / "tests" / "record-fixture.json").read_text())

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _private_tmpdir(tmp_path_factory, monkeypatch):
    """Files bench puts in the temp folder (unsaved records, error logs) go to a folder of this test
    session, never the machine's /tmp: fault-injection tests would otherwise leave them behind."""
    folder = tmp_path_factory.getbasetemp() / "tmpdir"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr("tempfile.tempdir", str(folder))


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


def run_cli(argv, cwd: Path | None = None) -> tuple[int, str, str]:
    """(exit code, stderr, stdout) of `bench ARGV` run in this process (from `cwd` when given)."""
    from bench.cli import main

    err, out = io.StringIO(), io.StringIO()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main([str(a) for a in argv])
    finally:
        os.chdir(old)
    return code, err.getvalue(), out.getvalue()


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


# ---------------------------------------------------------------- records (tests of compare, gate, stats, plots, report)


def record(changes: dict | None = None, **top) -> dict:
    """The documented example record with dotted-path overrides ({"cost.peak_memory_mb": 50})."""
    r = copy.deepcopy(EXAMPLE_RECORD)
    for dotted, value in {**(changes or {}), **top}.items():
        *parents, last = dotted.split(".")
        node = r
        for p in parents:
            node = node[p]
        node[last] = value
    return r


# ---------------------------------------------------------------- tiny vision-language models (tests/models, tests/tasks)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module, restored afterwards: `pytestmark = pytest.mark.usefixtures("one_thread")`.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core machine a second OpenMP
    thread that is descheduled stalls every op (measured: 30 ms -> 3 s per BLIP-2 tiny step; a 0.2 ms
    benchmark forward swings to 50 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def noise_image(seed: int, height: int, width: int):
    """A random RGB PIL image of an odd size, so processors must resize it."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def solid(rgb):
    """A one-colour 40x30 RGB PIL image."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.full((30, 40, 3), rgb, dtype=np.uint8))


def lm_batch(loaded, images, texts) -> dict:
    """A processor batch whose labels are the input ids with padding and image tokens masked (-100)."""
    enc = loaded.processor(images=images, text=texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    labels[enc["input_ids"] == loaded.model.config.image_token_id] = -100
    return {**enc, "labels": labels}


def row(page: str, *cells: str) -> list[str]:
    """The cells of a Markdown page's first table row starting with `cells` (pipes inside a cell stay escaped)."""
    prefix = "| " + " | ".join(cells) + " |"
    line = next(line for line in page.splitlines() if line.startswith(prefix))
    return [c.strip() for c in line.strip("|").split(" | ")]


def section(page: str, title: str) -> str:
    """The text of a Markdown page's `## title` section."""
    return page.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def raises_at(fn, *parts):
    """The DataError `fn` raises, its text holding every one of `parts` (file, record, field), with a file and a fix."""
    from bench.errors import DataError

    with pytest.raises(DataError) as info:
        fn()
    text = str(info.value)
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"
    assert info.value.file and info.value.fix
    return info.value


HAS_DATASETS = importlib.util.find_spec("datasets") is not None  # Hugging Face `datasets`: an optional extra
needs_datasets = pytest.mark.skipif(not HAS_DATASETS, reason="`datasets` is not installed")


def png(path: Path, color=(255, 0, 0), size=(6, 5)) -> Path:
    """A small PNG image written at `path` (its folder made)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path
