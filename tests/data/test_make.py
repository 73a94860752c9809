"""`bench data make`: bundled scenes written to disk in every on-disk format, read back by the loaders."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from bench.data.loader import load_dataset
from bench.data.make import MAKE_FORMATS, make_scenes
from bench.data.scenes import captions, generate_scenes, question_answers
from bench.errors import BenchError


@pytest.mark.parametrize("fmt", MAKE_FORMATS)
def test_every_format_reads_back_as_the_scenes_it_was_made_from(fmt, tmp_path):
    task = MAKE_FORMATS[fmt][0]
    path = make_scenes(tmp_path / "d", n=20, fmt=fmt, image_size=24, seed=5, processes=2)
    splits = load_dataset({"format": fmt, "task": task, "path": str(path), "shuffle": False, "eval_fraction": 0.25},
                          base_dir=tmp_path)
    assert (len(splits.train), len(splits.eval)) == (15, 5)
    scenes = generate_scenes(20, split="target", seed=5, part="train")
    first = splits.train[0]
    if task == "caption":
        assert [s.captions for s in splits.train] == [captions(sc) for sc in scenes[:15]]
    elif task == "vqa":
        assert [s.question for s in splits.train] == [question_answers(sc)[0] for sc in scenes[:15]]
        assert first.answers[0] == question_answers(scenes[0])[1][0]
    else:  # an image folder lists by class, a CSV by row: the classes are the scenes' shapes either way
        assert set(splits.classnames) <= {sc.shape for sc in scenes}
    assert first.decoded().image.size == (24, 24)


def test_it_never_writes_into_a_folder_that_holds_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(BenchError, match="not an empty folder"):
        make_scenes(tmp_path / "d", n=4, fmt="csv")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]


def test_the_command_reports_what_it_wrote_and_how_to_use_it(tmp_path):
    code, err, out = run_cli(["data", "make", "scenes", "--n", "12", "--format", "llava", "--out", str(tmp_path / "d"),
                              "--image-size", "16", "--processes", "1"])
    assert code == 0, err
    assert "wrote 12 images" in out and 'format = "llava", task = "vqa"' in out
    records = json.loads((tmp_path / "d" / "llava.json").read_text())
    assert len(records) == 12 and records[0]["conversations"][0]["value"].startswith("<image>\n")
    assert len(list((tmp_path / "d" / "images").iterdir())) == 12


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "out of range"),
    (["--n", "5", "--image-size", "4"], "out of range"),
    (["--n", "5", "--processes", "-1"], "--processes"),
    (["--n", "5", "--processes", "0"], "--processes"),
    (["--n", "5", "--seed", "-1"], "--seed"),
    (["--n", "5", "--seed", str(2**63)], "--seed"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, args, message):
    code, err, out = run_cli(["data", "make", "scenes", "--format", "csv", "--out", str(tmp_path / "d"), *args])
    assert code == 2 and message in err and "Traceback" not in err and "unexpected" not in err, err
    assert "fix:" in err
    assert not (tmp_path / "d").exists()


def test_too_many_processes_are_refused_before_any_is_started(tmp_path, monkeypatch):
    import multiprocessing

    from bench.data.make import MAX_PROCESSES

    monkeypatch.setattr(multiprocessing, "get_context", lambda *a: pytest.fail("a pool was started"))
    with pytest.raises(BenchError) as info:
        make_scenes(tmp_path / "d", n=4, fmt="csv", processes=MAX_PROCESSES + 1)
    assert info.value.where == "--processes" and f"{MAX_PROCESSES:,}" in info.value.fix
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("out", ["file/sub", "file", "dangling", "dangling/sub"])
def test_an_out_that_cannot_be_a_new_folder_is_named(tmp_path, out):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    code, err, _ = run_cli(["data", "make", "scenes", "--n", "4", "--format", "csv", "--out", str(tmp_path / out)])
    assert code == 2 and "--out" in err and "fix:" in err, err
    assert "Traceback" not in err and "unexpected" not in err
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("when", ["images", "data file"])
def test_a_full_disk_is_named_as_such_and_what_was_written_is_removed(tmp_path, monkeypatch, when):
    """ENOSPC injected where the images (in the pool's forked workers) or the data file are written: exit 1 (work was
    done, its output could not be written), the message says the disk is full, and --out is left as it was."""
    import errno
    import os

    import bench.data.make as make

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(make, "_save_image" if when == "images" else "_write_data_file", full)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        code, err, _ = run_cli(["data", "make", "scenes", "--n", "6", "--format", "csv", "--image-size", "16",
                                "--processes", "1", "--out", str(out)])
        assert code == 1, err
        assert "full (ENOSPC)" in err and "--out" in err and "fix:" in err
        assert "Traceback" not in err and "unexpected" not in err and "bench bug" not in err
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_the_fingerprint_follows_image_files_and_texts_without_reading_pixels(tmp_path, monkeypatch):
    """Changed image file (size, mtime) or changed text → another fingerprint; the same files → the same one; and no
    image is opened to compute it (100k images would cost minutes on every run)."""
    import os

    import PIL.Image

    path = make_scenes(tmp_path / "d", n=12, fmt="coco_captions", image_size=16, processes=1)
    table = {"format": "coco_captions", "task": "caption", "path": str(path)}

    def fingerprint():
        return load_dataset(table, base_dir=tmp_path).fingerprint

    first = fingerprint()
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("the fingerprint opened an image"))
    assert fingerprint() == first
    monkeypatch.undo()
    image = tmp_path / "d" / "images" / "0000003.jpg"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: maybe changed
    touched = fingerprint()
    assert touched != first
    data = json.loads(path.read_text())
    data["annotations"][0]["caption"] += " again"
    path.write_text(json.dumps(data))
    assert fingerprint() not in (first, touched)
