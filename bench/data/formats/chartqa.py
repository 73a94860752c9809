"""ChartQA as distributed: ChartQA Dataset/{train,val,test}/ with <split>_human.json, <split>_augmented.json and
png/; or one such JSON (or JSONL) file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.data.formats.common import (
    EMPTY_ANSWER_FIX,
    IMAGE_TOKEN,
    Record,
    fail,
    json_type_name,
    located,
    majority_answer,
    object_records,
    prompt_text,
    resolve_image,
)
from bench.data.problems import EmptyAnswer, Problems

CHARTQA_FIX = ('ChartQA: a JSON list [{"imgname": "a.png", "query": "what is the value of ... ?", "label": "12"}, ...] '
               "or one such object per line")


def read_chartqa(path: str | Path, image_root: str | Path | None = None, problems: Problems | None = None) -> list[Record]:
    """ChartQA's published JSON (a list of {"imgname", "query", "label"}) or JSONL with the same keys -> vqa records.
    "image" is accepted for "imgname"; a label is a string, a number or a list of them (several references).

    As ChartQA distributes it (ChartQA Dataset/{train,val,test}/ each with <split>_human.json, <split>_augmented.json
    and png/), `path` may be a split's folder: both JSON files are read, human first; a split's images are in its
    png/ folder unless image_root says otherwise."""
    problems = problems or Problems(strict=True)
    path = Path(path)
    files = chartqa_files(path) if path.is_dir() else [path]
    if image_root is None:
        split = path if path.is_dir() else path.parent
        image_root = split / "png" if (split / "png").is_dir() else split
    records = []
    for data_file in files:
        data_file, root, file = located(data_file, image_root)
        for where, obj in object_records(data_file, fix=CHARTQA_FIX, json_list=True, problems=problems):
            with problems.record():
                image_field = "image" if "imgname" not in obj and "image" in obj else "imgname"
                question = prompt_text(obj.get("query"), "query", file=file, where=where, fix=CHARTQA_FIX)
                answers = _chartqa_labels(obj.get("label"), file=file, where=where)
                image = resolve_image(obj.get(image_field), root=root, file=file, where=where, field=image_field)
                records.append(Record(file, where, image, image_field, question=question, answers=answers,
                                      turns=((question, majority_answer(answers)),)))
    return records


CHARTQA_PARTS = ("human", "augmented")  # ChartQA's two sets of questions per split: written by people, generated


def is_chartqa_folder(path: Path) -> bool:
    """A split folder of ChartQA as distributed: its png/ folder, or a <split>_human.json / _augmented.json."""
    return path.is_dir() and ((path / "png").is_dir() or bool(chartqa_files(path, required=False)))


def chartqa_files(folder: Path, *, required: bool = True) -> list[Path]:
    """The question files of a ChartQA split folder, human first: <split>_human.json, <split>_augmented.json."""
    found = [f for part in CHARTQA_PARTS for f in sorted(folder.glob(f"*_{part}.json")) if f.is_file()]
    if not found and required:
        fail("the folder holds no ChartQA question file (<split>_human.json, <split>_augmented.json)", file=str(folder),
             fix="point path at a split folder of ChartQA as distributed (e.g. \"ChartQA Dataset/train\"), or at one of "
                 "its JSON files")
    return found


def _chartqa_labels(value: Any, *, file: str, where: str) -> tuple[str, ...]:
    """The reference answers of a ChartQA label: a string, a finite number (written as JSON writes it) or a list."""
    if value is None:
        fail("missing field 'label'", file=file, where=f"{where}, field 'label'", fix=CHARTQA_FIX)
    if isinstance(value, list) and not value:
        fail("'label' is an empty list: the question has no answer", file=file, where=f"{where}, field 'label'",
             fix=EMPTY_ANSWER_FIX, kind=EmptyAnswer)
    items = [(f"label[{k}]", v) for k, v in enumerate(value)] if isinstance(value, list) else [("label", value)]
    answers = []
    for field, v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            v = json.dumps(v)
        if isinstance(v, str) and not v.strip():
            fail(f"'{field}' must be a non-empty string or a number, got an empty one", file=file,
                 where=f"{where}, field '{field}'", fix=EMPTY_ANSWER_FIX, kind=EmptyAnswer)
        if not isinstance(v, str) or IMAGE_TOKEN in v:
            got = "the <image> placeholder" if isinstance(v, str) else json_type_name(v)
            fail(f"'{field}' must be a non-empty string or a number, got {got}", file=file,
                 where=f"{where}, field '{field}'", fix=CHARTQA_FIX)
        answers.append(v.strip())
    return tuple(answers)
