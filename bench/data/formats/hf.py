"""The Hugging Face `datasets` format, read through `datasets` offline from what users have on disk:

- a hub dataset by name, from the local cache (`hf_name`);
- the Hub's own files: a folder as a dataset repository holds them (data/train-00000-of-00002.parquet, ...: the
  splits are found from the file names, as `datasets.load_dataset` finds them), or a single .parquet file;
- a `Dataset.save_to_disk` folder.

Parquet is read into memory with a temporary cache folder that is removed after: nothing is written outside the
folders the user gave. `datasets` is optional: asking for this format without it installed is a DataError that says
how to get it. Formats "chartqa" and "preference" read their Hugging Face datasets here too, with their own default
columns (bench/data/loader.py HF_DEFAULT_COLUMNS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.data.formats.common import Record, fail, json_type_name, majority_answer, resolve_image, vqa_answers
from bench.data.formats.preference import preference_record, preference_texts
from bench.data.problems import EmptyAnswer, Problems, TextOnly
from bench.errors import DataError

SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes in its folder

HF_COLUMNS = ("image", "label", "caption", "question", "answers", "prompt", "chosen", "rejected")
# the columns each task reads (bench's field names; `columns` maps them to the dataset's)
TASK_COLUMNS = {"classification": ("image", "label"), "caption": ("image", "caption"),
                "vqa": ("image", "question", "answers"), "preference": ("image", "prompt", "chosen", "rejected")}


def read_hf(
    *,
    task: str,
    name: str | None = None,
    path: str | Path | None = None,
    split: str = "train",
    columns: dict[str, str] | None = None,
    image_root: str | Path | None = None,
    problems: Problems | None = None,
) -> list[Record]:
    """A Hugging Face dataset by hub name (from the local cache when offline) or a save_to_disk folder.
    `columns` maps bench's fields (image, label, caption, question, answers, prompt, chosen, rejected) to the
    dataset's columns. Without a mapping for image, a dataset with no 'image' column but an 'images' one (TRL's vision
    datasets: a list of one image per row) is read from that. A row's problems go to `problems`
    (bench/data/problems.py); a row without an image is left out as text-only."""
    problems = problems or Problems(strict=True)
    file = str(path) if path is not None else f"hf:{name}"
    try:
        import datasets
    except ImportError:
        fail("reading Hugging Face datasets needs the `datasets` library, which is not installed", file=file,
              fix="pip install datasets")
    cols = {k: k for k in HF_COLUMNS} | dict(columns or {})
    ds = _load(datasets, name=name, path=Path(path) if path is not None else None, split=split, file=file)

    if "image" not in (columns or {}) and "image" not in ds.column_names and "images" in ds.column_names:
        cols["image"] = "images"
    needed = list(TASK_COLUMNS[task])
    for key in needed:
        if cols[key] not in ds.column_names:
            fail(f"column {cols[key]!r} (for {key}) is not in the dataset; it has {ds.column_names}", file=file,
                  where=f"columns.{key}", fix=f"map it in the suite: columns = {{{key} = \"<column name>\"}}")
    ds = _undecoded_images(ds, cols["image"], datasets)
    label_names = getattr(ds.features.get(cols["label"]), "names", None)
    if image_root is not None:
        root = Path(image_root)
    else:  # image paths in a dataset start at its folder (a .parquet file's own folder)
        root = (Path(path).parent if Path(path).is_file() else Path(path)) if path is not None else Path.cwd()

    records = []
    for i, row in enumerate(ds.select_columns(list(dict.fromkeys(cols[k] for k in needed)))):  # a column mapped twice
        where = f"split {split!r}, record {i}"
        with problems.record():
            records.append(_record(task, row, cols, label_names, root=root, file=file, where=where))
    if not records and not problems.items:
        fail(f"split {split!r} has no rows", file=file, where="hf_split", fix="pick another split")
    return records


def _record(task: str, row: dict, cols: dict, label_names, *, root: Path, file: str, where: str) -> Record:
    """One row as a Record of `task`; a DataError names the row and field."""
    image = _hf_image(row[cols["image"]], root=root, file=file, where=where, field=cols["image"])
    if task == "classification":
        value = row[cols["label"]]
        label = label_names[value] if label_names is not None and isinstance(value, int) else str(value)
        return Record(file, where, image, cols["image"], label=label)
    if task == "caption":
        value = row[cols["caption"]]
        caps = (value,) if isinstance(value, str) else tuple(value or ())
        if not caps or not all(isinstance(c, str) for c in caps):
            fail(f"captions must be a non-empty string or list of strings, got {json_type_name(value)}", file=file,
                  where=f"{where}, field '{cols['caption']}'", fix="drop rows without captions")
        if not all(c.strip() for c in caps):
            fail("a caption is empty", file=file, where=f"{where}, field '{cols['caption']}'", kind=EmptyAnswer,
                 fix="drop the row or write its caption")
        return Record(file, where, image, cols["image"], captions=tuple(c.strip() for c in caps))
    if task == "vqa":
        question = row[cols["question"]]
        if not isinstance(question, str) or not question.strip():
            got = json_type_name(question) if not isinstance(question, str) else "an empty one"
            fail(f"question must be a non-empty string, got {got}", file=file,
                  where=f"{where}, field '{cols['question']}'", fix="drop rows without a question")
        value = row[cols["answers"]]
        answers = vqa_answers([value] if isinstance(value, str) else value, file=file, where=where, field=cols["answers"],
                               fix="answers are a string, a list of strings or of {answer: ...} objects")
        return Record(file, where, image, cols["image"], question=question.strip(), answers=answers,
                      turns=((question.strip(), majority_answer(answers)),))
    fields = {k: cols[k] for k in ("prompt", "chosen", "rejected")}
    texts = preference_texts({k: row[c] for k, c in fields.items()}, fields, file=file, where=where,
                             fix="prompt, chosen and rejected are strings or lists of messages; drop the row")
    return preference_record(file, where, image, cols["image"], *texts)


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet" and path.is_file()


def is_saved(path: Path) -> bool:
    """A folder Dataset.save_to_disk (or DatasetDict.save_to_disk) wrote."""
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS)


def _load(datasets, *, name: str | None, path: Path | None, split: str, file: str):
    """The split as a datasets.Dataset: from the local cache by hub name, a save_to_disk folder, a .parquet file (one
    split: `split` is not asked for), or a folder of the Hub's files (its splits found from the file names)."""
    import tempfile

    datasets.disable_progress_bars()  # a run's own progress is bench's; datasets' bars and notices are noise there
    datasets.logging.set_verbosity_error()
    try:
        if path is None:
            return datasets.load_dataset(name, split=split)
        if is_saved(path):
            ds = datasets.load_from_disk(str(path))
            return _split_of(ds, split, file=file, what="the saved dataset") if isinstance(ds, datasets.DatasetDict) else ds
        # parquet and the Hub's file layouts: read into memory, the builder's cache in a folder of our own, removed after
        with tempfile.TemporaryDirectory(prefix="bench-hf-") as cache:
            if is_parquet(path):
                return datasets.load_dataset("parquet", data_files={"train": [str(path)]}, split="train",
                                             keep_in_memory=True, cache_dir=cache)
            builder = datasets.load_dataset_builder(str(path), cache_dir=cache)  # which files hold which split
            files = _split_of(builder.config.data_files or {}, split, file=file, what="the folder's files")
            # that split's files alone, by the packaged module datasets inferred (parquet, json, imagefolder, ...)
            return datasets.load_dataset(builder.name, data_files={split: files}, split=split, keep_in_memory=True,
                                         cache_dir=cache)
    except DataError:
        raise
    except Exception as e:  # offline hub misses, unreadable files, folders datasets cannot infer: one clear message
        message = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if path is None:
            fail(f"cannot load the dataset from the local Hugging Face cache: {message}", file=file, where="hf_name",
                 fix="this machine has no network: copy the dataset's files here (the Hub's data/*.parquet folder, or "
                     "a save_to_disk folder) and set path to them, or fill the cache where there is network")
        fail(f"cannot read the dataset: {message}", file=file, where="path",
             fix="point path at a save_to_disk folder, a .parquet file, or a folder of the Hub's files "
                 "(data/<split>-00000-of-00001.parquet)")


