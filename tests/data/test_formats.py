"""On-disk formats: good files load into Records/Samples; each malformed file names record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import HAS_DATASETS, png, raises_at
from PIL import Image

from bench.data import formats
from bench.data.formats.hf import read_hf
from bench.data.problems import Problems
from bench.data.sample import ImageFile
from bench.errors import DataError


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def turn(role, value):
    return {"from": role, "value": value}


def llava_record(image="img/a.png", **extra):
    record = {"id": "r", "image": image,
              "conversations": [turn("human", "<image>\nwhat color is it ?"), turn("gpt", "red")]}
    return record | extra


@pytest.fixture
def llava_dir(tmp_path):
    png(tmp_path / "img" / "a.png", (255, 0, 0))
    png(tmp_path / "img" / "b.png", (0, 0, 255))
    return tmp_path



# ---------------------------------------------------------------- LLaVA


def test_llava_loads_turns_without_the_image_placeholder(llava_dir):
    data = [
        llava_record(),
        {"image": "img/b.png", "conversations": [
            turn("user", "what shape ?\n<image>"), turn("assistant", "a square"),
            turn("human", "and its color ?"), turn("gpt", "blue")]},
    ]
    records = formats.read_llava(write_json(llava_dir / "data.json", data))
    assert [r.turns for r in records] == [
        (("what color is it ?", "red"),),
        (("what shape ?", "a square"), ("and its color ?", "blue")),
    ]
    assert records[1].question == "what shape ?" and records[1].answers == ("a square",)
    samples = formats.to_samples(records)
    assert samples[1].decoded().image.mode == "RGB" and samples[1].decoded().image.getpixel((0, 0)) == (0, 0, 255)


def test_llava_image_root_is_separate_from_the_json(tmp_path):
    png(tmp_path / "images" / "x" / "a.png")
    (tmp_path / "ann").mkdir()
    path = write_json(tmp_path / "ann" / "d.json", [llava_record("x/a.png")])
    assert formats.read_llava(path, tmp_path / "images")[0].image == tmp_path / "images" / "x" / "a.png"


def test_llava_not_a_list(llava_dir):
    path = write_json(llava_dir / "d.json", {"image": "img/a.png"})
    err = raises_at(lambda: formats.read_llava(path), "top level", "list")
    assert err.file == str(path)


def test_llava_missing_image_file(llava_dir):
    path = write_json(llava_dir / "d.json", [llava_record(), llava_record("img/missing.png")])
    raises_at(lambda: formats.read_llava(path), "record 1", "field 'image'", "does not exist")


def test_llava_text_only_records_are_left_out_and_counted(llava_dir):
    """LLaVA-1.5's mix665k holds conversations without an image: they are not errors, under either policy."""
    record = llava_record()
    del record["image"]
    path = write_json(llava_dir / "d.json", [llava_record(), llava_record(), record, llava_record(image=None)])
    assert len(formats.read_llava(path)) == 2  # strict: still no error
    problems = Problems()
    assert [r.where for r in formats.read_llava(path, problems=problems)] == ["record 0 (id 'r')", "record 1 (id 'r')"]
    assert problems.counts() == {"text-only record": 2} and not problems.errors
    problems.raise_if_any()  # nothing to raise under "error"


def test_llava_unreadable_image_is_found_by_check_images(llava_dir):
    (llava_dir / "img" / "bad.png").write_bytes(b"not a png at all")
    path = write_json(llava_dir / "d.json", [llava_record(), llava_record("img/bad.png")])
    records = formats.read_llava(path)  # structure is fine; the bytes are not
    raises_at(lambda: formats.check_images(records), "record 1", "field 'image'", "cannot be read")


def test_llava_conversations_of_the_wrong_type(llava_dir):
    path = write_json(llava_dir / "d.json", [llava_record(), llava_record(conversations="hi")])
    raises_at(lambda: formats.read_llava(path), "record 1", "field 'conversations'", "list")


def test_llava_turn_with_unknown_role(llava_dir):
    bad = llava_record(conversations=[turn("human", "q"), turn("bot", "a")])
    path = write_json(llava_dir / "d.json", [bad])
    raises_at(lambda: formats.read_llava(path), "record 0", "field 'conversations[1].from'", "'bot'")


def test_llava_empty_conversation(llava_dir):
    path = write_json(llava_dir / "d.json", [llava_record()] * 3 + [llava_record(conversations=[])])
    raises_at(lambda: formats.read_llava(path), "record 3", "field 'conversations'", "empty conversation")


def test_llava_turns_not_alternating(llava_dir):
    bad = llava_record(conversations=[turn("human", "q"), turn("human", "q2"), turn("gpt", "a")])
    path = write_json(llava_dir / "d.json", [llava_record(), bad])
    raises_at(lambda: formats.read_llava(path), "record 1", "field 'conversations[1].from'", "alternate")


def test_llava_conversation_ending_with_a_question(llava_dir):
    bad = llava_record(conversations=[turn("human", "q"), turn("gpt", "a"), turn("human", "q2")])
    path = write_json(llava_dir / "d.json", [bad])
    raises_at(lambda: formats.read_llava(path), "record 0", "field 'conversations'", "no answer")


