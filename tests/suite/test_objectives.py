"""`objective = "dpo"`, `beta` and `start_from` in a suite, through the CLI: `bench validate` refuses each misuse with
exit 2 and a message naming the key (bench/suite/load.py: _objective_keys, _check_objectives, _check_devices;
bench/suite/compose.py: resolve, _check_same_adapter); cell ids stay what they were for SFT methods and follow a
start_from cell's source; `bench plan --json` lists a DPO cell with its source cell's id among its sources."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HEAD = """
[suite]
name = "pref"
device = "cpu"

[defaults]
steps = 2
batch_size = 4
max_seq_len = 64
eval_batch_size = 8
serve = false

[models.smol]
family = "smolvlm"
preset = "tiny"
weights = "random"

[models.qwen]
family = "qwen2_vl"
preset = "tiny"
weights = "random"

[models.llava]
family = "llava"
preset = "tiny"
weights = "random"

[datasets.pref]
format = "scenes"
task = "preference"
train_size = 8
eval_size = 8
image_size = 64

[datasets.vqa]
format = "scenes"
task = "vqa"
train_size = 8
eval_size = 8
image_size = 64

[methods.sft]
kind = "lora"
"""

DPO = """
[methods.dpo]
kind = "lora"
objective = "dpo"
start_from = {dataset = "pref", method = "sft"}
"""


def grid(methods, models=("smol",), datasets=("pref",)) -> str:
    return f"\n[[grid]]\nmodels = {json.dumps(list(models))}\ndatasets = {json.dumps(list(datasets))}\nmethods = {json.dumps(list(methods))}\n"


def write(tmp_path, text: str, name: str = "pref.toml"):
    path = tmp_path / name
    path.write_text(HEAD + text)
    return path


def validate(path) -> tuple[int, str]:
    code, err, out = run_cli(["validate", path])
    assert "Traceback" not in err, err
    return code, err + out


def refused(tmp_path, text: str, *fragments: str) -> str:
    """The message of a suite `bench validate` refuses with exit 2; it must contain each fragment."""
    code, message = validate(write(tmp_path, text))
    assert code == 2, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def plan(tmp_path, text: str, name: str = "pref.toml") -> dict[str, dict]:
    """`bench plan --json`'s cells by method name (one model, one dataset in these suites)."""
    code, err, out = run_cli(["plan", write(tmp_path, text, name), "--json", "--results-dir", tmp_path / "results"])
    assert code == 0 and "Traceback" not in err, err
    return {c["method"]: c for c in json.loads(out)["cells"]}


# ------------------------------------------------------------------------------------------------- refused suites


def test_dpo_on_a_vqa_dataset_names_the_objective_and_the_dataset(tmp_path):
    refused(tmp_path, '[methods.d]\nkind = "lora"\nobjective = "dpo"\n' + grid(["d"], datasets=["vqa"]),
            "[methods.d] key 'objective'", "'vqa'", "preference")


def test_dpo_on_a_vqa_dataset_excluded_from_the_grid_validates(tmp_path):
    text = ('[methods.d]\nkind = "lora"\nobjective = "dpo"\n' + grid(["sft", "d"], datasets=["pref", "vqa"])
            + 'exclude = [{dataset = "vqa", method = "d"}]\n')
    assert validate(write(tmp_path, text))[0] == 0


def test_dpo_on_a_model_without_a_chat_template_names_the_objective(tmp_path):
    refused(tmp_path, '[methods.d]\nkind = "lora"\nobjective = "dpo"\n' + grid(["d"], models=["llava"]),
            "[methods.d] key 'objective'", "llava", "chat template")


def test_beta_without_dpo_names_beta(tmp_path):
    refused(tmp_path, '[methods.b]\nkind = "lora"\nbeta = 0.5\n' + grid(["b"]), "[methods.b] key 'beta'", "dpo")


def test_beta_with_objective_sft_written_out_names_beta(tmp_path):
    refused(tmp_path, '[methods.b]\nkind = "lora"\nobjective = "sft"\nbeta = 0.5\n' + grid(["b"]), "[methods.b] key 'beta'")


def test_an_unknown_objective_names_the_key(tmp_path):
    refused(tmp_path, '[methods.o]\nkind = "lora"\nobjective = "ppo"\n' + grid(["o"]), "key 'objective'")


@pytest.mark.parametrize("kind", ["merge", "fusion"])
def test_dpo_on_a_composed_kind_is_refused(tmp_path, kind):
    text = (f'[methods.m]\nkind = "{kind}"\nobjective = "dpo"\nsources = [{{dataset = "pref", method = "sft"}}]\n'
            + grid(["sft", "m"]))
    refused(tmp_path, text, "[methods.m] key 'objective'", kind)


