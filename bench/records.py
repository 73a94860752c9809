"""The record schema and the append-only JSONL store.

One record is one JSON line: one run of one cell. Writers append whole lines under an
exclusive lock with flush + fsync, so two `bench run` processes never interleave and a
power cut leaves at most one torn last line, which readers skip with a warning.
This module never imports torch.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import OutputError

SCHEMA_VERSION = 1

MAX_WARNINGS = 5  # unreadable lines named one by one per file; the rest are counted

STATUSES = ("ok", "oom", "error", "timeout", "diverged", "skipped")

SECTIONS = ("model", "dataset", "method", "train", "params", "cost", "quality", "env")  # the nested objects

# The documented shape of a record (README "Record schema"); `validate_record` checks the top level.
REQUIRED_KEYS = (
    "schema_version", "cell_id", "suite", "run_id", "repeat", "seed", "model", "dataset",
    "method", "train", "status", "message", "params", "cost", "quality", "env", "started_at",
)


class TornRecordWarning(UserWarning):
    """A line that is not a readable record (an interrupted write, or foreign text); it is skipped."""


class RecordNotSaved(OutputError):
    """A record could not be appended (disk full, file gone read-only): the run stops with exit 1."""


def validate_record(record) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, not {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"record is missing keys {missing}")
    if record["status"] not in STATUSES:
        raise ValueError(f"record status {str(record['status'])[:40]!r} is not one of {STATUSES}")
    for key, kind in (("cell_id", str), ("suite", str), ("repeat", int), ("message", str), *((s, dict) for s in SECTIONS)):
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise ValueError(f"record field {key!r} is not {'an object' if kind is dict else kind.__name__}")
    # checked here, not only where lines are read, so that every check of "is this a record" agrees
    version = record["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("record schema_version is not an integer")


@contextmanager
def locked(path: Path):
    """An exclusive advisory lock on `<path>.lock`, held while appending or claiming work."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a lock file that is a link is refused, never followed to create a file elsewhere
    fd = os.open(str(path) + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def encode(record: dict) -> bytes:
    """One JSON line. Non-finite numbers (a NaN loss, an inf rate) become null, and the record's
    `nonfinite` field names each one and what it was, so a record always serialises."""
    found: dict[str, str] = {}
    clean = _finite(record, "", found)
    if found:
        clean["nonfinite"] = {**clean.get("nonfinite", {}), **found}
    return (json.dumps(clean, sort_keys=True, allow_nan=False, default=_json_default) + "\n").encode()


def _finite(value, where: str, found: dict):
    if isinstance(value, float) and not math.isfinite(value):
        found[where] = str(value)
        return None
    if isinstance(value, str):
        return plain_text(value)
    if isinstance(value, dict):
        return {plain_text(k) if isinstance(k, str) else k: _finite(v, f"{where}.{k}" if where else str(k), found)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalars
        return _finite(value.item(), where, found)
    return value


def append_record(path: str | Path, record: dict) -> None:
    """Append one record as one line, durable before returning, or leave the file exactly as it was.

    Every byte is checked written (short writes are continued) and fsync'd; on any failure the file
    is cut back to its previous length, the record is kept in a side file in the temp folder, and
    RecordNotSaved says where."""
    validate_record(record)
    path = Path(path)
    line = encode(record)
    try:
        with locked(path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                # a torn fragment keeps its own line so it cannot swallow this record
                data = (b"\n" + line) if _ends_without_newline(path, size) else line
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError:
                    _truncate(fd, size)
                    raise
            finally:
                os.close(fd)
    except OSError as exc:
        side = _keep_aside(line, path)
        raise RecordNotSaved(
            f"the record of cell {record['cell_id']} (repeat {record['repeat']}, status {record['status']}) could not be "
            f"appended to {path} ({exc.strerror or exc}); the results file is as it was before this record"
            + (f"; the record is kept in {side}" if side else "; it could not be kept anywhere else either"),
            fix="free space or fix permissions, append the kept line to the results file, then `bench run` again "
                "to resume with the cells not yet recorded") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no bytes written")
        view = view[written:]


def _truncate(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass  # nothing more can be done; readers skip a torn last line


def _keep_aside(line: bytes, path: Path) -> Path | None:
    try:
        fd, name = tempfile.mkstemp(prefix=f"bench-unsaved-{path.stem}-", suffix=".jsonl")
        with os.fdopen(fd, "wb") as f:
            f.write(line)
        return Path(name)
    except OSError:
        return None


def _ends_without_newline(path: Path, size: int) -> bool:
    if size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"


def plain_text(text: str) -> str:
    """`text` as UTF-8 can hold it: a lone surrogate (a file name's byte that is not UTF-8, as os.fsdecode keeps it, or
    a `\\udcff` escape in a hand-edited line) becomes an escape in the text itself (\\xff, \\ud800), so no record
    bench writes or reads breaks a page, a plot or a terminal."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # an undecodable file name's byte as it was (\xff); any other lone surrogate as \ud800
        return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                       f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _plain(value):
    if isinstance(value, str):
        return plain_text(value)
    if isinstance(value, dict):
        return {plain_text(k) if isinstance(k, str) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how json writes a surrogate (a lone one, or half of a pair)


def _json_default(value):
    # paths end up in records; store them as plain JSON
    if isinstance(value, Path):
        return plain_text(str(value))
    raise TypeError(f"cannot store {type(value).__name__} in a record")


def iter_records(path: str | Path, *, warn: bool = True) -> Iterator[dict]:
    """The readable records of one file, in order, one at a time; lines that are not records (torn,
    not JSON, JSON that is not a record object, nested past reason) are skipped with a warning."""
    path = Path(path)
    if not path.is_file():  # absent, or a folder or a FIFO that no reader should block on
        return
    skipped = _Skipped(path, warn)
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                record = _parse(line, lineno, skipped)
                if record is not None:
                    yield record
    skipped.close()


class _Skipped:
    """Counts unreadable lines of one file; names the first few in warnings, then counts the rest."""

    def __init__(self, path: Path, warn: bool):
        self.path, self.warn, self.n = path, warn, 0

    def add(self, lineno: int, reason: str) -> None:
        self.n += 1
        if self.warn and self.n <= MAX_WARNINGS:
            warnings.warn(f"{self.path}:{lineno}: skipped an unreadable record ({reason[:120]})", TornRecordWarning, stacklevel=4)

    def close(self) -> None:
        if self.warn and self.n > MAX_WARNINGS:
            warnings.warn(f"{self.path}: {self.n - MAX_WARNINGS} more unreadable lines skipped", TornRecordWarning, stacklevel=3)


def _parse(line: bytes, lineno: int, skipped: _Skipped) -> dict | None:
    try:
        text = line.decode("utf-8", errors="replace")
        value = json.loads(text)
        return migrate(_plain(value) if _SURROGATE_ESCAPE.search(text) else value)
    except (ValueError, TypeError) as exc:
        skipped.add(lineno, str(exc))
    except RecursionError:
        skipped.add(lineno, "nested too deeply")
    return None


# bench writes records with sorted keys and json's default separators: the key of a line can be read
# without parsing it, when each name occurs once (a quote inside a JSON string is escaped, so these
# bytes are keys); any other line is parsed in full
_CELL_ID = re.compile(rb'"cell_id": "([^"\\]{1,200})"')
_REPEAT = re.compile(rb'"repeat": (\d{1,18})[,}]')


def _key_hint(line: bytes) -> tuple[str, int] | None:
    if line.count(b'"cell_id"') != 1 or line.count(b'"repeat"') != 1:
        return None
    cell, repeat = _CELL_ID.search(line), _REPEAT.search(line)
    return (cell.group(1).decode("utf-8", errors="replace"), int(repeat.group(1))) if cell and repeat else None


def read_records(path: str | Path, *, warn: bool = True) -> list[dict]:
    """All readable records of one file, in order."""
    return list(iter_records(path, warn=warn))


def migrate(record) -> dict:
    """Check a parsed line is a record and bring it up to SCHEMA_VERSION (none older exist yet; the hook is
    here for when they do)."""
    validate_record(record)
    version = record.get("schema_version", 1)
    if version > SCHEMA_VERSION:
        raise ValueError(f"record schema_version {version} is newer than this bench ({SCHEMA_VERSION}); upgrade bench")
    _first_quality_version(record)
    return _normalise(record)


def version_text(task: str, task_version: int, metric: str, metric_version: int) -> str:
    """quality.version: the task's evaluation and its metric, each with its version (bench.metrics.quality_version)."""
    return f"{task}-{task_version}/{metric}-{metric_version}"


def _first_quality_version(record: dict) -> None:
    """Records from before quality carried a version were measured with every task and metric at version 1: say so, so
    that they compare with today's numbers where nothing changed and are refused where something did (bench.fields)."""
    quality, task = record["quality"], record["dataset"].get("task")
    if "version" not in quality and isinstance(quality.get("metric"), str) and isinstance(task, str):
        quality["version"] = version_text(task, 1, quality["metric"], 1)


# fields that name things: shown and grouped by, so always text when present
NAME_FIELDS = ("model.name", "model.family", "model.weights", "dataset.name", "dataset.task", "method.name", "method.kind",
               "quality.metric", "suite_file", "started_at", "finished_at", "run_id")


def _normalise(record: dict) -> dict:
    """A read record in the shape the analysis code relies on: names as text, environment values as
    scalars, the loss curve as [step, loss] pairs. A hand-edited or foreign file may hold anything; its
    numbers are left as they are (NaN included), so that gate and compare can refuse them."""
    for dotted in NAME_FIELDS:
        section, _, key = dotted.rpartition(".")
        holder = record[section] if section else record
        if holder.get(key) is not None and not isinstance(holder[key], str):
            holder[key] = json.dumps(holder[key], default=str)[:200]
    env = record["env"]
    for key, value in env.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            env[key] = json.dumps(value, default=str)[:200]
    curve = record.get("loss_curve")
    record["loss_curve"] = [p for p in curve if isinstance(p, list) and len(p) == 2] if isinstance(curve, list) else []
    return record


def read_many(paths) -> list[dict]:
    records = []
    for p in paths:
        records.extend(iter_records(p))
    return records


def read_latest(paths) -> list[dict]:
    """The newest record of every (cell_id, repeat) over `paths`, in first-seen order (as latest_per_cell).
    Time and memory grow with the number of cell-runs, not with the length of the files (`latest_lines`)."""
    latest: dict[tuple[str, int], dict] = {}
    for path in paths:
        for key, (_, record) in latest_lines(path).items():
            latest[key] = record
    return list(latest.values())


def latest_lines(path: str | Path, *, warn: bool = True) -> dict[tuple[str, int], tuple[int, dict]]:
    """(cell_id, repeat) -> (line number, record) of its newest readable record in one file.

    Parsed lazily: a line whose key can be read without parsing is only remembered by its offset, and
    only the newest line of each key is parsed (an older one when the newest is unreadable)."""
    path = Path(path)
    if not path.is_file():  # absent, or a folder or a FIFO that no reader should block on
        return {}
    skipped = _Skipped(path, warn)
    candidates: dict[tuple[str, int], list] = {}  # key -> [(lineno, offset or parsed record), ...]
    latest: dict[tuple[str, int], tuple[int, dict]] = {}
    with open(path, "rb") as f:
        offset = 0
        for lineno, line in enumerate(f, 1):
            hint = _key_hint(line)
            if hint is not None:
                candidates.setdefault(hint, []).append((lineno, offset))
            elif line.strip():
                record = _parse(line, lineno, skipped)
                if record is not None:
                    candidates.setdefault((record["cell_id"], record["repeat"]), []).append((lineno, record))
            offset += len(line)
        for key, found in candidates.items():
            for lineno, item in sorted(found, key=lambda c: c[0], reverse=True):
                if isinstance(item, dict):
                    record = item
                else:
                    f.seek(item)
                    record = _parse(f.readline(), lineno, skipped)
                    if record is not None and (record["cell_id"], record["repeat"]) != key:
                        record = None  # cannot happen for a line bench wrote; never trust a misread key
                if record is not None:
                    latest[key] = (lineno, record)
                    break
    skipped.close()
    return latest


def line_count(path: str | Path) -> int:
    """Lines in a results file now (0 when there is none): later lines were appended after this moment."""
    if not Path(path).is_file():  # not there (yet), or not a file: the output preflight says why, if it matters
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


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
        if isinstance(value, dict) and key in SECTIONS:
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
