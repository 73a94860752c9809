"""Faults injected for real: short writes and a full disk while appending, folders that cannot be written,
a data file that breaks after validation, an unexpected exception in a command, concurrent `bench run`s."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import MINI_SUITE, REPO, run_cli
from PIL import Image
from test_records import make_record

import bench.records as records_mod
from bench.errors import DataError
from bench.records import RecordNotSaved, append_record, read_records


def cli(argv, cwd: Path | None = None) -> tuple[int, str]:
    code, err, _ = run_cli(argv, cwd)
    return code, err


# ---------------------------------------------------------------- appends


def test_short_writes_are_continued_until_the_line_is_whole(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(records_mod.os, "write", lambda fd, data: real(fd, bytes(data[:7])))  # 7 bytes per call
    path = tmp_path / "r.jsonl"
    append_record(path, make_record("a"))
    append_record(path, make_record("b"))
    assert [r["cell_id"] for r in read_records(path)] == ["a", "b"]


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_a_failed_append_leaves_the_file_as_it_was_and_keeps_the_record_aside(tmp_path, monkeypatch, failure):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record("a"))
    before = path.read_bytes()
    real, calls = os.write, []

    def half_then_fail(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[: len(data) // 2]))  # a short write: half the line lands
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(records_mod.os, "write", half_then_fail)
    with pytest.raises(RecordNotSaved) as info:
        append_record(path, make_record("b"))
    assert path.read_bytes() == before  # no fragment: cut back to the previous length
    message = info.value.render()
    assert "cell b" in message and str(path) in message and info.value.exit_code == 1
    side = Path(message.split("kept in ")[1].split()[0].rstrip(";"))
    assert read_records(side)[0]["cell_id"] == "b"
    side.unlink()


def test_non_finite_numbers_become_null_with_the_reason(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record("a", cost={"peak_memory_mb": float("nan"), "tokens_per_s": float("inf")},
                                    loss_curve=[[1, 2.0], [2, float("nan")]]))
    (r,) = read_records(path)
    assert r["cost"] == {"peak_memory_mb": None, "tokens_per_s": None}
    assert r["nonfinite"] == {"cost.peak_memory_mb": "nan", "cost.tokens_per_s": "inf", "loss_curve[1][1]": "nan"}


# ---------------------------------------------------------------- a run whose disk fills, whose folders are not there


def _suite(tmp_path, text=MINI_SUITE, name="mini.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_run_whose_disk_fills_stops_with_exit_1_and_keeps_every_earlier_record(tmp_path, monkeypatch):
    suite = _suite(tmp_path)
    results = tmp_path / "results"
    real, appended = os.write, []

    def disk_full_after_first_record(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("mini.jsonl"):
            return real(fd, data)  # os.write is global: pipes to the cells go through it too
        if appended:
            raise OSError(errno.ENOSPC, "No space left on device")
        appended.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(records_mod.os, "write", disk_full_after_first_record)
    code, err = cli(["run", suite, "--results-dir", results, "--reports-dir", tmp_path / "reports", "--no-progress"])
    assert code == 1, err
    kept = read_records(results / "mini.jsonl")
    assert len(kept) == 1 and (results / "mini.jsonl").read_bytes().endswith(b"\n")
    assert "could not be appended" in err and "No space left on device" in err and "kept in" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["file", "unmakeable"])
def test_an_output_folder_that_cannot_be_written_stops_the_run_before_training(tmp_path, where):
    suite = _suite(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    results = blocker if where == "file" else Path("/proc/bench-cannot-be-made")
    start = time.monotonic()
    code, err = cli(["run", suite, "--results-dir", results, "--reports-dir", tmp_path / "reports", "--no-progress"])
    assert code == 2, err
    assert "--results-dir" in err and "nothing was run" in err
    assert time.monotonic() - start < 5  # refused at preflight, not after a cell trained
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("where", ["file", "under-a-file", "unmakeable"])
def test_an_artifacts_dir_that_cannot_be_written_stops_the_run_before_training(tmp_path, where):
    """Found at preflight (exit 2, nothing run or written), not as an `error` record per cell once each had trained."""
    suite = _suite(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    artifacts = {"file": blocker, "under-a-file": blocker / "sub", "unmakeable": Path("/proc/bench-cannot-be-made")}[where]
    start = time.monotonic()
    code, err = cli(["run", suite, "--results-dir", tmp_path / "results", "--reports-dir", tmp_path / "reports",
                     "--artifacts-dir", artifacts, "--no-progress"])
    assert code == 2, err
    assert "--artifacts-dir" in err and "nothing was run" in err and "Traceback" not in err and "unexpected" not in err
    assert time.monotonic() - start < 5  # refused at preflight, not after a cell trained
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()
    assert blocker.read_text() == "a file, not a folder"


def test_a_full_filesystem_at_preflight_is_refused(tmp_path, monkeypatch):
    import shutil

    suite = _suite(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    code, err = cli(["run", suite, "--results-dir", tmp_path / "results", "--reports-dir", tmp_path / "reports"])
    assert code == 2 and "1,000 bytes free" in err, err


@pytest.mark.slow
def test_a_tmpfs_that_fills_mid_suite(tmp_path):
    """The acceptance case on a real filesystem: a small tmpfs, filled by another writer after the first record."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        suite = _suite(tmp_path, MINI_SUITE.replace('methods = ["lora", "full"]', 'methods = ["lora", "full", "lora2"]')
                       + '\n[methods.lora2]\nkind = "lora"\nr = 2\n')
        results = mount / "results" / "mini.jsonl"
        filler = threading.Thread(target=_fill_when_written, args=(results, mount / "ballast"), daemon=True)
        filler.start()
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(suite), "--results-dir", str(mount / "results"),
                               "--reports-dir", str(tmp_path / "reports"), "--no-progress"],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 1, proc.stderr
        assert "could not be appended" in proc.stderr and "No space left on device" in proc.stderr
        kept = read_records(results)
        assert len(kept) >= 1 and results.read_bytes().endswith(b"\n")  # every earlier record whole, no fragment
        assert "Traceback" not in proc.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _fill_when_written(results: Path, ballast: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (results.exists() and results.stat().st_size > 0):
        time.sleep(0.05)
    with contextlib.suppress(OSError), open(ballast, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


# ---------------------------------------------------------------- data that breaks mid-run


def test_an_image_broken_after_validation_is_an_error_record_and_the_suite_goes_on(tmp_path):
    data = tmp_path / "data"
    rows = ["image,label"]
    for i in range(12):
        label = ("red", "blue")[i % 2]
        Image.new("RGB", (8, 8), (255, 0, 0) if label == "red" else (0, 0, 255)).save(data / f"{i}.png") if data.exists() else (
            data.mkdir(), Image.new("RGB", (8, 8), (255, 0, 0)).save(data / f"{i}.png"))
        rows.append(f"{i}.png,{label}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    text = MINI_SUITE.replace('datasets = ["cls"]', 'datasets = ["files", "cls"]').replace('methods = ["lora", "full"]', 'methods = ["lora"]')
    text += '\n[datasets.files]\nformat = "csv"\npath = "data/labels.csv"\n'
    suite = _suite(tmp_path, text)

    from bench.run.runner import Runner
    from bench.suite.load import load_suite

    loaded = load_suite(suite)  # validated while the images were fine
    (data / "3.png").write_bytes(b"not a png any more")
    summary = Runner(loaded, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports", show_progress=False).run()
    by_dataset = {r["dataset"]["name"]: r for r in read_records(tmp_path / "results" / "mini.jsonl")}
    assert by_dataset["files"]["status"] == "error" and "3.png" in by_dataset["files"]["message"]
    assert by_dataset["cls"]["status"] == "ok"
    assert summary.ran == 2


STREAMED = """
[suite]
name = "streamed"

[defaults]
steps = 25
batch_size = 8
max_seq_len = 16
timing_warmup_steps = 0
timeout_s = 120
num_workers = 1   # the worker path: the image is met in a DataLoader worker process

[models.blip2]
family = "blip2"
preset = "tiny"
weights = "random"

[datasets.files]
format = "coco_captions"
path = "train/captions.json"
eval_path = "eval/captions.json"

[datasets.caps]
format = "scenes"
task = "caption"
train_size = 16
eval_size = 8

[methods.lora]
kind = "lora"
r = 4

[methods.lora-skip]
kind = "lora"
r = 4
train = { on_bad_sample = "skip" }

[[grid]]
models = ["blip2"]
datasets = ["files", "caps"]
methods = ["lora", "lora-skip"]
"""


def test_a_corrupt_image_in_the_middle_of_200_on_disk_is_an_error_record_naming_it(tmp_path):
    """Corrupt inside a whole file (header and end marker intact), the image passes validation; the streamed run meets
    it in a worker. Cut short, validation finds it (its PNG end chunk is missing)."""
    from bench.data.make import make_scenes
    from bench.run.runner import Runner
    from bench.suite.load import load_suite

    make_scenes(tmp_path / "train", n=200, fmt="coco_captions", image_size=16, image_format="png", processes=1)
    make_scenes(tmp_path / "eval", n=8, fmt="coco_captions", image_size=16, image_format="png", seed=1, processes=1)
    broken = tmp_path / "train" / "images" / "0000100.png"
    whole = broken.read_bytes()
    broken.write_bytes(whole[:100])
    with pytest.raises(DataError, match=r"record 100 of 'images'.*0000100.png.*cut short"):
        load_suite(_suite(tmp_path, STREAMED, "streamed.toml"))
    corrupt = bytearray(whole)
    corrupt[41:len(whole) - 12] = bytes(len(whole) - 53)  # the pixels' zlib stream zeroed; header and IEND kept
    broken.write_bytes(bytes(corrupt))
    suite = load_suite(_suite(tmp_path, STREAMED, "streamed.toml"))
    summary = Runner(suite, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports", show_progress=False).run()
    records = {(r["dataset"]["name"], r["method"]["name"]): r for r in read_records(tmp_path / "results" / "streamed.jsonl")}
    failed = records[("files", "lora")]
    assert failed["status"] == "error", failed["message"]
    assert "0000100.png" in failed["message"] and "record 100" in failed["message"] and "train sample" in failed["message"]
    skipped = records[("files", "lora-skip")]
    assert skipped["status"] == "ok" and skipped["cost"]["skipped_samples"] == {"train": 1}
    assert skipped["cost"]["num_workers"] == 1 and skipped["cost"]["data_wait_s"] >= 0
    assert {records[("caps", m)]["status"] for m in ("lora", "lora-skip")} == {"ok"}  # the cells after it still ran
    assert summary.ran == 4 and summary.wall_s < 120


# ---------------------------------------------------------------- the guard at the top of the CLI


def test_an_unexpected_exception_is_one_line_and_a_log_under_the_results_folder(tmp_path, monkeypatch):
    import bench.cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(bench.cli, "cmd_plan", broken)
    monkeypatch.setattr(bench.cli, "cmd_compare", broken)
    code, err = cli(["plan", "x.toml", "--results-dir", tmp_path / "mine"], cwd=tmp_path)
    assert code == 1
    assert "unexpected RuntimeError: boom" in err and "Traceback" not in err
    log = Path(err.split("traceback is in ")[1].split()[0])
    assert log.parent == (tmp_path / "mine").resolve() and "RuntimeError: boom" in log.read_text()
    # a command without a results folder writes its log in the temp folder, never a new ./results
    code, err = cli(["compare", "a.jsonl", "b.jsonl"], cwd=tmp_path)
    log = Path(err.split("traceback is in ")[1].split()[0])
    assert code == 1 and log.parent == Path(tempfile.gettempdir()).resolve() and not (tmp_path / "results").exists()
    log.unlink()
