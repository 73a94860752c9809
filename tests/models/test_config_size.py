"""bench.models.config_size: a checkpoint's config that describes an absurd model is refused before anything is built
from it, with bounds far above every real model (every preset bench ships, every open_clip config, Llama-3-405B,
DeepSeek-V3, Qwen3-VL-MoE pass)."""

from __future__ import annotations

import copy
import json

import pytest

from bench.errors import CheckpointError
from bench.models.catalog import FAMILIES
from bench.models.config_size import MAX_LAYERS, size_problem
from bench.models.hub import local_config
from bench.models.llava import PRESETS as LLAVA

REAL = {
    "llama-3-405b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 16384, "intermediate_size": 53248,
                     "num_hidden_layers": 126, "num_attention_heads": 128, "max_position_embeddings": 131072},
    "deepseek-v3": {"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
                    "moe_intermediate_size": 2048, "n_routed_experts": 256, "num_hidden_layers": 61,
                    "vocab_size": 129280, "max_position_embeddings": 163840},
    "qwen3-vl-moe-235b": {"model_type": "qwen3_vl_moe",
                          "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 1536,
                                          "num_experts": 128, "num_hidden_layers": 94, "vocab_size": 151936,
                                          "max_position_embeddings": 262144},
                          "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "patch_size": 16}},
}


def _presets():
    import importlib

    for family in FAMILIES:
        try:
            module = importlib.import_module(f"bench.models.{family}")
        except ImportError:
            continue
        for name, preset in (getattr(module, "PRESETS", None) or {}).items():
            yield f"{family}/{name}", preset


@pytest.mark.parametrize("name", list(REAL))
def test_the_largest_real_models_pass(name):
    assert size_problem(REAL[name]) is None


def test_every_shipped_preset_and_every_open_clip_config_pass():
    presets = dict(_presets())
    assert "llava/full" in presets
    assert {k: size_problem(v) for k, v in presets.items() if size_problem(v)} == {}
    open_clip = pytest.importorskip("open_clip")
    assert [m for m in open_clip.list_models() if size_problem(open_clip.get_model_config(m))] == []


@pytest.mark.parametrize("change, words", [
    ({"num_hidden_layers": 1_000_000}, ["1,000,0", "layers", "num_hidden_layers of text_config", f"{MAX_LAYERS:,}"]),
    ({"num_hidden_layers": 10**400}, ["layers"]),  # beyond a float: no overflow
    ({"num_hidden_layers": float("inf")}, ["layers"]),
    ({"hidden_size": 10**7, "intermediate_size": 10**7}, ["parameters", "1e+13"]),
    ({"num_local_experts": 100_000}, ["expert"]),
    ({"vocab_size": 10**14}, ["parameters"]),
])
def test_absurd_sizes_are_refused_with_the_bound(change, words):
    config = copy.deepcopy(LLAVA["full"])
    config["text_config"].update(change)
    problem = size_problem(config)
    assert problem is not None
    for word in words:
        assert word in problem, (word, problem)


@pytest.mark.parametrize("value", [-5, True, "1000000", None, [1, 2], {"a": 1}, float("nan")])
def test_values_that_are_not_counts_are_left_to_the_config_class(value):
    config = copy.deepcopy(LLAVA["tiny"])
    config["text_config"]["num_hidden_layers"] = value
    assert size_problem(config) is None


def test_a_deeply_nested_config_is_walked_without_recursing_forever():
    config: dict = {"model_type": "llava"}
    node = config
    for _ in range(5000):
        node["sub"] = {}
        node = node["sub"]
    assert size_problem(config) is None


def test_the_checkpoints_config_reader_refuses_it_naming_the_file(tmp_path):
    config = {**copy.deepcopy(LLAVA["tiny"]), "model_type": "llava"}
    config["text_config"]["num_hidden_layers"] = 1_000_000
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        local_config(str(tmp_path))
    assert str(tmp_path / "config.json") in str(info.value) and "layers" in info.value.message and info.value.fix
