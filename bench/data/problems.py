"""Records a data file holds that a cell cannot use, collected while the file is read rather than raised one at a time.

A reader parses each record inside `problems.record()`: a DataError raised there leaves that record out and is kept
as a Problem with its reason (the DataError's class: MissingImage, UnreadableImage, EmptyAnswer, TextOnly; any other
DataError is a malformed record). A problem of the file itself (not JSON, no records) is raised at once.

What happens to the problems is the cell's `on_bad_sample`, the same from `bench validate` to the end of the run:
- "error": `Problems.raise_if_any` raises one DataError listing every problem of every file read (the first
  MAX_LISTED, then how many more), each naming its record, field and fix, so one round fixes a file;
- "skip": the records are left out, and `counts()` says how many for each reason (the record's `dataset.skipped`).
Text-only records (LLaVA-1.5's mix has tens of thousands: conversations without an image) are not errors under either
policy: a cell trains on image-text pairs, so they are always left out and counted.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

from bench.errors import DataError

POLICIES = ("error", "skip")
MAX_LISTED = 20  # problems a listing shows before "... and N more"
SKIP_FIX = 'or set on_bad_sample = "skip" to leave such records out (the run counts them by reason)'


class MissingImage(DataError):
    """The record names an image file that is not there."""

    reason = "missing image"


class UnreadableImage(DataError):
    """The image is there but cannot be decoded."""

    reason = "unreadable image"


class EmptyAnswer(DataError):
    """An answer (or caption, or chosen/rejected text) that is empty or only whitespace."""

    reason = "empty answer"


class EmptyCaption(DataError):
    """A caption left out of an image that keeps its other captions (COCO's five per image): not a record."""

    reason = "empty caption"


class TextOnly(DataError):
    """A record without an image: left out under every policy (see the module's doc)."""

    reason = "text-only record"


MALFORMED = "malformed record"
REASONS = (MissingImage.reason, UnreadableImage.reason, EmptyAnswer.reason, EmptyCaption.reason, TextOnly.reason, MALFORMED)


def reasons_text(counts: dict[str, int]) -> str:
    """Counts by reason as every message and page says them: "3 missing image, 2 empty answer", in REASONS' order (a
    reason this version does not know, from a newer record, last)."""
    order = sorted(counts.items(), key=lambda item: REASONS.index(item[0]) if item[0] in REASONS else len(REASONS))
    return ", ".join(f"{n} {reason}" for reason, n in order)


def reason_of(error: DataError) -> str:
    return getattr(error, "reason", MALFORMED)


@dataclass(frozen=True)
class Problem:
    reason: str
    error: DataError


class Problems:
    """The problems met while reading one dataset's files. `strict`: raise each DataError as it comes (a caller that
    reads a file without a policy, e.g. a test or the zoo's recipe)."""

    def __init__(self, *, strict: bool = False):
        self.strict = strict
        self.items: list[Problem] = []

    @contextmanager
    def record(self):
        """Parse one record inside this block: a DataError leaves the record out and is kept (raised when strict,
        except a text-only record, which is always left out)."""
        try:
            yield
        except DataError as error:
            if self.strict and not isinstance(error, TextOnly):
                raise
            self.items.append(Problem(reason_of(error), error))

    def add(self, error: DataError) -> None:
        with self.record():
            raise error

    @property
    def errors(self) -> list[Problem]:
        """The problems that stop a cell under on_bad_sample = "error" (all but text-only records)."""
        return [p for p in self.items if p.reason != TextOnly.reason]

    def counts(self) -> dict[str, int]:
        """How many records were left out for each reason, in REASONS' order."""
        counted = Counter(p.reason for p in self.items)
        return {reason: counted[reason] for reason in REASONS if counted[reason]}

    def raise_if_any(self) -> None:
        """Under on_bad_sample = "error": one DataError listing every problem (all but text-only records)."""
        errors = self.errors
        if errors:
            raise listing(errors)


def listing(problems: list[Problem]) -> DataError:
    """One DataError naming every problem (the first MAX_LISTED), grouped under the file they are in."""
    summary = reasons_text(Counter(p.reason for p in problems))
    files = list(dict.fromkeys(p.error.file or "" for p in problems))
    lines = [f"{len(problems)} record(s) cannot be used ({summary}):"]
    for file in files:
        shown = [p for p in problems[:MAX_LISTED] if (p.error.file or "") == file]
        if not shown:
            continue
        if len(files) > 1:
            lines.append(f"  in {file}:")
        for p in shown:
            where = f"{p.error.where}: " if p.error.where else ""
            fix = f" (fix: {p.error.fix})" if p.error.fix else ""
            lines.append(f"  - {where}{p.error.message}{fix}")
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return DataError("\n".join(lines), file=files[0] if len(files) == 1 else None,
                     fix=f"fix or remove these records, {SKIP_FIX}")
