"""On-disk dataset formats, read in two steps so a suite can be checked before any model is built.

    read_<format>(...) -> list[Record]   every record's structure, and that its image file exists
                                         and stays under the image root
    check_images(records)                reads every image's header (format and size), not its pixels
    to_samples(records, classnames)      Samples whose images are read when a batch needs them

Every problem raises DataError with file = the data file, where = "record i, field 'x'" (JSONL and
CSV add the line number) and a fix. Record indices count from 0, as in `data[i]`.

Formats: LLaVA conversations JSON, COCO captions JSON, image folders, CSV (image,label), VQA JSONL,
ChartQA JSON / JSONL, preference JSONL (image, prompt, chosen, rejected), and Hugging Face datasets
(only when `datasets` is installed).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Record:
    """One validated record; its image is opened only by check_images / to_samples."""

    file: str  # the data file (or folder) it came from
    where: str  # "record 3" or "record 3 (line 5)"
    image: Any  # a Path under the image root, encoded bytes, or a PIL image (Hugging Face datasets)
    image_field: str = "image"
    label: str | None = None  # class name; indices are given once all splits' names are known
    captions: tuple[str, ...] = ()
    question: str | None = None
    answers: tuple[str, ...] = ()
    turns: tuple[tuple[str, str], ...] = ()
    rejected: str | None = None  # preference: the dispreferred answer (answers[0] is the chosen one)


def fail(message: str, *, file: str, where: str | None = None, fix: str | None = None):
    raise DataError(message, file=file, where=where, fix=fix)


def json_type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_text(path: Path) -> str:
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as e:  # a name too long for the filesystem, a folder we may not enter
        fail(f"cannot be read ({e.strerror or e})", file=str(path), fix="check the path")
    if not exists:
        fail("file does not exist", file=str(path),
              fix="check the path; relative paths start at the suite file's folder")
    if not is_file:
        fail("is a folder, not a file" if path.is_dir() else "is not a regular file", file=str(path),
              fix="point `path` at the data file")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate the BOM spreadsheet programs write
    except UnicodeDecodeError as e:
        fail(f"is not UTF-8 text ({e.reason} at byte {e.start})", file=str(path), fix="save the file as UTF-8")
    except OSError as e:
        fail(f"cannot be read ({e.strerror or e})", file=str(path), fix="check the file's permissions")


def _read_json(path: Path) -> Any:
    return _parse_json(_read_text(path), path)


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"not valid JSON: {e.msg}", file=str(path), where=f"line {e.lineno}, column {e.colno}",
              fix="fix the JSON syntax (a JSON linter shows the spot)")
    except RecursionError:
        fail("JSON nested too deeply to read", file=str(path), fix="a data file needs a few levels of nesting, not thousands")


def inside_root(path: Path, root: Path) -> bool:
    """Whether `path` stays under `root` once both are resolved: a symlink pointing out of the root leaves it."""
    try:
        return path.resolve().is_relative_to(_resolved(root))
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        return False


@functools.lru_cache(maxsize=64)
def _resolved(root: Path) -> Path:
    return root.resolve()  # one resolve per image root, not per image (a data file names thousands)


def resolve_image(value: Any, *, root: Path, file: str, where: str, field: str = "image") -> Path:
    """A relative image path that must exist and must not leave `root` (no absolute paths, no '..', no
    symlink that resolves outside it)."""
    at = f"{where}, field '{field}'"
    if value is None:
        fail(f"missing field '{field}'", file=file, where=at,
              fix=f"give every record an '{field}' path relative to the image root")
    if not isinstance(value, str) or not value.strip():
        fail(f"'{field}' must be a non-empty path string, got {json_type_name(value)}", file=file, where=at,
              fix=f"set '{field}' to the image's path relative to the image root")
    rel = value.strip()
    normal = os.path.normpath(rel)
    if os.path.isabs(rel) or normal == ".." or normal.startswith(".." + os.sep):
        fail(f"image path {rel!r} escapes the image root {str(root)!r}", file=file, where=at,
              fix="use a path relative to the image root without '..', or set image_root to a folder that holds it")
    path = root / normal
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        fail(f"image file {str(path)[:300]!r} does not exist", file=file, where=at,
              fix="check the path and image_root (image paths are relative to image_root, "
              "by default the data file's folder)")
    if not inside_root(path, root):
        fail(f"image path {rel[:300]!r} resolves outside the image root {str(root)!r} (a symbolic link)", file=file,
              where=at, fix="copy the image under the image root, or set image_root to a folder that really holds it")
    return path


# ---------------------------------------------------------------- LLaVA conversations


def read_llava(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """[{"id"?, "image": relpath, "conversations": [{"from": "human", "value": "<image>\\n..."},
    {"from": "gpt", "value": ...}, ...]}, ...] -> vqa records; question/answers are the first turn."""
    path, root, file = _located(path, image_root)
    data = _read_json(path)
    if not isinstance(data, list):
        fail(f"expected a JSON list of records, got {json_type_name(data)}", file=file, where="top level",
              fix='a LLaVA file is a list: [{"image": "a.jpg", "conversations": [{"from": "human", ...}, ...]}, ...]')
    if not data:
        fail("the file has no records", file=file, where="top level",
              fix="add records or point `path` at another file")
    records = []
    for i, rec in enumerate(data):
        where = f"record {i}"
        if not isinstance(rec, dict):
            fail(f"expected an object, got {json_type_name(rec)}", file=file, where=where,
                  fix='each record is {"image": ..., "conversations": [...]}')
        if isinstance(rec.get("id"), (str, int)) and not isinstance(rec.get("id"), bool):
            where += f" (id {str(rec['id'])[:60]!r})"
        turns = _llava_turns(rec, file=file, where=where)
        image = resolve_image(rec.get("image"), root=root, file=file, where=where)
        records.append(Record(file, where, image, question=turns[0][0], answers=(turns[0][1],), turns=turns))
    return records


def _llava_turns(rec: dict, *, file: str, where: str) -> tuple[tuple[str, str], ...]:
    at = f"{where}, field 'conversations'"
    fix = 'conversations alternate [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]'
    if "conversations" not in rec:
        fail("missing field 'conversations'", file=file, where=at, fix=fix)
    conv = rec["conversations"]
    if not isinstance(conv, list):
        fail(f"'conversations' must be a list of turns, got {json_type_name(conv)}", file=file, where=at, fix=fix)
    if not conv:
        fail("empty conversation", file=file, where=at,
              fix="remove the record or give it a human turn and a gpt answer")
    for j, turn in enumerate(conv):
        turn_at = f"{where}, field 'conversations[{j}]"  # + "'" or ".from'" / ".value'" below
        if not isinstance(turn, dict):
            fail(f"a turn must be an object, got {json_type_name(turn)}", file=file, where=f"{turn_at}'", fix=fix)
        role = turn.get("from")
        if not isinstance(role, str) or role not in USER_ROLES + ASSISTANT_ROLES:
            shown = repr(role[:40]) if isinstance(role, str) else json_type_name(role)
            fail(f"'from' is {shown}; expected one of {USER_ROLES + ASSISTANT_ROLES}", file=file,
                  where=f"{turn_at}.from'", fix=fix)
        if not isinstance(turn.get("value"), str):
            fail(f"'value' must be a string, got {json_type_name(turn.get('value'))}", file=file,
                  where=f"{turn_at}.value'", fix=fix)
        user_expected = j % 2 == 0
        if (role in USER_ROLES) != user_expected:
            expected = "a user (human)" if user_expected else "an assistant (gpt)"
            fail(f"turns do not alternate: turn {j} is from {role[:40]!r} but {expected} turn was expected",
                  file=file, where=f"{turn_at}.from'", fix=fix)
        if not user_expected and not turn["value"].strip():
            fail("empty answer", file=file, where=f"{turn_at}.value'", fix="give the assistant turn its answer text")
    if len(conv) % 2:
        fail(f"the conversation ends with a user turn (turn {len(conv) - 1}) that has no answer", file=file,
              where=at, fix="add the gpt answer or drop the last human turn")
    # the <image> placeholder marks where the image goes; the task module inserts the model's own image tokens
    pairs = list(zip(conv[0::2], conv[1::2], strict=True))
    for k, (user, reply) in enumerate(pairs):
        if not user["value"].replace(IMAGE_TOKEN, "").strip():
            fail("the user turn has no text besides the <image> placeholder", file=file,
                  where=f"{where}, field 'conversations[{2 * k}].value'", fix="write the question after <image>\\n")
        if IMAGE_TOKEN in reply["value"]:
            fail("an answer holds the <image> placeholder", file=file, where=f"{where}, field 'conversations[{2 * k + 1}].value'",
                  fix="answers are text only; <image> belongs to the first user turn")
    return tuple((user["value"].replace(IMAGE_TOKEN, "").strip(), reply["value"].strip()) for user, reply in pairs)


# ---------------------------------------------------------------- COCO captions


def read_coco_captions(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]} -> caption records,
    all references of an image together, in the order of 'images'."""
    path, root, file = _located(path, image_root)
    data = _read_json(path)
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
    for i, im in enumerate(data["images"]):
        where = f"record {i} of 'images'"
        if not isinstance(im, dict):
            fail(f"expected an object, got {json_type_name(im)}", file=file, where=where, fix=fix)
        image_id = im.get("id")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            fail(f"'id' must be an integer or string, got {json_type_name(image_id)}", file=file,
                  where=f"{where}, field 'id'", fix=fix)
        if image_id in images:
            fail(f"duplicate image id {str(image_id)[:60]!r} (also record {images[image_id][0]})", file=file,
                  where=f"{where}, field 'id'", fix="give every image a unique id")
        images[image_id] = (i, resolve_image(im.get("file_name"), root=root, file=file, where=where, field="file_name"))

    captions: dict[Any, list[str]] = {k: [] for k in images}
    for j, ann in enumerate(data["annotations"]):
        where = f"record {j} of 'annotations'"
        if not isinstance(ann, dict):
            fail(f"expected an object, got {json_type_name(ann)}", file=file, where=where, fix=fix)
        image_id = ann.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            fail(f"'image_id' must be an integer or string, got {json_type_name(image_id)}", file=file,
                  where=f"{where}, field 'image_id'", fix=fix)
        if image_id not in images:
            fail(f"image_id {str(image_id)[:60]!r} is not the id of any entry in 'images'", file=file,
                  where=f"{where}, field 'image_id'", fix="add the image to 'images' or remove the annotation")
        caption = ann.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            fail(f"'caption' must be a non-empty string, got {json_type_name(caption) if not isinstance(caption, str) else 'an empty one'}", file=file,
                  where=f"{where}, field 'caption'", fix="remove the annotation or write its caption")
        captions[ann["image_id"]].append(" ".join(caption.split()))

    records = []
    for image_id, (i, image) in images.items():
        if not captions[image_id]:
            fail(f"image id {str(image_id)[:60]!r} has no captions in 'annotations'", file=file,
                  where=f"record {i} of 'images', field 'id'", fix="add its captions or remove it from 'images'")
        records.append(Record(file, f"record {i} of 'images'", image, "file_name", captions=tuple(captions[image_id])))
    return records


