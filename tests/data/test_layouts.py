"""Public datasets as their publishers distribute them (tests/layouts.py) are read from their own files, without
conversion: the records, fields and image folders each publisher uses; the odd records they hold left out and counted
by reason under on_bad_sample = "skip", or all listed at once under "error"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_datasets, run_cli
from datasources import tiny_llava_suite
from layouts import LAYOUTS, llava_mix, vqa_v2

from bench.data.loader import check_dataset, load_dataset
from bench.data.problems import MAX_LISTED, UnreadableImage
from bench.data.sample import ImageFile
from bench.errors import DataError

pytestmark = needs_datasets


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return base, {name: build(base / name) for name, build in LAYOUTS.items()}


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_loads_from_its_own_files_with_what_it_left_out_counted(built, name):
    base, layouts = built
    layout = layouts[name]
    problems = check_dataset(layout["table"], base_dir=base, file="suite.toml", where=f"[datasets.{name}]",
                             on_bad_sample="skip")
    assert problems.counts() == layout["left_out"]
    splits = load_dataset(layout["table"], base_dir=base, on_bad_sample="skip")
    assert splits.task == layout["task"] and splits.info["skipped"] == layout["left_out"]
    assert splits.train and splits.eval
    corrupt = 0
    for sample in splits.train + splits.eval:  # every image that is left reads as the RGB a model takes
        assert isinstance(sample.image, ImageFile)
        try:
            assert sample.decoded().image.mode == "RGB"
        except UnreadableImage:  # but a whole file corrupt inside, found only when its pixels are decoded
            corrupt += 1
    assert corrupt == layout.get("corrupt", 0)


@pytest.mark.parametrize("name", LAYOUTS)
def test_under_error_every_problem_of_a_layout_is_listed_at_once(built, name):
    base, layouts = built
    layout = layouts[name]
    errors = {reason: n for reason, n in layout["left_out"].items() if reason != "text-only record"}
    with pytest.raises(DataError) as info:
        check_dataset(layout["table"], base_dir=base, file="suite.toml", where=f"[datasets.{name}]")
    text = str(info.value)
    assert f"{sum(errors.values())} record(s) cannot be used" in text
    for reason, n in errors.items():
        assert f"{n} {reason}" in text
    assert text.count("\n  - ") == sum(errors.values())
    assert 'on_bad_sample = "skip"' in info.value.fix


def test_vqa_v2_keeps_all_ten_answers_trains_on_the_publishers_answer_and_holds_pairs_together(built):
    base, layouts = built
    table = dict(layouts["vqa_v2"]["table"])
    splits = load_dataset(table, base_dir=base, on_bad_sample="skip")
    first = splits.eval[0]
    assert len(first.answers) == 10 and first.turns[0][1] == first.answers[0]  # multiple_choice_answer
    assert "Images/mscoco/val2014/COCO_val2014_" in first.image.source
    # without eval_path, a held-out split keeps an image's questions, and each complementary pair (the same question
    # on two similar images: 2k and 2k+1 here), on one side
    del table["eval_path"]
    for seed in range(8):
        splits = load_dataset({**table, "eval_fraction": 0.3}, base_dir=base, seed=seed, on_bad_sample="skip")
        side = {}
        for part, samples in (("train", splits.train), ("eval", splits.eval)):
            for s in samples:
                image_id = int(s.image.source.rsplit("_", 1)[1].split(".")[0])
                assert side.setdefault(image_id, part) == part, (seed, image_id)  # one image, one side
        for image_id, part in side.items():
            partner = image_id + 1 if (image_id - 9) % 2 == 0 else image_id - 1
            assert side.get(partner, part) == part, (seed, image_id, partner)  # one pair, one side
        assert len(splits.eval) >= round(0.3 * (len(splits.train) + len(splits.eval)))


def test_vqa_v2_finds_coco_2017_names_and_says_where_it_looked(tmp_path):
    layout = vqa_v2(tmp_path / "vqa")
    for image in (tmp_path / "vqa" / "Images" / "mscoco" / "val2014").iterdir():  # COCO 2017 names the same images so
        image.rename(image.with_name(image.name.split("_")[-1]))
    assert load_dataset(layout["table"], base_dir=tmp_path, on_bad_sample="skip").eval
    (tmp_path / "vqa" / "Annotations" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(DataError, match="v2_mscoco_val2014_annotations.json"):
        load_dataset(layout["table"], base_dir=tmp_path, on_bad_sample="skip")


def test_llava_mix_reads_image_after_text_several_turns_and_leaves_text_only_records_out(built):
    base, layouts = built
    splits = load_dataset({**layouts["llava_mix"]["table"], "shuffle": False}, base_dir=base, on_bad_sample="skip")
    samples = splits.train + splits.eval
    assert all("<image>" not in s.question for s in samples)
    assert any(len(s.turns) == 2 for s in samples)
    assert {s.image.source.split("/data/")[1].split("/")[0] for s in samples} == {"coco", "gqa", "ocr_vqa", "textvqa",
                                                                                   "vg"}


def _suite(folder: Path, layout: dict, policy: str) -> Path:
    return tiny_llava_suite(folder, policy, {"data": layout["table"]}, policy)


def test_validate_lists_every_problem_in_one_run_or_counts_them_under_skip(tmp_path):
    """3 missing images and 2 empty answers: "error" exits 2 naming all 5; "skip" exits 0 and says what is left out."""
    layout = llava_mix(tmp_path / "mix", n=30)
    data = json.loads((tmp_path / "mix" / "llava_v1_5_mix665k.json").read_text())
    with_images = [r for r in data if "image" in r]
    for r in with_images[10:12]:  # two more images gone (one is already): 3
        (tmp_path / "mix" / "data" / r["image"]).unlink()
    with_images[14]["conversations"][1]["value"] = "  "  # a second empty answer: 2
    (tmp_path / "mix" / "llava_v1_5_mix665k.json").write_text(json.dumps(data))
    code, err, out = run_cli(["validate", _suite(tmp_path, layout, "error")])
    assert code == 2 and "Traceback" not in err
    assert "5 record(s) cannot be used (3 missing image, 2 empty answer)" in err
    assert err.count("\n  - ") == 5 and err.count("does not exist") == 3 and err.count("empty answer") >= 2
    code, err, out = run_cli(["validate", _suite(tmp_path, layout, "skip")])
    assert code == 0, err
    assert "[datasets.data]: 9 record(s) will be left out (3 missing image, 2 empty answer, 4 text-only record)" in out


def test_a_listing_is_capped_with_the_total(tmp_path):
    layout = llava_mix(tmp_path / "mix", n=30)
    data = json.loads((tmp_path / "mix" / "llava_v1_5_mix665k.json").read_text())
    for r in data:
        r.setdefault("image", "gone.jpg")
        r["image"] = "nowhere/" + r["image"]
    (tmp_path / "mix" / "llava_v1_5_mix665k.json").write_text(json.dumps(data * 2))
    with pytest.raises(DataError) as info:
        load_dataset(layout["table"], base_dir=tmp_path)
    text = str(info.value)
    assert "60 record(s) cannot be used (58 missing image, 2 empty answer)" in text
    assert text.count("\n  - ") == MAX_LISTED and f"... and {60 - MAX_LISTED} more" in text


def test_a_chart_cut_short_is_found_by_validation_and_one_corrupt_inside_when_decoded(built):
    """A file cut short (no PNG end chunk) is an unreadable image as soon as the data is read; a whole file corrupt
    inside passes its header and tail and fails when decoded (the batch stream leaves it out under skip, per split)."""
    base, layouts = built
    problems = check_dataset(layouts["chartqa"]["table"], base_dir=base, file="s.toml", where="[datasets.c]",
                             on_bad_sample="skip")
    (cut,) = [p for p in problems.items if p.reason == "unreadable image"]
    assert "val_human.json" in cut.error.file and "cut short" in cut.error.message
    splits = load_dataset({**layouts["chartqa"]["table"], "shuffle": False}, base_dir=base, on_bad_sample="skip")
    failed = []
    for sample in splits.eval:
        try:
            sample.decoded()
        except UnreadableImage as e:
            failed.append(e.where)
    assert len(failed) == 1 and "record 3" in failed[0]


@pytest.mark.parametrize("pairs", ['[[[1], [2]]]', '[[1, 2, 3]]', '{"a": 1}', '[[true, 2]]'])
def test_a_malformed_pairs_file_is_named_and_an_evaluation_files_pairs_are_not_read(tmp_path, pairs):
    layout = vqa_v2(tmp_path / "vqa")
    train_pairs = tmp_path / "vqa" / "Annotations" / "v2_mscoco_train2014_complementary_pairs.json"
    val_pairs = train_pairs.with_name("v2_mscoco_val2014_complementary_pairs.json")
    val_pairs.write_text(pairs)  # the evaluation file is never split: its pairs do not matter
    assert load_dataset(layout["table"], base_dir=tmp_path, on_bad_sample="skip").eval
    train_pairs.write_text(pairs)
    with pytest.raises(DataError) as info:
        load_dataset(layout["table"], base_dir=tmp_path, on_bad_sample="skip")
    assert str(train_pairs) in str(info.value) and "as distributed" in info.value.fix
