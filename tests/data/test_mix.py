"""format = "mix": train and evaluate on the union of other datasets of the suite, resolved when the suite is read."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.data.loader import (
    answer_metric_of,
    check_dataset,
    check_keys,
    load_dataset,
    load_suite_dataset,
    resolve_mix,
)
from bench.data.scenes import SHAPES
from bench.errors import SuiteError

SUITE = "suites/demo.toml"
BASE = Path(".")


def tables(**extra) -> dict:
    """Two small vqa datasets of other domains and a mix of both, as a suite's [datasets.*] would hold them."""
    out = {
        "scenes-vqa": {"format": "scenes", "task": "vqa", "train_size": 5, "eval_size": 3, "image_size": 8},
        "digits-vqa": {"format": "digits", "task": "vqa", "train_size": 4, "eval_size": 2, "image_size": 8},
        "both-vqa": {"format": "mix", "of": ["scenes-vqa", "digits-vqa"]},
    }
    out.update(extra)
    return out


def resolve(t: dict) -> dict:
    return resolve_mix(t, file=SUITE)


def load(resolved: dict, name: str):
    """A dataset as a cell loads it: its entry with the name added (bench/run/runner.py load_job)."""
    return load_suite_dataset({"name": name, **resolved[name]}, BASE)


def key(sample) -> tuple:
    return sample.question, sample.answers, sample.turns, sample.captions, sample.image.tobytes()


def fails(t: dict, at: str, words: str) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        resolve(t)
    text = str(info.value)
    assert text.startswith(f"{SUITE}: {at}") and words in text, text
    assert info.value.fix
    return info.value


# ---------------------------------------------------------------- the union


@settings(max_examples=15, deadline=None)
@given(scenes=st.tuples(st.integers(1, 6), st.integers(1, 4)), digits=st.tuples(st.integers(1, 6), st.integers(1, 4)),
       reverse=st.booleans())
def test_the_union_holds_every_part_in_order(scenes, digits, reverse):
    t = tables()
    t["scenes-vqa"].update(train_size=scenes[0], eval_size=scenes[1])
    t["digits-vqa"].update(train_size=digits[0], eval_size=digits[1])
    order = ["digits-vqa", "scenes-vqa"] if reverse else ["scenes-vqa", "digits-vqa"]
    t["both-vqa"]["of"] = order
    resolved = resolve(t)
    mix = load(resolved, "both-vqa")
    parts = [load(resolved, name) for name in order]

    assert mix.task == "vqa"
    assert len(mix.train) == scenes[0] + digits[0] and len(mix.eval) == scenes[1] + digits[1]
    # each part exactly as it loads alone, one after the other in the order `of` lists them
    assert [key(s) for s in mix.train] == [key(s) for p in parts for s in p.train]
    assert [key(s) for s in mix.eval] == [key(s) for p in parts for s in p.eval]
    assert mix.info["format"] == "mix" and [p["name"] for p in mix.info["of"]] == order
    assert (mix.info["n_train"], mix.info["n_eval"]) == (len(mix.train), len(mix.eval))
    # scenes and digits have other classes: vqa does not use them, and no label indexes the wrong list
    assert mix.classnames == () and all(s.label is None for s in mix.train + mix.eval)


def test_parts_with_the_same_classes_keep_them_and_their_labels():
    t = {
        "src": {"format": "scenes", "task": "classification", "split": "source", "train_size": 3, "eval_size": 2, "image_size": 8},
        "tgt": {"format": "scenes", "task": "classification", "split": "target", "train_size": 4, "eval_size": 2, "image_size": 8},
        "both": {"format": "mix", "of": ["src", "tgt"], "task": "classification"},
    }
    resolved = resolve(t)
    check_dataset(resolved["both"], base_dir=BASE, file=SUITE, where="[datasets.both]")
    mix, src, tgt = (load(resolved, n) for n in ("both", "src", "tgt"))
    assert mix.task == "classification" and mix.classnames == SHAPES
    assert [s.label for s in mix.train] == [s.label for s in src.train + tgt.train]
    assert [s.label for s in mix.eval] == [s.label for s in src.eval + tgt.eval]