# ---------------------------------------------------------------- classification: image folder, CSV


def read_image_folder(root: str | Path) -> list[Record]:
    """root/<class>/<image>.png|jpg -> classification records, classes and files in sorted order."""
    root = Path(root)
    file = str(root)
    if not root.is_dir():
        fail("folder does not exist" if not root.exists() else "is a file, not a folder", file=file,
              fix="point `path` at a folder laid out as <class>/<image>.png")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in classes:
        if not inside_root(d, root):
            fail("class folder is a symbolic link that leads outside the dataset folder", file=file, where=f"class '{d.name}'",
                  fix="copy the images into the dataset folder")
    if not classes:
        fail("has no class folders", file=file, fix="lay images out as path/<class name>/<image>.png")
    records = []
    for d in classes:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            fail(f"class folder has no images ({', '.join(IMAGE_EXTENSIONS)})", file=file, where=f"class '{d.name}'",
                  fix="add images or remove the folder")
        for f in files:
            where = f"record {len(records)} ({d.name}/{f.name})"
            if not inside_root(f, root):
                fail("image is a symbolic link that leads outside the dataset folder", file=file, where=where,
                      fix="copy the image into the dataset folder")
            records.append(Record(file, where, f, label=d.name))
    return records


def read_csv(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """A CSV with columns image,label (others ignored); images relative to image_root or the CSV's folder."""
    path, root, file = _located(path, image_root)
    try:
        return _csv_records(_read_text(path), root=root, file=file)
    except csv.Error as e:  # a field over the csv module's limit, a NUL byte, an unterminated quote
        fail(f"is not a readable CSV ({e})", file=file, fix="write one '<image path>,<class name>' row per line")


def _csv_records(text: str, *, root: Path, file: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "image" not in header or "label" not in header:
        # the line itself is not echoed: the file may not be a CSV at all, and its first line may be a secret
        fail(f"the first line ({len(header)} comma-separated field(s)) does not name the columns 'image' and 'label'",
              file=file, where="header (line 1)", fix="make the first line 'image,label' and each row '<image path>,<class name>'")
    reader.fieldnames = header
    records = []
    for i, row in enumerate(reader):
        where = f"record {i} (line {reader.line_num})"
        if None in row:
            fail(f"the row has {len(header) + len(row[None])} fields but the header has {len(header)}", file=file,
                  where=where, fix="quote values that contain commas")
        label = (row.get("label") or "").strip()
        if not label:
            fail("empty label", file=file, where=f"{where}, field 'label'", fix="give every row a class name")
        image = resolve_image((row.get("image") or "").strip() or None, root=root, file=file, where=where)
        records.append(Record(file, where, image, label=label))
    if not records:
        fail("the CSV has a header but no rows", file=file, fix="add rows '<image path>,<class name>'")
    return records


# ---------------------------------------------------------------- VQA JSONL


def read_vqa_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """One object per line: {"image", "question", "answers": [...]}; answers are strings or
    {"answer": ...} objects as in the official VQA annotations. Blank lines are skipped."""
    path, root, file = _located(path, image_root)
    fix = 'one JSON object per line: {"image": "a.jpg", "question": "what color is it ?", "answers": ["red", ...]}'
    records = []
    for where, obj in _object_records(path, fix=fix):
        question = _prompt_text(obj.get("question"), "question", file=file, where=where, fix=fix)
        answers = vqa_answers(obj.get("answers"), file=file, where=where, fix=fix)
        image = resolve_image(obj.get("image"), root=root, file=file, where=where)
        records.append(Record(file, where, image, question=question, answers=answers,
                              turns=((question, majority_answer(answers)),)))
    return records


def _located(path: str | Path, image_root: str | Path | None) -> tuple[Path, Path, str]:
    """A data file's path, the folder its relative image paths start from (image_root, else the file's own folder), and
    the file's name as errors give it."""
    path = Path(path)
    return path, Path(image_root) if image_root is not None else path.parent, str(path)


def _object_records(path: Path, *, fix: str, json_list: bool = False):
    """(where, object) of every record of a JSONL file, in order: one object per line, blank lines skipped, where =
    "record i (line n)". With `json_list`, a file that is one JSON list of objects is read as that (where = "record
    i"). A generator, so the first bad record is the one reported; a file without records is an error."""
    file = str(path)
    text = _read_text(path)
    data = _json_list(text, path) if json_list else None
    if data is not None:
        items = ((f"record {i}", obj) for i, obj in enumerate(data))
    else:
        items = _jsonl_lines(text, file=file, fix=fix)
    n = 0
    for where, obj in items:
        if not isinstance(obj, dict):
            fail(f"expected an object, got {json_type_name(obj)}", file=file, where=where, fix=fix)
        n += 1
        yield where, obj
    if not n:
        fail("the file has no records", file=file, fix=fix)


def _json_list(text: str, path: Path) -> list | None:
    """The file's JSON list, or None where it is JSONL: a first line that is a list alone ("Extra data" after it)
    makes JSONL too, whose lines are then read and reported one by one."""
    if not text.lstrip().startswith("["):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return None
        return _parse_json(text, path)  # the same error, reported with its line and column
    except RecursionError:
        return _parse_json(text, path)
    return data if isinstance(data, list) else None


def _jsonl_lines(text: str, *, file: str, fix: str):
    # split on "\n" only: str.splitlines would also break on U+2028, which JSON allows inside strings
    n = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"record {n} (line {lineno})"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"not valid JSON: {e.msg} (column {e.colno})", file=file, where=where, fix=fix)
        except RecursionError:
            fail("JSON nested too deeply to read", file=file, where=where, fix=fix)
        n += 1


def _prompt_text(value: Any, field: str, *, file: str, where: str, fix: str) -> str:
    """A question or prompt: a non-empty string, without the <image> placeholder (the task inserts the model's own
    image tokens)."""
    at = f"{where}, field '{field}'"
    if not isinstance(value, str) or not value.strip():
        got = json_type_name(value) if not isinstance(value, str) else "an empty one"
        fail(f"'{field}' must be a non-empty string, got {got}", file=file, where=at, fix=fix)
    text = value.replace(IMAGE_TOKEN, "").strip()
    if not text:
        fail(f"'{field}' has no text besides the <image> placeholder", file=file, where=at, fix=fix)
    return text


def vqa_answers(value: Any, *, file: str, where: str, fix: str) -> tuple[str, ...]:
    at = f"{where}, field 'answers'"
    if not isinstance(value, list) or not value:
        fail(f"'answers' must be a non-empty list, got {json_type_name(value) if value != [] else 'an empty one'}", file=file, where=at, fix=fix)
    answers = []
    for k, a in enumerate(value):
        text = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(text, str) or not text.strip() or IMAGE_TOKEN in text:
            got = "the <image> placeholder" if isinstance(text, str) and IMAGE_TOKEN in text else json_type_name(text)
            fail(f"answer {k} must be a non-empty string or {{\"answer\": ...}} of text, got {got}", file=file,
                  where=f"{where}, field 'answers[{k}]'", fix=fix)
        answers.append(text.strip())
    return tuple(answers)


def majority_answer(answers: tuple[str, ...]) -> str:
    """The most common answer (first on ties): VQA's 'multiple_choice_answer', the training target."""
    return Counter(answers).most_common(1)[0][0]


# ---------------------------------------------------------------- ChartQA

CHARTQA_FIX = ('ChartQA: a JSON list [{"imgname": "a.png", "query": "what is the value of ... ?", "label": "12"}, ...] '
               "or one such object per line")


def read_chartqa(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """ChartQA's published JSON (a list of {"imgname", "query", "label"}) or JSONL with the same keys -> vqa records.
    "image" is accepted for "imgname"; a label is a string, a number or a list of them (several references)."""
    path, root, file = _located(path, image_root)
    records = []
    for where, obj in _object_records(path, fix=CHARTQA_FIX, json_list=True):
        image_field = "image" if "imgname" not in obj and "image" in obj else "imgname"
        question = _prompt_text(obj.get("query"), "query", file=file, where=where, fix=CHARTQA_FIX)
        answers = _chartqa_labels(obj.get("label"), file=file, where=where)
        try:
            image = resolve_image(obj.get(image_field), root=root, file=file, where=where, field=image_field)
        except DataError as e:
            if image_root is None and (path.parent / "png").is_dir():  # ChartQA keeps a split's images in png/
                raise DataError(e.message, file=e.file, where=e.where,
                                fix=f"{e.fix}; ChartQA's images are in the png/ folder beside the JSON: "
                                    "set image_root to it") from None
            raise
        records.append(Record(file, where, image, image_field, question=question, answers=answers,
                              turns=((question, majority_answer(answers)),)))
    return records


def _chartqa_labels(value: Any, *, file: str, where: str) -> tuple[str, ...]:
    """The reference answers of a ChartQA label: a string, a finite number (written as JSON writes it) or a list."""
    if value is None:
        fail("missing field 'label'", file=file, where=f"{where}, field 'label'", fix=CHARTQA_FIX)
    if isinstance(value, list) and not value:
        fail("'label' is an empty list", file=file, where=f"{where}, field 'label'", fix=CHARTQA_FIX)
    items = [(f"label[{k}]", v) for k, v in enumerate(value)] if isinstance(value, list) else [("label", value)]
    answers = []
    for field, v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            v = json.dumps(v)
        if not isinstance(v, str) or not v.strip() or IMAGE_TOKEN in v:
            got = "the <image> placeholder" if isinstance(v, str) and IMAGE_TOKEN in v else (
                json_type_name(v) if not isinstance(v, str) else "an empty one")
            fail(f"'{field}' must be a non-empty string or a number, got {got}", file=file,
                 where=f"{where}, field '{field}'", fix=CHARTQA_FIX)
        answers.append(v.strip())
    return tuple(answers)


# ---------------------------------------------------------------- preference pairs

PREFERENCE_FIX = ('one JSON object per line: {"image": "a.jpg", "prompt": "what is shown ?", "chosen": "a red circle", '
                  '"rejected": "a blue square"}; prompt, chosen and rejected are strings or conversational message lists')
PREFERENCE_ROLES = {"prompt": USER_ROLES, "chosen": ASSISTANT_ROLES, "rejected": ASSISTANT_ROLES}


def read_preference(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """One object per line (or a JSON list of them): {"image", "prompt", "chosen", "rejected"}, "question" accepted
    for "prompt" -> preference records. Texts may be plain strings or TRL's conversational lists of messages."""
    path, root, file = _located(path, image_root)
    records = []
    for where, obj in _object_records(path, fix=PREFERENCE_FIX, json_list=True):
        prompt_field = "question" if "prompt" not in obj and "question" in obj else "prompt"
        fields = {"prompt": prompt_field, "chosen": "chosen", "rejected": "rejected"}
        texts = preference_texts({k: obj.get(f) for k, f in fields.items()}, fields, file=file, where=where,
                                 fix=PREFERENCE_FIX)
        image = resolve_image(obj.get("image"), root=root, file=file, where=where)
        records.append(preference_record(file, where, image, "image", *texts))
    return records


def preference_record(file: str, where: str, image: Any, image_field: str, prompt: str, chosen: str,
                      rejected: str) -> Record:
    """A preference Record; the chosen answer is also its one turn, so the data trains as plain SFT too."""
    return Record(file, where, image, image_field, question=prompt, answers=(chosen,), turns=((prompt, chosen),),
                  rejected=rejected)


def preference_texts(values: dict[str, Any], fields: dict[str, str], *, file: str, where: str,
                     fix: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) from a record's values (keyed prompt / chosen / rejected; `fields` names the record's
    own field for each, for messages): each non-empty, the two answers different."""
    texts = {}
    for key in ("prompt", "chosen", "rejected"):
        at = f"{where}, field '{fields[key]}'"
        text = message_text(values.get(key), PREFERENCE_ROLES[key], field=fields[key], file=file, where=where, fix=fix)
        if key == "prompt":
            text = _prompt_text(text, fields[key], file=file, where=where, fix=fix)
        elif not text.strip():
            fail(f"'{fields[key]}' is empty", file=file, where=at, fix=fix)
        elif IMAGE_TOKEN in text:
            fail(f"'{fields[key]}' holds the <image> placeholder; answers are text only", file=file, where=at, fix=fix)
        texts[key] = text.strip()
    if texts["chosen"] == texts["rejected"]:
        fail(f"'{fields['rejected']}' is the same text as '{fields['chosen']}', so it prefers nothing", file=file,
             where=f"{where}, field '{fields['rejected']}'", fix="give a different rejected answer, or drop the record")
    return texts["prompt"], texts["chosen"], texts["rejected"]


def message_text(value: Any, roles: tuple[str, ...], *, field: str, file: str, where: str, fix: str) -> str:
    """A text as it is, or the text of a conversational list's messages of `roles` (TRL's vision format:
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}]), joined by newlines."""
    if isinstance(value, str):
        return value
    if value is None:
        fail(f"missing field '{field}'", file=file, where=f"{where}, field '{field}'", fix=fix)
    if not isinstance(value, list):
        fail(f"'{field}' must be a string or a list of messages, got {json_type_name(value)}", file=file,
             where=f"{where}, field '{field}'", fix=fix)
    parts = []
    for j, message in enumerate(value):
        at = f"{where}, field '{field}[{j}]'"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            fail(f"a message must be an object with a 'role', got {json_type_name(message)}", file=file, where=at,
                 fix='messages are {"role": "user", "content": "..." or [{"type": "text", "text": "..."}]}')
        if message["role"] in roles:
            parts += _content_texts(message.get("content"), file=file, where=f"{where}, field '{field}[{j}].content'")
    if not any(p.strip() for p in parts):
        fail(f"'{field}' has no text in its {' / '.join(roles)} messages", file=file, where=f"{where}, field '{field}'",
             fix=fix)
    return "\n".join(p.strip() for p in parts if p.strip())


def _content_texts(content: Any, *, file: str, where: str) -> list[str]:
    """The text parts of a message's content: a string, or a list of {"type": "text", "text": ...} and image parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        fail(f"a message's content must be a string or a list of parts, got {json_type_name(content)}", file=file,
             where=where, fix='e.g. "content": [{"type": "image"}, {"type": "text", "text": "..."}]')
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif not (isinstance(part, dict) and part.get("type") in ("image", "image_url", "text")):
            fail(f"a content part must be a {{\"type\": \"text\"}} or {{\"type\": \"image\"}} object, "
                 f"got {json_type_name(part)}", file=file, where=where,
                 fix='e.g. "content": [{"type": "image"}, {"type": "text", "text": "..."}]')
    return texts


