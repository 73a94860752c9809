"""Composed cells (`kind = "merge"`) end to end: bench/suite/compose.py (sources, waves), bench/run/compose.py (PEFT's
add_weighted_adapter over the sources' kept adapters, task arithmetic on the parameters trained in full beside them)
and the runner's side (bench/run/runner.py: waves, sources_for, the skipped record).

One small suite over the zoo's tiny LLaVA runs once for the module (isolate = false, one thread: ~15 s); its grid lists
the composed methods before the LoRA cells they read. The LoRA sources keep LLaVA's default train_full = ["projector"],
so the projector's path is exercised too. The same suite runs once more side by side (jobs = 2, a process per cell:
~10 s). The zoo's LLaVA is built on first use (~/.cache/bench/zoo) and cached."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from bench.records import read_latest, read_records

SUITE = """
[suite]
name = "compose"
threads = 1
isolate = {isolate}
jobs = {jobs}

[defaults]
steps = 6
batch_size = 8
lr = 3e-3
max_seq_len = 24
eval_batch_size = 64
max_new_tokens = 8
timing_warmup_steps = 0
serve = false

[models.llava-tiny]
family = "llava"
preset = "tiny"

[datasets.target]
format = "scenes"
task = "vqa"
split = "target"
train_size = 32
eval_size = 16

[datasets.source]
format = "scenes"
task = "vqa"
split = "source"
train_size = 32
eval_size = 16

# alpha defaults to 2·r: scaling 2, a power of two, so a source at weight 1 must come back bit for bit; a step large
# and steps enough to change some answers of the pretrained base (a source that learnt nothing proves nothing)
[methods.lora]
kind = "lora"
r = 4
train = {{ lr = 1e-2, steps = 20 }}

# fails at run time, valid when read: any loss is above 1e-6, so it diverges at step 1
[methods.lora-bad]
kind = "lora"
r = 4
train = {{ diverge_loss = 1e-6 }}

# one source at weight 1: that adapter as it is (serving measured here only, one round)
[methods.one]
kind = "merge"
sources = [{{dataset = "target", method = "lora"}}]
train = {{ serve = true, serve_rounds = 1 }}

# unequal weights, and the sources not in the grid's order: a swap would show
[methods.linear]
kind = "merge"
combination = "linear"
weights = [0.7, 0.4]
sources = [{{dataset = "source", method = "lora"}}, {{dataset = "target", method = "lora"}}]

# a composition of a composition: a third wave
[methods.again]
kind = "merge"
sources = [{{dataset = "target", method = "linear"}}]

# X-LoRA over the two adapters: only its classifier trains (serving measured: unmerged only)
[methods.xlora]
kind = "fusion"
sources = [{{dataset = "target", method = "lora"}}, {{dataset = "source", method = "lora"}}]
train = {{ serve = true, serve_rounds = 1 }}

[methods.broken]
kind = "merge"
sources = [{{dataset = "target", method = "lora"}}, {{dataset = "target", method = "lora-bad"}}]

[[grid]]
models = ["llava-tiny"]
datasets = ["target"]
methods = ["again", "one", "linear", "broken", "xlora", "lora", "lora-bad"]

