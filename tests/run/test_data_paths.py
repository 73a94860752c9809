"""Every measurement on every data path: one suite with serving, a sweep, retention, a composed (merged) adapter,
SFT → DPO (start_from) and export, run on the same data held in memory, read from image files on disk, and read from
Hugging Face image bytes. Each feature must produce its figures on each path, and the three paths — the same samples
— must give the same numbers. A feature that works on the bundled in-memory data alone fails here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import run_cli
from datasources import SOURCES, table_for, toml_table

from bench.records import read_latest

pytestmark = [pytest.mark.slow, pytest.mark.ci_only]  # three minute-scale runs: .ci/run

HEAD = """
[suite]
name = "paths"
device = "cpu"
threads = 1
isolate = false

[defaults]
steps = 3
batch_size = 4
max_seq_len = 32
eval_batch_size = 8
max_new_tokens = 3
timing_warmup_steps = 1
serve_batch_size = 2
serve_rounds = 2
lr = 3e-3

[models.llava]
family = "llava"
preset = "tiny"
weights = "zoo"

[models.smol]
family = "smolvlm"
preset = "tiny"
weights = "random"

[methods.lora]
kind = "lora"
r = 4

[methods.swept]
kind = "lora"
r = 8
train = { lr = [1e-3, 3e-3], validation_size = 4 }

[methods.merged]
kind = "merge"
sources = [{ dataset = "vqa", method = "lora" }]

[methods.sft]
kind = "lora"
r = 4

[methods.dpo]
kind = "lora"
r = 4
objective = "dpo"
beta = 0.1
start_from = { dataset = "pairs", method = "sft" }

[[grid]]
models = ["llava"]
datasets = ["vqa"]
methods = ["lora", "swept", "merged"]
retention = "held"

[[grid]]
models = ["smol"]
datasets = ["pairs"]
methods = ["sft", "dpo"]
"""

GENERATED = {
    "vqa": {"format": "scenes", "task": "vqa", "split": "target", "train_size": 16, "eval_size": 8},
    "held": {"format": "scenes", "task": "vqa", "split": "source", "train_size": 8, "eval_size": 8, "seed": 3},
    "pairs": {"format": "scenes", "task": "preference", "split": "target", "train_size": 8, "eval_size": 4,
              "image_size": 64},
}


def _run(source: str, folder: Path) -> tuple[int, str, dict]:
    folder.mkdir(parents=True)
    tables = "".join(toml_table(name, table_for(source, table, folder / name)) for name, table in GENERATED.items())
    suite = folder / "paths.toml"
    suite.write_text(textwrap.dedent(HEAD) + "\n" + tables)
    code, err, _ = run_cli(["run", suite, "--results-dir", folder / "results", "--reports-dir", folder / "reports",
                            "--no-progress"])
    records = {r["method"]["name"]: r for r in read_latest([folder / "results" / "paths.jsonl"])}
    return code, err, records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("paths")
    return {source: (*_run(source, base / source), base / source) for source in SOURCES}


@pytest.mark.parametrize("source", SOURCES)
def test_every_cell_and_every_measured_part_finishes(runs, source):
    code, err, records, _ = runs[source]
    assert code == 0, err
    assert set(records) == {"lora", "swept", "merged", "sft", "dpo"}
    for name, r in records.items():
        assert r["status"] == "ok", (name, r["message"])
        assert "error" not in (r.get("serving") or {}), (name, r["serving"])


@pytest.mark.parametrize("source", SOURCES)
def test_serving_is_measured(runs, source):
    records = runs[source][2]
    for name in ("lora", "swept", "merged", "dpo"):
        variants = records[name]["serving"]["variants"]
        assert variants["unmerged"]["latency_ms"] > 0 and variants["merged"]["latency_ms"] > 0, name
    assert records["lora"]["quality"]["merged"] is not None  # the merged model evaluated on the eval split


@pytest.mark.parametrize("source", SOURCES)
def test_sweep_retention_composition_and_dpo(runs, source):
    records = runs[source][2]
    trials = records["swept"]["sweep"]["trials"]
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials)
    for name in ("lora", "swept", "merged"):
        assert records[name]["quality"]["retention"]["delta"] is not None, name
    assert records["merged"]["composition"]["sources"][0]["method"] == "lora"
    assert records["dpo"]["composition"]["sources"][0]["method"] == "sft"  # trained on from the SFT adapter
    assert records["dpo"]["loss_curve"]


@pytest.mark.parametrize("source", SOURCES)
def test_export_of_a_kept_adapter(runs, source, tmp_path):
    records, folder = runs[source][2], runs[source][3]
    for name in ("lora", "dpo"):
        for merged in ([], ["--merged"]):
            out = tmp_path / f"{name}{'-merged' if merged else ''}"
            code, err, _ = run_cli(["export", folder / "results" / "paths.jsonl", records[name]["cell_id"], *merged,
                                    "--out", out])
            assert code == 0, err
            assert (out / ("model.safetensors" if merged else "adapter_model.safetensors")).is_file()


def test_the_three_paths_give_the_same_numbers(runs):
    """Same samples, same seed: the losses and every quality figure agree whichever path the data came by."""
    by_source = {source: runs[source][2] for source in SOURCES}
    reference = by_source["memory"]
    for source, records in by_source.items():
        for name, r in records.items():
            ref = reference[name]
            assert r["dataset"]["train_size"] == ref["dataset"]["train_size"], (source, name)
            assert [loss for _, loss in r["loss_curve"]] == pytest.approx([loss for _, loss in ref["loss_curve"]],
                                                                          abs=1e-5), (source, name)
            for key in ("base", "tuned", "delta", "merged"):
                assert r["quality"].get(key) == pytest.approx(ref["quality"].get(key), abs=1e-6), (source, name, key)