def test_resolving_gives_each_part_its_entry_and_the_mix_its_task():
    t = tables()
    t["digits-vqa"]["train"] = {"lr": 1e-3}  # a part's training overrides are its own cells', not the mix's
    t["both-vqa"]["train"] = {"steps": 5}
    resolved = resolve(t)
    mix = resolved["both-vqa"]
    assert mix["task"] == "vqa" and mix["train"] == {"steps": 5}
    assert mix["of"] == [{"name": "scenes-vqa", **t["scenes-vqa"]},
                         {"name": "digits-vqa", **{k: v for k, v in t["digits-vqa"].items() if k != "train"}}]
    assert resolved["scenes-vqa"] is t["scenes-vqa"] and t["both-vqa"]["of"] == ["scenes-vqa", "digits-vqa"]  # not mutated
    assert resolve(resolved) == resolved  # resolving twice changes nothing
    # a single-task format's task is filled in from the format
    t = {"a": {"format": "vqa_jsonl", "path": "a.jsonl"}, "b": {"format": "scenes", "task": "vqa"},
         "m": {"format": "mix", "of": ["a", "b"]}}
    assert [p["task"] for p in resolve(t)["m"]["of"]] == ["vqa", "vqa"]


def test_classification_csv_parts_with_the_same_classes_load_together(tmp_path):
    def csv(folder: str, n: int, classes) -> str:
        rows = ["image,label"]
        for i in range(n):
            path = tmp_path / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(path)
            rows.append(f"{i}.png,{classes[i % len(classes)]}")
        (tmp_path / folder / "labels.csv").write_text("\n".join(rows) + "\n")
        return f"{folder}/labels.csv"

    t = {"a": {"format": "csv", "path": csv("a", 10, ("cat", "dog"))},
         "b": {"format": "csv", "path": csv("b", 5, ("dog", "cat"))},
         "c": {"format": "csv", "path": csv("c", 6, ("cat", "dog", "bird"))},
         "ab": {"format": "mix", "of": ["a", "b"]},
         "ac": {"format": "mix", "of": ["a", "c"]}}
    resolved = resolve(t)
    check_dataset(resolved["ab"], base_dir=tmp_path, file=SUITE, where="[datasets.ab]")
    mix = load_dataset(resolved["ab"], base_dir=tmp_path)
    assert mix.classnames == ("cat", "dog") and (len(mix.train), len(mix.eval)) == (8 + 4, 2 + 1)
    with pytest.raises(SuiteError) as info:
        check_dataset(resolved["ac"], base_dir=tmp_path, file=SUITE, where="[datasets.ac]")
    assert str(info.value).startswith(f"{SUITE}: [datasets.ac], key 'of'") and "same classes" in str(info.value)
    (tmp_path / "b" / "labels.csv").unlink()  # a part's missing file is named by the part's table and key
    with pytest.raises(SuiteError, match=r"\[datasets\.b\], key 'path'"):
        check_dataset(resolved["ab"], base_dir=tmp_path, file=SUITE, where="[datasets.ab]")


# ---------------------------------------------------------------- mistakes: named by the key, with a fix


def test_parts_of_other_tasks_are_refused():
    t = tables()
    t["digits-vqa"]["task"] = "caption"
    err = fails(t, "[datasets.both-vqa], key 'of'", "share one task")
    assert "'scenes-vqa' is vqa" in err.message and "'digits-vqa' is caption" in err.message
    t = tables()
    t["both-vqa"]["task"] = "caption"
    fails(t, "[datasets.both-vqa], key 'task'", "disagrees")


