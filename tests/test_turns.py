"""bench.turns: cells side by side take turns at their timed work through a kernel file lock."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import signal
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.turns import ENV, busy_s, timed_turn, waited_s


def _hold_and_log(path: str, log: str, hold_s: float, rounds: int) -> None:
    """Take the turn `rounds` times, hold it `hold_s` each, and log (start, end) of every hold."""
    os.environ[ENV] = path
    for _ in range(rounds):
        with timed_turn():
            start = time.monotonic()
            time.sleep(hold_s)
            end = time.monotonic()
        with open(log, "a") as f:
            f.write(f"{start} {end}\n")


def test_processes_taking_turns_never_hold_the_turn_at_the_same_time(tmp_path):
    lock, ctx = str(tmp_path / "turns.lock"), mp.get_context("fork")
    logs = [str(tmp_path / f"log{i}") for i in range(3)]
    procs = [ctx.Process(target=_hold_and_log, args=(lock, log, 0.03, 5)) for log in logs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    holds = sorted(tuple(map(float, line.split())) for log in logs for line in open(log))
    assert len(holds) == 15
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(holds, holds[1:])), holds
    # one after another: the turns' union is their sum (and each held what it slept)
    assert busy_s(holds) == pytest.approx(sum(e - s for s, e in holds))


def _hold_forever(path: str) -> None:
    os.environ[ENV] = path
    with timed_turn():
        time.sleep(600)


def test_a_process_killed_while_it_holds_the_turn_gives_it_back(tmp_path, monkeypatch):
    """A cell killed mid-training (timeout, the OOM killer) must not leave the others waiting for ever."""
    lock = str(tmp_path / "turns.lock")
    holder = mp.get_context("fork").Process(target=_hold_forever, args=(lock,))
    holder.start()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        deadline = time.monotonic() + 10  # the holder has the lock once a non-blocking try fails
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                time.sleep(0.01)
            except BlockingIOError:
                break
        else:
            pytest.fail("the holder never took the turn")
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
    finally:
        os.close(fd)
    waits: list = []
    monkeypatch.setenv(ENV, lock)
    with timed_turn(waits):
        pass
    assert len(waits) == 1 and waited_s(waits) < 5


def test_without_the_variable_the_block_runs_at_once_even_while_a_neighbour_holds_the_turn(tmp_path, monkeypatch):
    """One cell at a time (or on its own GPU) a process takes no turns: a held lock does not stop it."""
    lock = tmp_path / "turns.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.delenv(ENV, raising=False)
    waits: list = []
    try:
        with timed_turn(waits):
            pass
    finally:
        os.close(fd)
    assert waits == []


def test_the_wait_is_what_the_holder_kept_the_turn(tmp_path, monkeypatch):
    lock = tmp_path / "turns.lock"
    monkeypatch.setenv(ENV, str(lock))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file of the same lock: held "by another cell"
    threading.Timer(0.3, lambda: os.close(fd)).start()
    waits: list = []
    with timed_turn(waits):
        got = time.monotonic()
    (asked, came), = waits
    assert came - asked >= 0.25 and came <= got


spans = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50)).map(lambda t: (t[0], t[0] + t[1])), max_size=30)


@settings(max_examples=300, deadline=None)
@given(spans)
def test_busy_time_is_the_length_of_the_spans_union(some):
    """Against counting unit cells of a grid: the time some span covers."""
    covered = {t for start, end in some for t in range(start, end)}
    assert busy_s([(float(s), float(e)) for s, e in some]) == pytest.approx(len(covered))
    if some:
        assert max(e - s for s, e in some) <= busy_s(some) <= sum(e - s for s, e in some)


def test_entering_the_turn_again_in_the_same_process_fails_at_once_instead_of_waiting_for_ever(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "turns.lock"))
    with timed_turn():
        with pytest.raises(RuntimeError, match="entered again"):
            with timed_turn():
                pass
    with timed_turn():  # and the turn is free again afterwards
        pass


def _fork_while_holding(forked_pid: list) -> None:
    with timed_turn():
        started, ready = os.pipe()
        pid = os.fork()
        if pid == 0:  # a DataLoader worker, say: it outlives the turn
            os.write(ready, b"1")  # running (the fork's handlers have run)
            time.sleep(3)
            os._exit(0)
        os.read(started, 1)
        os.close(started), os.close(ready)
        forked_pid.append(pid)


def test_a_process_forked_while_the_turn_is_held_does_not_keep_it_after_the_holder_lets_go(tmp_path, monkeypatch):
    lock, forked = str(tmp_path / "turns.lock"), []
    monkeypatch.setenv(ENV, lock)
    _fork_while_holding(forked)
    monkeypatch.delenv(ENV)
    try:
        fd = os.open(lock, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if the child still held it
        os.close(fd)
    finally:
        os.kill(forked[0], signal.SIGKILL)
        os.waitpid(forked[0], 0)


def test_a_waiting_process_tells_its_listener_when_it_starts_and_stops_waiting(tmp_path, monkeypatch):
    from bench import turns

    heard: list = []
    lock = tmp_path / "turns.lock"
    monkeypatch.setenv(ENV, str(lock))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a neighbour holds the turn for 0.3 s
    threading.Timer(0.3, lambda: os.close(fd)).start()
    before = turns.waited_total()
    turns.listen(heard.append)
    try:
        with timed_turn():
            pass
    finally:
        turns.listen(None)
    assert heard == [True, False] and turns.waited_total() - before >= 0.25  # the process's waits add up


def test_a_lock_file_this_user_may_only_read_still_takes_turns(tmp_path, monkeypatch):
    """Another user's lock file in a shared results folder: opened read-only (flock works on any open file), and the
    turn is still exclusive. Tests run as root, who may open anything, so the refusal is the kernel's as a user sees it."""
    import bench.turns

    lock = tmp_path / "turns.lock"
    lock.touch()
    monkeypatch.setenv(ENV, str(lock))
    real_open, modes = os.open, []

    def as_another_user(path, flags, *mode):
        modes.append(flags & os.O_ACCMODE)
        if str(path) == str(lock) and flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(bench.turns.os, "open", as_another_user)
    holder = real_open(lock, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a neighbour holds the turn
    threading.Timer(0.3, lambda: os.close(holder)).start()
    waits: list = []
    with timed_turn(waits):
        (asked, came), = waits
        with pytest.raises(BlockingIOError):  # held: nobody else gets it meanwhile
            probe = real_open(lock, os.O_RDONLY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(probe)
    assert modes[-1] == os.O_RDONLY and came - asked >= 0.25
