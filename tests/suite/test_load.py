"""Suite parsing and validation: every shipped suite is valid; every malformed one names file, table and key."""

from __future__ import annotations

import pytest
from conftest import MINI_SUITE, REPO

from bench.errors import BenchError, SuiteError
from bench.suite.load import load_suite


@pytest.mark.parametrize("name", ["quickstart", "vlm_costs", "vlm_costs_random"])
def test_shipped_suites_are_valid(name):
    suite = load_suite(REPO / "suites" / f"{name}.toml")
    assert suite.name == name
    assert len(suite.models) == 3 and len(suite.methods) == 5


def test_defaults_and_overrides_resolve(mini_suite):
    suite = load_suite(mini_suite)
    assert suite.defaults["steps"] == 2
    assert suite.defaults["lr"] == 1e-3  # not set in the file: the documented default
    assert suite.methods["lora"].config["alpha"] == 8.0  # default alpha = 2·r
    assert suite.seeds == (0,)


def test_repeats_give_consecutive_seeds(write_suite):
    suite = load_suite(write_suite(MINI_SUITE.replace('name = "mini"', 'name = "mini"\nrepeats = 3')))
    assert suite.seeds == (0, 1, 2)


def _replace(old: str, new: str) -> str:
    assert old in MINI_SUITE, old
    return MINI_SUITE.replace(old, new, 1)