def test_start_from_on_full_fine_tuning_names_start_from(tmp_path):
    text = '[methods.f]\nkind = "full"\nstart_from = {dataset = "pref", method = "sft"}\n' + grid(["sft", "f"])
    refused(tmp_path, text, "[methods.f] key 'start_from'", "full")


def test_start_from_naming_no_cell_names_start_from(tmp_path):
    text = DPO.replace('dataset = "pref"', 'dataset = "vqa"') + grid(["sft", "dpo"])  # no grid pairs smol/vqa/sft
    refused(tmp_path, text, "[methods.dpo] key 'start_from'", "smol/vqa/sft", "no grid")


def test_start_from_a_method_no_grid_runs_names_start_from(tmp_path):
    refused(tmp_path, DPO + grid(["dpo"]), "[methods.dpo] key 'start_from'", "smol/pref/sft")


def test_start_from_a_cell_of_another_model_names_start_from(tmp_path):
    text = DPO.replace('dataset = "pref"', 'model = "qwen", dataset = "pref"') + grid(["sft"], models=["qwen"]) + grid(["dpo"])
    refused(tmp_path, text, "[methods.dpo] key 'start_from'", "model 'qwen'")


def test_sft_on_questions_then_dpo_on_pairs_validates_and_plans(tmp_path):
    """The documents' order: SFT on the vqa data, DPO on the preference pairs from that adapter."""
    text = DPO.replace('dataset = "pref"', 'dataset = "vqa"') + grid(["sft"], datasets=["vqa"]) + grid(["dpo"])
    assert validate(write(tmp_path, text))[0] == 0
    code, err, out = run_cli(["plan", write(tmp_path, text), "--json", "--results-dir", tmp_path / "results"])
    assert code == 0, err
    cells = {(c["dataset"], c["method"]): c for c in json.loads(out)["cells"]}
    assert cells[("pref", "dpo")]["sources"] == [cells[("vqa", "sft")]["cell_id"]]


def test_start_from_without_its_keys_names_the_missing_one(tmp_path):
    text = '[methods.d]\nkind = "lora"\nstart_from = {dataset = "pref"}\n' + grid(["sft", "d"])
    refused(tmp_path, text, "start_from", "'method'")


@pytest.mark.parametrize(("source", "key"), [('kind = "lora"\nr = 16', "r"), ('kind = "ia3"', "kind"),
                                             ('kind = "lora"\nalpha = 4', "alpha"),
                                             ('kind = "lora"\ntargets = {language = ["q_proj"]}', "targets")])
def test_start_from_a_different_adapter_names_what_differs(tmp_path, source, key):
    text = f"[methods.src]\n{source}\n" + DPO.replace('method = "sft"', 'method = "src"') + grid(["src", "dpo"])
    message = refused(tmp_path, text, "[methods.dpo] key 'start_from'", "differs")
    assert f"{key} = " in message, message


@pytest.mark.parametrize("source", ['kind = "lora"\ndropout = 0.1', 'kind = "lora"\ntrain_full = []',
                                    'kind = "lora"\ntrain_full = ["projector", "vision"]'])
def test_start_from_a_source_with_another_dropout_or_train_full_validates(tmp_path, source):
    # neither changes the adapter loaded: DPO turns dropout off and trains nothing beside the adapter
    text = f"[methods.src]\n{source}\n" + DPO.replace('method = "sft"', 'method = "src"') + grid(["src", "dpo"])
    assert validate(write(tmp_path, text))[0] == 0


def test_dpo_with_train_full_is_refused(tmp_path):
    text = DPO.replace('objective = "dpo"', 'objective = "dpo"\ntrain_full = ["projector"]') + grid(["sft", "dpo"])
    refused(tmp_path, text, "key 'train_full'", "adapter alone")


def test_start_from_an_equal_adapter_with_another_objective_validates(tmp_path):
    # the objective, beta and start_from are not the adapter: a DPO cell may start from a DPO cell
    text = DPO + '[methods.dpo2]\nkind = "lora"\nobjective = "dpo"\nbeta = 0.5\nstart_from = {dataset = "pref", method = "dpo"}\n'
    assert validate(write(tmp_path, text + grid(["sft", "dpo", "dpo2"])))[0] == 0


def test_start_from_a_source_that_keeps_nothing_is_refused(tmp_path):
    text = '[methods.sft.train]\nsave = false\n' + DPO + grid(["sft", "dpo"])
    refused(tmp_path, text, "key 'start_from'", "save = false")


