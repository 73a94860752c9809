"""The full VLM presets build, on the meta device, the published architectures: class and exact parameter count."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys

import pytest

from bench.models.vlm_presets import FULL_CHECKPOINTS, FULL_PRESETS, PUBLISHED_PARAMETERS

CLASSES = {
    "smolvlm": "Idefics3ForConditionalGeneration",
    "qwen2-vl-2b": "Qwen2VLForConditionalGeneration",
    "qwen2-vl-7b": "Qwen2VLForConditionalGeneration",
}


@functools.cache
def build_on_meta(name: str):
    """Once per preset per session: parameters only, no storage, a second or two each."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    kwargs = copy.deepcopy(FULL_PRESETS[name])
    model_type = kwargs.pop("model_type")
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def test_tables_agree():
    assert set(FULL_PRESETS) == set(PUBLISHED_PARAMETERS) == set(FULL_CHECKPOINTS) == set(CLASSES)
    for name, (count, source) in PUBLISHED_PARAMETERS.items():
        assert isinstance(count, int) and count > 10**9
        assert source == f"https://huggingface.co/{FULL_CHECKPOINTS[name]}"


@pytest.mark.parametrize("name", sorted(FULL_PRESETS))
def test_builds_the_published_architecture(name):
    model = build_on_meta(name)
    assert type(model).__name__ == CLASSES[name]
    # parameters() yields a tied weight once, as the checkpoint stores it once
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name][0]


@pytest.mark.parametrize(("name", "tied"), [("smolvlm", False), ("qwen2-vl-2b", True), ("qwen2-vl-7b", False)])
def test_tying_as_published(name, tied):
    model = build_on_meta(name)
    shares = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert shares is tied


def test_module_imports_no_model_library():
    code = "import sys, bench.models.vlm_presets; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