# ---------------------------------------------------------------- images and samples


def image_of(record: Record):
    """What a Sample holds for the record's image: a PIL image as it is, a path or bytes as an ImageFile read later."""
    from bench.data.sample import ImageFile

    if hasattr(record.image, "convert"):
        return record.image.convert("RGB")
    source = record.image if isinstance(record.image, bytes) else str(record.image)
    return ImageFile(source, record.file, f"{record.where}, field '{record.image_field}'")


def check_images(records: list[Record]) -> None:
    """Every image's header is readable as an image (its format and size); the pixels are decoded only when a
    batch needs them, so a file that is cut short or corrupt past its header is found then (bench/data/stream.py)."""
    for record in records:
        image = image_of(record)
        if hasattr(image, "convert"):
            continue
        width, height = image.header_size()
        if not width or not height:
            fail(f"image {str(image.source)!r} has no pixels ({width}×{height})", file=record.file, where=image.where,
                 fix="re-save it, or remove the record")


def to_samples(records: list[Record], classnames: tuple[str, ...] = ()):
    from bench.data.sample import Sample

    index = {name: i for i, name in enumerate(classnames)}
    return [
        Sample(
            image=image_of(r),
            label=index[r.label] if r.label is not None else None,
            captions=r.captions,
            question=r.question,
            answers=r.answers,
            turns=r.turns,
            rejected=r.rejected,
        )
        for r in records
    ]


