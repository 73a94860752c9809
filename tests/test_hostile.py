"""Property-based search for broken promises (hypothesis): suites mutated key by key, and results files
made of arbitrary lines, go through the command line in this process.

The promise checked on every generated input: the exit code is one the README documents (0 or 2 for
suites; 0, 1 or 2 for results), no traceback and no "unexpected" crash line is printed, and no file
appears outside the folders named on the command line. A suite that validates must also expand to
cells whose configuration serialises as strict JSON (so its records can always be written).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from conftest import EXAMPLE_RECORD, run_cli  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BASE = {
    "suite": {"name": "prop", "repeats": 2, "threads": 1},
    "defaults": {"steps": 2, "batch_size": 4, "lr": 1e-3, "timeout_s": 60.0, "diverge_loss": 1e4, "seed": 0},
    "models": {"clip": {"family": "clip", "preset": "tiny", "weights": "random"}},
    "datasets": {"cls": {"format": "scenes", "task": "classification", "train_size": 16, "eval_size": 8, "seed": 1}},
    "methods": {"lora": {"kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.05, "targets": {"vision": ["q_proj"]}},
                "full": {"kind": "full", "freeze": ["vision"]}},
    "grid": [{"models": ["clip"], "datasets": ["cls"], "methods": ["lora", "full"]}],
    "gate": {"rules": ["status:ok", "delta:-0.5"]},
}

# hostile values: wrong types, non-finite and absurd numbers, boundaries, unicode, nesting
SCALARS = st.one_of(
    st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, -1, 1, 2**63 - 1, 10**18, 1.5, 1.0, 0.0]),
    st.booleans(), st.text(max_size=30), st.sampled_from(["", "../../x", "/etc/passwd", "README", "a" * 5000, "ü∂", "\x00"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def _paths(obj, prefix=()):
    """Every (path, value) of a nested dict/list suite."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,), v
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,), v
            yield from _paths(v, prefix + (i,))


KEY_PATHS = [p for p, _ in _paths(BASE)]


