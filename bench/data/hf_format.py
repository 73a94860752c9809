"""The Hugging Face `datasets` format: a hub dataset from the local cache, or a save_to_disk folder.

`datasets` is optional: asking for this format without it installed is a DataError that says how to get it.
Formats "chartqa" and "preference" read their Hugging Face datasets here too, with their own default columns
(bench/data/loader.py HF_DEFAULT_COLUMNS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.data.formats import (
    Record,
    fail,
    json_type_name,
    majority_answer,
    preference_record,
    preference_texts,
    resolve_image,
    vqa_answers,
)
from bench.errors import DataError

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
) -> list[Record]:
    """A Hugging Face dataset by hub name (from the local cache when offline) or a save_to_disk folder.
    `columns` maps bench's fields (image, label, caption, question, answers, prompt, chosen, rejected) to the
    dataset's columns. Without a mapping for image, a dataset with no 'image' column but an 'images' one (TRL's vision
    datasets: a list of one image per row) is read from that."""
    file = str(path) if path is not None else f"hf:{name}"
    try:
        import datasets
    except ImportError:
        fail("reading Hugging Face datasets needs the `datasets` library, which is not installed", file=file,
              fix="pip install datasets")
    cols = {k: k for k in HF_COLUMNS} | dict(columns or {})
    try:
        if path is not None:
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    fail(f"split {split!r} is not in the saved dataset (it has {sorted(ds)})", file=file,
                          where="hf_split", fix=f"set hf_split to one of {sorted(ds)}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except DataError:
        raise
    except Exception as e:  # offline hub misses, missing folders, bad splits: all become one clear message
        fail(f"cannot load the dataset: {type(e).__name__}: {e}", file=file,
              fix="offline, save it where there is network with Dataset.save_to_disk and set `path` to that folder")

    if "image" not in (columns or {}) and "image" not in ds.column_names and "images" in ds.column_names:
        cols["image"] = "images"
    needed = list(TASK_COLUMNS[task])
    for key in needed:
        if cols[key] not in ds.column_names:
            fail(f"column {cols[key]!r} (for {key}) is not in the dataset; it has {ds.column_names}", file=file,
                  where=f"columns.{key}", fix=f"map it in the suite: columns = {{{key} = \"<column name>\"}}")
    ds = _undecoded_images(ds, cols["image"], datasets)
    label_names = getattr(ds.features.get(cols["label"]), "names", None)
    root = Path(image_root) if image_root is not None else (Path(path) if path is not None else Path.cwd())

    records = []
    for i, row in enumerate(ds.select_columns(list(dict.fromkeys(cols[k] for k in needed)))):  # a column mapped twice
        where = f"split {split!r}, record {i}"
        image = _hf_image(row[cols["image"]], root=root, file=file, where=where, field=cols["image"])
        if task == "classification":
            value = row[cols["label"]]
            label = label_names[value] if label_names is not None and isinstance(value, int) else str(value)
            records.append(Record(file, where, image, cols["image"], label=label))
        elif task == "caption":
            value = row[cols["caption"]]
            caps = (value,) if isinstance(value, str) else tuple(value or ())
            if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
                fail(f"captions must be a non-empty string or list of strings, got {json_type_name(value)}", file=file,
                      where=f"{where}, field '{cols['caption']}'", fix="drop rows without captions")
            records.append(Record(file, where, image, cols["image"], captions=tuple(c.strip() for c in caps)))
        elif task == "vqa":
            question = row[cols["question"]]
            if not isinstance(question, str) or not question.strip():
                fail(f"question must be a non-empty string, got {json_type_name(question) if not isinstance(question, str) else 'an empty one'}", file=file,
                      where=f"{where}, field '{cols['question']}'", fix="drop rows without a question")
            value = row[cols["answers"]]
            answers = vqa_answers([value] if isinstance(value, str) else value, file=file, where=where,
                                   fix="answers are a string, a list of strings or of {answer: ...} objects")
            records.append(Record(file, where, image, cols["image"], question=question.strip(), answers=answers,
                                  turns=((question.strip(), majority_answer(answers)),)))
        else:
            fields = {k: cols[k] for k in ("prompt", "chosen", "rejected")}
            texts = preference_texts({k: row[c] for k, c in fields.items()}, fields, file=file, where=where,
                                     fix="prompt, chosen and rejected are strings or lists of messages; drop the row")
            records.append(preference_record(file, where, image, cols["image"], *texts))
    if not records:
        fail(f"split {split!r} has no rows", file=file, where="hf_split", fix="pick another split")
    return records


def _undecoded_images(ds, column: str, datasets):
    """The dataset with its image column (or list-of-images column) left encoded: decoded only for the records used."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, getattr(datasets, "List", ())) and isinstance(feature.feature, datasets.Image):
        return ds.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return ds


def _hf_image(value: Any, *, root: Path, file: str, where: str, field: str) -> Any:
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
