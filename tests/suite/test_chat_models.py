"""The chat families in a suite, through the CLI: `bench validate` names the key of every misuse of family auto and of
`components`; a valid chat suite validates and plans; `bench plan --params` counts the published architectures."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

SUITE = """
[suite]
name = "chat"

[defaults]
steps = 2
batch_size = 2
max_seq_len = 32
eval_batch_size = 4
max_new_tokens = 4

[models.m]
{model}

[datasets.vqa]
format = "scenes"
task = "vqa"
split = "target"
train_size = 8
eval_size = 4

[methods.lora]
kind = "lora"
r = 8

[methods.full]
kind = "full"

[[grid]]
models = ["m"]
datasets = ["vqa"]
methods = {methods}
"""

QWEN_TINY = 'family = "qwen2_vl"\npreset = "tiny"\nweights = "random"'
SMOL_TINY = 'family = "smolvlm"\npreset = "tiny"\nweights = "random"'
OVERRIDE = 'components = { language = ["model.text_model", "lm_head"], vision = ["model.vision_model"] }'


def suite(tmp_path, model: str, methods=("lora",), name: str = "suite.toml"):
    path = tmp_path / name
    path.write_text(SUITE.format(model=model, methods=json.dumps(list(methods))))
    return path


def plan(path, tmp_path, *extra) -> list[dict]:
    code, err, out = run_cli(["plan", path, "--json", *extra, "--results-dir", tmp_path / "results"])
    assert code == 0 and "Traceback" not in err, err
    return json.loads(out)["cells"]


# ---------------------------------------------------------------- validate: exit 2 naming the key


INVALID = {
    "auto without a checkpoint": ('family = "auto"\nweights = "random"',
                                  ["key 'checkpoint'", "family auto needs a checkpoint"]),
    "auto with a preset": ('family = "auto"\npreset = "tiny"\ncheckpoint = "HuggingFaceTB/SmolVLM-Instruct"',
                           ["key 'preset'", "family auto has no presets"]),
    "auto with a preset and no checkpoint": ('family = "auto"\npreset = "full"', ["key 'preset'"]),
    "components on llava": ('family = "llava"\npreset = "tiny"\nweights = "random"\n' + OVERRIDE,
                            ["key 'components'", "family llava has fixed components"]),
    "components on blip2": ('family = "blip2"\npreset = "tiny"\nweights = "random"\n'
                            'components = { language = ["language_model"] }', ["key 'components'", "fixed components"]),
    "unknown component": (SMOL_TINY + '\ncomponents = { language = ["model.text_model"], qformer = ["model.connector"] }',
                          ["key 'components.qformer'", "unknown component 'qformer'"]),
    "components without language": (SMOL_TINY + '\ncomponents = { vision = ["model.vision_model"] }',
                                     ["key 'components'", "names no language component"]),
    "an empty prefix list": (SMOL_TINY + '\ncomponents = { language = [] }',
                             ["key 'components.language'", "non-empty list of module names"]),
    "a prefix that is not a string": (SMOL_TINY + '\ncomponents = { language = ["model.text_model", 3] }',
                                      ["key 'components.language'", "non-empty list"]),
    "an empty prefix": (QWEN_TINY + '\ncomponents = { language = [""] }', ["key 'components.language'"]),
    "components not a table": (QWEN_TINY + '\ncomponents = ["model.language_model"]', ["key 'components'", "table"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_validate_names_the_key(tmp_path, case):
    model, fragments = INVALID[case]
    path = suite(tmp_path, model)
    code, err, out = run_cli(["validate", path])
    assert code == 2 and out == "", (code, out)
    assert err.startswith(f"error: {path}") and "[models.m]" in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "fix:" in err


@pytest.mark.parametrize("model", [
    QWEN_TINY,
    SMOL_TINY + "\n" + OVERRIDE,
    'family = "auto"\ncheckpoint = "HuggingFaceTB/SmolVLM-Instruct"',  # weights default to pretrained: not read here
    'family = "auto"\ncheckpoint = "Qwen/Qwen2-VL-2B-Instruct"\nweights = "random"\n'
    'components = { language = ["model.language_model", "lm_head"], vision = ["model.visual"], projector = ["model.visual.merger"] }',
    'family = "qwen2_vl"\npreset = "7b"\nweights = "random"',
])
def test_valid_chat_suites_validate(tmp_path, model):
    path = suite(tmp_path, model, methods=("lora", "full"))
    code, err, out = run_cli(["validate", path])
    assert code == 0 and err == "", err
    assert f"{path}: ok" in out and "2 cells" in out


def test_a_qwen2_vl_tiny_suite_plans_its_cells(tmp_path):
    cells = plan(suite(tmp_path, QWEN_TINY, methods=("lora", "full")), tmp_path)
    assert [(c["model"], c["dataset"], c["method"], c["state"]) for c in cells] == [
        ("m", "vqa", "lora", "pending"), ("m", "vqa", "full", "pending")]


def test_components_shape_the_cell_id_and_their_order_does_not(tmp_path):
    ids = [plan(suite(tmp_path, model, name=f"s{i}.toml"), tmp_path)[0]["cell_id"] for i, model in enumerate((
        SMOL_TINY,
        SMOL_TINY + "\n" + OVERRIDE,
        SMOL_TINY + '\ncomponents = { vision = ["model.vision_model"], language = ["model.text_model", "lm_head"] }',
    ))]
    assert ids[0] != ids[1] == ids[2]


# ---------------------------------------------------------------- plan --params


def test_plan_params_on_the_tiny_chat_models(tmp_path):
    """Fast: the tiny presets on the meta device; LoRA r8 on the language model's q_proj and v_proj only."""
    for model, kv in ((QWEN_TINY, 32), (SMOL_TINY, 64)):  # tiny Qwen2-VL has 2 of 4 key-value heads (head dim 16)
        cells = {c["method"]: c["params"] for c in plan(suite(tmp_path, model, methods=("lora", "full")), tmp_path, "--params")}
        full, lora = cells["full"], cells["lora"]
        assert "error" not in full and full["trainable"] == full["total"]
        adapters = 2 * 8 * ((64 + 64) + (64 + kv))  # 2 layers x r 8 x (q: 64 -> 64, v: 64 -> kv)
        assert lora["by_component"]["language"]["trainable"] == adapters, model
        assert lora["by_component"]["vision"]["trainable"] == 0
        # train_full defaults to the projector: SmolVLM's connector, Qwen2-VL's merger
        assert lora["by_component"]["projector"]["trainable"] == full["by_component"]["projector"]["total"] > 0
        assert lora["total"] == full["total"] + adapters


