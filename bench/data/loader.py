"""The one entry point to datasets: a suite's [datasets.NAME] table -> DatasetSplits.

    check_dataset(cfg, base_dir=..., file=..., where=...)   before any model is built: keys, types,
                                                            paths, every record, every image
    load_dataset(cfg, base_dir=..., seed=...)               records -> train/eval split -> limits -> samples
    resolve_mix(tables, file=...)                           a suite's [datasets.*] tables with each mix's `of`
                                                            names replaced by the tables they name

Formats chartqa and preference read a data file, or a Hugging Face dataset (hf_name, or `path` a save_to_disk folder)
through the hf reader with their own default columns. Each dataset declares the metric its own benchmark scores
answers with (DatasetSplits.answer_metric: "relaxed_accuracy" for chart data, "" for the task's default); a mix's
parts must agree on it.

A `mix` is the union of other datasets of the suite: its train split is their train splits one after
the other, in the order `of` lists them, its eval split their eval splits. Its parts are resolved once,
when the suite is read, so a mix's table (and with it a cell's id) holds its parts' whole tables.

Mistakes in the table itself raise SuiteError naming the suite file, the table and the key; mistakes
in a data file raise DataError naming the data file, the record and the field. Relative paths resolve
against base_dir, the suite file's folder. numpy and PIL only: no torch here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.data import formats
from bench.data.formats.hf import HF_COLUMNS, is_parquet, read_hf
from bench.data.problems import POLICIES, Problems, listing, reasons_text
from bench.data.sample import TASKS, DatasetSplits
from bench.errors import DataError, SuiteError
from bench.keyspec import SEED_MAX, Key, short, type_name

GENERATED = ("scenes", "digits", "charts")  # bundled, made in memory
# format -> the tasks (dataset views) it can give
FORMATS: dict[str, tuple[str, ...]] = {
    "scenes": TASKS,
    "digits": ("classification", "caption", "vqa"),
    "charts": ("vqa", "preference"),
    "llava": ("vqa",),
    "vqa_v2": ("vqa",),
    "coco_captions": ("caption",),
    "image_folder": ("classification",),
    "csv": ("classification",),
    "vqa_jsonl": ("vqa",),
    "chartqa": ("vqa",),
    "preference": ("preference",),
    "hf": TASKS,
    "mix": TASKS,  # the task its parts share
}
# formats read through the hf reader: "hf" always, the others when given hf_name or a save_to_disk folder as path
HF_FORMATS = ("hf", "chartqa", "preference")
# the columns a format's Hugging Face datasets have where bench's field names differ (HuggingFaceM4/ChartQA's;
# TRL's preference datasets use bench's own: prompt, chosen, rejected, and image or images)
HF_DEFAULT_COLUMNS: dict[str, dict[str, str]] = {"chartqa": {"question": "query", "answers": "label"}}
# format -> the metric its own benchmark scores answers with; the others: "" (the task's default)
ANSWER_METRICS: dict[str, str] = {"charts": "relaxed_accuracy", "chartqa": "relaxed_accuracy"}

# every key a [datasets.NAME] table may hold, with its type, bounds and one-line doc
DATASET_KEYS: dict[str, Key] = {
    "format": Key(str, None, f"the dataset format: {', '.join(FORMATS)}"),
    "task": Key(str, None, "the view to load: classification | caption | vqa | preference (optional when the format has "
                "one; a mix's is its datasets')"),
    "path": Key(str, None, "the publisher's data file or folder, relative to the suite file (docs/datasets.md); for hf, "
                "chartqa and preference also the Hub's parquet files (their folder, or one .parquet file) or a "
                "save_to_disk folder; for chartqa also a split folder of ChartQA as distributed"),
    "eval_path": Key(str, None, "a separate evaluation file or folder of the same format (else eval_fraction is held out)"),
    "image_root": Key(str, None, "folder that image paths in the data file are relative to (default: where the publisher "
                      "keeps them — COCO's and VQA's split folder, ChartQA's png/ — else the file's folder)"),
    "eval_image_root": Key(str, None, "folder that image paths in eval_path are relative to, where the evaluation split's "
                           "images are elsewhere (COCO val2017/; default: image_root if set, else as for image_root)"),
    "annotations": Key(str, None, "vqa_v2: the annotations file of `path`'s questions (default: the official name beside "
                       "it, e.g. v2_mscoco_train2014_annotations.json)"),
    "eval_annotations": Key(str, None, "vqa_v2: the annotations file of eval_path's questions (default: the official "
                            "name beside it)"),
    "complementary_pairs": Key(str, None, "vqa_v2: the complementary pairs file (default: the official name beside the "
                               "questions, when there); a pair is held out for evaluation together, never split"),
    "split": Key(str, None, "scenes, charts: 'source' or the shifted 'target' distribution (default 'target')",
                 choices=("source", "target")),
    "train_size": Key(int, None, "training samples: exactly this many for bundled data (default 256), at most for files",
                      min=1, max=10**9),
    "eval_size": Key(int, None, "evaluation samples: exactly this many for bundled data (default 64), at most for files",
                     min=1, max=10**9),
    "eval_fraction": Key((float, int), None, "share of the records held out for evaluation without eval_path (default 0.2)",
                         above=0, below=1),
    "shuffle": Key(bool, None, "shuffle the records with the seed before splitting and limiting (default true)"),
    "seed": Key(int, None, "data seed: which scenes/digits/charts, which records are held out (default: the caller's seed)",
                min=0, max=SEED_MAX),
    "image_size": Key(int, None, "scenes/digits/charts: image side in pixels (default 32; charts 64)", min=8, max=1024),
    "label": Key(str, None, "scenes classification: 'shape' (4 classes, default) or 'object' (colour + shape, 32 classes)",
                 choices=("shape", "object")),
    "hf_name": Key(str, None, "hf, chartqa, preference: a Hugging Face dataset id, read from the local cache"),
    "hf_split": Key(str, None, "hf, chartqa, preference: the split to train on (default 'train')"),
    "hf_eval_split": Key(str, None, "hf, chartqa, preference: the split to evaluate on (else eval_fraction of hf_split is "
                         "held out)"),
    "columns": Key(dict, None, "hf, chartqa, preference: bench field -> dataset column, e.g. {image = \"img\", label = "
                   "\"fine_label\"} (chartqa's default: {question = \"query\", answers = \"label\"})"),
    "of": Key(list, None, "mix: the names of two or more other [datasets.NAME] entries of the same task (and classes), "
              "trained and evaluated on together, e.g. [\"scenes-vqa\", \"digits-vqa\"]"),
}

_COMMON = {"format", "task", "train_size", "eval_size", "seed"}
_FILES = _COMMON | {"path", "eval_path", "image_root", "eval_image_root", "eval_fraction", "shuffle"}
_HF = {"hf_name", "hf_split", "hf_eval_split", "columns"}
FORMAT_KEYS: dict[str, set[str]] = {
    "scenes": _COMMON | {"split", "image_size", "label"},
    "digits": _COMMON | {"image_size"},
    "charts": _COMMON | {"split", "image_size"},
    "llava": _FILES,
    "coco_captions": _FILES,
    "image_folder": _FILES - {"image_root", "eval_image_root"},
    "vqa_v2": _FILES | {"annotations", "eval_annotations", "complementary_pairs"},
    "csv": _FILES,
    "vqa_jsonl": _FILES,
    "chartqa": _FILES | _HF,  # eval_path with a data file, the hf keys with a Hugging Face dataset
    "preference": _FILES | _HF,
    "hf": (_FILES - {"eval_image_root"}) | _HF,  # eval_path: with a .parquet file as path (one split a file)
    "mix": {"format", "of", "task"},  # sizes and seeds are the parts' own
}
_READERS = {
    "llava": formats.read_llava,
    "coco_captions": formats.read_coco_captions,
    "csv": formats.read_csv,
    "vqa_jsonl": formats.read_vqa_jsonl,
    "chartqa": formats.read_chartqa,
    "preference": formats.read_preference,
}
DEFAULT_BUNDLED_SIZES = {"train_size": 256, "eval_size": 64}


# ---------------------------------------------------------------- the table


def _task(cfg: dict, *, file: str, where: str) -> str:
    fmt = cfg["format"]
    if fmt == "mix":
        return _mix_task(cfg, file=file, where=where)
    task = cfg.get("task")
    if task is None:
        if len(FORMATS[fmt]) == 1:
            return FORMATS[fmt][0]
        raise SuiteError(f"format {fmt!r} gives several tasks; say which", file=file, where=f"{where}, key 'task'",
                         fix=f"add task = one of {', '.join(FORMATS[fmt])}")
    if task not in FORMATS[fmt]:
        raise SuiteError(f"format {fmt!r} does not give task {task!r}", file=file, where=f"{where}, key 'task'",
                         fix=f"use task = one of {', '.join(FORMATS[fmt])}, or another format")
    return task


def check_keys(cfg: dict, *, file: str, where: str, require_task: bool = False) -> None:
    """The table alone: known keys of the right types, keys that apply to the format, sane values."""

    def fail(key: str, message: str, fix: str) -> None:
        raise SuiteError(message, file=file, where=f"{where}, key '{key}'" if key else where, fix=fix)

    if not isinstance(cfg, dict):
        fail("", f"a dataset must be a table, got {type(cfg).__name__}",
             "write it as [datasets.NAME] with format = ...")
    for key, value in cfg.items():
        if key not in DATASET_KEYS:
            fail(key, f"unknown key {key!r}", f"use one of: {', '.join(DATASET_KEYS)}")
        problem = DATASET_KEYS[key].problem(value)
        if problem:
            fail(key, f"{key!r} {problem}", f"{key}: {DATASET_KEYS[key].doc}")
    fmt = cfg.get("format")
    if fmt is None:
        fail("format", "missing key 'format'", f"add format = one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        fail("format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    for key in cfg:
        if key not in FORMAT_KEYS[fmt]:
            fail(key, f"key {key!r} does not apply to format {fmt!r}",
                 f"remove it; format {fmt!r} takes {', '.join(sorted(FORMAT_KEYS[fmt]))}")
    if fmt == "mix":
        _check_mix_keys(cfg, file=file, where=where)
        return
    if "task" in cfg or require_task:
        _task(cfg, file=file, where=where)
    if fmt == "digits":
        from bench.data.digits import N_IMAGES

        total = sum(cfg.get(k, v) for k, v in DEFAULT_BUNDLED_SIZES.items())
        if total > N_IMAGES:
            fail("train_size", f"train_size + eval_size = {total}, but digits has {N_IMAGES} images", "ask for fewer")
    if fmt not in GENERATED:
        has_path, has_name = "path" in cfg, "hf_name" in cfg
        if fmt == "hf" and has_path == has_name:
            fail("path", "an hf dataset needs exactly one of 'path' (a save_to_disk folder) and 'hf_name'",
                 "set hf_name = \"owner/name\" or path = \"folder\"")
        if fmt in HF_FORMATS and fmt != "hf" and has_path == has_name:
            fail("path", f"format {fmt!r} needs exactly one of 'path' (a data file, or a save_to_disk folder) and "
                 "'hf_name'", "set path = \"data.json\" (or a save_to_disk folder), or hf_name = \"owner/name\"")
        if fmt not in HF_FORMATS and not has_path:
            fail("path", f"format {fmt!r} needs 'path'", "set path to the data file or folder")
        if has_name and "eval_path" in cfg:
            fail("eval_path", "'eval_path' names a data file, but hf_name reads a Hugging Face dataset",
                 "use hf_eval_split = \"<split>\" for its evaluation split")
        for held in ("eval_path", "hf_eval_split"):
            if held in cfg and "eval_fraction" in cfg:
                fail("eval_fraction", f"'eval_fraction' has no effect with '{held}'", "remove one of them")
    for field, column in cfg.get("columns", {}).items():
        if field not in HF_COLUMNS or not isinstance(column, str):
            fail("columns", f"columns.{field} = {column!r}: fields are {', '.join(HF_COLUMNS)}, "
                 "each mapped to a column name", "e.g. columns = {image = \"img\", label = \"fine_label\"}")


def _path(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def _check_paths(cfg: dict, base_dir: Path, *, file: str | None, where: str) -> None:
    """The table's paths exist: a wrong path is the suite's mistake, so it is named by its key."""
    for key in ("path", "eval_path", "image_root", "eval_image_root", "annotations", "eval_annotations",
                "complementary_pairs"):
        if key not in cfg:
            continue
        path = _path(cfg[key], base_dir)
        try:
            exists = path.exists()
        except OSError as exc:  # a name too long for the filesystem, a folder we may not enter
            raise SuiteError(f"{key} cannot be read ({exc.strerror or exc})", file=file, where=f"{where}, key '{key}'",
                             fix="check the path") from None
        if not exists:
            raise SuiteError(f"{key} {cfg[key]!r} does not exist (looked for {str(path)!r})", file=file,
                             where=f"{where}, key '{key}'",
                             fix="relative paths start at the suite file's folder; check the spelling")
        if key.endswith("image_root") and not path.is_dir():
            raise SuiteError(f"{key} {str(path)!r} is not a folder", file=file, where=f"{where}, key '{key}'",
                             fix=f"point {key} at the folder that image paths are relative to")
    if "eval_image_root" in cfg and "eval_path" not in cfg:
        raise SuiteError("'eval_image_root' names where eval_path's images are, and there is no eval_path", file=file,
                         where=f"{where}, key 'eval_image_root'", fix="add eval_path, or remove eval_image_root")
    if "eval_annotations" in cfg and "eval_path" not in cfg:
        raise SuiteError("'eval_annotations' belongs to eval_path's questions, and there is no eval_path", file=file,
                         where=f"{where}, key 'eval_annotations'", fix="add eval_path, or remove eval_annotations")


def _reads_hf(cfg: dict, base_dir: Path) -> bool:
    """Whether the table names a Hugging Face dataset: format hf, or chartqa / preference with hf_name, a folder (a
    save_to_disk folder, or the Hub's files; for chartqa not a split folder of ChartQA as distributed) or a .parquet
    file."""
    fmt = cfg["format"]
    if fmt not in HF_FORMATS:
        return False
    if fmt == "hf" or "hf_name" in cfg:
        return True
    path = _path(cfg["path"], base_dir)
    if fmt == "chartqa" and formats.is_chartqa_folder(path):
        return False
    return path.is_dir() or is_parquet(path)


def _check_source(cfg: dict, base_dir: Path, *, file: str | None, where: str) -> None:
    """hf, chartqa, preference: the keys fit what `path` is, a data file (eval_path) or a Hugging Face dataset (hf_*;
    eval_path for a .parquet file, which holds one split)."""
    if cfg["format"] not in HF_FORMATS or "path" not in cfg:
        return
    if _reads_hf(cfg, base_dir):
        single = is_parquet(_path(cfg["path"], base_dir))  # one split per file: eval_path names the evaluation's
        if "eval_path" in cfg and not single:
            raise SuiteError("path is a Hugging Face dataset folder, whose evaluation split is named by hf_eval_split, "
                             "not eval_path", file=file, where=f"{where}, key 'eval_path'",
                             fix="remove eval_path and set hf_eval_split = \"<split>\" (or let eval_fraction hold out records)")
        if "eval_path" in cfg and not is_parquet(_path(cfg["eval_path"], base_dir)):
            raise SuiteError("path is a .parquet file, so eval_path must be one too", file=file,
                             where=f"{where}, key 'eval_path'", fix="point eval_path at the evaluation split's .parquet file")
        if single and "hf_eval_split" in cfg:
            raise SuiteError("a .parquet file holds one split, so hf_eval_split has nothing to pick", file=file,
                             where=f"{where}, key 'hf_eval_split'", fix="set eval_path to the evaluation split's .parquet "
                             "file, or point path at the folder of the Hub's files")
        return
    for key in ("hf_split", "hf_eval_split", "columns"):
        if key in cfg:
            raise SuiteError(f"{key!r} applies to a Hugging Face dataset (hf_name, or path a save_to_disk folder, a "
                             f".parquet file or a folder of the Hub's files), but path {cfg['path']!r} is "
                             f"{'a ChartQA split folder' if _path(cfg['path'], base_dir).is_dir() else 'a data file'}",
                             file=file, where=f"{where}, key '{key}'",
                             fix="remove it, or point path at a Hugging Face dataset")


# ---------------------------------------------------------------- records


def _read(cfg: dict, task: str, path_key: str, base_dir: Path, problems: Problems) -> list[formats.Record]:
    fmt = cfg["format"]
    evaluation = path_key != "path"
    root_key = "eval_image_root" if evaluation and "eval_image_root" in cfg else "image_root"
    image_root = _path(cfg[root_key], base_dir) if root_key in cfg else None
    if fmt == "image_folder":
        return formats.read_image_folder(_path(cfg[path_key], base_dir))
    if _reads_hf(cfg, base_dir):
        split = cfg.get("hf_split", "train") if path_key != "hf_eval_split" else cfg["hf_eval_split"]
        local = _path(cfg["eval_path" if path_key == "eval_path" else "path"], base_dir) if "path" in cfg else None
        columns = {**HF_DEFAULT_COLUMNS.get(fmt, {}), **cfg.get("columns", {})}
        return read_hf(task=task, name=cfg.get("hf_name"), path=local, split=split, columns=columns,
                       image_root=image_root, problems=problems)
    if fmt == "vqa_v2":
        from bench.data.formats.vqa_v2 import read_vqa_v2

        keys = ("eval_annotations", None) if evaluation else ("annotations", "complementary_pairs")
        named = {key: _path(cfg[key], base_dir) if key in cfg else None for key in keys if key}
        return read_vqa_v2(_path(cfg[path_key], base_dir), image_root, problems,
                           annotations=named[keys[0]], pairs=named.get("complementary_pairs"), find_pairs=not evaluation)
    return _READERS[fmt](_path(cfg[path_key], base_dir), image_root, problems)


def _records(cfg: dict, task: str, base_dir: Path, problems: Problems | None = None):
    """(train records, eval records or None when eval is held out of train); each record's problems go to `problems`
    (raised at once without)."""
    problems = problems or Problems(strict=True)
    train = _read(cfg, task, "path", base_dir, problems)
    if "eval_path" in cfg:
        return train, _read(cfg, task, "eval_path", base_dir, problems)
    if "hf_eval_split" in cfg:  # only with a Hugging Face dataset (_check_source)
        return train, _read(cfg, task, "hf_eval_split", base_dir, problems)
    return train, None


def _classnames(records: list[formats.Record], task: str, file: str) -> tuple[str, ...]:
    if task != "classification":
        return ()
    names = formats.sorted_classnames(r.label for r in records)
    if len(names) < 2:
        raise DataError(f"classification needs at least 2 classes, found {list(names)}", file=file,
                        fix="add images of other classes")
    return names


def check_dataset(cfg: dict, *, base_dir: Path, file: str, where: str, on_bad_sample: str = "error") -> Problems:
    """Everything that can be checked before a model is built: the table, the data files, every record and every
    image's header. A problem of the table or a file raises SuiteError / DataError. The records a cell cannot use
    (bench/data/problems.py) raise one DataError listing them all under on_bad_sample = "error"; under "skip" they are
    returned, counted by reason (a suite checks with "skip" and decides per cell)."""
    check_keys(cfg, file=file, where=where, require_task=isinstance(cfg, dict) and cfg.get("format") == "hf")
    problems = Problems()
    if cfg["format"] == "mix":  # its parts are entries of the suite, checked as such
        _check_mix_data(cfg, Path(base_dir), file=file, where=where)
        return problems
    if cfg["format"] in GENERATED:
        return problems
    _check_paths(cfg, Path(base_dir), file=file, where=where)
    _check_source(cfg, Path(base_dir), file=file, where=where)
    task = cfg.get("task") or FORMATS[cfg["format"]][0]
    train, evals = _readable_records(cfg, task, Path(base_dir), problems)
    _usable(train, evals, problems, file=_data_file(cfg, base_dir), on_bad_sample=on_bad_sample)
    if on_bad_sample == "error":
        problems.raise_if_any()
    _classnames(train + (evals or []), task, train[0].file)
    return problems


def _readable_records(cfg: dict, task: str, base_dir: Path, problems: Problems):
    """_records, less those whose image's header and tail do not read (formats.check_images): what validation checks,
    and what a run under on_bad_sample = "skip" keeps."""
    train, evals = _records(cfg, task, base_dir, problems)
    return formats.check_images(train, problems), formats.check_images(evals, problems) if evals is not None else None


def _data_file(cfg: dict, base_dir: Path) -> str:
    return str(_path(cfg["path"], base_dir)) if "path" in cfg else f"hf:{cfg.get('hf_name')}"


def _usable(train: list, evals: list | None, problems: Problems, *, file: str, on_bad_sample: str) -> None:
    """Enough records left to train and evaluate on, once the problems' records are left out. Without: under
    on_bad_sample = "error" the listing of every problem; under "skip" how many were left out and why, with a fix that
    fits (an evaluation split without answers cannot be scored)."""
    held_out = evals is None  # then the records of one group go to one side (_held_out): two sets at least
    enough = len(_together(train)) >= 2 if held_out else (train and evals)
    if enough:
        return
    side = "training" if not train else "evaluation"
    what = (f"{len(train)} usable record(s) cannot be split into train and eval" if held_out else
            f"no {side} record is usable")
    if problems.errors and on_bad_sample == "error":
        listed = listing(problems.errors)
        raise DataError(f"{what}: {listed.message}", file=listed.file or file, fix=listed.fix)
    if not problems.items:
        raise DataError(what, file=file, fix="add records, or give eval_path")
    first = problems.items[0].error
    example = ": ".join(p for p in (first.file, first.where, first.message) if p)
    counts = reasons_text(problems.counts())
    fix = ("an evaluation split needs records with their images and answers (a test split published without answers "
           "cannot be scored): name another split or file, or hold records out of the training data with "
           "eval_fraction" if side == "evaluation" and not held_out else
           'fix the records (with on_bad_sample = "error", `bench validate` lists them all), or add usable ones')
    raise DataError(f"{what}: {len(problems.items)} left out ({counts}), e.g. {example}", file=file, fix=fix)


def load_dataset(
    cfg: dict, *, base_dir: Path, seed: int = 0, file: str | None = None, where: str = "dataset",
    on_bad_sample: str = "error",
) -> DatasetSplits:
    """Train/eval samples of one [datasets.NAME] table. The table's own `seed` wins over `seed`.

    Files: eval is eval_path (or hf_eval_split), else the last eval_fraction of the (shuffled)
    records (records of one group — VQA's complementary pairs — on one side); then train_size/eval_size cut each part.
    Class indices come from all records, so they do not depend on the limits. Records a cell cannot use
    (bench/data/problems.py) raise one DataError listing them all under `on_bad_sample = "error"`; under "skip" they
    are left out and counted by reason in info["skipped"]. `file`/`where` name the suite table in error messages."""
    if on_bad_sample not in POLICIES:
        raise ValueError(f"on_bad_sample must be one of {POLICIES}")
    check_keys(cfg, file=file, where=where, require_task=True)
    task = _task(cfg, file=file, where=where)
    data_seed = cfg.get("seed", seed)
    fmt = cfg["format"]
    if fmt == "mix":
        return _load_mix(cfg, task, base_dir=Path(base_dir), seed=seed, file=file, where=where,
                         on_bad_sample=on_bad_sample)
    if fmt in GENERATED:
        return _generated(cfg, task, data_seed)
    _check_paths(cfg, Path(base_dir), file=file, where=where)
    _check_source(cfg, Path(base_dir), file=file, where=where)

    problems = Problems()
    if on_bad_sample == "error":  # validation read the images' headers: a run it passed reads the records only
        train, evals = _records(cfg, task, Path(base_dir), problems)
        problems.raise_if_any()
    else:  # what validation left out, the run leaves out: images whose header or tail does not read too
        train, evals = _readable_records(cfg, task, Path(base_dir), problems)
    _usable(train, evals, problems, file=_data_file(cfg, base_dir), on_bad_sample=on_bad_sample)
    data_file = train[0].file
    classnames = _classnames(train + (evals or []), task, data_file)
    shuffle = cfg.get("shuffle", True)
    rng = np.random.default_rng(np.random.SeedSequence([data_seed, 0x10AD]))

    def order(records):
        return [records[i] for i in rng.permutation(len(records))] if shuffle else list(records)

    n_records = len(train) + len(evals or [])
    if evals is None:
        fraction = cfg.get("eval_fraction", 0.2)
        eval_from = f"{fraction} of {data_file}"
        pool = order(train)
        n_eval = max(1, round(len(pool) * fraction))
        if len(pool) - n_eval < 1:
            raise DataError(f"{len(pool)} record(s) cannot be split into train and eval", file=data_file,
                            fix="add records, or give eval_path")
        train, evals = _held_out(pool, n_eval)
        if not train:
            raise DataError(f"the {len(pool)} records form too few groups (VQA's pictures and their complementary "
                            f"pairs) to hold {n_eval} out and keep some for training", file=data_file,
                            fix="add records, or give eval_path")
    else:
        eval_from = f"{evals[0].file} [{cfg['hf_eval_split']}]" if "hf_eval_split" in cfg else evals[0].file
        train, evals = order(train), order(evals)
    train = train[: cfg.get("train_size", len(train))]
    evals = evals[: cfg.get("eval_size", len(evals))]

    train_samples = formats.to_samples(train, classnames)
    eval_samples = formats.to_samples(evals, classnames)
    info = {"format": fmt, "path": data_file, "eval_from": eval_from, "seed": data_seed, "shuffle": shuffle,
            "n_records": n_records, "skipped": problems.counts()}
    return formats.dataset_splits(task, train_samples, eval_samples, classnames, info,
                                  answer_metric=ANSWER_METRICS.get(fmt, ""))


def _held_out(pool: list, n_eval: int) -> tuple[list, list]:
    """(train, eval): the last records of `pool` held out, at least n_eval of them; the records of one group
    (Record.group: VQA v2's questions about one picture and its complementary pair's) stay together on one side, where
    the first of them is, so evaluation is on pictures the model never trained on. Without groups, the split is the
    plain cut of the shuffled records."""
    members = _together(pool)
    evals: list = []
    while members and len(evals) < n_eval:
        evals = members.pop() + evals
    return [r for group in members for r in group], evals


def _together(pool: list) -> list[list]:
    """The records of `pool` in the sets that must stay on one side of a split: one set per group, in the order of its
    first record, its records in pool order; a record without a group alone."""
    sets: dict = {}
    for i, record in enumerate(pool):
        sets.setdefault(("group", record.group) if record.group is not None else ("record", i), []).append(record)
    return list(sets.values())


def load_suite_dataset(dataset: dict, base_dir: Path, on_bad_sample: str = "error") -> DatasetSplits:
    """A cell's `dataset` (its [datasets.NAME] table with the name added) as train/eval splits; records a cell cannot
    use raise or are left out as the cell's on_bad_sample says."""
    cfg = {k: v for k, v in dataset.items() if k != "name"}
    return load_dataset(cfg, base_dir=base_dir, seed=dataset.get("seed") or 0, on_bad_sample=on_bad_sample)


def _generated(cfg: dict, task: str, seed: int) -> DatasetSplits:
    sizes = {k: cfg.get(k, v) for k, v in DEFAULT_BUNDLED_SIZES.items()}
    if cfg["format"] == "charts":
        from bench.data.charts import charts_dataset

        return charts_dataset(task, split=cfg.get("split", "target"), image_size=cfg.get("image_size", 64), seed=seed,
                              **sizes)
    image_size = cfg.get("image_size", 32)
    if cfg["format"] == "scenes":
        from bench.data.scenes import scenes_dataset

        return scenes_dataset(task, split=cfg.get("split", "target"), image_size=image_size, seed=seed,
                              label=cfg.get("label", "shape"), **sizes)
    from bench.data.digits import digits_dataset

    return digits_dataset(task, image_size=image_size, seed=seed, **sizes)


# ---------------------------------------------------------------- mix: the union of other datasets of the suite

_MIX_EXAMPLE = 'of = ["scenes-vqa", "digits-vqa"]'


def resolve_mix(tables: dict, *, file: str | None = None, from_suite: bool = False) -> dict:
    """A suite's [datasets.*] tables, each mix's `of` names replaced by the tables they name.

    A part becomes {"name": NAME, **its table, "task": its task}, less its `train` overrides (a mix's cells train
    with the mix's own): the part's entry as the suite holds it, so it loads exactly as it does alone. The mix gets
    `task` = its parts' common task. A mix may not name itself, an unknown dataset or another mix, needs two or
    more distinct names, and all its parts must give one task; each is a SuiteError naming the key, with a fix.
    A mix whose `of` is already resolved (tables, not names) is kept: resolving twice changes nothing; but not
    `from_suite` (a suite file's own tables), where `of` must name datasets whose entries the suite checks. Tables that
    are not tables, or not mixes, are returned as they are (the suite's own checks report those)."""
    if not isinstance(tables, dict):
        return tables
    out = dict(tables)
    for name, table in tables.items():
        if not isinstance(table, dict) or table.get("format") != "mix":
            continue
        where = f"[datasets.{name}]"
        at = f"{where}, key 'of'"
        names = table.get("of")
        if _resolved(names) and not from_suite:  # resolved already
            _check_mix_keys(table, file=file, where=where)
            out[name] = {**table, "task": _mix_task(table, file=file, where=where)}
            continue
        _mix_shape(names, file=file, where=where)
        parts = []
        for part in names:
            if part == name:
                raise SuiteError(f"mix '{name}' names itself", file=file, where=at,
                                 fix=f"name other [datasets.NAME] entries, e.g. {_MIX_EXAMPLE}")
            if part not in tables:
                others = [n for n in tables if n != name]
                close = difflib.get_close_matches(part, others, n=1)
                raise SuiteError(f"unknown dataset {part!r}", file=file, where=at,
                                 fix=f"did you mean '{close[0]}'?" if close else
                                 f"define it as [datasets.{part}], or name one of: {', '.join(others) or '(none defined)'}")
            ptable = tables[part]
            if not isinstance(ptable, dict):
                raise SuiteError(f"a dataset must be a table, got {type_name(ptable)}", file=file,
                                 where=f"[datasets.{part}]", fix="write it as [datasets.NAME] with format = ...")
            if ptable.get("format") == "mix":
                raise _nested_mix(part, file=file, at=at)
            cfg = {k: v for k, v in ptable.items() if k != "train"}
            part_where = f"[datasets.{part}]"
            check_keys(cfg, file=file, where=part_where, require_task=True)
            parts.append({"name": part, **cfg, "task": _task(cfg, file=file, where=part_where)})
        resolved = {**table, "of": parts}
        resolved["task"] = _mix_task(resolved, file=file, where=where)
        _mix_answer_metric(resolved, file=file, where=where)
        out[name] = resolved
    return out


def _resolved(names) -> bool:
    """Whether a mix's `of` holds its parts' tables (resolve_mix's work) rather than their names."""
    return isinstance(names, list) and bool(names) and all(isinstance(p, dict) for p in names)


def _nested_mix(part: str, *, file: str | None, at: str) -> SuiteError:
    return SuiteError(f"dataset {part!r} is itself a mix; a mix is made of plain datasets, one level deep", file=file,
                      where=at, fix=f"list the datasets of mix {part!r} here instead")


def _mix_shape(names, *, file: str | None, where: str) -> None:
    """`of` as a suite writes it: a list of two or more distinct dataset names."""
    at = f"{where}, key 'of'"
    if names is None:
        raise SuiteError("missing key 'of'", file=file, where=at,
                         fix=f"name the datasets to mix, e.g. {_MIX_EXAMPLE}")
    if not isinstance(names, list) or not all(isinstance(p, str) and p for p in names):
        raise SuiteError(f"'of' must be a list of dataset names, got {type_name(names)} {short(names)}", file=file,
                         where=at, fix=f"e.g. {_MIX_EXAMPLE}")
    if len(names) < 2:
        raise SuiteError(f"a mix needs at least 2 datasets, 'of' names {len(names)}", file=file, where=at,
                         fix=f"name two or more datasets, e.g. {_MIX_EXAMPLE}; or use the one dataset directly")
    twice = next((p for i, p in enumerate(names) if p in names[:i]), None)
    if twice is not None:
        raise SuiteError(f"'of' names dataset {twice!r} twice", file=file, where=at, fix="name each dataset once")


def _mix_parts(cfg: dict, *, file: str | None, where: str) -> list[tuple[str, dict]]:
    """(name, table without the name) of each resolved part; a SuiteError if `of` still holds names."""
    names = cfg.get("of")
    if _resolved(names):
        return [(str(p.get("name", f"of[{i}]")), {k: v for k, v in p.items() if k != "name"}) for i, p in enumerate(names)]
    _mix_shape(names, file=file, where=where)
    raise SuiteError("the names in 'of' have not been resolved into the datasets they name", file=file,
                     where=f"{where}, key 'of'",
                     fix="load the suite with bench.suite.load, or pass the tables through "
                         "bench.data.loader.resolve_mix(tables) first")


def _check_mix_keys(cfg: dict, *, file: str | None, where: str) -> None:
    """A mix table alone: `of` holds two or more names, or (resolved) two or more plain dataset tables whose keys
    are valid and whose tasks agree with each other and with the mix's `task`."""
    names = cfg.get("of")
    if not _resolved(names):
        _mix_shape(names, file=file, where=where)  # names: resolve_mix looks them up
        if cfg.get("task") is not None and cfg["task"] not in TASKS:
            raise SuiteError(f"unknown task {cfg['task']!r}", file=file, where=f"{where}, key 'task'",
                             fix=f"use task = one of {', '.join(TASKS)}, or leave it out (it is the datasets' task)")
        return
    if len(names) < 2:
        raise SuiteError(f"a mix needs at least 2 datasets, 'of' holds {len(names)}", file=file,
                         where=f"{where}, key 'of'", fix=f"name two or more datasets, e.g. {_MIX_EXAMPLE}")
    for i, part in enumerate(names):
        pname = part.get("name")
        if not isinstance(pname, str) or not pname:
            raise SuiteError(f"part {i} of the mix has no name", file=file, where=f"{where}, key 'of'",
                             fix="write 'of' as a list of dataset names; bench resolves them into their tables")
        if part.get("format") == "mix":
            raise _nested_mix(pname, file=file, at=f"{where}, key 'of'")
        check_keys({k: v for k, v in part.items() if k != "name"}, file=file, where=f"[datasets.{pname}]",
                   require_task=True)
    _mix_task(cfg, file=file, where=where)
    _mix_answer_metric(cfg, file=file, where=where)


def _mix_task(cfg: dict, *, file: str | None, where: str) -> str:
    """The one task of a mix's parts, which the mix's own `task` (if given) must name too."""
    parts = _mix_parts(cfg, file=file, where=where)
    tasks = {name: _task(part, file=file, where=f"[datasets.{name}]") for name, part in parts}
    if len(set(tasks.values())) > 1:
        listed = ", ".join(f"{name!r} is {task}" for name, task in tasks.items())
        raise SuiteError(f"the datasets of a mix must share one task: {listed}", file=file, where=f"{where}, key 'of'",
                         fix="mix datasets of the same task (set each one's task = ...), or give each task a mix of its own")
    task = next(iter(tasks.values()))
    if cfg.get("task") is not None and cfg["task"] != task:
        raise SuiteError(f"task {cfg['task']!r} disagrees with the mix's datasets, which are {task}", file=file,
                         where=f"{where}, key 'task'", fix=f"set task = \"{task}\", or leave it out (it is the datasets' task)")
    return task


def answer_metric_of(cfg: dict) -> str:
    """The metric a dataset table's own benchmark scores answers with, known before loading it: "" for the task's
    default. A mix's is its parts' (resolved: resolve_mix), which must agree."""
    if cfg.get("format") == "mix":
        return _mix_answer_metric(cfg, file=None, where="mix")
    return ANSWER_METRICS.get(cfg.get("format"), "")


def _mix_answer_metric(cfg: dict, *, file: str | None, where: str) -> str:
    """The one answer metric of a mix's parts: parts scored differently cannot give one quality number."""
    return _same_answer_metric([(name, answer_metric_of(part)) for name, part in _mix_parts(cfg, file=file, where=where)],
                               file=file, where=where)


def _same_answer_metric(named: list[tuple[str, str]], *, file: str | None, where: str) -> str:
    if len({metric for _, metric in named}) > 1:
        shown = {name: metric or "the task's default" for name, metric in named}
        listed = ", ".join(f"{name!r} by {metric}" for name, metric in shown.items())
        raise SuiteError(f"the datasets of a mix must be scored with one answer metric: {listed}", file=file,
                         where=f"{where}, key 'of'",
                         fix="mix datasets scored alike (chart data with chart data), or train them in separate cells")
    return named[0][1]


def _part_classnames(cfg: dict, task: str, base_dir: Path) -> tuple[str, ...]:
    """The class names a part would load with, without making its samples (a data file's records are read)."""
    if cfg["format"] == "scenes":
        from bench.data.scenes import classnames_for

        return classnames_for(cfg.get("label", "shape"))
    if cfg["format"] == "digits":
        from bench.data.digits import CLASSNAMES

        return CLASSNAMES
    problems = Problems()  # the classes of the usable records: the suite decides on its parts' problems per cell
    train, evals = _readable_records(cfg, task, base_dir, problems)
    _usable(train, evals, problems, file=_data_file(cfg, base_dir), on_bad_sample="skip")
    return _classnames(train + (evals or []), task, train[0].file)


def _same_classnames(named: list[tuple[str, tuple[str, ...]]], *, file: str | None, where: str) -> None:
    (first, names), *rest = named
    for other, other_names in rest:
        if other_names != names:
            what = "the same classes in another order" if sorted(other_names) == sorted(names) else "other classes"
            raise SuiteError(f"classification datasets of a mix must have the same classes in the same order: "
                             f"{first!r} has {short(list(names))}, {other!r} has {what}: {short(list(other_names))}",
                             file=file, where=f"{where}, key 'of'",
                             fix="mix classification datasets with one class list (e.g. scenes with the same label), "
                                 "or train them in separate cells")


def _check_mix_data(cfg: dict, base_dir: Path, *, file: str | None, where: str) -> None:
    """What check_dataset adds for a mix: its parts' paths exist and, for classification, their classes agree. Each
    part's records and images are checked when the part's own entry is (every part is an entry of the suite)."""
    task = _mix_task(cfg, file=file, where=where)
    parts = _mix_parts(cfg, file=file, where=where)
    for name, part in parts:
        _check_paths(part, base_dir, file=file, where=f"[datasets.{name}]")
    if task == "classification":
        _same_classnames([(name, _part_classnames(part, task, base_dir)) for name, part in parts], file=file, where=where)


def _load_mix(cfg: dict, task: str, *, base_dir: Path, seed: int, file: str | None, where: str,
              on_bad_sample: str = "error") -> DatasetSplits:
    """The parts loaded as each loads alone (its own seed, else `seed`), their train splits concatenated in `of`'s
    order, and their eval splits. The fingerprint hashes the parts' fingerprints, in order."""
    loaded = [(name, load_dataset(part, base_dir=base_dir, seed=seed, file=file, where=f"[datasets.{name}]",
                                  on_bad_sample=on_bad_sample))
              for name, part in _mix_parts(cfg, file=file, where=where)]
    classnames = loaded[0][1].classnames
    answer_metric = _same_answer_metric([(name, s.answer_metric) for name, s in loaded], file=file, where=where)
    if task == "classification":
        _same_classnames([(name, s.classnames) for name, s in loaded], file=file, where=where)
    train = [s for _, splits in loaded for s in splits.train]
    evals = [s for _, splits in loaded for s in splits.eval]
    if any(splits.classnames != classnames for _, splits in loaded):
        # captions and vqa do not use labels; parts with other classes leave none that would index the wrong list
        classnames = ()
        train = [replace(s, label=None) for s in train]
        evals = [replace(s, label=None) for s in evals]
    blob = json.dumps(["mix", task, list(classnames), [splits.fingerprint for _, splits in loaded]])
    skipped: Counter = Counter()
    for _, splits in loaded:
        skipped.update(splits.info.get("skipped", {}))
    info = {"format": "mix",
            "of": [{"name": name, "fingerprint": splits.fingerprint, **splits.info} for name, splits in loaded],
            "n_train": len(train), "n_eval": len(evals), "skipped": dict(skipped)}
    return DatasetSplits(task=task, train=train, eval=evals, classnames=classnames,
                         fingerprint=hashlib.sha256(blob.encode()).hexdigest()[:16], info=info,
                         answer_metric=answer_metric)
