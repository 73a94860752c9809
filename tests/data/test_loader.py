"""The dataset entry point: table validation, train/eval splitting, limits, seeds, relative paths."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from bench.data import charts, digits
from bench.data.loader import DATASET_KEYS, FORMAT_KEYS, FORMATS, check_dataset, load_dataset
from bench.data.sample import TASKS
from bench.errors import DataError, SuiteError

SUITE = "suites/demo.toml"
WHERE = "[datasets.demo]"


def make_csv_dataset(folder: Path, n: int = 10, classes=("cat", "dog")) -> Path:
    rows = ["image,label"]
    for i in range(n):
        label = classes[i % len(classes)]
        path = folder / "imgs" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(path)
        rows.append(f"imgs/{i}.png,{label}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def reds(samples):
    return [s.decoded().image.getpixel((0, 0))[0] // 20 for s in samples]  # the record index drawn into the pixel


def check(cfg, base_dir=Path(".")):
    return check_dataset(cfg, base_dir=base_dir, file=SUITE, where=WHERE)


def test_keys_are_documented_and_every_format_key_is_known():
    assert set(FORMATS) == set(FORMAT_KEYS)
    for key, spec in DATASET_KEYS.items():
        assert isinstance(spec.doc, str) and spec.doc and isinstance(spec.type, (type, tuple)), key
    for keys in FORMAT_KEYS.values():
        assert keys <= set(DATASET_KEYS)
    assert FORMATS["scenes"] == TASKS and FORMATS["digits"] == digits.VIEWS and FORMATS["charts"] == charts.VIEWS


@pytest.mark.parametrize(
    "cfg, key, words",
    [
        ({"format": "scenes", "task": "vqa", "colour": 1}, "colour", "unknown key"),
        ({"format": "scenes", "task": "vqa", "train_size": "10"}, "train_size", "an integer"),
        ({"format": "scenes", "task": "vqa", "train_size": True}, "train_size", "an integer"),
        ({"format": "scenes", "task": "vqa", "path": "x.json"}, "path", "does not apply"),
        ({"format": "parquet"}, "format", "unknown format"),
        ({"task": "vqa"}, "format", "missing key 'format'"),
        ({"format": "llava", "task": "caption", "path": "a.json"}, "task", "does not give task"),
        ({"format": "scenes", "task": "vqa", "split": "test"}, "split", "is not one of source, target"),
        ({"format": "csv"}, "path", "needs 'path'"),
        ({"format": "csv", "path": "a.csv", "eval_fraction": 1.5}, "eval_fraction", "between 0 (excluded) and 1 (excluded)"),
        ({"format": "csv", "path": "a.csv", "eval_path": "b.csv", "eval_fraction": 0.1}, "eval_fraction", "no effect"),
        ({"format": "digits", "task": "vqa", "train_size": 1700, "eval_size": 200}, "train_size", "1797"),
        ({"format": "hf", "task": "vqa"}, "path", "exactly one of"),
        ({"format": "hf", "hf_name": "x"}, "task", "several tasks"),
        ({"format": "hf", "task": "vqa", "hf_name": "x", "columns": {"picture": "img"}}, "columns", "columns.picture"),
    ],
)
def test_table_mistakes_name_suite_table_and_key(cfg, key, words):
    with pytest.raises(SuiteError) as info:
        check(cfg)
    text = str(info.value)
    assert text.startswith(f"{SUITE}: {WHERE}, key '{key}'") and words in text, text
    assert info.value.fix


def test_check_passes_good_tables_and_finds_bad_records(tmp_path):
    make_csv_dataset(tmp_path)
    check({"format": "scenes", "task": "caption", "split": "source"})
    check({"format": "csv", "path": "labels.csv"}, base_dir=tmp_path)
    (tmp_path / "imgs" / "3.png").write_bytes(b"broken")
    with pytest.raises(DataError) as info:
        check({"format": "csv", "path": "labels.csv"}, base_dir=tmp_path)
    assert info.value.file == str(tmp_path / "labels.csv") and "record 3 (line 5), field 'image'" in str(info.value)
    with pytest.raises(SuiteError, match="key 'path': path 'missing.csv' does not exist"):
        check({"format": "csv", "path": "missing.csv"}, base_dir=tmp_path)
    with pytest.raises(SuiteError, match="key 'image_root'"):
        check({"format": "csv", "path": "labels.csv", "image_root": "pictures"}, base_dir=tmp_path)


def test_single_class_is_not_a_classification_dataset(tmp_path):
    make_csv_dataset(tmp_path, n=4, classes=("cat",))
    with pytest.raises(DataError, match="at least 2 classes"):
        check({"format": "csv", "path": "labels.csv"}, base_dir=tmp_path)


def test_eval_fraction_split_is_seeded_and_disjoint(tmp_path):
    make_csv_dataset(tmp_path, n=10)
    cfg = {"format": "csv", "path": "labels.csv"}
    a = load_dataset(cfg, base_dir=tmp_path, seed=1)
    assert a.task == "classification" and a.classnames == ("cat", "dog")
    assert len(a.train) == 8 and len(a.eval) == 2  # default eval_fraction 0.2
    assert sorted(reds(a.train) + reds(a.eval)) == list(range(10))
    for s in a.train + a.eval:
        assert a.classnames[s.label] == ("cat", "dog")[reds([s])[0] % 2]
    again = load_dataset(cfg, base_dir=tmp_path, seed=1)
    assert reds(again.train) == reds(a.train) and again.fingerprint == a.fingerprint
    other = load_dataset(cfg, base_dir=tmp_path, seed=2)
    assert reds(other.train) != reds(a.train) and other.fingerprint != a.fingerprint
    # the table's own seed wins over the caller's
    assert reds(load_dataset(cfg | {"seed": 1}, base_dir=tmp_path, seed=2).train) == reds(a.train)


def test_unshuffled_split_keeps_file_order_and_limits_cut_each_part(tmp_path):
    make_csv_dataset(tmp_path, n=10)
    cfg = {"format": "csv", "path": "labels.csv", "shuffle": False, "eval_fraction": 0.3,
           "train_size": 4, "eval_size": 2}
    splits = load_dataset(cfg, base_dir=tmp_path)
    assert reds(splits.train) == [0, 1, 2, 3] and reds(splits.eval) == [7, 8]
    assert splits.info["n_records"] == 10 and splits.info["n_train"] == 4


def test_eval_path_and_classnames_from_both_files(tmp_path):
    make_csv_dataset(tmp_path / "train", n=6, classes=("cat", "dog"))
    make_csv_dataset(tmp_path / "eval", n=3, classes=("bird", "cat", "dog"))
    cfg = {"format": "csv", "path": "train/labels.csv", "eval_path": "eval/labels.csv", "shuffle": False}
    splits = load_dataset(cfg, base_dir=tmp_path)
    assert splits.classnames == ("bird", "cat", "dog")
    assert len(splits.train) == 6 and [splits.classnames[s.label] for s in splits.eval] == ["bird", "cat", "dog"]
    assert [splits.classnames[s.label] for s in splits.train[:2]] == ["cat", "dog"]


def test_too_few_records_to_split(tmp_path):
    make_csv_dataset(tmp_path, n=1)
    (tmp_path / "labels.csv").write_text("image,label\nimgs/0.png,cat\n")
    with pytest.raises(DataError):
        load_dataset({"format": "csv", "path": "labels.csv"}, base_dir=tmp_path)


def test_bundled_formats_through_the_loader():
    cfg = {"format": "scenes", "task": "vqa", "train_size": 6, "eval_size": 3}
    scenes = load_dataset(cfg, base_dir=Path("."), seed=5)
    assert scenes.task == "vqa" and len(scenes.train) == 6 and len(scenes.eval) == 3
    assert scenes.info["split"] == "target" and scenes.info["seed"] == 5
    digits = load_dataset({"format": "digits", "task": "classification", "train_size": 5, "eval_size": 5,
                           "image_size": 16}, base_dir=Path("."))
    assert digits.train[0].image.size == (16, 16) and len(digits.classnames) == 10
    with pytest.raises(SuiteError, match="several tasks"):
        load_dataset({"format": "scenes"}, base_dir=Path("."))


def test_llava_jsonl_and_coco_through_the_loader(tmp_path):
    img = tmp_path / "data" / "images" / "a.png"
    img.parent.mkdir(parents=True)
    Image.new("RGB", (5, 5), (1, 2, 3)).save(img)
    llava = [{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq ?"},
                                                   {"from": "gpt", "value": "yes"}]}] * 3
    (tmp_path / "data" / "llava.json").write_text(json.dumps(llava))
    cfg = {"format": "llava", "path": "data/llava.json", "image_root": "data/images", "eval_fraction": 0.34}
    check(cfg, base_dir=tmp_path)
    splits = load_dataset(cfg, base_dir=tmp_path)
    assert splits.task == "vqa" and len(splits.train) == 2 and len(splits.eval) == 1
    assert splits.eval[0].turns == (("q ?", "yes"),) and splits.eval[0].decoded().image.getpixel((0, 0)) == (1, 2, 3)

    line = {"image": "images/a.png", "question": "q ?", "answers": ["yes"] * 10}
    (tmp_path / "data" / "vqa.jsonl").write_text((json.dumps(line) + "\n") * 4)
    splits = load_dataset({"format": "vqa_jsonl", "path": "data/vqa.jsonl", "eval_size": 1}, base_dir=tmp_path)
    assert len(splits.eval) == 1 and splits.eval[0].answers == ("yes",) * 10

    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}],
            "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"},
                            {"image_id": 2, "caption": "z"}]}
    (tmp_path / "data" / "images" / "coco.json").write_text(json.dumps(coco))
    splits = load_dataset({"format": "coco_captions", "path": "data/images/coco.json", "shuffle": False,
                           "eval_fraction": 0.5}, base_dir=tmp_path)
    assert splits.task == "caption" and splits.eval[0].captions == ("y", "z")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="`datasets` is not installed")
def test_hf_saved_dataset_dict_with_an_eval_split(tmp_path):
    import datasets

    def part(n):
        return datasets.Dataset.from_dict({
            "image": [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(n)],
            "q": ["q ?"] * n,
            "answers": [[{"answer": "yes"}, {"answer": "no"}, {"answer": "yes"}]] * n,
        })

    datasets.DatasetDict({"train": part(6), "validation": part(3)}).save_to_disk(str(tmp_path / "saved"))
    cfg = {"format": "hf", "task": "vqa", "path": "saved", "hf_eval_split": "validation", "columns": {"question": "q"}}
    check(cfg, base_dir=tmp_path)
    splits = load_dataset(cfg, base_dir=tmp_path)
    assert len(splits.train) == 6 and len(splits.eval) == 3
    assert splits.eval[0].answers == ("yes", "no", "yes") and splits.eval[0].turns == (("q ?", "yes"),)
    with pytest.raises(DataError, match="split 'test' is not in the saved dataset"):
        load_dataset(cfg | {"hf_split": "test"}, base_dir=tmp_path)
