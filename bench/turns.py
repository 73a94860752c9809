"""Cells side by side on one machine's CPU take turns at what they time.

A cell's timed work (its timed training steps, serving's latency rounds) holds an exclusive lock on a file the runner
names in the cell's environment; the rest (model build, warm-up steps, evaluation, the serving models' merges and memory
counts, process start and exit) runs beside another cell's timed work. So the timed figures are a lone cell's while
the machine's other cores do the harness's untimed work. The lock is the kernel's (flock): a cell killed while timing
(timeout, out-of-memory killer, Ctrl-C) releases it with its process.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager

ENV = "BENCH_TIMED_TURNS"  # the lock file's path, set by the runner for cells that take turns (bench/run/runner.py)


@contextmanager
def timed_turn(waits: list[tuple[float, float]] | None = None):
    """Hold the turn to time for the block (at once where this process takes no turns). `waits` receives (asked, got):
    when the turn was asked for and when it came, on the machine-wide monotonic clock (time.monotonic)."""
    path = os.environ.get(ENV)
    if not path:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        asked = time.monotonic()
        fcntl.flock(fd, fcntl.LOCK_EX)
        if waits is not None:
            waits.append((asked, time.monotonic()))
        yield
    finally:
        os.close(fd)  # closing the only descriptor of the open file releases the lock


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
