"""COCO captions (2014, 2017) as COCO distributes them: annotations/captions_<split>.json beside <split>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.data.formats.common import Record, fail, id_of, json_type_name, located, read_json, resolve_image, split_folder
from bench.data.problems import EmptyAnswer, EmptyCaption, Problems
from bench.errors import DataError


def read_coco_captions(path: str | Path, image_root: str | Path | None = None, problems: Problems | None = None) -> list[Record]:
    """{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]} -> caption records,
    all references of an image together, in the order of 'images'. As COCO distributes it
    (annotations/captions_train2017.json beside train2017/), the images are found in the split's folder when
    image_root is not given. An image's problem leaves it (and its captions) out, counted once; an empty caption
    leaves that caption out of an image that keeps its others (counted as an empty caption, not a record); an image
    whose every caption is empty is left out as an empty answer."""
    problems = problems or Problems(strict=True)
    path = Path(path)
    if image_root is None:
        image_root = coco_image_root(path)
    path, root, file = located(path, image_root)
    data = read_json(path)
    fix = ('COCO captions: {"images": [{"id": 1, "file_name": "a.jpg"}], '
           '"annotations": [{"image_id": 1, "caption": "..."}]}')
    if not isinstance(data, dict):
        fail(f"expected a JSON object with 'images' and 'annotations', got {json_type_name(data)}", file=file,
              where="top level", fix=fix)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            fail(f"'{key}' must be a list, got {json_type_name(data.get(key))}", file=file, where=f"field '{key}'",
                  fix=fix)
    if not data["images"]:
        fail("'images' is empty", file=file, where="field 'images'", fix=fix)

    images: dict[Any, tuple[int, Path]] = {}
    seen: dict[Any, int] = {}  # every image id of 'images', usable or not: its captions are not orphans
    for i, im in enumerate(data["images"]):
        where = f"record {i} of 'images'"
        with problems.record():
            image_id = id_of(im, "id", file=file, where=where, fix=fix)
            if image_id in seen:
                fail(f"duplicate image id {str(image_id)[:60]!r} (also record {seen[image_id]})", file=file,
                      where=f"{where}, field 'id'", fix="give every image a unique id")
            seen[image_id] = i
            images[image_id] = (i, resolve_image(im.get("file_name"), root=root, file=file, where=where,
                                                 field="file_name"))

    captions: dict[Any, list[str]] = {k: [] for k in images}
    empty: dict[Any, list[DataError]] = {k: [] for k in images}  # an image's empty captions, counted once it is kept
    for j, ann in enumerate(data["annotations"]):
        where = f"record {j} of 'annotations'"
        with problems.record():
            image_id = id_of(ann, "image_id", file=file, where=where, fix=fix)
            if image_id not in seen:
                fail(f"image_id {str(image_id)[:60]!r} is not the id of any entry in 'images'", file=file,
                      where=f"{where}, field 'image_id'", fix="add the image to 'images' or remove the annotation")
            if image_id not in images:  # its image was left out already, and counted there
                continue
            caption = ann.get("caption")
            if not isinstance(caption, str):
                fail(f"'caption' must be a non-empty string, got {json_type_name(caption)}", file=file,
                      where=f"{where}, field 'caption'", fix="remove the annotation or write its caption")
            if caption.strip():
                captions[image_id].append(" ".join(caption.split()))
            else:
                empty[image_id].append(EmptyCaption("'caption' is empty", file=file, where=f"{where}, field 'caption'",
                                                    fix="remove the annotation or write its caption"))

    records = []
    for image_id, (i, image) in images.items():
        where = f"record {i} of 'images'"
        with problems.record():
            if not captions[image_id]:
                fail(f"image id {str(image_id)[:60]!r} has {'only empty captions' if empty[image_id] else 'no captions'}"
                     " in 'annotations'", file=file, where=f"{where}, field 'id'",
                     fix="add its captions or remove it from 'images'", kind=EmptyAnswer if empty[image_id] else DataError)
            for error in empty[image_id]:  # the image is kept with its other captions
                problems.add(error)
            records.append(Record(file, where, image, "file_name", captions=tuple(captions[image_id])))
    return records


def coco_image_root(path: Path) -> Path:
    """COCO's images of a captions file: the split's folder (annotations/captions_val2017.json -> val2017/), else
    the file's folder."""
    import re

    match = re.fullmatch(r"captions_(\w+)\.json", path.name)
    return (split_folder(path, match.group(1)) if match else None) or path.parent
