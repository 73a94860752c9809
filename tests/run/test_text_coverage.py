"""`bench run` end to end (in this process, isolate = false) on a caption dataset whose captions are 40 % words the tiny
tokenizer does not know: every cell's record holds quality.text_coverage, and the run prints one warning naming the
dataset, the model, the figure and the fix; the bundled scenes data measures 0 % and warns of nothing."""

from __future__ import annotations

import io
import json

import pytest
from conftest import run_cli, solid

from bench.models import get_family
from bench.models.base import ModelSpec
from bench.records import read_records

SUITE = """
[suite]
name = "coverage"
isolate = false
threads = 1

[defaults]
steps = 2
batch_size = 4
max_seq_len = 16
eval_batch_size = 8
max_new_tokens = 3
timing_warmup_steps = 0
serve = false
save = false

[models.blip2-tiny]
family = "blip2"
checkpoint = "{checkpoint}"

[datasets.scenes-cap]
format = "scenes"
task = "caption"
train_size = 8
eval_size = 4

[datasets.mine]
format = "coco_captions"
path = "{captions}"
eval_size = 4

[methods.lora]
kind = "lora"
r = 2

[methods.lora-swept]
kind = "lora"
r = 2
train = {{ lr = [1e-3, 1e-2], validation_size = 2 }}

[[grid]]
models = ["blip2-tiny"]
datasets = ["scenes-cap", "mine"]
methods = ["lora", "lora-swept"]
"""


# five words each, two of them unknown to the tiny tokenizer: 40 % exactly
FOREIGN = ("a red zebra on savanna", "the blue giraffe is tall", "a small zebra in meadow", "the large square near grass")


def foreign_coco(folder, n: int):
    """n PNG images and a COCO captions file whose captions are FOREIGN's, in turn."""
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        buffer = io.BytesIO()
        solid((20 * i, 0, 0)).save(buffer, "PNG")
        (folder / "images" / f"{i}.png").write_bytes(buffer.getvalue())
    data = {"images": [{"id": i, "file_name": f"images/{i}.png"} for i in range(n)],
            "annotations": [{"id": i, "image_id": i, "caption": FOREIGN[i % len(FOREIGN)]} for i in range(n)]}
    (folder / "captions.json").write_text(json.dumps(data))
    return folder / "captions.json"


@pytest.fixture
def suite(tmp_path):
    """The suite over random tiny BLIP-2 weights saved as a checkpoint (cells with quality, without bench's zoo)."""
    family = get_family("blip2")
    family.save(family.build(ModelSpec(name="b", family="blip2", preset="tiny", weights="random"), seed=0), tmp_path / "ckpt")
    captions = foreign_coco(tmp_path / "mine", n=12)
    path = tmp_path / "coverage.toml"
    path.write_text(SUITE.format(checkpoint=tmp_path / "ckpt", captions=captions))
    return path


@pytest.mark.slow  # 4 tiny cells, 2 of them sweeps of 2 trials: ~15 s
def test_foreign_captions_warn_once_and_the_bundled_data_not_at_all(suite, tmp_path):
    args = ["run", suite, "--results-dir", tmp_path / "results", "--reports-dir", tmp_path / "reports", "--no-progress"]
    code, err, _ = run_cli([*args, "--only", "blip2-tiny/scenes-cap/*"])
    assert code == 0 and "warning" not in err.lower(), err
    page = tmp_path / "reports" / "coverage.md"
    assert "does not measure the method" not in page.read_text()
    code, err, _ = run_cli(args)  # the cells left: those on the foreign captions
    assert code == 0, err
    banner = page.read_text().split("## ", 1)[0]  # above the first section, where a reader starts
    assert "Δ on this data does not measure the method" in banner
    assert "blip2-tiny / mine: 40.0 %" in banner and "scenes-cap" not in banner
    text = " ".join(err.split())  # the console wraps long lines
    assert text.count("warning:") == 1 and text.count("text coverage") == 1, err
    assert "blip2-tiny × mine: 40.0 % of the answer/caption tokens are unknown to the model's tokenizer" in text
    assert '(`checkpoint = "..."` in [models.blip2-tiny])' in text and "scenes-cap" not in text

    records = read_records(tmp_path / "results" / "coverage.jsonl")
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    for r in records:
        cov = r["quality"]["text_coverage"]
        assert set(cov) == {"unknown_token_pct", "tokens", "texts", "truncated", "truncated_pct", "samples"}
        assert cov["unknown_token_pct"] == (40.0 if r["dataset"]["name"] == "mine" else 0.0)
        # a sweep's pick trains on the training split less its validation split: those are the ones checked
        trained = r["dataset"]["train_size"] - (2 if r["method"]["name"] == "lora-swept" else 0)
        assert cov["truncated"] == 0 and cov["samples"] == trained