def sorted_classnames(labels) -> tuple[str, ...]:
    """Sorted class names; all-numeric names sort as numbers ("2" before "10")."""
    names = set(labels)
    if all(n.isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def fingerprint(task: str, train, eval, classnames=()) -> str:
    """A hash of a loaded dataset, stored in records for provenance: every sample's labels and texts, and its image —
    the pixels of an in-memory image, the bytes of an encoded one, and for an image file its path, size and
    modification time (not its content: hashing 100k images on every run would cost minutes)."""
    from bench.data.sample import ImageFile

    h = hashlib.sha256(json.dumps([task, list(classnames)]).encode())
    for part, samples in (("train", train), ("eval", eval)):
        h.update(f"|{part}:{len(samples)}|".encode())
        for s in samples:
            image = s.image
            if isinstance(image, ImageFile) and isinstance(image.source, bytes):
                h.update(image.source)
            elif isinstance(image, ImageFile):
                try:
                    st = os.stat(image.source)
                    h.update(f"{image.source}|{st.st_size}|{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(f"{image.source}|missing".encode())
            else:
                h.update(f"{image.mode}{image.size}".encode())
                h.update(image.tobytes())
            texts = [s.label, s.captions, s.question, s.answers, s.turns]
            # a rejected answer is hashed only where there is one: the fingerprints of other data stay as they were
            h.update(json.dumps(texts if s.rejected is None else texts + [s.rejected]).encode())
    return h.hexdigest()[:16]


def dataset_splits(task: str, train, evals, classnames, info: dict, answer_metric: str = ""):
    """The loaded DatasetSplits: its content fingerprint computed, the split sizes appended to `info`."""
    from bench.data.sample import DatasetSplits

    return DatasetSplits(
        task=task,
        train=train,
        eval=evals,
        classnames=classnames,
        fingerprint=fingerprint(task, train, evals, classnames),
        info={**info, "n_train": len(train), "n_eval": len(evals)},
        answer_metric=answer_metric,
    )