@pytest.mark.parametrize("other", [
    {"format": "digits", "task": "classification", "train_size": 3, "eval_size": 2, "image_size": 8},  # zero..nine
    {"format": "scenes", "task": "classification", "label": "object", "train_size": 3, "eval_size": 2, "image_size": 8},
])
def test_classification_parts_with_other_classes_are_refused(other):
    t = {"shapes": {"format": "scenes", "task": "classification", "train_size": 3, "eval_size": 2, "image_size": 8},
         "other": other, "both": {"format": "mix", "of": ["shapes", "other"]}}
    resolved = resolve(t)  # the tables agree on the task; the classes are the data's
    for attempt in (lambda: check_dataset(resolved["both"], base_dir=BASE, file=SUITE, where="[datasets.both]"),
                    lambda: load_dataset(resolved["both"], base_dir=BASE, file=SUITE, where="[datasets.both]")):
        with pytest.raises(SuiteError) as info:
            attempt()
        text = str(info.value)
        assert text.startswith(f"{SUITE}: [datasets.both], key 'of'") and "same classes" in text, text
        assert "'shapes'" in text and "'other'" in text and info.value.fix


def test_an_unknown_name_is_refused_with_a_suggestion():
    err = fails(tables(**{"both-vqa": {"format": "mix", "of": ["scenes-vqa", "digit-vqa"]}}),
                "[datasets.both-vqa], key 'of'", "unknown dataset 'digit-vqa'")
    assert "did you mean 'digits-vqa'" in err.fix


def test_a_mix_naming_itself_is_refused():
    fails(tables(**{"both-vqa": {"format": "mix", "of": ["scenes-vqa", "both-vqa"]}}),
          "[datasets.both-vqa], key 'of'", "names itself")


def test_a_mix_of_a_mix_is_refused():
    t = tables(outer={"format": "mix", "of": ["both-vqa", "scenes-vqa"]})
    fails(t, "[datasets.outer], key 'of'", "is itself a mix")
    # nor as an already resolved table handed to the loader directly
    nested = {"format": "mix", "of": [{"name": "inner", **resolve(tables())["both-vqa"]}, {"name": "s", **tables()["scenes-vqa"]}]}
    with pytest.raises(SuiteError, match="is itself a mix"):
        load_dataset(nested, base_dir=BASE)


@pytest.mark.parametrize("of, words", [
    (None, "missing key 'of'"),
    (["scenes-vqa"], "at least 2 datasets"),
    ([], "at least 2 datasets"),
    (["scenes-vqa", "scenes-vqa"], "twice"),
    ("scenes-vqa", "must be a list of dataset names"),
    (["scenes-vqa", 3], "must be a list of dataset names"),
    (["scenes-vqa", ""], "must be a list of dataset names"),
])
def test_of_must_be_two_or_more_distinct_names(of, words):
    mix = {"format": "mix"} if of is None else {"format": "mix", "of": of}
    fails(tables(**{"both-vqa": mix}), "[datasets.both-vqa], key 'of'", words)


def test_a_bad_part_is_named_by_its_own_table():
    t = tables()
    t["digits-vqa"]["colour"] = "red"
    fails(t, "[datasets.digits-vqa], key 'colour'", "unknown key")
    t = tables()
    t["digits-vqa"] = "digits"
    fails(t, "[datasets.digits-vqa]", "must be a table")


@pytest.mark.parametrize("extra", [{"train_size": 8}, {"seed": 1}, {"split": "source"}, {"path": "a.json"}])
def test_a_mix_takes_only_format_of_and_task(extra):
    resolved = resolve(tables())
    for cfg in (tables()["both-vqa"], resolved["both-vqa"]):
        with pytest.raises(SuiteError) as info:
            check_keys({**cfg, **extra}, file=SUITE, where="[datasets.both-vqa]")
        assert f"key '{next(iter(extra))}'" in str(info.value) and "does not apply to format 'mix'" in str(info.value)


def test_names_the_suite_has_not_resolved_are_a_clear_error():
    with pytest.raises(SuiteError) as info:
        load_dataset(tables()["both-vqa"], base_dir=BASE, file=SUITE, where="[datasets.both-vqa]")
    assert "not been resolved" in str(info.value) and "resolve_mix" in info.value.fix
    check_keys(tables()["both-vqa"], file=SUITE, where="[datasets.both-vqa]")  # the table's shape alone is fine
    with pytest.raises(SuiteError, match="unknown task"):
        check_keys({**tables()["both-vqa"], "task": "vqa2"}, file=SUITE, where="[datasets.both-vqa]")


