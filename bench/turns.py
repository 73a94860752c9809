"""Cells side by side on one machine's CPU take turns at what they time.

A cell's timed work (its timed training steps, serving's latency rounds) holds an exclusive lock on a file the runner
names in the cell's environment; the rest (model build, warm-up steps, evaluation, the serving models' merges and
memory counts, process start and exit, and where it can the making of the first timed steps' batches: bench/train.py)
runs beside another cell's timed work. So no two cells are timed at once, while the machine's other cores do the
harness's untimed work. The lock is the kernel's (flock): a cell killed while timing (timeout, out-of-memory killer,
Ctrl-C) releases it with its process. A process waiting for its turn says so to whoever listens (the cell's process
tells the runner, which stops the cell's timeout clock meanwhile).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from contextlib import contextmanager

ENV = "BENCH_TIMED_TURNS"  # the lock file's path, set by the runner for cells that take turns (bench/run/runner.py)

# this process's held lock (and the process that opened it), its waits so far, who hears of them
_state = {"fd": None, "pid": None, "waited": 0.0, "listener": None}


def listen(listener: Callable[[bool], None] | None) -> None:
    """Call listener(True) when this process starts waiting for its turn and listener(False) when the turn comes."""
    _state["listener"] = listener


def waited_total() -> float:
    """Seconds this process has spent waiting for turns."""
    return _state["waited"]


def taking_turns() -> bool:
    """Whether this process takes turns with other cells (the runner named a lock file)."""
    return bool(os.environ.get(ENV))


@contextmanager
def timed_turn(waits: list[tuple[float, float]] | None = None):
    """Hold the turn to time for the block (at once where this process takes no turns). `waits` receives (asked, got):
    when the turn was asked for and when it came, on the machine-wide monotonic clock (time.monotonic)."""
    if not taking_turns():
        yield
        return
    path = os.environ[ENV]
    if _state["fd"] is not None:  # flock through a second open file would wait for this process itself, for ever
        raise RuntimeError("timed_turn entered again while this process holds the turn")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:  # another user's lock file in a shared results folder: flock works on a read-only one too
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    _state["fd"], _state["pid"] = fd, os.getpid()
    listener = _state["listener"]
    try:
        asked = time.monotonic()
        if listener:
            listener(True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            if listener:
                listener(False)
        got = time.monotonic()
        _state["waited"] += got - asked
        if waits is not None:
            waits.append((asked, got))
        yield
    finally:
        if _state["pid"] == os.getpid():  # a forked child closed its copy already, and may reuse the number
            _state["fd"] = None
            os.close(fd)  # closing the last descriptor of the open file releases the lock


def _forget_in_child() -> None:
    """A process forked while the turn is held (a DataLoader worker, a cell's device process) closes its copy: the lock
    is released when the holder closes its own, not when the last child exits. Its waits are its own from here on."""
    fd, _state["fd"], _state["waited"] = _state["fd"], None, 0.0
    if fd is not None:
        os.close(fd)


os.register_at_fork(after_in_child=_forget_in_child)


def waited_s(waits: list[tuple[float, float]]) -> float:
    """Seconds spent waiting for turns."""
    return sum(got - asked for asked, got in waits)


def busy_s(spans: list[tuple[float, float]]) -> float:
    """Seconds of wall time covered by at least one of `spans` ((start, end) on one clock): their union's length."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
