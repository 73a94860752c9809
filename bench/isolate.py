"""Run one function in its own process, with a wall-clock limit and a channel for progress events.

Cells are forked from a multiprocessing *forkserver* that imported torch and the model libraries
once (bench/run/preload.py) and never runs a torch computation or touches CUDA. So each cell starts in
milliseconds instead of paying ~10 s of imports, its memory high-water mark is its own, and forking
stays safe even when the calling process has itself run torch code (a plain fork after OpenMP has
started its threads can hang the child). A crash, a kill or a hang stays in the child: the parent
sees an outcome, never an exception.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Outcome:
    kind: str  # "ok" | "raised" | "timeout" | "crashed" | "cancelled"
    value: Any = None
    message: str = ""
    elapsed_s: float = 0.0


def die_with_parent() -> None:
    """Linux: a cell outlives neither the server that forked it nor, through it, a killed `bench run`."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def set_environ(changes: dict[str, str | None]) -> dict[str, str | None]:
    """Set these variables of this process's environment (a None value unsets one); returns what they were, in the same
    form (set_environ of it puts them back)."""
    before = {key: os.environ.get(key) for key in changes}
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return before


@contextmanager
def environ(changes: dict[str, str | None]):
    """The block runs with these variables set (None: unset); afterwards they are as they were."""
    before = set_environ(changes)
    try:
        yield
    finally:
        set_environ(before)


def _child(conn, fn, args, kwargs, env):
    die_with_parent()
    # before anything imports CUDA: a cell that runs beside others sees only its own device(s); None unsets a variable
    set_environ(env or {})
    # Ctrl-C reaches the whole process group; the parent owns it (it records, releases claims and exits 130),
    # and this process dies with its server when the parent is gone
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def emit(*event):
            conn.send(("event", event))

        value = fn(*args, emit=emit, **kwargs)
        conn.send(("ok", value))
    except BaseException as exc:  # report, don't die silently
        try:
            conn.send(("raised", f"{type(exc).__name__}: {exc} | {' / '.join(traceback.format_exc().splitlines()[-3:])}"))
        except OSError:
            pass  # the parent has gone (interrupted): nobody is left to tell
    finally:
        conn.close()
    # The result is sent: leave now. multiprocessing's own exit (finalizers, joining children) took up to 1.5 s after a
    # cell had trained, all of it waited for by the parent; a DataLoader worker still alive goes with its watchdog.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def call_isolated(fn: Callable, *args, timeout_s: float, on_event: Callable | None = None, isolate: bool = True,
                  env: dict | None = None, cancel=None, **kwargs) -> Outcome:
    """Call fn(*args, emit=..., **kwargs) in a forked child; `emit(*event)` reaches `on_event` in the parent, except
    emit(PAUSE, True) / emit(PAUSE, False): between them the child waits for something outside itself (its turn to time
    beside other cells, bench/turns.py) and its timeout clock stands still. `env`: the child's extra environment
    variables (a None value unsets one); `cancel`: a threading.Event that, once set, kills the child (outcome "cancelled": the run is being
    interrupted, nobody wants the result)."""
    start = time.monotonic()
    if not isolate:
        try:
            value = fn(*args, emit=lambda *e: on_event and e[0] != PAUSE and on_event(e), **kwargs)
            return Outcome("ok", value, elapsed_s=time.monotonic() - start)
        except Exception as exc:
            return Outcome("raised", message=f"{type(exc).__name__}: {exc}", elapsed_s=time.monotonic() - start)

    if cancel is not None and cancel.is_set():  # interrupted already: no process to start and kill
        return Outcome("cancelled", message="the run was interrupted")
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    # not daemonic: a cell starts DataLoader workers of its own, and daemonic processes may not have children;
    # the `finally` below kills a cell still running when this call ends early (an interrupt)
    proc = ctx.Process(target=_child, args=(child_conn, fn, args, kwargs, env), daemon=False)
    try:
        proc.start()
    except (EOFError, ConnectionError):
        # the cell server ended before it could fork: most often a terminal's Ctrl-C, which ends a server still importing
        # (bench.run.server_signals) and reaches this process too, sometimes a moment after the server's pipe closed;
        # the pause lets that interrupt arrive as itself rather than as this EOF
        child_conn.close()
        parent_conn.close()
        time.sleep(0.2)
        if cancel is not None and cancel.is_set():  # side by side the interrupt reaches the main thread, not this one
            return Outcome("cancelled", message="the run was interrupted", elapsed_s=time.monotonic() - start)
        return Outcome("crashed", message="the cell server ended before it could start the process",
                       elapsed_s=time.monotonic() - start)
    child_conn.close()
    paused = {"s": 0.0, "since": None}  # the child's waits so far, and when the current one began
    try:
        while True:
            now = time.monotonic()
            remaining = timeout_s - (now - start - paused["s"] - (now - paused["since"] if paused["since"] else 0.0))
            if cancel is not None and cancel.is_set():
                _kill(proc)
                return Outcome("cancelled", message="the run was interrupted", elapsed_s=time.monotonic() - start)
            if remaining <= 0:
                _kill(proc)
                waited = f" (and {paused['s']:.0f} s waiting for its turn beside other cells)" if paused["s"] >= 0.5 else ""
                return Outcome("timeout", message=f"no result after {timeout_s:g} s{waited}; the cell's process was killed",
                               elapsed_s=time.monotonic() - start)
            if parent_conn.poll(min(remaining, 0.25)):
                try:
                    kind, payload = parent_conn.recv()
                except (EOFError, OSError):
                    proc.join(5)
                    return _crashed(proc, start)
                if kind == "event" and payload[0] == PAUSE:
                    _pause(paused, payload[1])
                    continue
                if kind == "event":
                    if on_event:
                        on_event(payload)
                    continue
                proc.join(30)
                if proc.is_alive():
                    _kill(proc)
                if kind == "ok":
                    return Outcome("ok", payload, elapsed_s=time.monotonic() - start)
                return Outcome("raised", message=payload, elapsed_s=time.monotonic() - start)
            if not proc.is_alive() and not parent_conn.poll(0):
                return _crashed(proc, start)
    finally:
        parent_conn.close()
        _kill(proc)


PAUSE = "pause"  # the event that stops (True) and restarts (False) a child's timeout clock


def _pause(paused: dict, waiting: bool) -> None:
    now = time.monotonic()
    if waiting and paused["since"] is None:
        paused["since"] = now
    elif not waiting and paused["since"] is not None:
        paused["s"] += now - paused["since"]
        paused["since"] = None


_PRELOAD = ["bench.run.server_signals", "bench.run.preload"]  # in this order: Ctrl-C while importing exits quietly
WARM_FAMILIES = "BENCH_WARM_FAMILIES"  # the model families the server warms up (comma-separated; unset: every family)


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # takes effect when the server starts, on the first cell
    return ctx


def _crashed(proc, start: float) -> Outcome:
    code = proc.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        why = f"the cell's process was killed by {name}" + (" (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else "")
    else:
        why = f"the cell's process exited with code {code} before reporting a result"
    return Outcome("crashed", message=why, value=code, elapsed_s=time.monotonic() - start)


def _kill(proc) -> None:
    if proc.is_alive():
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.join(10)