# ---------------------------------------------------------------- provenance


@pytest.mark.parametrize("part, change", [
    ("scenes-vqa", {"seed": 3}),
    ("scenes-vqa", {"split": "source"}),
    ("digits-vqa", {"train_size": 5}),
    ("digits-vqa", {"eval_size": 1}),
    ("digits-vqa", {"image_size": 9}),
])
def test_the_fingerprint_and_the_table_change_when_a_part_does(part, change):
    before = resolve(tables())
    mix = load(before, "both-vqa")
    assert load(before, "both-vqa").fingerprint == mix.fingerprint  # deterministic
    t = tables()
    t[part].update(change)
    after = resolve(t)
    assert after["both-vqa"] != before["both-vqa"]  # the table a cell's id hashes holds its parts' tables
    changed = load(after, "both-vqa")
    assert changed.fingerprint != mix.fingerprint
    assert [p["fingerprint"] for p in changed.info["of"]] != [p["fingerprint"] for p in mix.info["of"]]


def test_the_order_of_the_parts_is_part_of_the_fingerprint():
    t = tables()
    t["both-vqa"]["of"] = ["digits-vqa", "scenes-vqa"]
    assert load(resolve(t), "both-vqa").fingerprint != load(resolve(tables()), "both-vqa").fingerprint


# ---------------------------------------------------------------- through the suite


SUITE_TEXT = """
[models.llava]
family = "llava"
preset = "tiny"
weights = "random"

[datasets.scenes-vqa]
format = "scenes"
task = "vqa"
train_size = 8
eval_size = 4

[datasets.digits-vqa]
format = "digits"
task = "vqa"
train_size = 8
eval_size = 4

[datasets.both-vqa]
format = "mix"
of = ["scenes-vqa", "digits-vqa"]

[methods.lora]
kind = "lora"

[[grid]]
models = ["llava"]
datasets = ["scenes-vqa", "digits-vqa", "both-vqa"]
methods = ["lora"]
"""


def parse(text: str, tmp_path):
    """The suite as bench.suite.load reads it (parse_suite resolves its mixes before the dataset entries)."""
    from bench.suite.load import parse_suite

    return parse_suite(tomllib.loads(text), tmp_path / "suite.toml")


def test_a_suite_file_names_its_mixs_parts_and_gives_no_tables_in_their_place(tmp_path):
    raw = tomllib.loads(SUITE_TEXT)
    inline = resolve_mix(raw["datasets"], file="suite.toml")["both-vqa"]["of"]  # tables where the file has names
    raw["datasets"]["both-vqa"]["of"] = inline
    with pytest.raises(SuiteError, match=r"\[datasets\.both-vqa\], key 'of'.*must be a list of dataset names"):
        from bench.suite.load import parse_suite

        parse_suite(raw, tmp_path / "suite.toml")


def test_a_suite_with_a_mix_validates_expands_and_loads(tmp_path):
    from bench.suite.plan import expand

    suite = parse(SUITE_TEXT, tmp_path)
    entry = suite.datasets["both-vqa"].config
    assert entry["task"] == "vqa" and [p["name"] for p in entry["of"]] == ["scenes-vqa", "digits-vqa"]
    assert entry["of"][0] == suite.datasets["scenes-vqa"].config  # a part is exactly the part's own entry
    cells = {c.dataset["name"]: c for c in expand(suite)}
    mix = load_suite_dataset(cells["both-vqa"].dataset, suite.base_dir)
    assert (len(mix.train), len(mix.eval)) == (16, 8)
    # a part that changes changes the mix's cell id
    other = {c.dataset["name"]: c for c in expand(parse(SUITE_TEXT.replace("eval_size = 4\n\n[datasets.both",
                                                                           "eval_size = 5\n\n[datasets.both"), tmp_path))}
    assert other["both-vqa"].cell_id != cells["both-vqa"].cell_id
    assert other["scenes-vqa"].cell_id == cells["scenes-vqa"].cell_id


