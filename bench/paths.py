"""Where bench may write: always inside a folder the user gave, checked after resolving.

Names that come from inputs (a suite's name, a record's `suite` field, a baseline path in a suite)
never decide on their own where a file goes: every writer builds its path with `inside`, which
refuses anything that resolves (symlinks included) outside the folder. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from bench.errors import BenchError
from bench.keyspec import short

MIN_FREE_BYTES = 1 << 20  # preflight: room for a hundred records and a report page before the first cell trains
PAGE_MARK = "<!-- bench"  # the first line of every Markdown page bench writes
# how pages of earlier bench versions began: they may be replaced too
# a suite name becomes a file name (results/<name>.jsonl, reports/<name>.md): plain characters only
SUITE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_NAMES = ("readme",)  # reports/README.md is the index of pages
OLD_PAGE_HEADS = ("# Benchmark reports", "# Cost preview: ", "# Gate: ", "# Comparison")


def inside(folder: str | Path, name: str | Path) -> Path:
    """`folder / name`, refused unless it resolves inside `folder`."""
    folder = Path(folder)
    path = folder / name
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise BenchError(f"{str(path)!r} would be written outside {str(folder)!r} (a symbolic link leads out of it)",
                         fix="remove the link, or choose another folder")
    return path


def page_name(suite: str) -> str:
    """A report page's file stem for a record's `suite` field: the name itself when it is a valid suite
    name, else a sanitised form marked as such (records are data, and data does not choose file names;
    "../x" becomes "suite-x", never the page of a real suite "x")."""
    if not suite_name_problem(suite):
        return suite
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(suite)).strip("-.")[:90]
    return f"suite-{slug}" if slug else "suite-unnamed"


def check_page(path: Path, *, flag: str | None = None) -> Path:
    """Refuse to write a Markdown page over anything but a page bench wrote: not through a symbolic link,
    not over a folder, not over a user's file (README.md, notes.md, a results file)."""
    where = f" ({flag})" if flag else ""
    if path.is_symlink():
        raise BenchError(f"{path} is a symbolic link; bench does not write through links{where}",
                         fix="give a plain file path, or remove the link")
    if path.exists():
        if not path.is_file():
            raise BenchError(f"{path} is a folder, not a page{where}", fix="give a file path ending in .md")
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(200)
        if not head.startswith((PAGE_MARK, *OLD_PAGE_HEADS)):
            raise BenchError(f"{path} exists and is not a page bench wrote; it is not overwritten{where}",
                             fix="choose a new file name, or move that file away if it is really yours to replace")
    return path


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace `path` whole: a new temporary file beside it (created exclusively, so never through a link),
    fsync'd, then renamed over it. A reader, or a run that checks the file before writing it, never sees it
    half-written, and a crash leaves the old file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def page_target(folder: str | Path, name: str, *, flag: str | None = None) -> Path:
    """A page `name` inside `folder` (checked after resolving), writable per check_page."""
    return check_page(inside(folder, name), flag=flag)


def project_root(start: Path) -> Path:
    """The nearest folder above `start` holding .git or pyproject.toml (the project), else `start`."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").exists():
            return folder
    return start


def baseline_problem(suite_dir: Path, value: str) -> str | None:
    """Why a suite's `[gate] baseline` cannot be its baseline file, or None: it must be a .jsonl file
    inside the suite's project (or the suite's folder), since `bench baseline update` writes it."""
    if not value.endswith(".jsonl"):
        return f"{value!r} is not a .jsonl results file"
    target = (suite_dir / value).resolve()
    allowed = (project_root(suite_dir), suite_dir.resolve())
    if not any(target.is_relative_to(root) for root in allowed):
        return f"{value!r} resolves to {str(target)!r}, outside the suite's project {str(allowed[0])!r}"
    return None


def require_plain(path: Path, kind: str, *, what: str, fix: str) -> None:
    """Preflight of a path bench will write: absent, or a plain `kind` ("file" or "folder") that is not a link."""
    if path.is_symlink() or (path.exists() and not (path.is_file() if kind == "file" else path.is_dir())):
        raise BenchError(f"{path} is not a plain {kind}; bench keeps its {what} there; nothing was run", fix=fix)


def ensure_writable_folder(folder: str | Path, *, what: str, flag: str) -> Path:
    """Preflight for an output folder: it exists or can be made, takes a new file, and has room.
    Raises BenchError (exit 2) naming the folder and the flag that chooses it."""
    folder = Path(folder)
    fix = f"choose another folder with {flag}, or free space / fix its permissions"
    try:
        if folder.exists() and not folder.is_dir():
            raise BenchError(f"the {what} folder {str(folder)!r} is a file; nothing was run", fix=f"choose a folder with {flag}")
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".bench-write-probe-")  # exclusive: never through a link
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise BenchError(f"the {what} folder {str(folder)!r} cannot be written ({exc.strerror or exc}); nothing was run",
                         fix=fix) from None
    if free < MIN_FREE_BYTES:
        raise BenchError(f"the {what} folder {str(folder)!r} has {free:,} bytes free, under the {MIN_FREE_BYTES:,} "
                         "a run needs for its records; nothing was run", fix=fix)
    return folder


def suite_name_problem(name: str) -> str | None:
    """Why `name` cannot name a suite's files, or None."""
    if not isinstance(name, str) or not SUITE_NAME_RE.fullmatch(name):
        return (f"{short(name)} is not a plain file name (1–100 letters, digits, '-', '_', '.', not starting with "
                "'.' or '-'); it names results/<name>.jsonl and reports/<name>.md")
    if name.lower() in RESERVED_NAMES or name.lower().split(".")[0] in RESERVED_NAMES:
        return f"{name!r} is reserved: reports/README.md is the index of report pages"
    return None


def remove_written(out: Path, made: bool) -> None:
    """Everything in `out`, a folder that was new or empty before a command wrote into it and failed (a full disk),
    and `out` itself when the command made it: what was half written goes, nothing else (links are removed, never
    followed)."""
    for child in list(out.iterdir()) if out.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if made:
        with contextlib.suppress(OSError):
            out.rmdir()