def _split_of(splits, split: str, *, file: str, what: str):
    if split not in splits:
        fail(f"split {split!r} is not in {what} (it has {sorted(splits)})", file=file, where="hf_split",
             fix=f"set hf_split (or hf_eval_split) to one of {sorted(splits)}")
    return splits[split]


def _undecoded_images(ds, column: str, datasets):
    """The dataset with its image column (or list-of-images column) left encoded: decoded only for the records used."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, getattr(datasets, "List", ())) and isinstance(feature.feature, datasets.Image):
        # a list of images is cast by rewriting the column: in memory, never as a cache file beside the user's data
        features = ds.features.copy()
        features[column] = datasets.List(datasets.Image(decode=False))
        return ds.cast(features, keep_in_memory=True)
    return ds


def _hf_image(value: Any, *, root: Path, file: str, where: str, field: str) -> Any:
    if value is None or value == []:  # a row without an image: text-only, left out under every policy
        fail("no image: a text-only row", file=file, where=f"{where}, field '{field}'", kind=TextOnly,
             fix="none needed: text-only rows are left out and counted")
    if isinstance(value, list):  # TRL's "images": one image per row is what a sample holds
        if len(value) != 1:
            fail(f"the image column holds a list of {len(value)} images; a sample has exactly one", file=file,
                 where=f"{where}, field '{field}'", fix="keep rows with one image, or map columns.image to another column")
        value = value[0]
    if isinstance(value, dict):  # an undecoded datasets.Image: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, str):
        return resolve_image(value, root=root, file=file, where=where, field=field)
    if hasattr(value, "convert"):  # already a PIL image
        return value
    fail(f"the image column holds {json_type_name(value)}, not an image or a path", file=file,
          where=f"{where}, field '{field}'", fix="map columns.image to the column that holds the images")
