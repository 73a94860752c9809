"""LLaVA's conversations JSON, as LLaVA-1.5's instruction mix (llava_v1_5_mix665k.json) has it."""

from __future__ import annotations

from pathlib import Path

from bench.data.formats.common import (
    ASSISTANT_ROLES,
    IMAGE_TOKEN,
    USER_ROLES,
    Record,
    fail,
    json_type_name,
    located,
    read_json,
    resolve_image,
)
from bench.data.problems import EmptyAnswer, Problems, TextOnly


def read_llava(path: str | Path, image_root: str | Path | None = None, problems: Problems | None = None) -> list[Record]:
    """[{"id"?, "image": relpath, "conversations": [{"from": "human", "value": "<image>\\n..."},
    {"from": "gpt", "value": ...}, ...]}, ...] -> vqa records; question/answers are the first turn. As LLaVA-1.5's
    mix665k has them: `<image>` before or after the question, several turns, records without an image (left out as
    text-only: a cell trains on image-text pairs). Each record's problems go to `problems` (bench/data/problems.py)."""
    problems = problems or Problems(strict=True)
    path, root, file = located(path, image_root)
    data = read_json(path)
    if not isinstance(data, list):
        fail(f"expected a JSON list of records, got {json_type_name(data)}", file=file, where="top level",
              fix='a LLaVA file is a list: [{"image": "a.jpg", "conversations": [{"from": "human", ...}, ...]}, ...]')
    if not data:
        fail("the file has no records", file=file, where="top level",
              fix="add records or point `path` at another file")
    records = []
    for i, rec in enumerate(data):
        where = f"record {i}"
        with problems.record():
            if not isinstance(rec, dict):
                fail(f"expected an object, got {json_type_name(rec)}", file=file, where=where,
                      fix='each record is {"image": ..., "conversations": [...]}')
            if isinstance(rec.get("id"), (str, int)) and not isinstance(rec.get("id"), bool):
                where += f" (id {str(rec['id'])[:60]!r})"
            if rec.get("image") is None:
                fail("no image: a text-only conversation", file=file, where=f"{where}, field 'image'", kind=TextOnly,
                     fix="none needed: text-only records are left out and counted")
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
            fail("empty answer", file=file, where=f"{turn_at}.value'", fix="give the assistant turn its answer text",
                 kind=EmptyAnswer)
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
