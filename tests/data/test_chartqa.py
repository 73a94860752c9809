"""format = "chartqa": ChartQA's JSON / JSONL and its Hugging Face dataset; every malformed record named by record and
field, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_datasets, png, raises_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.data import formats
from bench.data.loader import check_dataset, load_dataset
from bench.errors import DataError, SuiteError

SUITE = "suites/demo.toml"
WHERE = "[datasets.chartqa]"
def record(i: int = 0, **extra) -> dict:
    return {"imgname": f"{i}.png", "query": f"what is the value of bar {i} ?", "label": str(10 + i)} | extra


@pytest.fixture
def folder(tmp_path) -> Path:
    for i in range(6):
        png(tmp_path / f"{i}.png", (i * 40, 0, 0))
    return tmp_path


def write(path: Path, records, *, jsonl: bool = False) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n" if jsonl else json.dumps(records))
    return path



# ---------------------------------------------------------------- files


def test_chartqa_json_loads_questions_and_labels(folder):
    records = formats.read_chartqa(write(folder / "train_human.json", [record(i) for i in range(3)]))
    assert [r.question for r in records] == [f"what is the value of bar {i} ?" for i in range(3)]
    assert [r.answers for r in records] == [("10",), ("11",), ("12",)]
    assert records[0].turns == (("what is the value of bar 0 ?", "10"),) and records[0].image_field == "imgname"
    assert records[1].image == folder / "1.png" and records[1].where == "record 1"


def test_chartqa_jsonl_with_image_for_imgname_numbers_and_several_labels(folder):
    rows = [{"image": "0.png", "query": "how many ?", "label": 12},
            {"imgname": "1.png", "query": "share ?", "label": ["35%", "0.35"]},
            {"imgname": "2.png", "query": "<image>\nwhich is highest ?", "label": " Japan "}]
    records = formats.read_chartqa(write(folder / "val.jsonl", rows, jsonl=True))
    assert [r.answers for r in records] == [("12",), ("35%", "0.35"), ("Japan",)]
    assert records[0].image_field == "image" and records[0].where == "record 0 (line 1)"
    assert records[2].question == "which is highest ?"  # the placeholder goes: the task puts the image tokens


@pytest.mark.parametrize(
    "bad, where, words",
    [
        ({"query": None}, "record 1, field 'query'", "non-empty string"),
        ({"query": "  "}, "record 1, field 'query'", "an empty one"),
        ({"query": "<image>"}, "record 1, field 'query'", "placeholder"),
        ({"label": None}, "record 1, field 'label'", "missing field 'label'"),
        ({"label": ""}, "record 1, field 'label'", "an empty one"),
        ({"label": []}, "record 1, field 'label'", "empty list"),
        ({"label": ["3", True]}, "record 1, field 'label[1]'", "got bool"),
        ({"label": {"answer": "3"}}, "record 1, field 'label'", "an object"),
        ({"label": "<image>"}, "record 1, field 'label'", "placeholder"),
        ({"imgname": "missing.png"}, "record 1, field 'imgname'", "does not exist"),
        ({"imgname": "../0.png"}, "record 1, field 'imgname'", "escapes the image root"),
        ({"imgname": 3}, "record 1, field 'imgname'", "non-empty path string"),
    ],
)
def test_a_bad_record_is_named_by_record_and_field(folder, bad, where, words):
    path = write(folder / "qa.json", [record(0), record(1) | bad])
    raises_at(lambda: formats.read_chartqa(path), str(path), where, words)


def test_missing_image_name_and_bad_files(folder):
    no_image = {k: v for k, v in record(1).items() if k != "imgname"}
    raises_at(lambda: formats.read_chartqa(write(folder / "a.json", [record(0), no_image])),
              "record 1, field 'imgname'", "missing field 'imgname'")
    raises_at(lambda: formats.read_chartqa(write(folder / "b.json", [])), "has no records")
    raises_at(lambda: formats.read_chartqa(write(folder / "c.json", [record(0), "x"])), "record 1", "expected an object")
    (folder / "d.json").write_text('[{"imgname": "0.png",')
    raises_at(lambda: formats.read_chartqa(folder / "d.json"), "not valid JSON")
    (folder / "e.jsonl").write_text(json.dumps(record(0)) + "\n{oops\n")
    raises_at(lambda: formats.read_chartqa(folder / "e.jsonl"), "record 1 (line 2)", "not valid JSON")
    raises_at(lambda: formats.read_chartqa(folder / "nothing.json"), "does not exist")


def test_chartqas_png_folder_is_where_images_are_read_as_distributed(tmp_path):
    """ChartQA keeps a split's images in png/ beside its JSON files: found there without image_root."""
    png(tmp_path / "png" / "0.png")
    path = write(tmp_path / "train_human.json", [record(0)])
    assert formats.read_chartqa(path)[0].image == tmp_path / "png" / "0.png"
    assert formats.read_chartqa(tmp_path)[0].image == tmp_path / "png" / "0.png"  # the split folder itself
    raises_at(lambda: formats.read_chartqa(path, image_root=tmp_path), "record 0, field 'imgname'", "does not exist")


