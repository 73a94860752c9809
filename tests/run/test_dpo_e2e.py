"""SFT then DPO end to end (`objective = "dpo"` with `start_from`): `bench run` on a tiny random SmolVLM trains the SFT
cell, keeps its adapter, then trains the DPO cell on from it (bench/run/cell.py run_cell's start_from branch, TRL's loss
in bench's loop); a second run records nothing new; a DPO cell whose source failed is recorded as skipped, naming it.

The shipped SmolVLM × ChartQA suite (zoo bases, 14 cells) runs in CI only (`-m ci_only`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli, section
from safetensors.torch import load_file

from bench.records import read_latest, read_records

pytestmark = [pytest.mark.slow, pytest.mark.ci_only]  # minute-scale end-to-end runs: .ci/run

SUITE = """
[suite]
name = "sft-dpo"
device = "cpu"
threads = 1

[defaults]
steps = 4
batch_size = 4
max_seq_len = 64
eval_batch_size = 8
timing_warmup_steps = 1
serve = false

[models.smol]
family = "smolvlm"
preset = "tiny"
weights = "random"

[datasets.pref]
format = "scenes"
task = "preference"
train_size = 16
eval_size = 8
image_size = 64

[methods.sft]
kind = "lora"
{sft_train}

[methods.dpo]
kind = "lora"
objective = "dpo"
beta = 0.1
start_from = {{dataset = "pref", method = "sft"}}

[[grid]]
models = ["smol"]
datasets = ["pref"]
methods = ["dpo", "sft"]   # listed before its source: the source still runs first
"""


def run(tmp_path: Path, sft_train: str = "") -> tuple[int, str, Path]:
    suite = tmp_path / "sft-dpo.toml"
    suite.write_text(SUITE.format(sft_train=sft_train))
    code, err, _ = run_cli(["run", suite, "--results-dir", tmp_path / "results", "--reports-dir", tmp_path / "reports",
                            "--no-progress"])
    return code, err, tmp_path / "results" / "sft-dpo.jsonl"


def by_method(results: Path) -> dict[str, dict]:
    return {r["method"]["name"]: r for r in read_latest([results])}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft-dpo")
    code, err, results = run(folder)
    assert code == 0, err
    return folder, results, by_method(results)


def test_both_cells_finish_and_the_dpo_cell_names_its_source_and_its_adapter(ran):
    _, _, records = ran
    sft, dpo = records["sft"], records["dpo"]
    assert sft["status"] == "ok" and dpo["status"] == "ok", (sft["message"], dpo["message"])
    assert dpo["method"]["objective"] == "dpo" and dpo["method"]["beta"] == 0.1
    assert "objective" not in sft["method"] and "beta" not in sft["method"]  # an SFT method's id is what it was
    (source,) = dpo["composition"]["sources"]
    assert source["cell_id"] == sft["cell_id"] and source["repeat"] == 0
    assert (source["model"], source["dataset"], source["method"]) == ("smol", "pref", "sft")
    assert source["artifact"] == sft["artifact"]["path"] and Path(source["artifact"]).is_dir()
    assert not sft.get("composition")


def test_the_dpo_cell_keeps_only_its_own_adapter(ran):
    _, _, records = ran
    sft, dpo = records["sft"]["artifact"], records["dpo"]["artifact"]
    assert dpo["kind"] == "adapter" and dpo["path"] != sft["path"]
    assert not any(f.startswith("ref/") or "/ref/" in f for f in dpo["files"]), dpo["files"]
    assert sorted(dpo["files"]) == sorted(sft["files"])
    kept, before = (load_file(f"{a['path']}/adapter_model.safetensors") for a in (dpo, sft))
    assert not any(".ref." in k for k in kept)
    assert set(kept) == set(before)  # the same adapter (and the projector trained beside it), trained on
    assert any(not (kept[k] == before[k]).all() for k in kept)
    config = json.loads(Path(dpo["path"], "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"


def test_the_dpo_cell_trains_its_sources_adapter_alone_and_measures_its_own_cost(ran):
    _, _, records = ran
    sft, dpo = records["sft"], records["dpo"]
    # the SFT cell trained its adapter and, by the seeds' default, the projector beside it; DPO trains the adapter alone
    projector = sft["params"]["by_component"]["projector"]["trainable"]
    assert projector > 0 and dpo["params"]["by_component"]["projector"]["trainable"] == 0
    assert dpo["params"]["trainable"] == sft["params"]["trainable"] - projector > 0
    assert dpo["cost"]["estimate"] is None and dpo["cost"]["estimate_mb"] is None  # the memory model is SFT's
    assert sft["cost"]["estimate"] is not None
    for record in (sft, dpo):
        peak = record["cost"]["peak_memory_mb"]
        assert isinstance(peak, (int, float)) and not isinstance(peak, bool) and math.isfinite(peak) and peak > 0
        assert record["cost"]["optimizer_steps"] == 4
    # DPO starts where its reference is (the SFT adapter as it was kept): TRL's sigmoid loss at log 2
    first = dpo["loss_curve"][0]
    assert first[0] == 1 and first[1] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(loss) for _, loss in dpo["loss_curve"])


def test_the_dpo_cell_counts_the_same_model_as_its_source(ran):
    # TRL's reference adapter is not counted: the same model as the source, fewer of its parameters trained
    _, _, records = ran
    assert records["dpo"]["params"]["total"] == records["sft"]["params"]["total"]


def test_a_second_run_records_nothing_new(ran):
    folder, results, records = ran
    lines = len(read_records(results))
    code, err, _ = run(folder)
    assert code == 0, err
    assert len(read_records(results)) == lines
    assert {k: r["run_id"] for k, r in by_method(results).items()} == {k: r["run_id"] for k, r in records.items()}


def test_a_dpo_cell_whose_source_failed_is_skipped_naming_it(tmp_path):
    # any loss is above 1e-6: the SFT cell diverges at its first step and keeps no adapter
    code, err, results = run(tmp_path, "train = { diverge_loss = 1e-6 }")
    records = by_method(results)
    assert records["sft"]["status"] == "diverged" and records["sft"].get("artifact") is None
    dpo = records["dpo"]
    assert dpo["status"] == "skipped", dpo["message"]
    assert "smol × pref × sft" in dpo["message"] and "diverged" in dpo["message"]
    assert dpo["cost"].get("peak_memory_mb") is None


# ------------------------------------------------------------------------------------------------- with quality

SCORED = """
[suite]
name = "scored"
device = "cpu"
threads = 1

