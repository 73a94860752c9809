"""What every reader of a published layout shares: the Record it returns, errors that name the file, the record and the
field (`fail`), reading text and JSON, image paths that must exist and stay under their root, the records of a JSONL
file or JSON list, question and answer texts, conversational messages, and where publishers keep a split's images."""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.problems import EmptyAnswer, MissingImage, Problems
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
    group: str | None = None  # records held out for evaluation together, never split (VQA's complementary pairs)


def fail(message: str, *, file: str, where: str | None = None, fix: str | None = None, kind: type[DataError] = DataError):
    """Raise `kind` (a DataError; bench/data/problems.py's subclasses say why a record is left out)."""
    raise kind(message, file=file, where=where, fix=fix)


def json_type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def id_of(item: Any, key: str, *, file: str, where: str, fix: str) -> int | str:
    """The id field `key` of a record that must be an object (COCO's images and annotations, VQA's questions): an
    integer or a string, never a boolean; a DataError naming the record and field otherwise."""
    if not isinstance(item, dict):
        fail(f"expected an object, got {json_type_name(item)}", file=file, where=where, fix=fix)
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        fail(f"'{key}' must be an integer or string, got {json_type_name(value)}", file=file,
             where=f"{where}, field '{key}'", fix=fix)
    return value


def read_text(path: Path) -> str:
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


def read_json(path: Path) -> Any:
    return _parse_json(read_text(path), path)


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
        fail(f"image file {str(path)[:300]!r} does not exist", file=file, where=at, kind=MissingImage,
              fix=f"image paths here start at {str(root)[:300]!r}: put the image there, correct the path, or set "
              "image_root (eval_image_root for eval_path) to the folder they start at")
    if not inside_root(path, root):
        fail(f"image path {rel[:300]!r} resolves outside the image root {str(root)!r} (a symbolic link)", file=file,
              where=at, fix="copy the image under the image root, or set image_root to a folder that really holds it")
    return path


def located(path: str | Path, image_root: str | Path | None) -> tuple[Path, Path, str]:
    """A data file's path, the folder its relative image paths start from (image_root, else the file's own folder), and
    the file's name as errors give it."""
    path = Path(path)
    return path, Path(image_root) if image_root is not None else path.parent, str(path)


def object_records(path: Path, *, fix: str, problems: Problems, json_list: bool = False):
    """(where, object) of every record of a JSONL file, in order: one object per line, blank lines skipped, where =
    "record i (line n)". With `json_list`, a file that is one JSON list of objects is read as that (where = "record
    i"). A line that is not JSON, or not an object, is that record's problem (`problems`); a file without records is
    an error."""
    file = str(path)
    text = read_text(path)
    data = _json_list(text, path) if json_list else None
    if data is not None:
        items = ((f"record {i}", obj, None) for i, obj in enumerate(data))
    else:
        items = _jsonl_lines(text, file=file, fix=fix)
    n = 0
    for where, obj, error in items:
        n += 1
        with problems.record():
            if error is not None:
                raise error
            if not isinstance(obj, dict):
                fail(f"expected an object, got {json_type_name(obj)}", file=file, where=where, fix=fix)
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
    """(where, object, None) of each line, or (where, None, the DataError) of a line that is not JSON."""
    # split on "\n" only: str.splitlines would also break on U+2028, which JSON allows inside strings
    n = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"record {n} (line {lineno})"
        try:
            yield where, json.loads(line), None
        except json.JSONDecodeError as e:
            yield where, None, DataError(f"not valid JSON: {e.msg} (column {e.colno})", file=file, where=where, fix=fix)
        except RecursionError:
            yield where, None, DataError("JSON nested too deeply to read", file=file, where=where, fix=fix)
        n += 1


def prompt_text(value: Any, field: str, *, file: str, where: str, fix: str) -> str:
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


EMPTY_ANSWER_FIX = "write the answer, or remove the record"


def vqa_answers(value: Any, *, file: str, where: str, fix: str, field: str = "answers") -> tuple[str, ...]:
    """The reference answers of a record's `field`: a non-empty list of strings or {"answer": ...} objects. No answer
    at all, or an empty one, is an EmptyAnswer; another shape is a malformed record (`fix` shows the format)."""
    at = f"{where}, field '{field}'"
    if value == []:
        fail(f"'{field}' is an empty list: the question has no answer", file=file, where=at, fix=EMPTY_ANSWER_FIX,
             kind=EmptyAnswer)
    if not isinstance(value, list):
        fail(f"'{field}' must be a non-empty list, got {json_type_name(value)}", file=file, where=at, fix=fix)
    answers = []
    for k, a in enumerate(value):
        text = a.get("answer") if isinstance(a, dict) else a
        if isinstance(text, str) and not text.strip():
            fail(f"answer {k} is empty", file=file, where=f"{where}, field '{field}[{k}]'", fix=EMPTY_ANSWER_FIX,
                 kind=EmptyAnswer)
        if not isinstance(text, str) or IMAGE_TOKEN in text:
            got = "the <image> placeholder" if isinstance(text, str) and IMAGE_TOKEN in text else json_type_name(text)
            fail(f"answer {k} must be a non-empty string or {{\"answer\": ...}} of text, got {got}", file=file,
                  where=f"{where}, field '{field}[{k}]'", fix=fix)
        answers.append(text.strip())
    return tuple(answers)


def majority_answer(answers: tuple[str, ...]) -> str:
    """The most common answer (first on ties): VQA's 'multiple_choice_answer', the training target."""
    return Counter(answers).most_common(1)[0][0]


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
             fix=fix, kind=EmptyAnswer if parts else DataError)
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


# where publishers put a split's images, relative to the folder of its annotation file and the folder above it:
# COCO (annotations/ beside train2017/), VQA's own layout (Questions/ beside Images/mscoco/train2014/), others' images/
SPLIT_FOLDERS = ("{split}", "images/{split}", "Images/mscoco/{split}", "Images/{split}")


def split_folder(path: Path, split: str) -> Path | None:
    """The folder a publisher keeps the images of `split` (e.g. "val2017") in, found from the annotation file `path`
    (SPLIT_FOLDERS beside it or one folder up); None where there is none."""
    for anchor in (path.parent, path.parent.parent):
        for pattern in SPLIT_FOLDERS:
            folder = anchor / pattern.format(split=split)
            if folder.is_dir():
                return folder
    return None


