"""Claims: concurrent runs of one results file split the cell-runs and never record one twice."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

from test_records import make_record

from bench.records import append_record, line_count, read_records
from bench.run.claims import Claims, _start_time
from bench.run.runner import recorded, wanted

KEYS = [(f"cell{i:02d}", 0) for i in range(30)]


def _worker(results: str, barrier, out) -> None:
    """One `bench run` in miniature: for every key, claim under the lock, 'train', append, release."""
    from pathlib import Path

    claims = Claims(Path(results), run_id=f"run-{os.getpid()}")
    barrier.wait()  # every worker reaches the first key together
    ran = 0
    for cell_id, repeat in KEYS:
        claim = claims.take(cell_id, repeat, ttl_s=60,
                            still_wanted=lambda c=cell_id, r=repeat: wanted(recorded(Path(results)).get((c, r)), retry=False))
        if isinstance(claim, str):
            continue
        time.sleep(0.002)  # the cell trains
        append_record(results, make_record(cell_id))
        from bench.records import locked

        with locked(Path(results)):
            claims.release(claim)
        ran += 1
    out.put(ran)


def test_simultaneous_workers_record_every_cell_run_exactly_once(tmp_path):
    results = tmp_path / "r.jsonl"
    ctx = mp.get_context("fork")
    workers = 6
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(results), barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    ran = [out.get(timeout=5) for _ in procs]
    ids = [r["cell_id"] for r in read_records(results)]
    assert sorted(ids) == sorted(k for k, _ in KEYS)  # each exactly once
    assert sum(ran) == len(KEYS)
    assert not (tmp_path / "r.claims").exists()  # the last release leaves no folder


def test_a_live_claim_is_respected_and_a_dead_owners_claim_is_taken_over(tmp_path):
    results = tmp_path / "r.jsonl"
    mine = Claims(results, run_id="mine")
    always = dict(ttl_s=60, still_wanted=lambda: True)
    # a claim held by a live process (this test's parent shell stands in for another bench run)
    other = Claims(results, run_id="other")
    other.me = {**other.me, "pid": os.getppid(), "start_time": _start_time(os.getppid())}
    assert not isinstance(other.take("c", 0, **always), str)
    assert "claimed by another run" in mine.take("c", 0, **always)
    # the same pid with another start time is a recycled pid: its claim is stale
    stale = json.loads((tmp_path / "r.claims" / "c-0.json").read_text())
    (tmp_path / "r.claims" / "c-0.json").write_text(json.dumps({**stale, "start_time": "1"}))
    assert not isinstance(mine.take("c", 0, **always), str)
    # a process that has exited
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "r.claims" / "d-0.json").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                                "run_id": "gone"}))
    assert not isinstance(mine.take("d", 0, **always), str)
    # another host: trusted until it expires
    (tmp_path / "r.claims" / "e-0.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "expires": time.time() + 60}))
    assert "elsewhere" in mine.take("e", 0, **always)
    (tmp_path / "r.claims" / "e-0.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "expires": time.time() - 1}))
    assert not isinstance(mine.take("e", 0, **always), str)


def test_a_recorded_cell_run_is_not_claimed_and_retry_redoes_only_old_failures(tmp_path):
    results = tmp_path / "r.jsonl"
    append_record(results, make_record("a", status="error"))
    before = line_count(results) + 1  # as a retrying run computes it when it starts
    claims = Claims(results, run_id="x")
    latest = lambda: recorded(results).get(("a", 0))  # noqa: E731
    assert claims.take("a", 0, ttl_s=60, still_wanted=lambda: wanted(latest(), retry=False)) == "recorded meanwhile by another run"
    assert not isinstance(claims.take("a", 0, ttl_s=60, still_wanted=lambda: wanted(latest(), retry=True, retry_before=before)), str)
    append_record(results, make_record("a", status="error"))  # another retrying run redid it meanwhile
    assert not wanted(latest(), retry=True, retry_before=before)


def test_a_malformed_claim_never_crashes_a_run_nor_blocks_a_cell_forever(tmp_path):
    results = tmp_path / "r.jsonl"
    claims = Claims(results, run_id="mine")
    folder = tmp_path / "r.claims"
    folder.mkdir()
    here = socket.gethostname()
    for bad in ({"host": "other", "pid": 5, "expires": "abc"}, {"host": "other", "expires": None},
                {"host": "other", "expires": 1e300}, {"host": here, "pid": 1, "run_id": "x", "expires": time.time() + 60},
                {"host": here, "pid": True, "expires": time.time() + 60}, "[" * 100_000, "not json", [1, 2]):
        (folder / "c-0.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
        claim = claims.take("c", 0, ttl_s=60, still_wanted=lambda: True)
        assert not isinstance(claim, str), bad  # stale: taken over
    (folder / "d-0.json").write_text(json.dumps({"host": here, "pid": os.getppid(), "start_time": _start_time(os.getppid()),
                                                  "expires": time.time() + 60, "run_id": "other"}))
    why = claims.take("d", 0, ttl_s=60, still_wanted=lambda: True)
    assert "claimed by another run" in why and "delete" in why and "d-0.json" in why


def test_the_sweep_removes_claims_of_gone_owners_and_interrupted_writes(tmp_path):
    results = tmp_path / "r.jsonl"
    claims = Claims(results, run_id="mine")
    live = claims.take("a", 0, ttl_s=60, still_wanted=lambda: True)
    (tmp_path / "r.claims" / "b-0.json").write_text(json.dumps({"host": socket.gethostname(), "pid": 999_999_999, "expires": 1e12}))
    (tmp_path / "r.claims" / "c-0.tmp12345").write_text("{")
    claims.sweep()
    assert sorted(p.name for p in (tmp_path / "r.claims").iterdir()) == ["a-0.json"]
    claims.release(live)
    assert not (tmp_path / "r.claims").exists()


def test_a_claims_folder_or_lock_that_is_a_link_out_of_the_results_folder_is_refused(tmp_path):
    import pytest

    from bench.errors import BenchError
    from bench.records import locked

    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "r.claims").symlink_to(outside)
    with pytest.raises(BenchError, match="outside"):
        Claims(tmp_path / "res" / "r.jsonl", run_id="x")
    (tmp_path / "res" / "q.jsonl.lock").symlink_to(outside / "created.txt")
    with pytest.raises(OSError):
        with locked(tmp_path / "res" / "q.jsonl"):
            pass
    assert list(outside.iterdir()) == []