def _set(obj, path, value):
    for part in path[:-1]:
        obj = obj[part]
    obj[path[-1]] = value


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(suite: dict) -> str:
    """Every top-level table inline (TOML allows `models = {clip = {...}}`), so any nesting round-trips."""
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in suite.items()) + "\n"


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@settings(max_examples=2 * int(os.environ.get("BENCH_HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(KEY_PATHS), value=VALUES)
def test_a_mutated_suite_is_accepted_or_named_never_a_crash(path, value):
    suite = json.loads(json.dumps(BASE))
    _set(suite, path, value)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "suites").mkdir()
        file = tmp / "suites" / "prop.toml"
        try:
            file.write_text(to_toml(suite), encoding="utf-8")
        except (UnicodeEncodeError, ValueError):
            return  # a lone surrogate cannot be a UTF-8 file at all
        before = files_under(tmp)
        code, err, out = run_cli(["validate", str(file)], tmp)
        assert code in (0, 2), err
        assert "Traceback" not in err and "unexpected" not in err, err
        if code == 0:
            code, err, out = run_cli(["plan", str(file), "--json", "--results-dir", str(tmp / "results")], tmp)
            assert code == 0, err
            cells = json.loads(out)["cells"]
            json.dumps(cells, allow_nan=False)  # a validated suite cannot hold a value a record could not store
        else:
            assert "prop.toml" in err and "fix:" in err, err  # the message names the file and says what to do
        assert files_under(tmp) == before  # validate and plan write nothing


def _record_like():
    """A real record with some fields replaced by hostile values, or a line that is no record at all."""
    field = st.sampled_from(["cost.peak_memory_mb", "quality.delta", "quality.base", "cost.train_wall_s", "suite", "cell_id",
                             "repeat", "status", "model", "quality", "env", "model.name", "env.torch", "quality.higher_is_better",
                             "method.name", "dataset.name", "quality.metric", "message", "loss_curve", "train", "params.trainable",
                             "cost.estimate", "started_at", "finished_at", "schema_version", "model.weights", "env.device_name",
                             "quality.n_eval", "cost.step_s_median", "cost.tokens_per_s", "train.batch_size", "seed",
                             "params.by_component", "model.family", "method.kind", "env.git_dirty", "quality.tuned"])

    def mutate(pairs):
        record = json.loads(json.dumps(EXAMPLE_RECORD))
        for dotted, value in pairs:
            obj, parts = record, dotted.split(".")
            for part in parts[:-1]:
                obj = obj.setdefault(part, {}) if isinstance(obj.get(part), dict) else None
                if obj is None:
                    break
            if obj is not None:
                obj[parts[-1]] = value
        return record

    records = st.lists(st.tuples(field, VALUES), max_size=3).map(mutate)
    return st.one_of(records, VALUES)


def _line(value) -> str:
    return json.dumps(value, allow_nan=True)  # Python writes NaN/Infinity tokens; hand-edited files have them


GATED = ("cost.peak_memory_mb", "cost.step_s_median", "cost.train_wall_s", "cost.tokens_per_s", "quality.delta")


def _untrustworthy(lines: list[bytes]) -> bool:
    """Independent oracle: a file a gate must not pass on — no readable record, or a readable record with a
    gated value that is present but not a finite number."""
    from bench.records import validate_record

    readable = {}
    for raw in lines:
        try:
            value = json.loads(raw)
            validate_record(value)
        except (ValueError, TypeError, RecursionError):
            continue
        readable[(value["cell_id"], value["repeat"])] = value  # a newer record of a cell-run replaces the older
    for r in readable.values():
        for dotted in GATED:
            section, key = dotted.split(".")
            v = r[section].get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                return True
    return not readable


@settings(max_examples=int(os.environ.get("BENCH_HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.lists(_record_like(), max_size=4), current=st.lists(_record_like(), max_size=4),
       junk=st.sampled_from([b"", b"null", b"42", b'{"cell_id": "torn", "stat', b"[" * 3000, b"\xff\xfe\x00"]))
def test_any_results_lines_give_a_documented_exit_and_stay_in_their_folders(base, current, junk):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results, reports = tmp / "results", tmp / "reports"
        results.mkdir()
        base_file, current_file = results / "base.jsonl", results / "current.jsonl"
        # Python writes NaN/Infinity tokens, as hand-edited files have them
        base_lines = [junk] + [json.dumps(r).encode("utf-8", "surrogatepass") for r in base]
        current_lines = [json.dumps(r).encode("utf-8", "surrogatepass") for r in current] + [junk]
        base_file.write_bytes(b"\n".join(base_lines) + b"\n")
        current_file.write_bytes(b"\n".join(current_lines) + b"\n")
        for argv in (["report", str(current_file), "--reports-dir", str(reports)],
                     ["compare", str(base_file), str(current_file), "--markdown", str(reports / "compare.md")],
                     ["gate", str(current_file), "--baseline", str(base_file), "--markdown", str(reports / "gate.md")]):
            code, err, out = run_cli(argv, tmp)
            assert code in (0, 1, 2), (argv, err)
            assert "Traceback" not in err and "unexpected" not in err, (argv, err)
            if argv[0] == "gate" and code == 0:
                assert not _untrustworthy(base_lines) and not _untrustworthy(current_lines), err
        outside = {p for p in files_under(tmp) if not (p.is_relative_to(results) or p.is_relative_to(reports))}
        assert outside == set(), outside


@settings(max_examples=int(os.environ.get("BENCH_HYPOTHESIS_EXAMPLES", 60)), deadline=None)
@given(lines=st.lists(st.one_of(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 2), st.sampled_from(["ok", "error", "oom"])),
    st.sampled_from([b"", b"null", b'{"cell_id": "a", "repeat": 0, "stat', b'{"x": {"cell_id": "b"}, "repeat": 1}',
                     b"[" * 2000])), max_size=12))
def test_the_lazy_reader_gives_what_reading_every_line_gives(lines):
    """read_latest skips parsing superseded lines; it must agree with parsing them all (latest_per_cell)."""
    from bench.records import encode, latest_per_cell, read_latest, read_records

    raw = []
    for item in lines:
        if isinstance(item, tuple):
            record = json.loads(json.dumps(EXAMPLE_RECORD))
            record["cell_id"], record["repeat"], record["status"] = item
            raw.append(encode(record).rstrip(b"\n"))
        else:
            raw.append(item)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        path.write_bytes(b"\n".join(raw) + b"\n")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lazy, full = read_latest([path]), latest_per_cell(read_records(path))
    key = lambda r: (r["cell_id"], r["repeat"])  # noqa: E731
    assert {key(r): r for r in lazy} == {key(r): r for r in full}
    if all(isinstance(item, tuple) for item in lines):
        assert [key(r) for r in lazy] == [key(r) for r in full]


# ---------------------------------------------------------------- file names that are not UTF-8

IMAGE_FOLDER_SUITE = """
[suite]
name = "bytes"
isolate = false
threads = 1

[defaults]
steps = 1
batch_size = 4
eval_batch_size = 8
timing_warmup_steps = 0
serve = false

[models.clip]
family = "clip"
preset = "tiny"
weights = "random"

[datasets.folder]
format = "image_folder"
task = "classification"
path = "data"
eval_path = "data"

[methods.lora]
kind = "lora"
r = 4

[[grid]]
models = ["clip"]
datasets = ["folder"]
methods = ["lora"]
"""


def _image_folder(root: Path, classes: dict[bytes, list[bytes]]) -> Path:
    """root/<class>/<file> from raw byte names (not all valid UTF-8), each a small PNG."""
    from PIL import Image

    for i, (cls, files) in enumerate(classes.items()):
        folder = os.fsencode(root) + b"/" + cls
        os.makedirs(folder, exist_ok=True)
        for j, name in enumerate(files):
            Image.new("RGB", (8, 8), (40 * i, 30 * j, 200)).save(os.fsdecode(folder + b"/" + name), "PNG")
    return root


def test_an_image_folder_with_names_that_are_not_utf8_loads_with_the_bytes_escaped(tmp_path):
    from bench.data import formats
    from bench.data.loader import load_dataset

    root = _image_folder(tmp_path / "data", {b"cat\xff": [b"a.png", b"b\xfe.png"], b"dog": [b"a.png", b"b.png"]})
    records = formats.read_image_folder(root)
    assert sorted({r.label for r in records}) == ["cat\\xff", "dog"]  # the class shown with its byte escaped
    assert any("cat\\xff/b\\xfe.png" in r.where for r in records)
    for r in records:  # every text bench keeps or prints encodes as UTF-8 (no lone surrogate)
        (r.label + r.where + r.file).encode("utf-8")
    table = {"format": "image_folder", "task": "classification", "path": str(root), "eval_fraction": 0.5}
    splits = load_dataset(table, base_dir=tmp_path)  # computes the fingerprint: once a UnicodeEncodeError
    assert splits.classnames == ("cat\\xff", "dog") and splits.fingerprint == load_dataset(table, base_dir=tmp_path).fingerprint
    assert splits.train[0].decoded().image.size == (8, 8)  # the image itself still opens by its real bytes


def test_class_folders_that_read_the_same_once_escaped_are_named(tmp_path):
    from bench.data import formats
    from bench.errors import DataError

    root = _image_folder(tmp_path / "data", {b"cat\xff": [b"a.png"], b"cat\\xff": [b"a.png"]})
    with pytest.raises(DataError) as info:
        formats.read_image_folder(root)
    assert "same name" in info.value.message and "cat\\xff" in str(info.value) and info.value.fix


def test_validate_and_run_an_image_folder_whose_names_are_not_utf8_end_to_end(tmp_path):
    root = _image_folder(tmp_path / "data", {b"cat\xff": [b"1.png", b"2\xfe.png", b"3.png"],
                                             b"dog": [b"1.png", b"2.png", b"3.png"]})
    suite = tmp_path / "bytes.toml"
    suite.write_text(IMAGE_FOLDER_SUITE)
    os.mkdir(os.fsencode(root) + b"/empty\xfd")  # first: a class folder with no images, named in the message
    code, err, _ = run_cli(["validate", suite], tmp_path)
    assert code == 2 and "empty\\xfd" in err and "Traceback" not in err, err
    os.rmdir(os.fsencode(root) + b"/empty\xfd")
    code, err, out = run_cli(["validate", suite], tmp_path)
    assert code == 0, err
    code, err, out = run_cli(["run", suite, "--results-dir", tmp_path / "results", "--reports-dir", tmp_path / "reports",
                              "--no-progress"], tmp_path)
    assert code == 0, err
    assert "Traceback" not in err and "unexpected" not in err and "UnicodeEncodeError" not in err
    text = (tmp_path / "results" / "bytes.jsonl").read_bytes().decode("utf-8")  # strict UTF-8, no escaped surrogate
    assert "\\udc" not in text
    (record,) = [json.loads(line) for line in text.splitlines()]
    assert record["status"] == "ok", record["message"]
    assert record["dataset"]["fingerprint"]
    (tmp_path / "reports" / "bytes.md").read_bytes().decode("utf-8")