[defaults]
steps = 2
batch_size = 4
max_seq_len = 64
eval_batch_size = 8
max_new_tokens = 2
timing_warmup_steps = 0
serve = false

[models.smol]
family = "smolvlm"
checkpoint = "{checkpoint}"
weights = "pretrained"

[datasets.pref]
format = "scenes"
task = "preference"
train_size = 16
eval_size = 8
image_size = 64

[methods.sft]
kind = "lora"

[methods.dpo]
kind = "lora"
objective = "dpo"
start_from = {dataset = "pref", method = "sft"}

[methods.dpo-sweep]
kind = "lora"
objective = "dpo"
start_from = {dataset = "pref", method = "sft"}
train = {lr = [1e-3, 1e-2], validation_size = 4}

[[grid]]
models = ["smol"]
datasets = ["pref"]
methods = ["sft", "dpo", "dpo-sweep"]
"""


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A suite whose cells have quality without the zoo: the tiny random SmolVLM saved as a local checkpoint."""
    from bench.models import get_family
    from bench.models.base import ModelSpec

    folder = tmp_path_factory.mktemp("scored")
    loaded = get_family("smolvlm").build(ModelSpec(name="m", family="smolvlm", preset="tiny", weights="random"), seed=0)
    loaded.model.save_pretrained(folder / "ckpt")
    loaded.processor.save_pretrained(folder / "ckpt")
    (folder / "scored.toml").write_text(SCORED.replace("{checkpoint}", str(folder / "ckpt")))
    code, err, _ = run_cli(["run", folder / "scored.toml", "--results-dir", folder / "r", "--reports-dir", folder / "p",
                            "--no-progress"])
    assert code == 0, err
    return by_method(folder / "r" / "scored.jsonl")


def test_a_dpo_cell_with_quality_records_the_preference_metrics_beside_the_tasks(scored):
    assert all(r["status"] == "ok" for r in scored.values()), {k: r["message"] for k, r in scored.items()}
    sft, dpo = scored["sft"]["quality"], scored["dpo"]["quality"]
    assert dpo["applicable"] and dpo["metric"] == sft["metric"]  # the family task's own quality
    assert 0 <= dpo["extra"]["preference_accuracy"] <= 100 and math.isfinite(dpo["extra"]["reward_margin"])
    assert "preference_accuracy" not in sft["extra"] and "reward_margin" not in sft["extra"]