def test_plan_params_follow_the_components_override(tmp_path):
    cells = plan(suite(tmp_path, SMOL_TINY + "\n" + OVERRIDE), tmp_path, "--params")
    params = cells[0]["params"]
    # the override names no projector: the connector is in no component, and train_full = ["projector"] trains nothing
    assert params["by_component"]["projector"] == {"total": 0, "trainable": 0}
    assert params["trainable"] == params["by_component"]["language"]["trainable"] == 2 * 2 * 8 * (64 + 64)


def test_plan_params_on_the_full_chat_presets(tmp_path):
    """The published totals (HuggingFaceTB/SmolVLM-Instruct, Qwen/Qwen2-VL-2B-Instruct and -7B-Instruct), and LoRA r8
    on the language model's q/v of each: layers x r x ((hidden + hidden) + (hidden + kv heads x head dim))."""
    expected = {  # preset -> (total, LoRA r8 adapters)
        'family = "smolvlm"\npreset = "full"': (2_246_272_880, 24 * 8 * ((2048 + 2048) + (2048 + 2048))),
        'family = "qwen2_vl"\npreset = "2b"': (2_208_985_600, 28 * 8 * ((1536 + 1536) + (1536 + 256))),
        'family = "qwen2_vl"\npreset = "7b"': (8_291_375_616, 28 * 8 * ((3584 + 3584) + (3584 + 512))),
    }
    for i, (model, (total, adapters)) in enumerate(expected.items()):
        path = suite(tmp_path, model + '\nweights = "random"', methods=("full", "lora"), name=f"full{i}.toml")
        cells = {c["method"]: c["params"] for c in plan(path, tmp_path, "--params")}
        assert cells["full"]["total"] == cells["full"]["trainable"] == total, model
        assert cells["lora"]["by_component"]["language"]["trainable"] == adapters, model
        assert cells["lora"]["total"] == total + adapters, model
    # the table view prints the same count
    code, err, out = run_cli(["plan", suite(tmp_path, 'family = "smolvlm"\npreset = "full"\nweights = "random"',
                                            methods=("full",), name="view.toml"),
                              "--params", "--results-dir", tmp_path / "results"])
    assert code == 0 and "2.25B" in out, err
