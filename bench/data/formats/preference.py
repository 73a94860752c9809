"""Preference pairs for DPO as JSONL (or a JSON list): {"image", "prompt", "chosen", "rejected"}, texts as strings or
TRL's conversational messages; the same fields a Hugging Face preference dataset has (formats/hf.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.data.formats.common import (
    ASSISTANT_ROLES,
    IMAGE_TOKEN,
    USER_ROLES,
    Record,
    fail,
    located,
    message_text,
    object_records,
    prompt_text,
    resolve_image,
)
from bench.data.problems import EmptyAnswer, Problems

PREFERENCE_FIX = ('one JSON object per line: {"image": "a.jpg", "prompt": "what is shown ?", "chosen": "a red circle", '
                  '"rejected": "a blue square"}; prompt, chosen and rejected are strings or conversational message lists')
PREFERENCE_ROLES = {"prompt": USER_ROLES, "chosen": ASSISTANT_ROLES, "rejected": ASSISTANT_ROLES}


def read_preference(path: str | Path, image_root: str | Path | None = None, problems: Problems | None = None) -> list[Record]:
    """One object per line (or a JSON list of them): {"image", "prompt", "chosen", "rejected"}, "question" accepted
    for "prompt" -> preference records. Texts may be plain strings or TRL's conversational lists of messages."""
    path, root, file = located(path, image_root)
    problems = problems or Problems(strict=True)
    records = []
    for where, obj in object_records(path, fix=PREFERENCE_FIX, json_list=True, problems=problems):
        with problems.record():
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
            text = prompt_text(text, fields[key], file=file, where=where, fix=fix)
        elif not text.strip():
            fail(f"'{fields[key]}' is empty", file=file, where=at, fix=fix, kind=EmptyAnswer)
        elif IMAGE_TOKEN in text:
            fail(f"'{fields[key]}' holds the <image> placeholder; answers are text only", file=file, where=at, fix=fix)
        texts[key] = text.strip()
    if texts["chosen"] == texts["rejected"]:
        fail(f"'{fields['rejected']}' is the same text as '{fields['chosen']}', so it prefers nothing", file=file,
             where=f"{where}, field '{fields['rejected']}'", fix="give a different rejected answer, or drop the record")
    return texts["prompt"], texts["chosen"], texts["rejected"]
