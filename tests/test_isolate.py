"""Process isolation: results, events, crashes, kills and hangs all come back as outcomes."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.isolate import call_isolated, environ


def _ok(x, *, emit):
    emit("step", 1, 2, 0.5)
    return {"pid": os.getpid(), "x": x}


def _raise(*, emit):
    raise RuntimeError("boom")


def _die(*, emit):
    os.kill(os.getpid(), signal.SIGKILL)


def _hang(*, emit):
    time.sleep(60)


def test_result_and_events_cross_the_process_boundary():
    events = []
    out = call_isolated(_ok, 3, timeout_s=30, on_event=events.append)
    assert out.kind == "ok" and out.value["x"] == 3 and out.value["pid"] != os.getpid()
    assert events == [("step", 1, 2, 0.5)]


def test_exception_is_reported_not_raised():
    out = call_isolated(_raise, timeout_s=30)
    assert out.kind == "raised" and "RuntimeError: boom" in out.message


def test_killed_child_is_a_crash_outcome():
    out = call_isolated(_die, timeout_s=30)
    assert out.kind == "crashed" and "SIGKILL" in out.message


def test_hang_past_the_timeout_is_killed():
    start = time.monotonic()
    out = call_isolated(_hang, timeout_s=1.0)
    assert out.kind == "timeout" and time.monotonic() - start < 15


def _env(name="CUDA_VISIBLE_DEVICES", *, emit):
    return os.environ.get(name)


def test_the_child_gets_its_own_environment_and_the_parent_keeps_its():
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    assert call_isolated(_env, timeout_s=30, env={"CUDA_VISIBLE_DEVICES": "3"}).value == "3"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
    # None unsets what the cell server passed on (a BENCH_TIMED_TURNS exported before it started, here PATH)
    assert call_isolated(_env, "PATH", timeout_s=30).value and call_isolated(_env, "PATH", timeout_s=30, env={"PATH": None}).value is None
    assert os.environ.get("PATH")


def test_a_cancelled_call_kills_its_child_within_a_poll():
    import threading

    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    start = time.monotonic()
    out = call_isolated(_hang, timeout_s=60, cancel=cancel)
    assert out.kind == "cancelled" and time.monotonic() - start < 10


def test_a_call_made_once_the_run_is_interrupted_starts_no_process(monkeypatch):
    import threading

    import bench.isolate

    monkeypatch.setattr(bench.isolate, "_context", lambda: pytest.fail("a process was started"))
    cancel = threading.Event()
    cancel.set()
    assert call_isolated(_ok, 1, timeout_s=30, cancel=cancel).kind == "cancelled"


def test_ctrl_c_while_the_cell_server_still_imports_prints_no_traceback():
    """A terminal's Ctrl-C reaches the cell server too. multiprocessing makes the server ignore it only after the preload
    imports (seconds); before that it must end quietly, not print the interrupted import's traceback."""
    import subprocess
    import sys

    import psutil

    # SIGINT handled and unblocked as in a terminal: a test run started in the background (`cmd &`) inherits it ignored,
    # and a signal mask is inherited through fork and exec too
    code = ("import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
            "from bench.isolate import call_isolated\nfrom bench.run.runner import _ready\n"
            "try:\n    call_isolated(_ready, timeout_s=300)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def server_started() -> bool:
        for child in psutil.Process(proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if "forkserver" in " ".join(child.cmdline()):
                    return True
        return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not server_started():
        time.sleep(0.05)
    time.sleep(1.0)  # the server is importing torch and the model libraries
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in out, out


def _waits_then_works(wait_s: float, work_s: float, *, emit):
    from bench.isolate import PAUSE

    emit("step", 1)
    emit(PAUSE, True)  # waiting for something outside the child (its turn to time beside other cells)
    time.sleep(wait_s)
    emit(PAUSE, False)
    time.sleep(work_s)
    return "done"


def test_the_timeout_clock_stands_still_while_the_child_says_it_waits():
    """bench/turns.py: a cell waiting for its turn beside others is not timed out for the others' work; its own time is
    still limited, and the pause events never reach the caller's progress display."""
    assert call_isolated(_ok, 1, timeout_s=120).kind == "ok"  # the cell server started (its imports are not the child's)
    events = []
    out = call_isolated(_waits_then_works, 2.0, 0.2, timeout_s=1.5, on_event=events.append)
    assert out.kind == "ok" and out.value == "done" and out.elapsed_s >= 2.0
    assert events == [("step", 1)]
    out = call_isolated(_waits_then_works, 1.0, 3.0, timeout_s=1.5)  # its own work past the limit
    assert out.kind == "timeout" and "waiting for its turn" in out.message


def test_a_cell_server_gone_before_it_could_fork_is_an_outcome_not_a_traceback(monkeypatch):
    """The server's pipe closed mid-start (it was ended while importing): an EOF from multiprocessing, which must come
    back as a crashed outcome (or, when the cause was a Ctrl-C, as the KeyboardInterrupt it is)."""
    import multiprocessing as mp

    import bench.isolate as isolate

    real = mp.get_context("fork")

    class Gone(type(real.Process())):
        def start(self):
            raise EOFError("unexpected EOF")

    class Context:
        Pipe = staticmethod(real.Pipe)
        Process = Gone

    monkeypatch.setattr(isolate, "_context", lambda: Context)
    out = call_isolated(_ok, 1, timeout_s=5)
    assert out.kind == "crashed" and "ended before it could start" in out.message
    import threading

    interrupted = threading.Event()
    interrupted.set()
    monkeypatch.setattr(isolate.time, "sleep", lambda s: None)
    # side by side (a slot's thread) the interrupt is the run's cancel: the call is cancelled, not a crashed cell
    assert isolate.call_isolated(_ok, 1, timeout_s=5, cancel=_SetLater(interrupted)).kind == "cancelled"


class _SetLater:
    """A cancel event that is clear when the call begins and set once it has started the child."""

    def __init__(self, event):
        self.event, self.asked = event, 0

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked > 1 and self.event.is_set()


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["BENCH_T_A", "BENCH_T_B", "BENCH_T_C"]), st.none() | st.text("xyz", min_size=1),
                       max_size=3),
       st.dictionaries(st.sampled_from(["BENCH_T_A", "BENCH_T_B", "BENCH_T_C"]), st.text("pq", min_size=1), max_size=3),
       st.booleans())
def test_a_block_sees_the_variables_it_asked_for_and_leaves_them_as_they_were(changes, start, raises):
    for key in ("BENCH_T_A", "BENCH_T_B", "BENCH_T_C"):
        os.environ.pop(key, None)
    os.environ.update(start)
    before = dict(os.environ)
    with contextlib.suppress(KeyError), environ(changes):
        assert all(os.environ.get(k) == v for k, v in changes.items())
        if raises:
            raise KeyError("the block fails")
    assert dict(os.environ) == before
    for key in start:
        del os.environ[key]
