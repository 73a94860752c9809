"""The one in-memory shape every dataset format is loaded into, whatever its file layout.

A task (classification, caption, vqa) reads only the fields it needs:
- classification: image, label (index into DatasetSplits.classnames)
- caption: image, captions (one or more references; training uses the first)
- vqa: image, turns ((user, assistant) pairs, trained with the user side masked),
       question and answers (the evaluation prompt and its reference answers)
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("classification", "caption", "vqa")


@dataclass(frozen=True)
class Sample:
    image: PIL.Image.Image  # noqa: F821 - RGB PIL image
    label: int | None = None
    captions: tuple[str, ...] = ()
    question: str | None = None
    answers: tuple[str, ...] = ()
    turns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DatasetSplits:
    task: str  # one of TASKS
    train: list[Sample]
    eval: list[Sample]
    classnames: tuple[str, ...] = ()
    fingerprint: str = ""  # content hash of the loaded data, stored in records for provenance
    info: dict = field(default_factory=dict)  # free-form provenance (source, sizes, split names)
