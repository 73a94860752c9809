"""Hugging Face datasets as files on disk (bench/data/formats/hf.py): the Hub's parquet files (a repository folder whose
splits come from the file names, or a single .parquet file) and save_to_disk folders, for formats hf, chartqa and
preference; read offline, nothing written outside the user's folders; each failure named with its fix."""

from __future__ import annotations

import os

import pytest
from conftest import needs_datasets
from datasources import hf_dataset_dict

from bench.data.loader import check_dataset, load_dataset
from bench.errors import BenchError, DataError

pytestmark = needs_datasets


@pytest.fixture(scope="module")
def vqa_splits():
    return load_dataset({"format": "scenes", "task": "vqa", "train_size": 6, "eval_size": 4}, base_dir=".")


def parquet_repo(folder, splits, shards: int = 2):
    (folder / "data").mkdir(parents=True)
    for name, ds in hf_dataset_dict(splits).items():
        n = shards if name == "train" else 1
        for k in range(n):
            ds.shard(n, k, contiguous=True).to_parquet(str(folder / "data" / f"{name}-{k:05d}-of-{n:05d}.parquet"))
    return folder


def test_a_repository_folder_reads_each_split_from_its_shards(tmp_path, vqa_splits):
    parquet_repo(tmp_path / "repo", vqa_splits)
    table = {"format": "hf", "task": "vqa", "path": "repo", "hf_eval_split": "test", "shuffle": False}
    splits = load_dataset(table, base_dir=tmp_path)
    assert [s.question for s in splits.train] == [s.question for s in vqa_splits.train]  # both shards, in order
    assert [s.answers for s in splits.eval] == [s.answers for s in vqa_splits.eval]
    assert splits.train[0].decoded().image.tobytes() == vqa_splits.train[0].image.tobytes()
    with pytest.raises(DataError, match=r"split 'validation' is not in the folder's files \(it has \['test', 'train'\]\)"):
        load_dataset({**table, "hf_eval_split": "validation"}, base_dir=tmp_path)


def test_a_single_parquet_file_is_one_split_and_eval_path_names_the_other(tmp_path, vqa_splits):
    parquet_repo(tmp_path / "repo", vqa_splits, shards=1)
    table = {"format": "hf", "task": "vqa", "path": "repo/data/train-00000-of-00001.parquet",
             "eval_path": "repo/data/test-00000-of-00001.parquet", "shuffle": False}
    check_dataset(table, base_dir=tmp_path, file="s.toml", where="[datasets.d]")
    splits = load_dataset(table, base_dir=tmp_path)
    assert len(splits.train) == 6 and len(splits.eval) == 4
    one_file = {k: v for k, v in table.items() if k != "eval_path"} | {"hf_eval_split": "test"}
    with pytest.raises(BenchError, match="hf_eval_split has nothing to pick"):
        check_dataset(one_file, base_dir=tmp_path, file="s.toml", where="[datasets.d]")