def test_a_swept_dpo_cell_records_the_preference_metrics_too(scored):
    sweep = scored["dpo-sweep"]
    assert sweep["status"] == "ok" and sweep["sweep"]["chosen"] is not None
    assert {"preference_accuracy", "reward_margin"} <= set(sweep["quality"]["extra"])


PROBE_SCRIPT = """
import sys
from pathlib import Path

import bench.profile
from bench.data.loader import load_suite_dataset
from bench.run.cell import attempt
from bench.suite.load import load_suite
from bench.suite.plan import expand

assert "trl" not in sys.modules  # a fresh process: what the cell imports is seen
seen = []


class Probe(bench.profile.MemoryProbe):
    def __init__(self, *args, **kwargs):
        seen.append("trl.trainer.dpo_trainer" in sys.modules)
        super().__init__(*args, **kwargs)


bench.profile.MemoryProbe = Probe
suite = load_suite(sys.argv[1])
(cell,) = [c for c in expand(suite) if c.method["name"] == "dpo-alone"]
out = attempt(cell, dict(cell.train), seed=0, device="cpu", splits=load_suite_dataset(cell.dataset, Path(sys.argv[1]).parent),
              zoo_path=None, on_step=None)
assert out["status"] == "ok", out["message"]
print("imported-before-baseline" if seen and all(seen) else f"baseline-first {seen}")
"""


def test_a_dpo_cells_memory_baseline_is_taken_after_trl_is_imported(tmp_path):
    """TRL's import (~90 MB of RSS on the CPU) belongs to the runtime: a DPO cell imports it before its memory
    baseline, so neither its RSS figure nor its memory cap counts it."""
    suite = tmp_path / "alone.toml"
    suite.write_text(SUITE.format(sft_train="").replace('methods = ["dpo", "sft"]', 'methods = ["sft", "dpo-alone"]')
                     + '\n[methods.dpo-alone]\nkind = "lora"\nobjective = "dpo"\n')
    script = tmp_path / "probe.py"
    script.write_text(PROBE_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(suite)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "imported-before-baseline", done.stdout


# ------------------------------------------------------------------------------------------------- the shipped suite


@pytest.mark.ci_only  # 14 cells on zoo bases (built once per machine under BENCH_CACHE, default ~/.cache/bench)
def test_the_shipped_smolvlm_chartqa_suite_runs_sft_then_dpo_within_six_minutes(tmp_path):
    clock = time.perf_counter()
    code, err, _ = run_cli(["run", REPO / "suites" / "smolvlm_chartqa.toml", "--results-dir", tmp_path / "r",
                            "--reports-dir", tmp_path / "p", "--no-progress"])
    wall = time.perf_counter() - clock
    assert code == 0, err
    records = read_latest([tmp_path / "r" / "smolvlm_chartqa.jsonl"])
    assert len(records) == 14
    cells = {(r["model"]["name"], r["method"]["name"]): r for r in records}
    skipped = cells.pop(("qwen2-vl-tiny", "prompt-tuning"))
    assert skipped["status"] == "skipped" and "PEFT" in skipped["message"], skipped["message"]
    assert all(r["status"] == "ok" for r in cells.values()), {k: r["message"] for k, r in cells.items() if r["status"] != "ok"}

    for model in ("smolvlm-tiny", "qwen2-vl-tiny"):
        dpo, sft = cells[(model, "dpo-lora-r8")], cells[(model, "lora-r8")]
        assert dpo["composition"]["sources"][0]["cell_id"] == sft["cell_id"]
        extra = dpo["quality"]["extra"]
        assert 0 <= extra["preference_accuracy"] <= 100, extra
        assert math.isfinite(extra["reward_margin"]), extra

    page = (tmp_path / "p" / "smolvlm_chartqa.md").read_text()
    results = section(page, "Results")
    assert results.lstrip().startswith("| Model | Dataset | Method | Device | Time | Δ"), results[:300]
    assert "| Method | % params trainable |" in page
    assert wall < 6 * 60, f"the suite took {wall:.0f} s"