def test_a_suite_mix_with_a_key_of_the_parts_is_refused(tmp_path):
    text = SUITE_TEXT.replace('of = ["scenes-vqa", "digits-vqa"]', 'of = ["scenes-vqa", "digits-vqa"]\ntrain_size = 4')
    with pytest.raises(SuiteError, match=r"\[datasets\.both-vqa\], key 'train_size'.*does not apply to format 'mix'"):
        parse(text, tmp_path)


# ---------------------------------------------------------------- answer metrics: one per mix


def test_parts_scored_with_other_answer_metrics_are_refused():
    t = tables(**{"charts-vqa": {"format": "charts", "task": "vqa", "train_size": 3, "eval_size": 2, "image_size": 8},
                  "both-vqa": {"format": "mix", "of": ["scenes-vqa", "charts-vqa"]}})
    err = fails(t, "[datasets.both-vqa], key 'of'", "one answer metric")
    assert "'charts-vqa' by relaxed_accuracy" in str(err) and "'scenes-vqa' by the task's default" in str(err)
    # a resolved mix is checked again wherever it is read: a table that escaped resolve_mix, or one loaded directly
    resolved = {"format": "mix", "task": "vqa",
                "of": [{"name": "scenes-vqa", **t["scenes-vqa"]}, {"name": "charts-vqa", **t["charts-vqa"]}]}
    with pytest.raises(SuiteError, match="one answer metric"):
        check_keys(resolved, file=SUITE, where="[datasets.both-vqa]")
    with pytest.raises(SuiteError, match="one answer metric"):
        load_dataset(resolved, base_dir=BASE, file=SUITE, where="[datasets.both-vqa]")


def test_parts_scored_alike_mix_and_keep_their_answer_metric(tmp_path):
    Image.new("RGB", (6, 6), (1, 2, 3)).save(tmp_path / "c.png")
    (tmp_path / "qa.json").write_text('[{"imgname": "c.png", "query": "what is the value of x ?", "label": "12"}, '
                                      '{"imgname": "c.png", "query": "is it high ?", "label": "yes"}]')
    t = {"source": {"format": "charts", "task": "vqa", "split": "source", "train_size": 3, "eval_size": 2, "image_size": 8},
         "chartqa": {"format": "chartqa", "path": "qa.json", "eval_fraction": 0.5},
         "both": {"format": "mix", "of": ["source", "chartqa"]}}
    resolved = resolve(t)
    check_dataset(resolved["both"], base_dir=tmp_path, file=SUITE, where="[datasets.both]")
    mix = load_dataset(resolved["both"], base_dir=tmp_path)
    assert mix.answer_metric == "relaxed_accuracy" and (len(mix.train), len(mix.eval)) == (3 + 1, 2 + 1)
    assert answer_metric_of(resolved["both"]) == "relaxed_accuracy" == answer_metric_of(resolved["source"])
    assert load(resolve(tables()), "both-vqa").answer_metric == ""  # the task's default, as each part's
    assert answer_metric_of(resolve(tables())["both-vqa"]) == ""


def test_preference_parts_mix_as_any_task_does():
    t = {"a": {"format": "scenes", "task": "preference", "train_size": 3, "eval_size": 1, "image_size": 8},
         "b": {"format": "scenes", "task": "preference", "split": "source", "train_size": 2, "eval_size": 1,
               "image_size": 8},
         "ab": {"format": "mix", "of": ["a", "b"]}}
    mix = load(resolve(t), "ab")
    assert mix.task == "preference" and len(mix.train) == 5 and all(s.rejected for s in mix.train + mix.eval)


def test_a_suite_mixing_chart_and_scene_questions_is_refused_when_read(tmp_path):
    text = SUITE_TEXT.replace('[datasets.digits-vqa]\nformat = "digits"', '[datasets.digits-vqa]\nformat = "charts"')
    with pytest.raises(SuiteError, match=r"\[datasets\.both-vqa\], key 'of'.*one answer metric"):
        parse(text, tmp_path)
