"""Claims: a cell-run is taken by one `bench run` before it starts, so concurrent runs split the work.

A claim is a small file `<results>.claims/<cell_id>-<repeat>.json` holding its owner (host, pid, the
process's start time, run id). It is made under the results file's lock, after checking (under the
same lock) that the cell-run has no record yet, and removed when its record is appended. A claim
whose owner is gone — same host, and that pid is not running or is another process now — is stale
and taken over; a claim from another host is trusted until its `expires` time (the cell's timeout,
with room for OOM retries and the base evaluation), since a pid on another machine cannot be checked.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.paths import inside, write_atomic
from bench.records import locked


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError):
        return None
    return owner if isinstance(owner, dict) and _alive(owner) else None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), so a recycled pid is not taken for its old owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


MAX_CLAIM_S = 60 * 86400  # a claim promising to run longer than this (a hand-edited `expires`) is not believed


def process_exists(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (someone else's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return True


def _alive(owner: dict) -> bool:
    """Whether the claim's owner may still be running. Anything malformed is stale: a claim file is a hint
    between bench processes, and one that cannot be read must not block a cell forever."""
    try:
        expires = float(owner.get("expires", 0))
    except (TypeError, ValueError, OverflowError):
        return False
    if not time.time() < expires < time.time() + MAX_CLAIM_S:
        return False
    if owner.get("host") != socket.gethostname():
        return True  # another machine's pid cannot be checked from here: trusted until it expires
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not process_exists(pid):
        return False
    started = _start_time(pid)
    if started is None:  # no /proc (macOS): the pid's liveness is all that can be known
        return True
    # the owner wrote its own start time: without it, or with another one, this pid is not that process
    return owner.get("start_time") == started


@dataclass(frozen=True)
class Claim:
    path: Path


class Claims:
    """The claims of one results file."""

    def __init__(self, results: Path, run_id: str):
        self.results = Path(results)
        # inside the results folder after resolving: a claims folder that is a link out of it is refused
        self.folder = inside(self.results.parent, self.results.name.removesuffix(".jsonl") + ".claims")
        self.run_id = run_id
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()), "run_id": run_id}

    def _path(self, cell_id: str, repeat: int) -> Path:
        return self.folder / f"{cell_id}-{repeat}.json"

    def owner(self, cell_id: str, repeat: int) -> dict | None:
        """The live owner of a claim on this cell-run, or None (no claim, or a stale or unreadable one)."""
        return _read_owner(self._path(cell_id, repeat))

    def sweep(self) -> None:
        """Remove claims whose owners are gone and leftovers of interrupted writes (call under the results lock)."""
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return
        for entry in entries:
            stale = ".tmp" in entry.name or (entry.suffix == ".json" and _read_owner(entry) is None)
            if stale and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass

    def take(self, cell_id: str, repeat: int, *, still_wanted, ttl_s: float) -> Claim | str:
        """Claim the cell-run under the results lock. `still_wanted()` is asked under the same lock (it reads
        the records: is this cell-run still unrecorded?). Returns a Claim, or why it was not taken."""
        with locked(self.results):
            if not still_wanted():
                return "recorded meanwhile by another run"
            owner = self.owner(cell_id, repeat)
            if owner and owner.get("run_id") != self.run_id:
                return (f"claimed by another run (pid {str(owner.get('pid'))[:12]} on {str(owner.get('host'))[:60]}); if no "
                        f"other run is going, delete {self._path(cell_id, repeat)}")
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(cell_id, repeat)
            write_atomic(path, json.dumps({**self.me, "claimed_at": time.time(), "expires": time.time() + ttl_s}))
            return Claim(path)

    def release(self, claim: Claim) -> None:
        try:
            claim.path.unlink()
        except OSError:
            pass
        try:
            self.folder.rmdir()  # only when empty: the last claim leaves no folder behind
        except OSError:
            pass
