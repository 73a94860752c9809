"""bench.cost.params: `bench plan --params` counts on the meta device, checked against the published architectures."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from bench.cost.params import count_cells, quantized_params
from bench.methods import apply_method, count_params, quantization_config, resolve_targets
from bench.models import get_family, llava
from bench.models.base import ModelSpec
from bench.suite.load import load_suite
from bench.suite.plan import expand

SUITE = Path(__file__).resolve().parents[2] / "suites" / "vlm_costs.toml"


@pytest.fixture(scope="module")
def costs():
    """(cells by (model, method), their counts, seconds it took): one meta build per model, 15 cells."""
    cells = expand(load_suite(SUITE))
    start = time.perf_counter()
    counts = count_cells(cells)
    elapsed = time.perf_counter() - start
    return {(c.model["name"], c.method["name"]): c for c in cells}, counts, elapsed


def count(costs, model: str, method: str) -> dict:
    cells, counts, _ = costs
    return counts[cells[(model, method)].cell_id]


def test_every_cell_of_the_shipped_suite_is_counted_quickly(costs):
    cells, counts, elapsed = costs
    assert len(cells) == 15 and set(counts) == {c.cell_id for c in cells.values()}
    assert not [c for c in counts.values() if "error" in c]
    assert elapsed < 60, f"counting took {elapsed:.1f} s"


def test_clip_vit_l_14_has_the_published_parameter_count(costs):
    full = count(costs, "clip-vit-l-14", "full")
    assert full["total"] == full["trainable"] == 427_616_513  # openai/clip-vit-large-patch14
    lora = count(costs, "clip-vit-l-14", "lora-r8")
    # text tower: 12 layers × (q_proj, v_proj) × r 8 × (768 in + 768 out)
    assert lora["by_component"]["language"]["trainable"] == 12 * 2 * 8 * (768 + 768) == 294_912
    # train_full defaults to the projector: visual_projection 1024×768, text_projection 768×768, logit_scale
    assert lora["by_component"]["projector"]["trainable"] == 1024 * 768 + 768 * 768 + 1 == 1_376_257
    assert lora["by_component"]["vision"]["trainable"] == 0
    assert lora["total"] == 427_616_513 + 294_912


def test_llava_lora_r8_adapts_exactly_the_language_q_v(costs):
    cells, _, _ = costs
    method = cells[("llava-1.5-7b", "lora-r8")].method
    # the suite's lora-r8 names no targets and no train_full: the family default, LLaMA's attention q and v only
    assert method["targets"] is None and method["train_full"] is None
    assert resolve_targets(method, llava, "transformers") == {"language": ["q_proj", "v_proj"]}

    p = count(costs, "llava-1.5-7b", "lora-r8")
    # 32 layers × (q_proj, v_proj) × r 8 × (4096 in + 4096 out): LLaVA's vision tower (which has q/v too) adds nothing
    adapters = 32 * 2 * 8 * (4096 + 4096)
    assert adapters == 4_194_304
    assert p["by_component"]["language"]["trainable"] == adapters
    assert p["by_component"]["vision"]["trainable"] == 0
    # train_full = None means ["projector"]: the two-layer MLP 1024 -> 4096 -> 4096, weights and biases
    projector = (1024 * 4096 + 4096) + (4096 * 4096 + 4096)
    assert projector == 20_979_712
    assert p["by_component"]["projector"]["trainable"] == p["by_component"]["projector"]["total"] == projector
    assert p["trainable"] == adapters + projector == 25_174_016
    assert p["total"] == 7_063_427_072 + adapters  # llava-hf/llava-1.5-7b-hf plus the adapters


def test_qlora_is_counted_as_lora_plus_its_4bit_weights(costs):
    lora, qlora = count(costs, "llava-1.5-7b", "lora-r8"), count(costs, "llava-1.5-7b", "qlora")
    assert {k: v for k, v in qlora.items() if k != "quantized"} == lora
    # every Llama linear is 4-bit (lm_head, the vision tower and the projector are skipped):
    # 32 layers × (q, k, v, o: 4096² each + gate, up, down: 4096 × 11008 each)
    assert qlora["quantized"] == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) == 6_476_005_376
    assert "quantized" not in lora


@pytest.mark.parametrize("family", ["clip", "llava"])
def test_the_meta_prediction_of_4bit_weights_matches_bitsandbytes(family):
    module = get_family(family)
    spec = ModelSpec(name=f"{family}-t", family=family, preset="tiny", weights="random")
    method = {"name": "q", "kind": "qlora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None,
              "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}
    loaded = module.build(spec, quantization=quantization_config(method, "cpu"))
    real = count_params(apply_method(loaded, method, module), loaded.components)["quantized"]
    assert real == quantized_params(module.build_meta(spec), module.QUANTIZATION_SKIP) > 0


def test_a_cell_that_cannot_be_counted_gets_an_error_entry(write_suite):
    path = write_suite("""
        [models.clip]
        family = "clip"
        weights = "random"
        [datasets.cls]
        format = "scenes"
        task = "classification"
        [methods.ok]
        kind = "lora"
        [methods.typo]
        kind = "lora"
        targets = { language = ["q_prj"] }
        [[grid]]
        models = ["clip"]
        datasets = ["cls"]
        methods = ["ok", "typo"]
    """)
    cells = {c.method["name"]: c for c in expand(load_suite(path))}
    counts = count_cells(list(cells.values()))
    assert counts[cells["ok"].cell_id]["trainable"] > 0
    error = counts[cells["typo"].cell_id]["error"]
    assert "q_prj" in error and "q_proj" in error  # names the typo and offers the real leaf names


# ---------------------------------------------------------------- `bench plan --params` on a checkpoint it cannot use

CHECKPOINT_SUITE = """
[suite]
name = "ck"

