"""Each public layout as distributed (tests/layouts.py) trains LoRA and full fine-tuning on a tiny preset, from the
publisher's files: every cell ok, the records it left out counted by reason in the record and on the report page."""

from __future__ import annotations

import pytest
from conftest import needs_datasets, run_cli, section
from datasources import toml_table
from layouts import LAYOUTS

from bench.records import read_latest

pytestmark = [needs_datasets, pytest.mark.slow, pytest.mark.ci_only]  # 16 cells, ~50 s: .ci/run

FAMILY_OF_TASK = {"vqa": "llava", "caption": "blip2", "preference": "llava"}  # preference: SFT on the chosen answers


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts-e2e")
    layouts = {name: build(folder / name) for name, build in LAYOUTS.items()}
    grids = "".join(f"""
[[grid]]
models = ["{FAMILY_OF_TASK[layout["task"]]}"]
datasets = ["{name}"]
methods = ["lora", "full"]
""" for name, layout in layouts.items())
    suite = folder / "layouts.toml"
    suite.write_text("""
[suite]
name = "layouts"
isolate = false
threads = 1

[defaults]
steps = 2
batch_size = 4
max_seq_len = 32
eval_batch_size = 8
max_new_tokens = 2
timing_warmup_steps = 0
on_bad_sample = "skip"
serve = false
save = false

[models.llava]
family = "llava"
preset = "tiny"

[models.blip2]
family = "blip2"
preset = "tiny"

[methods.lora]
kind = "lora"
r = 4

[methods.full]
kind = "full"
""" + "".join(toml_table(name, {**layout["table"], "eval_size": 4}) for name, layout in layouts.items()) + grids)
    code, err, _ = run_cli(["run", suite, "--results-dir", folder / "results", "--reports-dir", folder / "reports",
                            "--no-progress"])
    records = read_latest([folder / "results" / "layouts.jsonl"])
    return code, err, layouts, records, (folder / "reports" / "layouts.md").read_text()


def test_every_layout_trains_lora_and_full(ran):
    code, err, layouts, records, _ = ran
    assert code == 0, err
    done = {(r["dataset"]["name"], r["method"]["name"]): r for r in records}
    assert set(done) == {(name, method) for name in layouts for method in ("lora", "full")}
    for key, r in done.items():
        assert r["status"] == "ok", (key, r["message"])
        assert r["quality"]["tuned"] is not None, key


def test_what_each_layout_left_out_is_in_its_records_and_on_the_page(ran):
    _, _, layouts, records, page = ran
    for r in records:
        assert r["dataset"]["skipped"] == layouts[r["dataset"]["name"]]["left_out"], r["dataset"]["name"]
    left_out = section(page, "Data left out")
    for name, layout in layouts.items():
        line = next(line for line in left_out.splitlines() if line.startswith(f"| {name} |"))
        for reason, n in layout["left_out"].items():
            assert f"{n} {reason}" in line, (name, line)
