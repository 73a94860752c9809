"""Issue #28's acceptance on data made by `bench data make`, end to end through the command line: a file-backed LLaVA
cell and a Hugging Face bytes cell measure serving (merged and unmerged); a LLaVA file with 3 missing images and 2
empty answers is refused with all 5 listed under on_bad_sample = "error", and under "skip" the run records the 5 left
out by reason, as does its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_datasets, run_cli, section
from datasources import tiny_llava_suite as suite
from datasources import write_hf

from bench.data.loader import load_dataset
from bench.records import read_latest

pytestmark = pytest.mark.slow

def run(path: Path) -> tuple[int, str, list[dict]]:
    out = path.parent / "out"
    code, err, _ = run_cli(["run", path, "--results-dir", out, "--reports-dir", out / "reports", "--no-progress"])
    return code, err, read_latest([out / f"{path.stem}.jsonl"]) if (out / f"{path.stem}.jsonl").exists() else []


def made(folder: Path, n: int) -> Path:
    code, err, _ = run_cli(["data", "make", "scenes", "--n", n, "--format", "llava", "--out", folder, "--image-size", 32])
    assert code == 0, err
    return folder / "llava.json"


@needs_datasets
def test_a_made_llava_file_and_hugging_face_bytes_record_merged_and_unmerged_serving(tmp_path):
    data = made(tmp_path / "made", 96)
    scenes = load_dataset({"format": "scenes", "task": "vqa", "train_size": 16, "eval_size": 8}, base_dir=tmp_path)
    tables = {"files": {"format": "llava", "path": str(data), "eval_size": 8},
              "hf-bytes": write_hf(scenes, tmp_path / "hf")}
    code, err, records = run(suite(tmp_path, "served", tables))
    assert code == 0, err
    assert {r["dataset"]["name"] for r in records} == set(tables)
    for r in records:
        assert r["status"] == "ok", r["message"]
        serving = r["serving"]
        assert "error" not in serving, serving
        for variant in ("unmerged", "merged"):
            assert serving["variants"][variant]["latency_ms"] > 0, (r["dataset"]["name"], variant)


def test_three_missing_images_and_two_empty_answers_listed_at_once_or_counted_by_reason(tmp_path):
    data = made(tmp_path / "made", 24)
    records = json.loads(data.read_text())
    for r in records[3:6]:
        (data.parent / r["image"]).unlink()
    for r in records[10:12]:
        r["conversations"][1]["value"] = " "
    data.write_text(json.dumps(records))
    tables = {"mine": {"format": "llava", "path": str(data)}}

    (tmp_path / "strict").mkdir()
    code, err, _ = run_cli(["validate", suite(tmp_path / "strict", "strict", tables)])
    assert code == 2 and "Traceback" not in err and "unexpected" not in err
    assert "5 record(s) cannot be used (3 missing image, 2 empty answer)" in err and err.count("\n  - ") == 5
    for r in records[3:6] + records[10:12]:
        assert f"record {r['id']} (id '{r['id']}')" in err

    (tmp_path / "lenient").mkdir()
    path = suite(tmp_path / "lenient", "lenient", tables, policy="skip")
    code, err, out = run_cli(["validate", path])
    assert code == 0 and "5 record(s) will be left out (3 missing image, 2 empty answer)" in out
    code, err, done = run(path)
    assert code == 0, err
    assert [r["status"] for r in done] == ["ok"] and done[0]["dataset"]["skipped"] == {"missing image": 3,
                                                                                      "empty answer": 2}
    page = (tmp_path / "lenient" / "out" / "reports" / "lenient.md").read_text()
    assert "| mine | 5: 3 missing image, 2 empty answer |" in section(page, "Data left out")
