"""One bad-sample policy from validation to the run (bench/data/problems.py): for any mix of broken records in a data
file, `bench validate`'s check and the run's load leave out the same records for the same reasons under
on_bad_sample = "skip", keep exactly the others, and under "error" list every problem at once."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.data.loader import check_dataset, load_dataset
from bench.data.problems import MAX_LISTED
from bench.errors import DataError

# how a record can be broken, and the reason each is counted under
BREAKS = {"ok": None, "missing": "missing image", "garbage": "unreadable image", "empty": "empty answer",
          "bad_field": "malformed record", "text_only": "text-only record"}
FORMATS = ("llava", "vqa_jsonl", "preference", "csv")


def png_bytes(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (i * 9 % 256, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def write_dataset(folder, fmt: str, breaks: list[str]) -> dict:
    """A data file of `fmt` with one record per entry of `breaks`, each broken that way (text-only: llava only)."""
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, how in enumerate(breaks):
        image = f"img/{i}.png"
        if how == "garbage":
            (folder / image).write_bytes(b"not an image")
        elif how != "missing":
            (folder / image).write_bytes(png_bytes(i))
        answer = " " if how == "empty" else f"answer {i}"
        if fmt == "llava":
            row = {"id": i, "image": image, "conversations": [{"from": "human", "value": f"<image>\nquestion {i} ?"},
                                                              {"from": "gpt", "value": answer}]}
            if how == "text_only":
                del row["image"]
            if how == "bad_field":
                row["conversations"][0]["from"] = "robot"
        elif fmt == "vqa_jsonl":
            row = {"image": image, "question": f"question {i} ?", "answers": [answer, answer]}
            if how == "bad_field":
                row["answers"] = 7
        elif fmt == "preference":
            row = {"image": image, "prompt": f"question {i} ?", "chosen": answer, "rejected": f"wrong {i}"}
            if how == "bad_field":
                row["rejected"] = row["chosen"]
        else:
            nth_ok = breaks[:i].count("ok")  # the kept records alternate between two classes
            row = {"image": image, "label": "" if how in ("empty", "bad_field") else f"class{nth_ok % 2}"}
        rows.append(row)
    if fmt == "llava":
        path = folder / "data.json"
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        path = folder / "data.csv"
        path.write_text("image,label\n" + "".join(f"{r['image']},{r['label']}\n" for r in rows))
    else:
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"format": fmt, "path": path.name, "shuffle": False, "eval_fraction": 0.25}


def expected(fmt: str, breaks: list[str]) -> dict[str, int]:
    counted = {}
    for how in breaks:
        reason = BREAKS[how]
        if reason and fmt == "csv" and how == "empty":
            reason = "malformed record"  # an empty class name: a record without its label
        if reason:
            counted[reason] = counted.get(reason, 0) + 1
    return counted


def _breaks(fmt: str):
    """Four good records (enough to train and evaluate on) and up to eight others of any kind, in any order."""
    kinds = [k for k in BREAKS if k != "text_only" or fmt == "llava"]
    return st.lists(st.sampled_from(kinds), max_size=8).flatmap(lambda more: st.permutations(["ok"] * 4 + more))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("fmt", FORMATS)
def test_validation_and_the_run_leave_out_the_same_records_for_the_same_reasons(tmp_path_factory, fmt, data):
    breaks = data.draw(_breaks(fmt))
    folder = tmp_path_factory.mktemp(fmt)
    table = write_dataset(folder, fmt, breaks)
    want = expected(fmt, breaks)
    checked = check_dataset(table, base_dir=folder, file="s.toml", where="[datasets.d]", on_bad_sample="skip")
    assert checked.counts() == {r: n for r, n in want.items() if n}
    splits = load_dataset(table, base_dir=folder, on_bad_sample="skip")
    assert splits.info["skipped"] == checked.counts()
    kept = [i for i, how in enumerate(breaks) if how == "ok"]
    assert sorted(int(s.image.source.rsplit("/", 1)[1].split(".")[0]) for s in splits.train + splits.eval) == kept
    errors = sum(n for r, n in want.items() if r != "text-only record")
    if errors:  # validation lists every problem at once
        with pytest.raises(DataError) as info:
            check_dataset(table, base_dir=folder, file="s.toml", where="[datasets.d]")
        assert f"{errors} record(s) cannot be used" in str(info.value)
        assert str(info.value).count("\n  - ") == min(MAX_LISTED, errors)
    else:
        check_dataset(table, base_dir=folder, file="s.toml", where="[datasets.d]")
    # the run's load under "error" (after a validation that passed) reads the records, not the image headers
    unread = errors - want.get("unreadable image", 0)
    if unread:
        with pytest.raises(DataError, match=f"{unread} record\\(s\\) cannot be used"):
            load_dataset(table, base_dir=folder)
    else:
        load_dataset(table, base_dir=folder)


def test_a_classification_mix_under_skip_takes_its_parts_classes_from_their_usable_records(tmp_path, write_suite):
    from bench.suite.load import load_suite

    for part in ("a", "b"):
        folder = tmp_path / part
        table = write_dataset(folder, "csv", ["ok", "ok", "ok", "ok", "missing", "ok"])
        assert table["path"] == "data.csv"
    suite = write_suite("""
[suite]
name = "mixed"

[defaults]
on_bad_sample = "skip"

[models.clip]
family = "clip"
preset = "tiny"
weights = "random"

[datasets.a]
format = "csv"
path = "a/data.csv"

[datasets.b]
format = "csv"
path = "b/data.csv"

[datasets.ab]
format = "mix"
of = ["a", "b"]

[methods.lora]
kind = "lora"

[[grid]]
models = ["clip"]
datasets = ["ab"]
methods = ["lora"]
""")
    loaded = load_suite(suite)
    assert loaded.left_out == {"a": {"missing image": 1}, "b": {"missing image": 1}}