[[grid]]
models = ["llava-tiny"]
datasets = ["source"]
methods = ["lora"]
"""

WAVES = [{"lora/target", "lora-bad/target", "lora/source"}, {"one/target", "linear/target", "broken/target", "xlora/target"},
         {"again/target"}]


def run_suite(folder: Path, *, isolate: bool, jobs: int):
    from bench.run.runner import Runner
    from bench.suite.load import load_suite

    (folder / "compose.toml").write_text(SUITE.format(isolate=str(isolate).lower(), jobs=jobs))
    runner = Runner(load_suite(folder / "compose.toml"), results_dir=folder / "r", reports_dir=folder / "p",
                    show_progress=False)
    summary = runner.run()
    return runner, summary


def key(record: dict) -> str:
    return f"{record['method']['name']}/{record['dataset']['name']}"


@pytest.fixture(scope="module")
def composed(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("compose")
    runner, summary = run_suite(folder, isolate=False, jobs=1)
    return folder, runner, summary, {key(r): r for r in read_latest([runner.results])}


def lora_modules(tensors: dict) -> list[str]:
    return sorted(k[: -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight"))


def adapter(folder: str) -> tuple[dict, dict]:
    return load_file(f"{folder}/adapter_model.safetensors"), json.loads(Path(folder, "adapter_config.json").read_text())


def scaling(config: dict) -> float:
    assert not config.get("rank_pattern") and not config.get("alpha_pattern")
    return config["lora_alpha"] / config["r"]


def projector_keys(tensors: dict) -> list[str]:
    return sorted(k for k in tensors if ".multi_modal_projector." in k)


# ------------------------------------------------------------------------------------------------- the run as a whole

@pytest.mark.slow
def test_the_run_records_every_cell_once_and_the_failed_sources_composition_as_skipped(composed):
    _, _, summary, by = composed
    assert set(by) == set().union(*WAVES)
    assert summary.statuses == {"ok": 6, "diverged": 1, "skipped": 1}
    assert by["lora-bad/target"]["status"] == "diverged"


@pytest.mark.slow
def test_sources_run_before_the_cells_that_compose_them_whatever_the_grids_order(composed):
    _, runner, _, _ = composed
    order = [key(r) for r in read_records(runner.results)]
    assert len(order) == len(set(order)) == 8  # one line each: no cell ran twice, none was retried
    for before, after in zip(WAVES, WAVES[1:]):
        assert max(order.index(k) for k in before) < min(order.index(k) for k in after), order
    # within a wave the suite's order is kept: the grid lists target's cells (lora, lora-bad) before source's
    assert order[:3] == ["lora/target", "lora-bad/target", "lora/source"]


# ------------------------------------------------------------------------------------- 1. one source at weight 1

@pytest.mark.slow
def test_one_source_at_weight_1_scores_what_its_source_scored_item_by_item(composed):
    _, _, _, by = composed
    source, one = by["lora/target"], by["one/target"]
    assert one["status"] == source["status"] == "ok"
    assert one["method"]["weights"] == [1.0]
    assert one["quality"]["tuned"] == source["quality"]["tuned"]
    assert one["quality"]["items"] == source["quality"]["items"]
    assert one["quality"]["n_eval"] == source["quality"]["n_eval"] == 16
    assert one["quality"]["base_key"] == source["quality"]["base_key"]
    assert one["quality"]["tuned"] != one["quality"]["base"] or one["quality"]["items"]["tuned"] != one["quality"]["items"]["base"], \
        "the source learnt nothing this test could see: make it train longer"


@pytest.mark.slow
def test_one_source_at_weight_1_keeps_its_sources_adapter_and_projector_bit_for_bit(composed):
    _, _, _, by = composed
    src, src_config = adapter(by["lora/target"]["artifact"]["path"])
    one, one_config = adapter(by["one/target"]["artifact"]["path"])
    assert lora_modules(one) == lora_modules(src) and lora_modules(src)
    for m in lora_modules(src):  # the update each layer adds: B·A·scaling (cat at weight 1 moves the scaling into A)
        want = src[f"{m}.lora_B.weight"] @ src[f"{m}.lora_A.weight"] * scaling(src_config)
        got = one[f"{m}.lora_B.weight"] @ one[f"{m}.lora_A.weight"] * scaling(one_config)
        assert got.equal(want), m
    assert projector_keys(one) == projector_keys(src) and len(projector_keys(src)) == 4
    for k in projector_keys(src):
        assert one[k].equal(src[k]), (k, (one[k] - src[k]).abs().max())


@pytest.mark.slow
def test_a_composition_of_a_composition_at_weight_1_scores_what_it_composes(composed):
    _, _, _, by = composed
    again, linear = by["again/target"], by["linear/target"]
    assert again["status"] == "ok"
    assert [s["cell_id"] for s in again["composition"]["sources"]] == [linear["cell_id"]]
    assert again["quality"]["items"] == linear["quality"]["items"]


# ------------------------------------------------------------------------------------------ 2. a linear combination

@pytest.mark.slow
def test_a_linear_merge_is_peft_s_linear_combination_and_the_projector_task_arithmetic(composed):
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import LlavaForConditionalGeneration

    from bench.suite import zoo

    _, _, _, by = composed
    linear = by["linear/target"]
    weights = linear["method"]["weights"]
    assert weights == [0.7, 0.4]
    sources = [adapter(by[k]["artifact"]["path"]) for k in ("lora/source", "lora/target")]  # the method's order
    assert [s["artifact"] for s in linear["composition"]["sources"]] == [by["lora/source"]["artifact"]["path"],
                                                                        by["lora/target"]["artifact"]["path"]]

    base = LlavaForConditionalGeneration.from_pretrained(zoo.zoo_path("llava")).eval()  # a fresh build, no bench code
    before = {n: p.detach().clone() for n, p in base.named_parameters() if ".multi_modal_projector." in n}
    assert len(before) == 4
    model = PeftModel.from_pretrained(base, linear["artifact"]["path"]).eval()  # the kept composition, plain PEFT

    # PEFT's "linear": A = Σ √(w·s) A_i, B = Σ √(w·s) B_i at rank r and alpha r, so the update is B·A (cross terms too)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert sorted(layers) == lora_modules(sources[0][0]) == lora_modules(sources[1][0])
    for name, layer in layers.items():
        a = sum(math.sqrt(w * scaling(c)) * t[f"{name}.lora_A.weight"] for w, (t, c) in zip(weights, sources))
        b = sum(math.sqrt(w * scaling(c)) * t[f"{name}.lora_B.weight"] for w, (t, c) in zip(weights, sources))
        got = layer.get_delta_weight("default")
        assert torch.allclose(got, b @ a, rtol=1e-5, atol=1e-7), (name, (got - b @ a).abs().max())
        alone = sum(w * scaling(c) * t[f"{name}.lora_B.weight"] @ t[f"{name}.lora_A.weight"] for w, (t, c) in zip(weights, sources))
        assert not torch.allclose(got, alone, rtol=1e-3, atol=1e-6)  # not Σ w·ΔW_i: the check can tell them apart

    # the projector, trained in full beside each adapter: base + Σ w_i (P_i − base), now in the loaded model
    params = dict(model.get_base_model().named_parameters())
    for name, value in before.items():
        want = value + sum(w * (t[f"base_model.model.{name}"] - value) for w, (t, _) in zip(weights, sources))
        assert not torch.allclose(want, value)  # the sources did move it
        assert torch.allclose(params[name], want, rtol=1e-6, atol=1e-7), name


# --------------------------------------------------------------------------------------------------- 3. the record

@pytest.mark.slow
def test_the_composed_cells_record_names_its_sources_its_files_cost_and_serving(composed):
    _, _, _, by = composed
    one, linear = by["one/target"], by["linear/target"]
    for record, names in ((one, ["lora/target"]), (linear, ["lora/source", "lora/target"])):
        assert record["status"] == "ok" and record["message"] == ""
        sources = record["composition"]["sources"]
        assert [s["cell_id"] for s in sources] == [by[n]["cell_id"] for n in names]
        assert [s["artifact"] for s in sources] == [by[n]["artifact"]["path"] for n in names]
        assert [f"{s['method']}/{s['dataset']}" for s in sources] == names and {s["repeat"] for s in sources} == {0}
        assert record["cell_id"] not in {by[n]["cell_id"] for n in names}
        assert record["loss_curve"] == []  # nothing trained
        assert record["composition"]["beside"] == sorted(n.removeprefix("base_model.model.") for n in
                                                         projector_keys(adapter(sources[0]["artifact"])[0]))
        kept = Path(record["artifact"]["path"])
        assert kept.is_dir() and record["artifact"]["kind"] == "adapter"
        files = sorted(p for p in kept.rglob("*") if p.is_file())
        assert record["artifact"]["bytes"] == sum(p.stat().st_size for p in files) > 0
        assert record["artifact"]["files"] == [p.relative_to(kept).as_posix() for p in files]
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(record["artifact"]["files"])
        assert kept not in {Path(by[n]["artifact"]["path"]) for n in names}
        # nothing trained: no training cost to show beside the trained cells', composing is its build
        assert "train_wall_s" not in record["cost"] and record["cost"]["peak_memory_mb"] is None
        assert record["params"]["trainable"] == 0 and record["cost"]["phases_s"]["build"] > 0
    serving = one["serving"]  # serve = true for `one` only
    assert set(serving["variants"]) == {"unmerged", "merged"} and "error" not in serving
    assert all(v["latency_ms"] > 0 for v in serving["variants"].values())
    assert one["quality"]["merged"] == pytest.approx(one["quality"]["tuned"])
    assert "serving" not in linear


# ------------------------------------------------------------------------------------------- 4. a source that failed

@pytest.mark.slow
def test_a_composition_over_a_failed_source_is_skipped_naming_it(composed):
    _, _, _, by = composed
    broken = by["broken/target"]
    assert broken["status"] == "skipped"
    assert "source cell llava-tiny × target × lora-bad (repeat 0) is diverged" in broken["message"]
    assert "artifact" not in broken and "composition" not in broken


@pytest.mark.slow
def test_a_composition_whose_sources_folder_is_gone_is_skipped_and_the_run_goes_on(composed, tmp_path):
    from bench.run.runner import Runner
    from bench.suite.load import load_suite

    folder, runner, _, by = composed
    # the fixture's records, less `one`'s, with its source's kept folder moved away
    gone = tmp_path / "gone"
    lines = []
    for line in runner.results.read_text().splitlines():
        record = json.loads(line)
        if key(record) == "one/target":
            continue
        if key(record) == "lora/target":
            record["artifact"]["path"] = str(gone)
        lines.append(json.dumps(record))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "compose.jsonl").write_text("\n".join(lines) + "\n")
    again = Runner(load_suite(folder / "compose.toml"), results_dir=tmp_path / "r", reports_dir=tmp_path / "p",
                   show_progress=False)
    summary = again.run()
    assert summary.statuses == {"skipped": 1}
    one = {key(r): r for r in read_latest([again.results])}["one/target"]
    assert one["cell_id"] == by["one/target"]["cell_id"]
    assert one["status"] == "skipped"
    assert one["message"] == "source cell llava-tiny × target × lora (repeat 0) kept no adapter, or its folder is gone"


# ------------------------------------------------------------------------------------------- 5. side by side

@pytest.mark.slow
@pytest.mark.ci_only  # a second run, one process per cell: ~12 s
def test_side_by_side_sources_still_run_first(tmp_path):
    runner, summary = run_suite(tmp_path, isolate=True, jobs=2)
    assert summary.jobs == 2
    assert summary.statuses == {"ok": 6, "diverged": 1, "skipped": 1}
    order = [key(r) for r in read_records(runner.results)]
    assert len(order) == len(set(order)) == 8
    for before, after in zip(WAVES, WAVES[1:]):
        assert max(order.index(k) for k in before) < min(order.index(k) for k in after), order
    by = {key(r): r for r in read_latest([runner.results])}
    assert by["one/target"]["quality"]["items"] == by["lora/target"]["quality"]["items"]
    assert by["again/target"]["quality"]["items"] == by["linear/target"]["quality"]["items"]
    assert "lora-bad" in by["broken/target"]["message"]


def test_an_x_lora_fusion_trains_only_its_classifier_and_its_files_load_with_plain_peft(composed):
    import peft
    import torch

    from bench.data.loader import load_suite_dataset
    from bench.models import get_family
    from bench.models.base import model_spec
    from bench.suite import zoo
    from bench.tasks import task_for_family
    from bench.tasks.base import task_settings

    folder, by = composed[0], composed[3]
    fusion, sources = by["xlora/target"], [by["lora/target"], by["lora/source"]]
    assert fusion["status"] == "ok", fusion["message"]
    assert [s["cell_id"] for s in fusion["composition"]["sources"]] == [s["cell_id"] for s in sources]
    hidden = 64  # the tiny LLaVA's language model width: a depth-1 classifier maps it to one score per expert
    assert fusion["params"]["trainable"] == hidden * 2 + 2
    assert fusion["loss_curve"] and fusion["quality"]["tuned"] is not None
    kept = Path(fusion["artifact"]["path"])
    for i, source in enumerate(sources):  # its experts are its sources' adapters, untouched by its training
        expert, own = (load_file(str(Path(f) / "adapter_model.safetensors"))
                       for f in (kept / "experts" / str(i), source["artifact"]["path"]))
        assert expert.keys() == own.keys() and all(torch.equal(expert[k], own[k]) for k in own)
    assert set(fusion["serving"]["variants"]) == {"unmerged"} and "X-LoRA" in fusion["serving"]["notes"][0]
    assert "merged" not in fusion["quality"]

    # plain peft: the base, X-LoRA over the kept experts, the kept classifier (and projector); the same answers
    config = json.loads((kept / "xlora_config.json").read_text())
    config["adapters"] = {k: str(kept / v) for k, v in config["adapters"].items()}
    loaded = get_family("llava").build(model_spec(fusion["model"], str(zoo.zoo_path("llava"))), seed=fusion["seed"])
    loaded.model.config.use_cache = False
    model = peft.get_peft_model(loaded.model, peft.XLoraConfig(**config))
    _, unexpected = model.load_state_dict(load_file(str(kept / "xlora_weights.safetensors")), strict=False)
    assert not unexpected
    dataset = {k: v for k, v in fusion["dataset"].items() if k not in ("fingerprint", "skipped")}  # its table
    splits = load_suite_dataset(dataset, folder)
    quality = task_for_family("llava").evaluate(loaded, model, splits, task_settings(fusion["train"], "cpu", splits))
    assert quality.items == fusion["quality"]["items"]["tuned"]


@pytest.mark.ci_only  # the shipped example, end to end: about a minute
def test_the_shipped_composition_suite_reports_every_combination_beside_its_sources(tmp_path):
    from conftest import REPO, run_cli

    code, err, _ = run_cli(["run", REPO / "suites" / "composition.toml", "--results-dir", tmp_path / "r",
                            "--reports-dir", tmp_path / "p", "--no-progress"])
    assert code == 0, err
    records = read_latest([tmp_path / "r" / "composition.jsonl"])
    assert len(records) == 17 and all(r["status"] == "ok" for r in records), [r["message"] for r in records]
    page = (tmp_path / "p" / "composition.md").read_text()
    table = page.split("## Composition", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Adapter / combination | target") and "source" in rows[0]
    for label in ("*base (not tuned)*", "lora @ target", "lora @ source", "lora @ both", "linear = linear of",
                  "cat = cat of", "ties = ties of", "x-lora"):
        assert any(label in row for row in rows), label
    ties = next(r for r in records if r["method"]["name"] == "ties" and r["dataset"]["name"] == "target")
    row = next(line for line in rows if line.startswith("| ties = "))
    assert f"{ties['quality']['tuned']:.1f}" in row


@pytest.mark.slow
@pytest.mark.ci_only  # two more runs: ~10 s
def test_a_composed_cell_whose_source_has_not_run_is_left_for_a_later_run(tmp_path):
    from bench.run.runner import Runner
    from bench.suite.load import load_suite

    text = SUITE.format(isolate="false", jobs=1).replace(
        'methods = ["again", "one", "linear", "broken", "xlora", "lora", "lora-bad"]', 'methods = ["one", "lora"]')
    text = text.split("[[grid]]\nmodels = [\"llava-tiny\"]\ndatasets = [\"source\"]")[0]
    (tmp_path / "compose.toml").write_text(text)
    suite = load_suite(tmp_path / "compose.toml")

    def run(only=None):
        runner = Runner(suite, results_dir=tmp_path / "r", reports_dir=tmp_path / "p", show_progress=False, only=only)
        return runner, runner.run()

    runner, summary = run("llava-tiny/target/one")  # its source left out: nothing recorded, nothing skipped for good
    assert summary.left_unrecorded == 1 and summary.ran == 0
    assert not runner.results.exists() or not read_records(runner.results)
    runner, summary = run()
    assert summary.statuses == {"ok": 2}
    assert {key(r): r["status"] for r in read_latest([runner.results])} == {"lora/target": "ok", "one/target": "ok"}