def test_start_from_itself_is_a_cycle(tmp_path):
    text = '[methods.d]\nkind = "lora"\nstart_from = {dataset = "pref", method = "d"}\n' + grid(["d"])
    refused(tmp_path, text, "key 'start_from'", "cycle")


def test_a_dpo_cell_on_two_devices_is_refused(tmp_path):
    text = DPO.replace('objective = "dpo"', 'objective = "dpo"\ntrain = {devices = 2}') + grid(["sft", "dpo"])
    refused(tmp_path, text, "key 'devices'", "DPO", "devices = 1")


def test_prompt_tuning_with_targets_is_refused(tmp_path):
    text = '[methods.p]\nkind = "prompt_tuning"\ntargets = {language = ["q_proj"]}\n' + grid(["p"])
    refused(tmp_path, text, "[methods.p] key 'targets'", "no meaning")


FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(beta=st.floats(min_value=1e-6, max_value=1e4, allow_nan=False, allow_infinity=False))
def test_any_positive_finite_beta_validates(tmp_path, beta):
    text = DPO.replace('objective = "dpo"', f'objective = "dpo"\nbeta = {beta!r}') + grid(["sft", "dpo"])
    code, message = validate(write(tmp_path, text))
    assert code == 0, message


@FAST
@given(beta=st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), st.integers(max_value=0),
                      st.just(math.inf), st.just(math.nan)))
def test_a_non_positive_or_non_finite_beta_is_refused(tmp_path, beta):
    literal = {math.inf: "inf"}.get(beta, "nan" if isinstance(beta, float) and math.isnan(beta) else repr(beta))
    text = DPO.replace('objective = "dpo"', f'objective = "dpo"\nbeta = {literal}') + grid(["sft", "dpo"])
    code, message = validate(write(tmp_path, text))
    assert code == 2 and "key 'beta'" in message, message


# ------------------------------------------------------------------------------------------------- ids and the plan


def test_objective_sft_written_out_keeps_the_cell_id(tmp_path):
    implicit = plan(tmp_path, grid(["sft"]), "a.toml")
    explicit = plan(tmp_path, 'objective = "sft"\n' + grid(["sft"]), "b.toml")  # HEAD ends inside [methods.sft]
    assert implicit["sft"]["cell_id"] == explicit["sft"]["cell_id"]


def test_adding_a_dpo_method_leaves_the_other_cells_ids(tmp_path):
    before = plan(tmp_path, grid(["sft"]), "a.toml")
    after = plan(tmp_path, DPO + grid(["sft", "dpo"]), "b.toml")
    assert after["sft"]["cell_id"] == before["sft"]["cell_id"]
    assert after["dpo"]["cell_id"] != after["sft"]["cell_id"]


def test_a_start_from_cell_follows_its_sources_training(tmp_path):
    before = plan(tmp_path, DPO + grid(["sft", "dpo"]), "a.toml")
    after = plan(tmp_path, '[methods.sft.train]\nlr = 3e-3\n' + DPO + grid(["sft", "dpo"]), "b.toml")
    assert after["sft"]["cell_id"] != before["sft"]["cell_id"]
    assert after["dpo"]["cell_id"] != before["dpo"]["cell_id"]  # its source trained differently: a new cell
    assert after["dpo"]["sources"] == [after["sft"]["cell_id"]]


def test_beta_is_part_of_a_dpo_cells_id(tmp_path):
    a = plan(tmp_path, DPO + grid(["sft", "dpo"]), "a.toml")
    b = plan(tmp_path, DPO.replace('objective = "dpo"', 'objective = "dpo"\nbeta = 0.5') + grid(["sft", "dpo"]), "b.toml")
    default = plan(tmp_path, DPO.replace('objective = "dpo"', 'objective = "dpo"\nbeta = 0.1') + grid(["sft", "dpo"]), "c.toml")
    assert a["dpo"]["cell_id"] != b["dpo"]["cell_id"]
    assert a["dpo"]["cell_id"] == default["dpo"]["cell_id"]  # the default written out


@pytest.mark.parametrize("model", ["smol", "qwen"])
def test_a_valid_sft_then_dpo_suite_validates_and_plans_the_dpo_cell_after_its_source(tmp_path, model):
    text = DPO + grid(["sft", "dpo"], models=[model])
    code, message = validate(write(tmp_path, text))
    assert code == 0, message
    cells = plan(tmp_path, text)
    assert set(cells) == {"sft", "dpo"}
    assert "sources" not in cells["sft"] and cells["sft"]["state"] == "pending"
    assert cells["dpo"]["sources"] == [cells["sft"]["cell_id"]]
    assert cells["dpo"]["state"] == "pending" and cells["dpo"].get("skip_reason") is None
    assert cells["dpo"]["devices"] == 1
