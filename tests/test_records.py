"""The append-only store: whole lines, durable, torn lines skipped, concurrent writers never interleave."""

from __future__ import annotations

import json
import multiprocessing as mp
import warnings

import pytest

from bench.records import (
    SCHEMA_VERSION,
    TornRecordWarning,
    append_record,
    latest_per_cell,
    load_results,
    read_records,
)


def make_record(cell_id="c1", repeat=0, status="ok", **extra):
    record = {
        "schema_version": SCHEMA_VERSION, "cell_id": cell_id, "suite": "s", "run_id": "r", "repeat": repeat, "seed": repeat,
        "model": {"name": "m"}, "dataset": {"name": "d"}, "method": {"name": "lora", "kind": "lora"}, "train": {},
        "status": status, "message": "", "params": {"total": 10, "trainable": 1}, "cost": {"peak_memory_mb": 12.5},
        "quality": {"metric": "acc", "delta": 1.0}, "env": {"device_name": "cpu"}, "started_at": "2026-01-01T00:00:00Z",
    }
    record.update(extra)
    return record


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record("a"))
    append_record(path, make_record("b", status="oom"))
    records = read_records(path)
    assert [r["cell_id"] for r in records] == ["a", "b"]
    assert [r["status"] for r in records] == ["ok", "oom"]


def test_invalid_record_is_refused(tmp_path):
    bad = make_record()
    del bad["status"]
    with pytest.raises(ValueError, match="status"):
        append_record(tmp_path / "r.jsonl", bad)


def test_torn_last_line_is_skipped_with_a_warning_and_next_append_survives(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record("a"))
    with open(path, "a") as f:
        f.write(json.dumps(make_record("torn"))[:40])  # a write cut off by a power loss
    with pytest.warns(TornRecordWarning, match=":2:"):
        assert [r["cell_id"] for r in read_records(path)] == ["a"]
    append_record(path, make_record("b"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [r["cell_id"] for r in read_records(path)]
    assert ids == ["a", "b"]
    assert len(caught) == 1 and issubclass(caught[0].category, TornRecordWarning)


def _writer(path, tag, n):
    for i in range(n):
        append_record(path, make_record(f"{tag}-{i}", message="x" * 5000))


def test_two_writers_never_interleave(tmp_path):
    path = tmp_path / "r.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, t, 40)) for t in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any torn line would raise here
        records = read_records(path)
    assert len(records) == 80 and len({r["cell_id"] for r in records}) == 80


def test_latest_per_cell_and_dataframe(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record("a", status="error"))
    append_record(path, make_record("a", status="ok"))
    append_record(path, make_record("a", repeat=1))
    latest = latest_per_cell(read_records(path))
    assert [(r["cell_id"], r["repeat"], r["status"]) for r in latest] == [("a", 0, "ok"), ("a", 1, "ok")]
    df = load_results(path)
    assert len(df) == 3
    assert {"cell_id", "status", "cost.peak_memory_mb", "quality.delta", "method.kind"} <= set(df.columns)


def test_newer_schema_is_refused_by_name(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(schema_version=SCHEMA_VERSION + 1)) + "\n")
    with pytest.warns(TornRecordWarning, match="newer than this bench"):
        assert read_records(path) == []


def test_a_record_whose_schema_version_is_not_an_integer_is_not_a_record_anywhere(tmp_path):
    """Found by the hostile gate test: validate_record accepted schema_version NaN while the reader refused the line,
    so two checks of "is this a record" disagreed about the same line."""
    import copy

    import pytest
    from conftest import EXAMPLE_RECORD

    from bench.records import validate_record

    for bad in (float("nan"), "1", True, 1.0, None):
        with pytest.raises(ValueError, match="schema_version"):
            validate_record({**copy.deepcopy(EXAMPLE_RECORD), "schema_version": bad})
    validate_record(copy.deepcopy(EXAMPLE_RECORD))


# ---------------------------------------------------------------- text that UTF-8 cannot hold


def test_a_lone_surrogate_is_written_and_read_as_an_escape_and_the_report_renders(tmp_path):
    """A file name's byte that is not UTF-8 (os.fsdecode keeps it as a lone surrogate) in a record's message, and a
    hand-edited `\\udcff` escape, become escapes in the text: the file is strict UTF-8 and a page renders from it."""
    from conftest import record, run_cli

    written = tmp_path / "written.jsonl"
    append_record(written, make_record(message="cannot open /data/cat\udcff/1.png", model={"name": "m\udcfe"},
                                       dataset={"name": "d", "classes": {"cat\udcff": 1}}))
    text = written.read_bytes().decode("utf-8")
    assert "\\udc" not in text
    (r,) = read_records(written)
    assert r["message"] == "cannot open /data/cat\\xff/1.png" and r["model"]["name"] == "m\\xfe"
    assert r["dataset"]["classes"] == {"cat\\xff": 1}
    edited = tmp_path / "edited.jsonl"
    edited.write_text(json.dumps(record(cell_id="e1", message="x\udcff y\ud800 😀")) + "\n")  # json escapes them
    (e,) = read_records(edited)
    assert e["message"] == "x\\xff y\\ud800 😀"
    from bench.records import read_latest

    assert read_latest([edited])[0]["message"] == e["message"]  # the lazy reader too
    for results in (written, edited):
        code, err, _ = run_cli(["report", results, "-o", tmp_path / f"{results.stem}.md"])
        assert code == 0 and "Traceback" not in err and "unexpected" not in err, err
        (tmp_path / f"{results.stem}.md").read_bytes().decode("utf-8")


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.text(alphabet=st.characters(blacklist_categories=()), max_size=20))
def test_plain_text_always_encodes_and_leaves_valid_text_as_it_is(text):
    from bench.records import plain_text

    out = plain_text(text)
    out.encode("utf-8")
    try:
        text.encode("utf-8")
        assert out == text
    except UnicodeEncodeError:
        assert out != text
