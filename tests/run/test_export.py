"""`bench export` (bench/run/export.py) against hostile results files and artifact folders: it copies only the regular
files PEFT and bench wrote, from inside the artifacts folder `bench run` kept them in, follows no link, writes only into
--out, and every refusal is an exit-2 message naming the record field (or --out, or the artifact file) and the fix."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import record, run_cli

from bench.records import append_record

SECRET = "PRIVATE KEY: never exported"
CLIP = {"name": "clip", "family": "clip", "preset": "tiny", "checkpoint": None, "weights": "random",
        "backend": "transformers", "trust_remote_code": False, "revision": None}
LORA = {"name": "l", "kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None}


@pytest.fixture(scope="module")
def kept_adapter(tmp_path_factory) -> Path:
    """A real LoRA adapter of the tiny CLIP as bench/run/artifacts.py keeps it (made once)."""
    from bench.methods import apply_method
    from bench.models import get_family
    from bench.models.base import ModelSpec
    from bench.run.artifacts import save_artifact

    family = get_family("clip")
    loaded = family.build(ModelSpec(name="clip", family="clip", preset="tiny", weights="random"))
    folder = tmp_path_factory.mktemp("adapter") / "0"
    save_artifact(apply_method(loaded, LORA, family), "lora", str(folder), save_full=False)
    return folder


def results_with_adapter(base: Path, adapter: Path, *, path: str | None = None, **changes) -> tuple[Path, Path]:
    """(results file, the cell's artifact folder): the adapter copied where `bench run` keeps it
    (<results folder>/artifacts/<suite>/<cell>/<seed>/) and one ok record naming it (or `path`)."""
    folder = base / "results" / "artifacts" / "s" / "c1" / "0"
    shutil.copytree(adapter, folder)
    files = sorted(p.name for p in folder.iterdir())
    artifact = {"kind": "adapter", "path": path or str(folder.absolute()), "bytes": 1, "files": files}
    results = base / "results" / "s.jsonl"
    append_record(results, record(**{"cell_id": "c1", "suite": "s", "seed": 0, "artifact": artifact, "method": LORA,
                                     "model": CLIP, **changes}))
    return results, folder


def secret_folder(base: Path) -> Path:
    folder = base / "home" / ".ssh"
    folder.mkdir(parents=True)
    (folder / "id_rsa").write_text(SECRET)
    (folder / "adapter_model.safetensors").write_text(SECRET)  # a name export would copy, were it not outside
    return folder


def no_secret_written(base: Path) -> None:
    """Nothing outside the given folders, and no copy of the secret anywhere under `base` but its own folder."""
    for p in base.rglob("*"):
        if p.is_file() and not p.is_symlink() and ".ssh" not in p.parts:
            assert SECRET not in p.read_text(errors="replace"), p


def refused(argv, *words, code: int = 2) -> str:
    got, err, _ = run_cli(argv)
    assert got == code, err
    assert "Traceback" not in err and "unexpected" not in err and "bench bug" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture
def no_model_loads(monkeypatch):
    """--merged must refuse before building anything: building is a test failure."""
    def fail(*_a, **_k):
        raise AssertionError("merged_model was called before the artifact was checked")

    monkeypatch.setattr("bench.run.export.merged_model", fail)


def test_export_copies_the_kept_adapter_its_regular_files_only(tmp_path, kept_adapter):
    results, folder = results_with_adapter(tmp_path, kept_adapter)
    code, err, out = run_cli(["export", results, "c1", "--out", tmp_path / "out"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in folder.iterdir())
    assert all((tmp_path / "out" / p.name).read_bytes() == p.read_bytes() for p in folder.iterdir())


@pytest.mark.parametrize("merged", [False, True])
def test_a_record_whose_artifact_path_was_edited_to_point_elsewhere_is_refused(tmp_path, kept_adapter, merged, no_model_loads):
    for i, edit in enumerate(("secret", "dots")):
        base = tmp_path / str(i)
        secret = secret_folder(base)
        path = str(secret) if edit == "secret" else str(base / "results" / "artifacts" / ".." / ".." / "home" / ".ssh")
        results, _ = results_with_adapter(base, kept_adapter, path=path)
        err = refused(["export", results, "c1", "--out", base / "out", *(["--merged"] if merged else [])],
                      "artifact.path", "not inside the artifacts folder", "fix:", str(results))
        assert "c1" in err and not (base / "out").exists()
    no_secret_written(tmp_path)


def test_the_artifacts_folder_of_a_run_with_artifacts_dir_is_named_with_the_same_flag(tmp_path, kept_adapter):
    results, folder = results_with_adapter(tmp_path, kept_adapter)
    elsewhere = tmp_path / "big-disk" / "s" / "c1" / "0"
    shutil.move(folder, elsewhere)  # as `bench run --artifacts-dir big-disk` keeps it
    lines = results.read_text().replace(str(folder.absolute()), str(elsewhere.absolute()))
    results.write_text(lines)
    refused(["export", results, "c1", "--out", tmp_path / "o1"], "artifact.path", "--artifacts-dir")
    code, err, _ = run_cli(["export", results, "c1", "--artifacts-dir", tmp_path / "big-disk", "--out", tmp_path / "o2"])
    assert code == 0, err and (tmp_path / "o2" / "adapter_model.safetensors").is_file()
    refused(["export", results, "c1", "--artifacts-dir", tmp_path / "nowhere", "--out", tmp_path / "o3"],
            "--artifacts-dir", "does not exist")


@pytest.mark.parametrize("merged", [False, True])
def test_an_artifact_folder_that_is_itself_a_link_is_refused(tmp_path, kept_adapter, merged, no_model_loads):
    secret = secret_folder(tmp_path)
    results, folder = results_with_adapter(tmp_path, kept_adapter)
    inside = folder.parent / "kept-copy"
    shutil.copytree(folder, inside)
    shutil.rmtree(folder)
    for target in (secret, inside):  # outside the artifacts folder, and even inside it: no link is followed
        folder.symlink_to(target, target_is_directory=True)
        refused(["export", results, "c1", "--out", tmp_path / "out", *(["--merged"] if merged else [])],
                "artifact.path", "symbolic link")
        folder.unlink()
        assert not (tmp_path / "out").exists()
    inside.rename(folder)
    (folder.parent.parent).rename(tmp_path / "c1-real")  # a link higher up: artifacts/s/c1 -> elsewhere
    (folder.parent.parent).symlink_to(tmp_path / "c1-real", target_is_directory=True)
    refused(["export", results, "c1", "--out", tmp_path / "out"], "artifact.path", "symbolic link")
    no_secret_written(tmp_path)


@pytest.mark.parametrize("merged", [False, True])
def test_a_link_inside_the_artifact_folder_is_refused_and_nothing_is_copied(tmp_path, kept_adapter, merged, no_model_loads):
    secret = secret_folder(tmp_path)
    results, folder = results_with_adapter(tmp_path, kept_adapter)
    (folder / "extra").symlink_to(secret / "id_rsa")  # the review's case: a private key ended up in --out, exit 0
    err = refused(["export", results, "c1", "--out", tmp_path / "out", *(["--merged"] if merged else [])],
                  "extra", "symbolic link", "artifact.path")
    assert "fix:" in err and not (tmp_path / "out").exists()
    (folder / "extra").unlink()
    (folder / "adapter_config.json").unlink()  # a link in place of a file bench writes
    (folder / "adapter_config.json").symlink_to(secret / "id_rsa")
    refused(["export", results, "c1", "--out", tmp_path / "out"], "adapter_config.json", "symbolic link")
    no_secret_written(tmp_path)


def test_a_file_or_folder_bench_does_not_write_there_is_refused(tmp_path, kept_adapter):
    results, folder = results_with_adapter(tmp_path, kept_adapter)
    (folder / "notes.txt").write_text("mine")
    refused(["export", results, "c1", "--out", tmp_path / "out"], "notes.txt", "not a file PEFT or bench writes")
    (folder / "notes.txt").unlink()
    (folder / "sub").mkdir()
    refused(["export", results, "c1", "--out", tmp_path / "out"], "sub", "folder")
    (folder / "sub").rmdir()
    os.mkfifo(folder / "adapter_model.safetensors.fifo")
    refused(["export", results, "c1", "--out", tmp_path / "out"], "adapter_model.safetensors.fifo")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["file/sub", "dangling", "file", "full"])
def test_an_out_that_cannot_be_a_new_folder_is_named(tmp_path, kept_adapter, out):
    results, _ = results_with_adapter(tmp_path, kept_adapter)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    err = refused(["export", results, "c1", "--out", tmp_path / out], "--out", "fix:")
    assert not (tmp_path / "nowhere").exists() and (tmp_path / "file").read_text() == "x"
    assert ("symbolic link" in err) if out == "dangling" else True


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("damage", ["weights", "config", "config-list", "header-size"])
def test_a_garbage_adapter_file_is_named_before_anything_is_written_or_loaded(tmp_path, kept_adapter, merged, damage,
                                                                            no_model_loads):
    results, folder = results_with_adapter(tmp_path, kept_adapter)
    name = "adapter_config.json" if damage.startswith("config") else "adapter_model.safetensors"
    content = {"weights": os.urandom(5000), "config": b"not json {", "config-list": b"[1, 2]",
               "header-size": (10**6).to_bytes(8, "little") + b"{}"}[damage]
    (folder / name).write_bytes(content)
    err = refused(["export", results, "c1", "--out", tmp_path / "out", *(["--merged"] if merged else [])], name, "fix:")
    assert str(folder / name) in err and not (tmp_path / "out").exists()


def test_an_adapter_that_parses_but_does_not_fit_the_base_is_an_input_error(tmp_path, kept_adapter):
    results, folder = results_with_adapter(tmp_path, kept_adapter)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "NOT_A_METHOD"}))
    refused(["export", results, "c1", "--merged", "--out", tmp_path / "out"], "--merged", "does not load", "fix:")
    assert not (tmp_path / "out").exists()


def test_merged_export_of_a_clean_adapter_still_writes_a_plain_model(tmp_path, kept_adapter):
    results, _ = results_with_adapter(tmp_path, kept_adapter)
    code, err, _ = run_cli(["export", results, "c1", "--merged", "--out", tmp_path / "out"])
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "config.json").is_file()


def test_merging_a_base_that_runs_remote_code_needs_the_users_word(tmp_path, kept_adapter, no_model_loads):
    results, _ = results_with_adapter(tmp_path, kept_adapter, **{"model": {**CLIP, "trust_remote_code": True}})
    refused(["export", results, "c1", "--merged", "--out", tmp_path / "out"], "trust_remote_code",
            "--trust-remote-code")
    code, err, _ = run_cli(["export", results, "c1", "--out", tmp_path / "out"])  # the adapter alone runs nothing
    assert code == 0, err


def test_a_full_disk_while_exporting_is_named_and_leaves_nothing_half_written(tmp_path, kept_adapter, monkeypatch):
    results, _ = results_with_adapter(tmp_path, kept_adapter)
    calls = []

    def full(src, dst, length=0):
        calls.append(dst)
        if len(calls) == 2:  # the first file went in whole
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        dst.write(src.read())

    monkeypatch.setattr("bench.run.export.shutil.copyfileobj", full)
    refused(["export", results, "c1", "--out", tmp_path / "out"], "--out", "full (ENOSPC)", "fix:", code=1)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()  # an empty --out the user made stays, empty
    calls.clear()
    refused(["export", results, "c1", "--out", tmp_path / "empty"], "full (ENOSPC)", code=1)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


# ---------------------------------------------------------------- property: links anywhere in the artifact folder

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# where a link can sit on the way to, or inside, the cell's artifact folder (relative to <results>/artifacts)
PLACES = ["s", "s/c1", "s/c1/0", "s/c1/0/adapter_config.json", "s/c1/0/adapter_model.safetensors", "s/c1/0/README.md",
          "s/c1/0/extra", "s/c1/0/experts", "s/c1/0/experts/0", "s/c1/0/experts/0/adapter_model.safetensors",
          "s/c1/0/config.json"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(links=st.lists(st.tuples(st.sampled_from(PLACES), st.sampled_from(["secret-dir", "secret-file", "inside-dir",
                                                                          "inside-file", "dangling", "loop"])),
                      min_size=1, max_size=3, unique_by=lambda t: t[0]))
def test_no_link_anywhere_in_the_artifact_folder_is_ever_followed(kept_adapter, links):
    base = Path(tempfile.mkdtemp(prefix="export-links-"))
    try:
        secret = secret_folder(base)
        results, folder = results_with_adapter(base, kept_adapter)
        artifacts = base / "results" / "artifacts"
        spare = artifacts / "spare"  # a real adapter folder elsewhere inside the artifacts folder
        shutil.copytree(kept_adapter, spare)
        linked = False
        for place, kind in links:
            path = artifacts / place
            if not path.parent.is_dir() or path.parent.is_symlink():
                continue  # a link higher up already replaced the folder this would sit in
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            target = {"secret-dir": secret, "secret-file": secret / "id_rsa", "inside-dir": spare,
                      "inside-file": spare / "adapter_model.safetensors", "dangling": base / "nowhere", "loop": path}[kind]
            path.symlink_to(target)
            linked = True
        code, err, _ = run_cli(["export", results, "c1", "--out", base / "out"])
        assert "Traceback" not in err and "unexpected" not in err, err
        if linked and code == 0:  # only possible when every link sat somewhere a run never reads
            pytest.fail(f"exported through a link: {links}")
        if linked:
            assert code == 2 and ("symbolic link" in err or "gone" in err or "nothing to export" in err), err
            assert not (base / "out").exists()
        no_secret_written(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