# (suite text, fragments the message must contain)
MALFORMED = {
    "unknown key with did-you-mean": (_replace("steps = 2", "stpes = 2"), ["[defaults] key 'stpes'", "unknown key", "did you mean 'steps'"]),
    "unknown table": (MINI_SUITE + "\n[defualts]\nsteps = 1\n", ["table [defualts]", "did you mean [defaults]"]),
    "wrong type": (_replace("batch_size = 4", 'batch_size = "4"'), ["[defaults] key 'batch_size'", "must be an integer", "a string"]),
    "bool for int": (_replace("batch_size = 4", "batch_size = true"), ["[defaults] key 'batch_size'", "must be an integer"]),
    "batch zero": (_replace("batch_size = 4", "batch_size = 0"), ["[defaults] key 'batch_size'", "must be between 1 (included) and 65,536 (included)"]),
    "lr not positive": (_replace("steps = 2", "steps = 2\nlr = 0"), ["[defaults] key 'lr'", "must be between 0 (excluded)"]),
    "rank zero": (_replace("r = 4", "r = 0"), ["[methods.lora] key 'r'", "must be between 1 (included)"]),
    "unknown method kind": (_replace('kind = "lora"', 'kind = "lorra"'), ["[methods.lora] key 'kind'", "'lorra' is not one of", "did you mean 'lora'"]),
    "unknown family": (_replace('family = "clip"', 'family = "clipp"'), ["[models.clip] key 'family'", "did you mean 'clip'"]),
    "unknown preset": (_replace('preset = "tiny"', 'preset = "huge"'), ["[models.clip] key 'preset'", "no preset 'huge'", "tiny"]),
    "missing family": (_replace('family = "clip"\n', ""), ["[models.clip] key 'family'", "missing required key"]),
    "grid names unknown model": (_replace('models = ["clip"]', 'models = ["clip", "blip"]'), ["[grid[0]] key 'models'", "unknown model 'blip'"]),
    "grid names unknown method": (_replace('methods = ["lora", "full"]', 'methods = ["lora", "ful"]'), ["[grid[0]] key 'methods'", "did you mean 'full'"]),
    "no grid": (MINI_SUITE.split("[[grid]]")[0], ["[[grid]]", "zero cells"]),
    "everything excluded": (MINI_SUITE + 'exclude = [{model = "clip"}]\n', ["[[grid]]", "zero cells"]),
    "task mismatch": (_replace('task = "classification"', 'task = "caption"'), ["[grid[0]]", "trains on classification data", "caption"]),
    "pretrained without checkpoint": (_replace('weights = "random"', 'weights = "pretrained"'), ["[models.clip] key 'weights'", "needs a checkpoint"]),
    "zoo for a full preset": (_replace('preset = "tiny"\nweights = "random"', 'preset = "full"\nweights = "zoo"'), ["[models.clip] key 'weights'", "tiny preset only"]),
    "toml syntax": (MINI_SUITE + "\nsteps = = 3\n", ["not valid TOML"]),
    "seeds not integers": (_replace('name = "mini"', 'name = "mini"\nseeds = ["a"]'), ["[suite] key 'seeds'", "list of integers"]),
    "targets not a list": (_replace("r = 4", 'r = 4\ntargets = { language = "q_proj" }'), ["[methods.lora] key 'targets'", "non-empty list"]),
    "targets on prompt tuning": (_replace('kind = "lora"\nr = 4', 'kind = "prompt_tuning"\ntargets = { language = ["q_proj"] }'),
                                 ["[methods.lora] key 'targets'", "no meaning", "prompt_tuning"]),
    "virtual tokens on lora": (_replace("r = 4", "r = 4\nnum_virtual_tokens = 8"), ["[methods.lora] key 'num_virtual_tokens'", "no meaning"]),
    "no virtual tokens": (_replace('kind = "lora"\nr = 4', 'kind = "prompt_tuning"\nnum_virtual_tokens = 0'),
                          ["[methods.lora] key 'num_virtual_tokens'", "between 1"]),
    "targets on full": (_replace('kind = "full"', 'kind = "full"\ntrain_full = ["projector"]'), ["[methods.full] key 'train_full'", "no meaning"]),
    "unknown key in method train table": (_replace("r = 4", "r = 4\ntrain = { learning_rate = 1e-3 }"), ["[methods.lora.train] key 'learning_rate'", "unknown key"]),
    "unknown component in targets": (_replace("r = 4", 'r = 4\ntargets = { langauge = ["q_proj"] }'), ["[methods.lora] key 'targets'", "['langauge']", "vision, projector, language"]),
    "unknown component in freeze": (_replace('kind = "full"', 'kind = "full"\nfreeze = ["visoin"]'), ["[methods.full] key 'freeze'", "['visoin']"]),
    "bad gate rule": (MINI_SUITE + '\n[gate]\nrules = ["peak_memory:+5"]\n', ["[gate] key 'rules'"]),
    "fsdp with an adapter peft does not document for it": (
        _replace('kind = "full"', 'kind = "ia3"\ntrain = { devices = 2, distributed = "fsdp" }'),
        ["key 'distributed' of cell clip × cls × full", "ia3", "(lora, dora, qlora)", 'use distributed = "ddp"']),
    "fsdp with qlora outside bf16": (
        _replace('kind = "full"', 'kind = "qlora"\ntrain = { devices = 2, distributed = "fsdp" }'),
        ["key 'distributed'", "bf16 storage", "this cell has fp32", 'precision = "bf16"']),
    "fsdp on the cpu": (
        _replace('name = "mini"', 'name = "mini"\ndevice = "cpu"').replace('kind = "full"', 'kind = "full"\ntrain = { devices = 2, distributed = "fsdp" }'),
        ["key 'distributed'", "CUDA only", 'device = "cpu"']),
    "devices without isolation": (
        _replace('name = "mini"', 'name = "mini"\nisolate = false').replace("steps = 2", "steps = 2\ndevices = 2"),
        ["key 'devices' of cell", "isolate = false"]),
    "devices zero": (_replace("steps = 2", "steps = 2\ndevices = 0"), ["[defaults] key 'devices'", "between 1 (included)"]),
    "unknown distributed strategy": (_replace("steps = 2", 'steps = 2\ndistributed = "zero3"'),
                                     ["[defaults] key 'distributed'", "not one of ddp, fsdp"]),
    "sweep of a key it may not vary": (_replace("steps = 2", "steps = 2\nsweep = { seed = [0, 1] }"),
                                       ["[defaults] key 'sweep.seed'", "not a key a sweep may vary", "lr"]),
    "sweep value of the wrong type": (_replace("steps = 2", 'steps = 2\nlr = [1e-3, "fast"]'),
                                      ["[defaults] key 'lr'", "got a string 'fast'"]),
    "sweep value twice": (_replace("steps = 2", "steps = 2\nlr = [1e-3, 1e-3]"), ["[defaults] key 'lr'", "twice"]),
    "sweep empty": (_replace("steps = 2", "steps = 2\nlr = []"), ["[defaults] key 'lr'", "non-empty list"]),
    "sweep too large": (_replace("steps = 2", "steps = 2\nsweep = { lr = [1, 2, 3, 4, 5, 6], weight_decay = [0, 1, 2, 3, 4, 5] }"),
                        ["[defaults] key 'sweep'", "36 combinations", "at most 32"]),
    "sweep beside a list": (_replace("steps = 2", "steps = 2\nlr = [1e-3, 1e-2]\nsweep = { weight_decay = [0.0, 0.1] }"),
                            ["[defaults] key 'sweep'", "beside lr = [...]"]),
    "sweep not a table": (_replace("steps = 2", "steps = 2\nsweep = [1, 2]"), ["[defaults] key 'sweep'", "table of lists"]),
    "sweep on several devices": (_replace("steps = 2", "steps = 2\nlr = [1e-3, 1e-2]\ndevices = 2"),
                                 ["key 'sweep' of cell", "2 devices"]),
    "unknown dataset format": (_replace('format = "scenes"', 'format = "parquet"'), ["[datasets.cls] key 'format'", "is not one of"]),
    "missing dataset path": (_replace('format = "scenes"\ntask = "classification"\nsplit = "target"', 'format = "coco_captions"\npath = "nowhere/captions.json"\nimage_root = "nowhere"'), ["nowhere"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suite_names_file_table_and_key(case, write_suite):
    text, fragments = MALFORMED[case]
    path = write_suite(text, "bad.toml")
    with pytest.raises(BenchError) as err:
        load_suite(path)
    message = err.value.render()
    assert "bad.toml" in message
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_missing_suite_file(tmp_path):
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite(tmp_path / "nope.toml")