_VALUE = st.recursive(st.none() | st.booleans() | st.integers(-5, 20) | st.floats(allow_nan=True)
                      | st.sampled_from(["", " ", "0.png", "1.png", "../0.png", "/etc/passwd", "<image>", "q ?", "12"]),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["answer", "x"]), inner,
                                                                                  max_size=2), max_leaves=6)
_RECORD = st.dictionaries(st.sampled_from(["imgname", "image", "query", "label", "extra"]), _VALUE, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_RECORD | _VALUE, max_size=4), jsonl=st.booleans())
def test_any_json_either_loads_or_names_its_record(folder, rows, jsonl):
    path = folder / ("fuzz.jsonl" if jsonl else "fuzz.json")
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    try:
        records = formats.read_chartqa(path)
    except DataError as e:
        assert e.file == str(path) and e.fix
        assert e.where is None or e.where.startswith(("record", "line", "top level"))
        return
    assert records and all(r.question and r.answers and all(a.strip() for a in r.answers) for r in records)
    assert all(r.image.is_file() and r.image.parent == folder for r in records)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_any_bytes_are_a_data_error(folder, data):
    path = folder / "junk.json"
    path.write_bytes(data)
    try:
        formats.read_chartqa(path)
    except DataError as e:
        assert e.file == str(path)


# ---------------------------------------------------------------- through the loader


def check(cfg, base_dir):
    return check_dataset(cfg, base_dir=base_dir, file=SUITE, where=WHERE)


def test_loaded_chartqa_is_vqa_scored_by_relaxed_accuracy(folder):
    write(folder / "train.json", [record(i) for i in range(5)])
    write(folder / "val.jsonl", [record(5)], jsonl=True)
    cfg = {"format": "chartqa", "path": "train.json", "eval_path": "val.jsonl"}
    check(cfg, folder)
    splits = load_dataset(cfg, base_dir=folder)
    assert splits.task == "vqa" and splits.answer_metric == "relaxed_accuracy"
    assert (len(splits.train), len(splits.eval)) == (5, 1) and splits.eval[0].answers == ("15",)
    assert splits.eval[0].decoded().image.getpixel((0, 0)) == (200, 0, 0)
    held = load_dataset({"format": "chartqa", "path": "train.json", "eval_fraction": 0.4}, base_dir=folder)
    assert (len(held.train), len(held.eval)) == (3, 2)


def test_check_finds_a_bad_image_before_any_model_is_built(folder):
    (folder / "5.png").write_bytes(b"not a png")
    write(folder / "train.json", [record(i) for i in range(6)])
    with pytest.raises(DataError, match="record 5, field 'imgname'.*cannot be read"):
        check({"format": "chartqa", "path": "train.json"}, folder)


