"""VQA v2 as GT-Vision-Lab distributes it, read without conversion.

    v2_OpenEnded_mscoco_train2014_questions.json   {"data_subtype": "train2014", "questions": [{"image_id",
                                                    "question", "question_id"}, ...], "info", "license", ...}
    v2_mscoco_train2014_annotations.json           {"annotations": [{"question_id", "image_id", "answers": [{"answer",
                                                    "answer_confidence", "answer_id"} × 10], "multiple_choice_answer",
                                                    "question_type", "answer_type"}, ...], ...}
    v2_mscoco_train2014_complementary_pairs.json   [[question_id, question_id], ...]   (optional)
    train2014/COCO_train2014_000000000009.jpg      COCO's images, named by the questions file's data_subtype

All ten answers are kept (the accuracy scores against them); the training target is the publisher's
`multiple_choice_answer`. The annotations file is found beside the questions file by its official name unless named;
the images in the folder named data_subtype beside the files (or one level up) unless image_root is given, and under
COCO 2017's names (000000000009.jpg) where the 2014 name is not there. Complementary pairs (two similar questions with
different answers) are kept on one side of a held-out split: Record.group.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from bench.data.formats.common import (
    Record,
    fail,
    id_of,
    json_type_name,
    located,
    majority_answer,
    prompt_text,
    read_json,
    resolve_image,
    split_folder,
    vqa_answers,
)
from bench.data.problems import MissingImage, Problems

FIX = ("VQA v2 as distributed: the questions file {\"data_subtype\": \"train2014\", \"questions\": [{\"image_id\": 9, "
       "\"question\": \"...\", \"question_id\": 90}]} with its annotations file {\"annotations\": [{\"question_id\": 90, "
       "\"answers\": [{\"answer\": \"...\"}, ...]}]}")


def beside(questions: Path, kind: str) -> list[Path]:
    """Where the official `kind` file ("annotations", "complementary_pairs") of a questions file is: beside it, or in
    Annotations/ beside its Questions/ folder (the VQA API's layout). v2_OpenEnded_mscoco_val2014_questions.json ->
    v2_mscoco_val2014_annotations.json (VQA v1's OpenEnded_mscoco_... -> mscoco_..._annotations.json alike)."""
    name = re.sub(r"(OpenEnded|MultipleChoice)_", "", questions.name).replace("_questions", f"_{kind}")
    return [questions.with_name(name), questions.parent.parent / "Annotations" / name]


def _found(candidates: list[Path]) -> Path:
    return next((p for p in candidates if p.is_file()), candidates[0])


def read_vqa_v2(path: str | Path, image_root: str | Path | None = None, problems: Problems | None = None, *,
                annotations: str | Path | None = None, pairs: str | Path | None = None,
                find_pairs: bool = True) -> list[Record]:
    """The questions of `path` with their answers from `annotations` -> vqa records, in the questions file's order.
    Complementary pairs (`pairs`, else the official file beside the questions when `find_pairs`) only matter where
    records are held out of this file for evaluation: an evaluation file's are not read."""
    problems = problems or Problems(strict=True)
    path = Path(path)
    data = read_json(path)
    questions = _object_field(data, "questions", file=str(path))
    subtype = _subtype(data, file=str(path))
    looked = [Path(annotations)] if annotations is not None else beside(path, "annotations")
    annotations = _found(looked)
    if not annotations.is_file():
        fail(f"no annotations file: looked for {' and '.join(repr(str(p)) for p in looked)}", file=str(path),
             where="annotations", fix="set annotations to the questions' annotations file (v2_mscoco_<split>_annotations"
             ".json); test-dev questions have none, so they cannot be scored here")
    answers = _answers_by_question(annotations)
    if image_root is None:
        image_root = (split_folder(path, subtype) if subtype else None) or path.parent
    path, root, file = located(path, image_root)
    group = {}
    if pairs is not None or find_pairs:
        group = _pairs(Path(pairs) if pairs is not None else _found(beside(path, "complementary_pairs")),
                       required=pairs is not None)

    records = []
    for i, q in enumerate(questions):
        where = f"record {i} of 'questions'"
        with problems.record():
            qid = id_of(q, "question_id", file=file, where=where, fix=FIX)
            where = f"{where} (question_id {qid})"
            question = prompt_text(q.get("question"), "question", file=file, where=where, fix=FIX)
            if qid not in answers:
                fail(f"question_id {qid} has no entry in {annotations.name}", file=file, where=f"{where}, field 'question_id'",
                     fix="use the annotations file of the same split, or remove the question")
            ann = answers[qid]
            refs = vqa_answers(ann.get("answers"), file=str(annotations), where=f"question_id {qid}", fix=FIX)
            image = _image(q.get("image_id"), subtype, root=root, file=file, where=where)
            target = ann.get("multiple_choice_answer")
            target = target.strip() if isinstance(target, str) and target.strip() else majority_answer(refs)
            records.append(Record(file, where, image, "image_id", question=question, answers=refs,
                                  turns=((question, target),), group=str(q.get("image_id"))))
    return _joined(records, questions, group)


def _joined(records: list[Record], questions: list, pairs: dict) -> list[Record]:
    """The records with Record.group one name per set of questions that share a picture or are complementary pairs
    (the same question on two similar pictures), joined as far as they reach: a held-out split keeps each set on one
    side (union-find over image ids and pair names)."""
    parent: dict = {}

    def root(key):
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    image_of = {q["question_id"]: str(q.get("image_id")) for q in questions
                if isinstance(q, dict) and isinstance(q.get("question_id"), (int, str))}
    for qid, pair in pairs.items():
        if qid in image_of:
            parent[root(("image", image_of[qid]))] = root(("pair", pair))
    return [dataclasses.replace(r, group=":".join(map(str, root(("image", r.group))))) for r in records]


def _object_field(data: Any, key: str, *, file: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        got = json_type_name(data.get(key)) if isinstance(data, dict) else json_type_name(data)
        fail(f"expected a JSON object whose '{key}' is a list, got {got}", file=file, where=f"field '{key}'", fix=FIX)
    if not data[key]:
        fail(f"'{key}' is empty", file=file, where=f"field '{key}'", fix=FIX)
    return data[key]


def _subtype(data: dict, *, file: str) -> str:
    subtype = data.get("data_subtype")
    if subtype is not None and (not isinstance(subtype, str) or not re.fullmatch(r"[\w-]+", subtype)):
        fail(f"'data_subtype' must be a split name such as \"train2014\", got {json_type_name(subtype)}", file=file,
             where="field 'data_subtype'", fix=FIX)
    return subtype or ""


def _answers_by_question(annotations: Path) -> dict:
    """question_id -> its annotation object (answers checked when its question is read)."""
    file = str(annotations)
    by_id = {}
    for j, ann in enumerate(_object_field(read_json(annotations), "annotations", file=file)):
        if isinstance(ann, dict) and isinstance(ann.get("question_id"), (int, str)):
            by_id.setdefault(ann["question_id"], ann)
        else:
            fail("an annotation must be an object with a 'question_id'", file=file,
                 where=f"record {j} of 'annotations'", fix=FIX)
    return by_id


def _pairs(path: Path, *, required: bool) -> dict:
    """question_id -> the pair's name, from a complementary pairs file ([[qid, qid], ...]); {} when there is none."""
    if not path.is_file():
        if required:
            fail("the complementary pairs file is not there", file=str(path), where="complementary_pairs",
                 fix="point complementary_pairs at v2_mscoco_<split>_complementary_pairs.json, or remove the key")
        return {}
    data = read_json(path)
    if not isinstance(data, list):
        fail(f"expected a JSON list of [question_id, question_id] pairs, got {json_type_name(data)}", file=str(path),
             where="top level", fix="use the complementary pairs file as distributed")
    group: dict = {}
    for k, pair in enumerate(data):
        if not isinstance(pair, list) or len(pair) != 2:
            fail(f"a pair must be a list of two question ids, got {json_type_name(pair)}", file=str(path),
                 where=f"record {k}", fix="use the complementary pairs file as distributed")
        for j, qid in enumerate(pair):
            if isinstance(qid, bool) or not isinstance(qid, (int, str)):
                fail(f"a question id must be an integer or string, got {json_type_name(qid)}", file=str(path),
                     where=f"record {k}, item {j}", fix="use the complementary pairs file as distributed")
        name = next((group[qid] for qid in pair if qid in group), f"pair {k}")  # a question in two pairs joins them
        for qid in pair:
            group[qid] = name
    return group


def _image(image_id: Any, subtype: str, *, root: Path, file: str, where: str) -> Path:
    """COCO's image file for `image_id`: COCO_<subtype>_<id:012d>.jpg (2014's name), else <id:012d>.jpg (2017's)."""
    if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
        fail(f"'image_id' must be a non-negative integer, got {json_type_name(image_id)}", file=file,
             where=f"{where}, field 'image_id'", fix=FIX)
    names = ([f"COCO_{subtype}_{image_id:012d}.jpg"] if subtype else []) + [f"{image_id:012d}.jpg"]
    for name in names:
        if (root / name).is_file():
            return resolve_image(name, root=root, file=file, where=where, field="image_id")
    fail(f"no image file for image_id {image_id}: looked for {' and '.join(repr(n) for n in names)} in {str(root)!r}",
         file=file, where=f"{where}, field 'image_id'", kind=MissingImage,
         fix="put the image there, or set image_root (eval_image_root for eval_path) to the folder of COCO's images "
             "of this split (e.g. train2014/)")