def test_nothing_is_written_outside_the_users_folders(tmp_path, vqa_splits, monkeypatch):
    """datasets' cache (HF_HOME) is not touched: parquet is read through a temporary cache that is removed."""
    parquet_repo(tmp_path / "repo", vqa_splits)
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    before = set(os.listdir(os.environ["TMPDIR"]))
    load_dataset({"format": "hf", "task": "vqa", "path": "repo", "hf_eval_split": "test"}, base_dir=tmp_path)
    assert not home.exists() or not any(home.rglob("*"))
    assert set(os.listdir(os.environ["TMPDIR"])) == before
    assert sorted(p.name for p in (tmp_path / "repo" / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]


def test_preference_and_chartqa_read_parquet_too(tmp_path):
    pairs = load_dataset({"format": "scenes", "task": "preference", "train_size": 4, "eval_size": 2}, base_dir=".")
    parquet_repo(tmp_path / "pairs", pairs, shards=1)
    splits = load_dataset({"format": "preference", "path": "pairs/data/train-00000-of-00001.parquet",
                           "eval_path": "pairs/data/test-00000-of-00001.parquet", "shuffle": False}, base_dir=tmp_path)
    assert [s.rejected for s in splits.train] == [s.rejected for s in pairs.train]


@pytest.mark.parametrize("content", [b"garbage", b"PAR1" + b"\0" * 64])
def test_an_unreadable_parquet_file_is_named_with_a_fix_that_fits(tmp_path, content):
    (tmp_path / "d.parquet").write_bytes(content)
    for fmt in ("hf", "preference", "chartqa"):
        table = {"format": fmt, "path": "d.parquet", **({"task": "vqa"} if fmt == "hf" else {})}
        with pytest.raises(DataError) as info:
            load_dataset(table, base_dir=tmp_path)
        text = str(info.value)
        assert "d.parquet" in text and ".parquet file" in info.value.fix
        assert "network" not in text and "UTF-8" not in text


def test_a_hub_name_not_in_the_cache_says_how_to_get_it_here(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(DataError) as info:
        load_dataset({"format": "hf", "task": "vqa", "hf_name": "nobody/nothing"}, base_dir=tmp_path)
    assert "hf_name" in str(info.value) and "copy the dataset's files here" in info.value.fix


def test_rows_without_an_image_are_text_only_under_either_policy(tmp_path, vqa_splits):
    import datasets

    ds = hf_dataset_dict(vqa_splits)["train"]
    rows = ds.to_list()
    rows[1]["image"], rows[4]["image"] = None, None
    datasets.Dataset.from_list(rows, features=ds.features).save_to_disk(str(tmp_path / "saved"))
    table = {"format": "hf", "task": "vqa", "path": "saved"}
    splits = load_dataset(table, base_dir=tmp_path)  # "error": text-only rows are no error
    assert splits.info["skipped"] == {"text-only record": 2} and len(splits.train) + len(splits.eval) == 4
    pairs = load_dataset({"format": "scenes", "task": "preference", "train_size": 4, "eval_size": 2}, base_dir=".")
    rows = hf_dataset_dict(pairs)["train"].to_list()
    features = datasets.Features({"images": datasets.List(datasets.Image()), **{k: datasets.Value("string") for k in
                                                                             ("prompt", "chosen", "rejected")}})
    listed = [{"images": [] if i == 0 else [r["image"]], **{k: r[k] for k in ("prompt", "chosen", "rejected")}}
              for i, r in enumerate(rows)]
    datasets.Dataset.from_list(listed, features=features).save_to_disk(str(tmp_path / "trl"))
    before = sorted(p.name for p in (tmp_path / "trl").iterdir())
    splits = load_dataset({"format": "preference", "path": "trl"}, base_dir=tmp_path)
    assert splits.info["skipped"] == {"text-only record": 1}
    # a list-of-images column is cast in memory: nothing is written beside the user's data
    assert sorted(p.name for p in (tmp_path / "trl").iterdir()) == before


def test_image_paths_in_a_parquet_file_start_at_its_folder(tmp_path, vqa_splits, monkeypatch):
    import datasets

    (tmp_path / "d" / "img").mkdir(parents=True)
    rows = []
    for i, s in enumerate(vqa_splits.train):
        s.image.save(tmp_path / "d" / "img" / f"{i}.png")
        rows.append({"image": {"bytes": None, "path": f"img/{i}.png"}, "question": s.question, "answers": list(s.answers)})
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answers": datasets.List(datasets.Value("string"))})
    monkeypatch.chdir(tmp_path / "d")  # datasets reads a path-only image as it writes the row
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "d" / "train.parquet"))
    monkeypatch.chdir(tmp_path)
    splits = load_dataset({"format": "hf", "task": "vqa", "path": "d/train.parquet", "shuffle": False}, base_dir=tmp_path)
    assert [s.image.source for s in splits.train][:2] == [str(tmp_path / "d" / "img" / f"{i}.png") for i in range(2)]
