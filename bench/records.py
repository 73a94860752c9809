"""The record schema and the append-only JSONL store.

One record is one JSON line: one run of one cell. Writers append whole lines under an
exclusive lock with flush + fsync, so two `bench run` processes never interleave and a
power cut leaves at most one torn last line, which readers skip with a warning.
This module never imports torch.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1

STATUSES = ("ok", "oom", "error", "timeout", "diverged", "skipped")

# The documented shape of a record (README "Record schema"); `validate_record` checks the top level.
REQUIRED_KEYS = (
    "schema_version", "cell_id", "suite", "run_id", "repeat", "seed", "model", "dataset",
    "method", "train", "status", "message", "params", "cost", "quality", "env", "started_at",
)


class TornRecordWarning(UserWarning):
    """A line that is not valid JSON (an interrupted write); it is skipped."""


def validate_record(record: dict) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"record is missing keys {missing}")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status {record['status']!r} is not one of {STATUSES}")


@contextmanager
def locked(path: Path):
    """An exclusive advisory lock on `<path>.lock`, held while appending or checking what is done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_record(path: str | Path, record: dict) -> None:
    """Append one record as one line, durable before returning."""
    validate_record(record)
    path = Path(path)
    line = json.dumps(record, sort_keys=True, allow_nan=False, default=_json_default) + "\n"
    with locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if _ends_without_newline(path):
                os.write(fd, b"\n")  # keep a torn fragment on its own line so it cannot swallow this record
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _ends_without_newline(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"


def _json_default(value):
    # numpy scalars and paths end up in records; store them as plain JSON
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a record")


def read_records(path: str | Path, *, warn: bool = True) -> list[dict]:
    """All readable records of one file, in order; torn or foreign lines are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = migrate(json.loads(line))
                validate_record(record)
            except (ValueError, TypeError) as exc:
                if warn:
                    warnings.warn(f"{path}:{lineno}: skipped an unreadable record ({exc})", TornRecordWarning, stacklevel=2)
                continue
            records.append(record)
    return records


def migrate(record: dict) -> dict:
    """Bring an older record up to SCHEMA_VERSION (none older exist yet; the hook is here for when they do)."""
    version = record.get("schema_version", 1)
    if version > SCHEMA_VERSION:
        raise ValueError(f"record schema_version {version} is newer than this bench ({SCHEMA_VERSION}); upgrade bench")
    return record


def read_many(paths) -> list[dict]:
    records = []
    for p in paths:
        records.extend(read_records(p))
    return records


def done_cell_ids(path: str | Path) -> set[tuple[str, int]]:
    """(cell_id, repeat) pairs that already have a record with a final status (anything but a retryable error)."""
    return {(r["cell_id"], r.get("repeat", 0)) for r in read_records(path, warn=False) if r["status"] != "error"}


def latest_per_cell(records: list[dict]) -> list[dict]:
    """The newest record for every (cell_id, repeat), keeping first-seen order."""
    latest: dict[tuple[str, int], dict] = {}
    for r in records:
        latest[(r["cell_id"], r.get("repeat", 0))] = r
    return list(latest.values())


def flatten(record: dict) -> dict:
    """One tidy row: nested sections become `section.key` columns (model.name, cost.peak_memory_mb, ...)."""
    row: dict = {}
    for key, value in record.items():
        if isinstance(value, dict) and key in {"model", "dataset", "method", "train", "params", "cost", "quality", "env"}:
            for sub, v in value.items():
                if not isinstance(v, (dict, list)):
                    row[f"{key}.{sub}"] = v
        elif not isinstance(value, (dict, list)):
            row[key] = value
    return row


def load_results(*paths):
    """A pandas DataFrame, one row per cell-run, columns flattened as in `flatten`."""
    import pandas as pd

    if len(paths) == 1 and isinstance(paths[0], (list, tuple)):
        paths = tuple(paths[0])
    return pd.DataFrame([flatten(r) for r in read_many(paths)])