@pytest.mark.parametrize("image", ["../outside.png", "img/../../outside.png", "ABSOLUTE"])
def test_llava_image_path_escaping_the_root(tmp_path, image):
    root = tmp_path / "root"
    png(tmp_path / "outside.png")  # it exists, but must still be refused
    png(root / "img" / "a.png")
    image = str(tmp_path / "outside.png") if image == "ABSOLUTE" else image
    path = write_json(root / "d.json", [llava_record(), llava_record(image)])
    raises_at(lambda: formats.read_llava(path), "record 1", "field 'image'", "escapes the image root")


def test_llava_dotdot_that_stays_inside_the_root_is_fine(llava_dir):
    path = write_json(llava_dir / "d.json", [llava_record("img/../img/a.png")])
    assert formats.read_llava(path)[0].image == llava_dir / "img" / "a.png"


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"image": "a.png",}\n]')
    raises_at(lambda: formats.read_llava(path), "line 2", "not valid JSON")


def test_missing_data_file(tmp_path):
    raises_at(lambda: formats.read_llava(tmp_path / "nope.json"), "does not exist")


# ---------------------------------------------------------------- COCO captions


def coco(tmp_path, images, annotations):
    return write_json(tmp_path / "captions.json", {"images": images, "annotations": annotations})


def test_coco_groups_all_references_per_image(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    path = coco(
        tmp_path,
        [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
        [{"image_id": 9, "caption": "a blue  square"}, {"image_id": 7, "caption": "a red circle"},
         {"image_id": 9, "caption": "one square"}],
    )
    records = formats.read_coco_captions(path)
    assert [r.captions for r in records] == [("a red circle",), ("a blue square", "one square")]
    assert [r.image.name for r in records] == ["a.png", "b.png"]


def test_coco_annotation_pointing_at_no_image(tmp_path):
    png(tmp_path / "a.png")
    path = coco(tmp_path, [{"id": 1, "file_name": "a.png"}],
                [{"image_id": 1, "caption": "x"}, {"image_id": 5, "caption": "y"}])
    raises_at(lambda: formats.read_coco_captions(path), "record 1 of 'annotations'", "field 'image_id'")


def test_coco_image_without_captions(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    path = coco(tmp_path, [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
                [{"image_id": 1, "caption": "x"}])
    raises_at(lambda: formats.read_coco_captions(path), "record 1 of 'images'", "no captions")


def test_coco_missing_image_and_empty_caption(tmp_path):
    png(tmp_path / "a.png")
    path = coco(tmp_path, [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}], [])
    raises_at(lambda: formats.read_coco_captions(path), "record 1 of 'images'", "field 'file_name'", "does not exist")
    path = coco(tmp_path, [{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "caption": "  "}])
    raises_at(lambda: formats.read_coco_captions(path), "record 0 of 'images'", "only empty captions")
    # an empty caption beside good ones: the caption is left out, counted as one (not a record); strict raises it
    path = coco(tmp_path, [{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "caption": "  "},
                                                              {"image_id": 1, "caption": "a red circle"}])
    raises_at(lambda: formats.read_coco_captions(path), "record 0 of 'annotations'", "field 'caption'")
    problems = Problems()
    (record,) = formats.read_coco_captions(path, problems=problems)
    assert record.captions == ("a red circle",) and problems.counts() == {"empty caption": 1}


def test_coco_not_an_object(tmp_path):
    path = write_json(tmp_path / "c.json", [])
    raises_at(lambda: formats.read_coco_captions(path), "top level", "'images'")


# ---------------------------------------------------------------- image folder


def test_image_folder_classes_sorted(tmp_path):
    png(tmp_path / "dog" / "1.png")
    png(tmp_path / "cat" / "2.jpg")
    png(tmp_path / "cat" / "1.PNG")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    records = formats.read_image_folder(tmp_path)
    assert [(r.label, r.image.name) for r in records] == [("cat", "1.PNG"), ("cat", "2.jpg"), ("dog", "1.png")]


def test_image_folder_class_without_images(tmp_path):
    png(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    raises_at(lambda: formats.read_image_folder(tmp_path), "class 'dog'", "no images")


def test_image_folder_unreadable_image_names_the_record(tmp_path):
    png(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    records = formats.read_image_folder(tmp_path)
    raises_at(lambda: formats.check_images(records), "record 1 (dog/x.jpg)", "field 'image'")


# ---------------------------------------------------------------- CSV


def test_csv_loads_relative_to_its_folder_or_image_root(tmp_path):
    png(tmp_path / "imgs" / "a.png")
    png(tmp_path / "imgs" / "b.png")
    path = tmp_path / "labels.csv"
    path.write_text("image, label,note\nimgs/a.png,cat,x\nimgs/b.png, dog ,y\n")
    records = formats.read_csv(path)
    assert [(r.image.name, r.label) for r in records] == [("a.png", "cat"), ("b.png", "dog")]
    path.write_text("image,label\na.png,cat\n")
    assert formats.read_csv(path, tmp_path / "imgs")[0].image == tmp_path / "imgs" / "a.png"


def test_csv_bad_header(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,class\na.png,cat\n")
    raises_at(lambda: formats.read_csv(path), "header (line 1)", "2 comma-separated field(s)", "'image' and 'label'")


def test_csv_error_never_echoes_the_file(tmp_path):
    """A `path` pointing at some other file (a key, a password) must not print its first line into a CI log."""
    path = tmp_path / "secret.txt"
    path.write_text("AKIA-SECRET-TOKEN-123\nmore\n")
    with pytest.raises(DataError) as info:
        formats.read_csv(path)
    assert "AKIA" not in info.value.render() and "secret.txt" in info.value.render()


def test_csv_empty_label_and_missing_image(tmp_path):
    png(tmp_path / "a.png")
    path = tmp_path / "labels.csv"
    path.write_text("image,label\na.png,cat\na.png,\n")
    raises_at(lambda: formats.read_csv(path), "record 1 (line 3)", "field 'label'")
    path.write_text("image,label\na.png,cat\nb.png,dog\n")
    raises_at(lambda: formats.read_csv(path), "record 1 (line 3)", "field 'image'", "does not exist")


def test_csv_row_with_too_many_fields(tmp_path):
    png(tmp_path / "a.png")
    path = tmp_path / "labels.csv"
    path.write_text("image,label\na.png,cat,extra\n")
    raises_at(lambda: formats.read_csv(path), "record 0 (line 2)", "3 fields")


def test_csv_numeric_classnames_sort_as_numbers():
    assert formats.sorted_classnames(["10", "2", "1"]) == ("1", "2", "10")
    assert formats.sorted_classnames(["dog", "cat"]) == ("cat", "dog")


# ---------------------------------------------------------------- VQA JSONL


def test_jsonl_answers_as_strings_or_official_dicts(tmp_path):
    png(tmp_path / "a.png")
    lines = [
        {"image": "a.png", "question": "what color ?", "answers": ["red", "red", "blue"]},
        {"image": "a.png", "question": "how many ?",
         "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["2", "two", "2"])]},
    ]
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    records = formats.read_vqa_jsonl(path)
    assert records[0].answers == ("red", "red", "blue") and records[0].turns == (("what color ?", "red"),)
    assert records[1].answers == ("2", "two", "2") and records[1].turns[0][1] == "2"
    assert records[1].where == "record 1 (line 3)"


def test_jsonl_bad_line(tmp_path):
    png(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "question": "q", "answers": ["a"]})
    path = tmp_path / "vqa.jsonl"
    path.write_text(f"{good}\n{good}\n{{'image': 'a.png'}}\n")
    raises_at(lambda: formats.read_vqa_jsonl(path), "record 2 (line 3)", "not valid JSON")


def test_jsonl_wrong_answers_field(tmp_path):
    png(tmp_path / "a.png")
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps({"image": "a.png", "question": "q", "answers": []}) + "\n")
    raises_at(lambda: formats.read_vqa_jsonl(path), "record 0 (line 1)", "field 'answers'")
    path.write_text(json.dumps({"image": "a.png", "question": "q", "answers": ["a", {"text": "b"}]}) + "\n")
    raises_at(lambda: formats.read_vqa_jsonl(path), "record 0 (line 1)", "field 'answers[1]'")


# ---------------------------------------------------------------- Hugging Face datasets

@pytest.mark.skipif(HAS_DATASETS, reason="`datasets` is installed")
def test_hf_without_datasets_says_how_to_install(tmp_path):
    raises_at(lambda: read_hf(task="classification", path=tmp_path), "pip install datasets")


@pytest.mark.skipif(not HAS_DATASETS, reason="`datasets` is not installed")
def test_hf_saved_dataset_maps_columns(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (4, 4), (9, 9, 9)), Image.new("RGB", (4, 4), (0, 0, 0))], "y": [1, 0]},
        features=datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["cat", "dog"])}),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    records = read_hf(task="classification", path=tmp_path / "saved", columns={"image": "img", "label": "y"})
    assert [r.label for r in records] == ["dog", "cat"]
    image = formats.to_samples(records, ("cat", "dog"))[0].image  # the encoded bytes, read when a batch needs them
    assert isinstance(image, ImageFile) and isinstance(image.source, bytes)
    assert image.open().getpixel((0, 0)) == (9, 9, 9)
    raises_at(lambda: read_hf(task="classification", path=tmp_path / "saved"), "columns.image", "'img'")


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_follows_pixels_and_texts(llava_dir):
    records = formats.read_llava(write_json(llava_dir / "d.json", [llava_record(), llava_record("img/b.png")]))
    samples = formats.to_samples(records)
    base = formats.fingerprint("vqa", samples[:1], samples[1:])
    assert base == formats.fingerprint("vqa", formats.to_samples(records)[:1], samples[1:])
    assert base != formats.fingerprint("vqa", samples[1:], samples[:1])  # other pixels per part
    relabelled = [type(samples[0])(image=samples[0].image, question="q", answers=("blue",), turns=(("q", "blue"),))]
    assert base != formats.fingerprint("vqa", relabelled, samples[1:])