@pytest.mark.parametrize(
    "cfg, key, words",
    [
        ({"format": "chartqa"}, "path", "exactly one of 'path'"),
        ({"format": "chartqa", "path": "train.json", "hf_name": "HuggingFaceM4/ChartQA"}, "path", "exactly one of"),
        ({"format": "chartqa", "task": "caption", "path": "train.json"}, "task", "does not give task"),
        ({"format": "chartqa", "hf_name": "HuggingFaceM4/ChartQA", "eval_path": "val.json"}, "eval_path", "hf_eval_split"),
        ({"format": "chartqa", "path": "train.json", "hf_split": "val"}, "hf_split", "is a data file"),
        ({"format": "chartqa", "path": "train.json", "columns": {"question": "q"}}, "columns", "is a data file"),
        ({"format": "chartqa", "path": "train.json", "split": "source"}, "split", "does not apply"),
    ],
)
def test_table_mistakes_name_the_key(folder, cfg, key, words):
    write(folder / "train.json", [record(0), record(1)])
    with pytest.raises(SuiteError) as info:
        check(cfg, folder)
    text = str(info.value)
    assert text.startswith(f"{SUITE}: {WHERE}, key '{key}'") and words in text, text
    assert info.value.fix


# ---------------------------------------------------------------- the Hugging Face dataset (HuggingFaceM4/ChartQA's columns)


def save_chartqa(path: Path, splits: dict[str, int], label_as_list: bool = True) -> Path:
    import datasets

    def split(n: int, offset: int):
        rows = {"image": [Image.new("RGB", (5, 5), (offset + i, 0, 0)) for i in range(n)],
                "query": [f"what is the value of bar {offset + i} ?" for i in range(n)],
                "label": [[str(offset + i)] if label_as_list else str(offset + i) for i in range(n)],
                "human_or_machine": [0] * n}
        return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())

    offsets = {name: 100 * k for k, name in enumerate(splits)}
    datasets.DatasetDict({name: split(n, offsets[name]) for name, n in splits.items()}).save_to_disk(str(path))
    return path


@needs_datasets
@pytest.mark.parametrize("label_as_list", [True, False])
def test_a_saved_chartqa_dataset_reads_its_own_columns(tmp_path, label_as_list):
    save_chartqa(tmp_path / "chartqa", {"train": 4, "val": 2}, label_as_list)
    cfg = {"format": "chartqa", "path": "chartqa", "hf_eval_split": "val"}
    check(cfg, tmp_path)
    splits = load_dataset(cfg, base_dir=tmp_path, seed=1)
    assert splits.task == "vqa" and splits.answer_metric == "relaxed_accuracy"
    assert sorted(s.answers for s in splits.eval) == [("100",), ("101",)]
    assert sorted(s.question for s in splits.train)[0] == "what is the value of bar 0 ?"
    assert splits.info["eval_from"].endswith("[val]")
    assert sorted(s.decoded().image.getpixel((0, 0))[0] for s in splits.train) == [0, 1, 2, 3]


@needs_datasets
def test_a_saved_chartqa_dataset_with_other_columns_and_wrong_keys(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"img": [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(3)], "q": ["a ?", "b ?", "c ?"],
                                     "a": ["1", "2", "3"]}).cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "other"))
    with pytest.raises(DataError, match="column 'image' .* not in the dataset"):
        check({"format": "chartqa", "path": "other"}, tmp_path)
    cfg = {"format": "chartqa", "path": "other", "columns": {"image": "img", "question": "q", "answers": "a"},
           "hf_split": "train"}
    check(cfg, tmp_path)
    assert [s.answers for s in load_dataset(cfg | {"shuffle": False}, base_dir=tmp_path).train] == [("1",), ("2",)]
    with pytest.raises(SuiteError, match="key 'eval_path'.*hf_eval_split"):
        check({"format": "chartqa", "path": "other", "eval_path": "other"}, tmp_path)
    save_chartqa(tmp_path / "chartqa", {"train": 2})
    with pytest.raises(DataError, match="split 'test' is not in the saved dataset"):
        check({"format": "chartqa", "path": "chartqa", "hf_split": "test"}, tmp_path)
