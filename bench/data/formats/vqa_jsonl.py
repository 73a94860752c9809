"""VQA as one JSON object per line: {"image", "question", "answers"}."""

from __future__ import annotations

from pathlib import Path

from bench.data.formats.common import Record, located, majority_answer, object_records, prompt_text, resolve_image, vqa_answers
from bench.data.problems import Problems


def read_vqa_jsonl(path: str | Path, image_root: str | Path | None = None, problems: Problems | None = None) -> list[Record]:
    """One object per line: {"image", "question", "answers": [...]}; answers are strings or
    {"answer": ...} objects as in the official VQA annotations. Blank lines are skipped."""
    path, root, file = located(path, image_root)
    fix = 'one JSON object per line: {"image": "a.jpg", "question": "what color is it ?", "answers": ["red", ...]}'
    problems = problems or Problems(strict=True)
    records = []
    for where, obj in object_records(path, fix=fix, problems=problems):
        with problems.record():
            question = prompt_text(obj.get("question"), "question", file=file, where=where, fix=fix)
            answers = vqa_answers(obj.get("answers"), file=file, where=where, fix=fix)
            image = resolve_image(obj.get("image"), root=root, file=file, where=where)
            records.append(Record(file, where, image, question=question, answers=answers,
                                  turns=((question, majority_answer(answers)),)))
    return records