[models.llava]
family = "llava"
checkpoint = "{checkpoint}"
weights = "random"

[datasets.vqa]
format = "scenes"
task = "vqa"

[methods.lora]
kind = "lora"

[[grid]]
models = ["llava"]
datasets = ["vqa"]
methods = ["lora"]
"""


def _checkpoint(folder: Path, config) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def _tiny_llava(**text) -> dict:
    config = {**copy.deepcopy(llava.PRESETS["tiny"]), "model_type": "llava"}
    config["text_config"].update(text)
    return config


@pytest.mark.parametrize("config, words", [
    (_tiny_llava(num_hidden_layers=1_000_000), ["1,000,0", "layers", "2,000"]),
    (_tiny_llava(hidden_size=10**7, intermediate_size=10**7), ["parameters", "1e+13"]),
    ({"hello": "world"}, ["no model_type", "not a transformers model's config"]),  # once built the 7B default config
    ("SECRET=1 not json", ["cannot be read"]),
    ("[1, 2, 3]", ["not a JSON object"]),
])
def test_plan_params_on_an_unusable_or_absurd_checkpoint_exits_2_with_the_reason_before_building(
        tmp_path, monkeypatch, config, words):
    from conftest import run_cli

    from bench.models import hf

    real, built = hf.config_for, []

    def config_for(spec, arch):  # a model built from this checkpoint's config is the failure (and never built here)
        config, source = real(spec, arch)
        if source.startswith("config.json of"):
            built.append(source)
            raise AssertionError(f"a model was about to be built from {source}")
        return config, source

    monkeypatch.setattr(hf, "config_for", config_for)
    checkpoint = _checkpoint(tmp_path / "ckpt", config)
    suite = tmp_path / "ck.toml"
    suite.write_text(CHECKPOINT_SUITE.format(checkpoint=checkpoint))
    for extra in ([], ["--json"]):
        code, err, out = run_cli(["plan", suite, "--params", "--results-dir", tmp_path / "r", *extra])
        assert code == 2, err
        assert "Traceback" not in err and "unexpected" not in err and "SECRET" not in err + out
        assert "--params" in err and str(checkpoint) in err and "fix:" in err
        for word in words:
            assert word in err, (word, err)
    assert not built  # refused from the config, before any module was made


def test_plan_params_on_a_real_shaped_checkpoint_counts_it(tmp_path):
    from conftest import run_cli

    checkpoint = _checkpoint(tmp_path / "ckpt", _tiny_llava())
    suite = tmp_path / "ck.toml"
    suite.write_text(CHECKPOINT_SUITE.format(checkpoint=checkpoint))
    code, err, out = run_cli(["plan", suite, "--params", "--json", "--results-dir", tmp_path / "r"])
    assert code == 0, err
    assert json.loads(out)["cells"][0]["params"]["total"] > 0
