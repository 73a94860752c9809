"""One example per class of promise a hostile-input run broke (issue #10), through the command line.

Classes: numbers out of range or not finite; inputs that decide where files go; tracebacks instead of
messages; gates and comparisons that pass what they must fail. Records lost on a full disk, concurrent
runs and data that breaks mid-run are in test_faults.py and test_claims.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import EXAMPLE_RECORD, MINI_SUITE, run_cli
from PIL import Image

from bench.data import formats
from bench.errors import DataError


def suite_file(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def validate(tmp_path: Path, text: str) -> tuple[int, str]:
    code, err, _ = run_cli(["validate", suite_file(tmp_path, text)])
    return code, err


def records_file(path: Path, *changes: dict, raw_lines: tuple[str, ...] = ()) -> Path:
    lines = list(raw_lines)
    for change in changes:
        r = json.loads(json.dumps(EXAMPLE_RECORD))
        for dotted, value in change.items():
            *parents, last = dotted.split(".")
            node = r
            for p in parents:
                node = node[p]
            node[last] = value
        lines.append(json.dumps(r))  # Python writes NaN / Infinity tokens, as a hand-edited file may hold
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- numbers: finite and in range, at validation


@pytest.mark.parametrize("old, new, where", [
    ("steps = 2", "steps = 2\nlr = nan", "[defaults] key 'lr'"),
    ("steps = 2", "steps = 2\ntimeout_s = inf", "[defaults] key 'timeout_s'"),
    ("steps = 2", "steps = 2\ndiverge_loss = inf", "[defaults] key 'diverge_loss'"),
    ("steps = 2", "steps = 2\nepochs = inf", "[defaults] key 'epochs'"),
    ("r = 4", "r = 4\nalpha = inf", "[methods.lora] key 'alpha'"),
    ("r = 4", "r = 4\ndropout = 1.5", "[methods.lora] key 'dropout'"),
    ("r = 4", "r = 4\ndropout = 1.0", "[methods.lora] key 'dropout'"),
    ("train_size = 16", "train_size = 0", "key 'train_size'"),
    ("steps = 2", "steps = 2\nseed = 18446744073709551615", "[defaults] key 'seed'"),
    ("steps = 2", "steps = 2\nseed = -1", "[defaults] key 'seed'"),
    ('name = "mini"', 'name = "mini"\nrepeats = 1000000000000000000', "[suite] key 'repeats'"),
    ('name = "mini"', 'name = "mini"\nseeds = [0, 9223372036854775807, -3]', "[suite] key 'seeds'"),
    ("train_size = 16", "train_size = 16\nseed = -1", "key 'seed'"),
    ("r = 4", "r = 4\ntargets = {}", "[methods.lora] key 'targets'"),
    ('[methods.lora]\nkind = "lora"', '[methods.lora]\nkind = "lora"\nfreeze = ["vision"]', "[methods.lora] key 'freeze'"),
    ('[methods.full]\nkind = "full"', '[methods.full]\nkind = "full"\nr = 8', "[methods.full] key 'r'"),
])
def test_a_value_no_run_could_use_is_refused_with_file_and_key(tmp_path, old, new, where):
    assert old in MINI_SUITE
    code, err = validate(tmp_path, MINI_SUITE.replace(old, new, 1))
    assert code == 2, err
    assert "s.toml" in err and where in err and "fix:" in err and "Traceback" not in err


def test_the_largest_seed_plus_repeats_must_stay_a_seed(tmp_path):
    text = MINI_SUITE.replace('name = "mini"', 'name = "mini"\nrepeats = 3').replace("steps = 2", "steps = 2\nseed = 9223372036854775806")
    code, err = validate(tmp_path, text)
    assert code == 2 and "seed + repeats" in err


# ---------------------------------------------------------------- paths are the user's, not the data's


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "README", "readme.md", ".hidden", "a b", "x" * 101, ""])
def test_a_suite_name_is_a_plain_file_name(tmp_path, name):
    code, err = validate(tmp_path, MINI_SUITE.replace('name = "mini"', f"name = {json.dumps(name)}"))
    assert code == 2 and "[suite] key 'name'" in err, err


def test_a_suite_file_whose_stem_is_no_file_name_must_name_itself(tmp_path):
    code, err, _ = run_cli(["validate", suite_file(tmp_path, MINI_SUITE.replace('name = "mini"\n', ""), "README.toml")])
    assert code == 2 and "[suite] key 'name'" in err and "reserved" in err


@pytest.mark.parametrize("baseline", ["/etc/passwd", "../../../../etc/x.jsonl", "baseline.txt"])
def test_a_gate_baseline_outside_the_project_or_not_jsonl_is_refused(tmp_path, baseline):
    (tmp_path / "pyproject.toml").write_text("")  # the project root
    text = MINI_SUITE + f'\n[gate]\nbaseline = "{baseline}"\n'
    code, err = validate(tmp_path, text)
    assert code == 2 and "[gate] key 'baseline'" in err, err


def test_report_names_its_page_from_a_safe_name_never_from_a_record_field(tmp_path):
    results = records_file(tmp_path / "results" / "r.jsonl", {"suite": "../../pwned"}, {"suite": "README", "cell_id": "c2"})
    readme = tmp_path / "README.md"
    readme.write_text("mine")
    code, err, out = run_cli(["report", results, "--reports-dir", tmp_path / "reports"], cwd=tmp_path)
    assert code == 0, err
    pages = sorted(p.name for p in (tmp_path / "reports").glob("*.md"))
    assert "README.md" in pages and len(pages) == 2  # the index and one page, named safely
    assert readme.read_text() == "mine"
    assert not list(tmp_path.parent.glob("pwned*"))


def test_report_o_must_be_a_page_and_under_a_file_is_an_input_error(tmp_path):
    results = records_file(tmp_path / "r.jsonl", {})
    (tmp_path / "afile").write_text("x")
    for out, words in ((tmp_path / "afile" / "page.md", "cannot write"), (tmp_path / "README.md", "README.md"),
                       (tmp_path / "page.txt", ".md file")):
        code, err, _ = run_cli(["report", results, "-o", out])
        assert code == 2 and words in err and "Traceback" not in err, err


def test_baseline_update_writes_only_jsonl_and_never_over_a_foreign_file(tmp_path):
    suite = suite_file(tmp_path, MINI_SUITE)
    records_file(tmp_path / "results" / "mini.jsonl", {"suite": "mini"})
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my own notes\n")
    for target, words in ((foreign, "not a bench results file"), (tmp_path / "x.md", "not a .jsonl file")):
        code, err, _ = run_cli(["baseline", "update", suite, "--results-dir", tmp_path / "results", "-o", target])
        assert code == 2 and words in err, err
    assert foreign.read_text() == "my own notes\n"
    code, err, _ = run_cli(["baseline", "update", suite, "--results-dir", tmp_path / "results", "-o", tmp_path / "b.jsonl"])
    assert code == 0, err
    code, err, _ = run_cli(["baseline", "update", suite, "--results-dir", tmp_path / "results", "-o", tmp_path / "b.jsonl"])
    assert code == 0, err  # a bench results file may be replaced


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (255, 0, 0)).save(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "llava", "coco_captions", "vqa_jsonl", "image_folder"])
def test_a_symlink_out_of_the_image_root_is_refused_in_every_format(tmp_path, fmt):
    outside = _png(tmp_path / "outside" / "secret.png")
    root = tmp_path / "root"
    _png(root / "cat" / "ok.png")
    (root / "cat" / "link.png").symlink_to(outside)
    rel = "cat/link.png"
    if fmt == "csv":
        (root / "d.csv").write_text(f"image,label\ncat/ok.png,cat\n{rel},dog\n")
        read = lambda: formats.read_csv(root / "d.csv")  # noqa: E731
    elif fmt == "llava":
        conv = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
        (root / "d.json").write_text(json.dumps([{"image": rel, "conversations": conv}]))
        read = lambda: formats.read_llava(root / "d.json")  # noqa: E731
    elif fmt == "coco_captions":
        (root / "d.json").write_text(json.dumps({"images": [{"id": 1, "file_name": rel}],
                                                 "annotations": [{"image_id": 1, "caption": "c"}]}))
        read = lambda: formats.read_coco_captions(root / "d.json")  # noqa: E731
    elif fmt == "vqa_jsonl":
        (root / "d.jsonl").write_text(json.dumps({"image": rel, "question": "q", "answers": ["a"]}) + "\n")
        read = lambda: formats.read_vqa_jsonl(root / "d.jsonl")  # noqa: E731
    else:
        read = lambda: formats.read_image_folder(root)  # noqa: E731
    with pytest.raises(DataError, match="outside"):
        read()


# ---------------------------------------------------------------- messages, not tracebacks


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe[\x00s\x00]\x00", "UTF-16"),
    (b"\x00\x01\x02binary", "NUL bytes"),
    (b"[suite]\nname = \"caf\xe9\"\n", "not UTF-8"),
    (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
])
def test_a_suite_file_that_is_not_utf8_toml_gets_a_message(tmp_path, content, words):
    path = tmp_path / "s.toml"
    path.write_bytes(content)
    code, err, _ = run_cli(["validate", path])
    assert code == 2 and words in err and "Traceback" not in err, err


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "s.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINI_SUITE.encode())
    code, err, _ = run_cli(["validate", path])
    assert code == 0, err


def test_paths_too_long_for_the_filesystem_are_named(tmp_path):
    code, err, _ = run_cli(["validate", tmp_path / ("x" * 5000 + ".toml")])
    assert code == 2 and "cannot read" in err
    text = MINI_SUITE.replace('format = "scenes"', f'format = "csv"\npath = "{"p" * 5000}.csv"').replace('split = "target"\n', "")
    text = text.replace('task = "classification"\n', "")
    code, err = validate(tmp_path, text)
    assert code == 2 and "key 'path'" in err and "Traceback" not in err, err


def test_a_coco_image_id_that_is_a_list_and_a_csv_field_over_the_limit(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                 "annotations": [{"image_id": [1], "caption": "c"}]}))
    with pytest.raises(DataError, match="'image_id' must be an integer or string"):
        formats.read_coco_captions(tmp_path / "c.json")
    (tmp_path / "d.csv").write_text("image,label\n" + "a.png," + "x" * 200_000 + "\n")
    with pytest.raises(DataError, match="not a readable CSV"):
        formats.read_csv(tmp_path / "d.csv")


@pytest.mark.parametrize("line", ["null", "42", '"text"', "[1, 2]", "{}", '{"cell_id": 5}'])
def test_results_lines_that_are_not_record_objects_are_skipped_everywhere(tmp_path, line):
    results = records_file(tmp_path / "results" / "mini.jsonl", {"suite": "mini"}, raw_lines=(line,))
    suite = suite_file(tmp_path, MINI_SUITE)
    for argv in (["report", results, "--reports-dir", tmp_path / "reports"],
                 ["compare", results, results],
                 ["gate", results, "--baseline", results],
                 ["plan", suite, "--results-dir", tmp_path / "results"]):
        code, err, _ = run_cli(argv)
        assert code == 0, (argv, err)
        assert "Traceback" not in err
        if argv[0] != "plan":  # plan only asks what is done; the commands that read records say what they skipped
            assert "skipped an unreadable record" in err, (argv, err)


def test_report_of_a_folder_and_plan_params_on_a_broken_checkpoint(tmp_path):
    code, err, _ = run_cli(["report", tmp_path])
    assert code == 2 and "is a folder" in err
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("SECRET=1 not json")
    for checkpoint, words in ((ckpt, "config.json"), ("/etc", "no config.json")):
        text = MINI_SUITE.replace('weights = "random"', f'weights = "random"\ncheckpoint = "{checkpoint}"')
        code, err, out = run_cli(["plan", suite_file(tmp_path, text), "--params", "--json"])
        assert code == 2 and "Traceback" not in err and words in err and "SECRET" not in err, err  # bad input: exit 2
        errors = [c["params"]["error"] for c in json.loads(out)["cells"]]  # each cell says why it was not counted
        assert errors and all(words in e and "SECRET" not in e for e in errors), errors


# ---------------------------------------------------------------- gates and comparisons fail closed


@pytest.mark.parametrize("field", ["cost.peak_memory_mb", "quality.delta"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "12"])
@pytest.mark.parametrize("side", ["baseline", "current"])
def test_gate_fails_on_a_measurement_that_is_not_a_finite_number(tmp_path, field, value, side):
    good = records_file(tmp_path / "good.jsonl", {})
    bad = records_file(tmp_path / "bad.jsonl", {field: value})
    base, current = (bad, good) if side == "baseline" else (good, bad)
    code, err, out = run_cli(["gate", current, "--baseline", base, "--rule", "peak_memory_mb:+5%", "--rule", "delta:-0.5"])
    assert code == 1 and "not a finite number" in out, out
    code, err, out = run_cli(["compare", base, current])
    assert code == 1 and "not a finite number" in out, out


def test_gate_against_an_empty_or_foreign_baseline_never_passes(tmp_path):
    current = records_file(tmp_path / "c.jsonl", {})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, out = run_cli(["gate", current, "--baseline", empty])
    assert code == 1 and "holds no records" in out
    foreign = tmp_path / "passwd"
    foreign.write_text("root:x:0:0:root:/root:/bin/bash\n")
    code, err, _ = run_cli(["gate", current, "--baseline", foreign])
    assert code == 2 and "not a bench results file" in err and "root:x" not in err


def test_compare_and_gate_with_a_missing_file_are_input_errors(tmp_path):
    current = records_file(tmp_path / "c.jsonl", {})
    assert run_cli(["compare", tmp_path / "missing.jsonl", current])[0] == 2
    assert run_cli(["compare", current, tmp_path / "missing.jsonl"])[0] == 2
    assert run_cli(["gate", tmp_path / "missing.jsonl", "--baseline", current])[0] == 2
    assert run_cli(["gate", current, "--baseline", tmp_path / "missing.jsonl"])[0] == 2


def test_compare_exits_0_when_nothing_got_worse(tmp_path):
    same = records_file(tmp_path / "c.jsonl", {})
    code, err, _ = run_cli(["compare", same, same])
    assert code == 0, err
    worse = records_file(tmp_path / "w.jsonl", {"cost.peak_memory_mb": EXAMPLE_RECORD["cost"]["peak_memory_mb"] * 3})
    assert run_cli(["compare", same, worse])[0] == 1


def test_no_file_is_left_in_the_working_folder_by_read_only_commands(tmp_path):
    results = records_file(tmp_path / "r" / "c.jsonl", {})
    before = set(os.listdir(tmp_path))
    run_cli(["compare", results, results], cwd=tmp_path)
    run_cli(["gate", results, "--baseline", results], cwd=tmp_path)
    assert set(os.listdir(tmp_path)) == before


# ---------------------------------------------------------------- found by a hostile-input review of this change


def test_markdown_outputs_never_overwrite_a_results_file_a_user_file_or_write_through_a_link(tmp_path):
    results = records_file(tmp_path / "r.jsonl", {})
    before = results.read_bytes()
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    elsewhere = tmp_path / "elsewhere.md"
    (tmp_path / "link.md").symlink_to(elsewhere)
    suite = suite_file(tmp_path, MINI_SUITE)
    for target, words in ((results, "not a .md file"), (notes, "not a page bench wrote"), (tmp_path / "link.md", "symbolic link")):
        for argv in (["compare", results, results, "--markdown", target],
                     ["gate", results, "--baseline", results, "--markdown", target],
                     ["plan", suite, "--markdown", target]):
            code, err, _ = run_cli(argv)
            assert code == 2 and words in err, (argv, err)
    assert results.read_bytes() == before and notes.read_text() == "my notes\n" and not elsewhere.exists()
    code, err, _ = run_cli(["compare", results, results, "--markdown", tmp_path / "c.md"])
    assert code == 0 and (tmp_path / "c.md").read_text().startswith("<!-- bench")
    assert run_cli(["compare", results, results, "--markdown", tmp_path / "c.md"])[0] == 0  # its own page: replaced


def test_report_pages_and_plots_never_replace_a_user_file_or_follow_a_link(tmp_path):
    results = records_file(tmp_path / "r.jsonl", {})
    mine = tmp_path / "mine"
    mine.mkdir()
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "README.md").write_text("# my project\n")
    code, err, _ = run_cli(["report", results, "--reports-dir", reports])
    assert code == 2 and "not a page bench wrote" in err and (reports / "README.md").read_text() == "# my project\n"
    (reports / "README.md").unlink()
    (reports / "quickstart").symlink_to(mine)  # the page's plots folder, pointing elsewhere
    code, err, _ = run_cli(["report", results, "--reports-dir", reports])
    assert code == 2 and "outside" in err and list(mine.iterdir()) == []
    notes = tmp_path / "notes.md"
    notes.write_text("mine\n")
    code, err, _ = run_cli(["report", results, "-o", notes])
    assert code == 2 and notes.read_text() == "mine\n"


def test_baseline_update_refuses_to_replace_the_results_file_it_reads(tmp_path):
    suite = suite_file(tmp_path, MINI_SUITE)
    results = records_file(tmp_path / "results" / "mini.jsonl", {"suite": "mini"}, {"suite": "mini", "cell_id": "c2"})
    before = results.read_bytes()
    code, err, _ = run_cli(["baseline", "update", suite, "--results-dir", tmp_path / "results", "-o", results])
    assert code == 2 and "results file itself" in err and results.read_bytes() == before
    code, err, out = run_cli(["baseline", "update", suite, "--results-dir", tmp_path / "results"], cwd=tmp_path)
    assert code == 0 and (tmp_path / "results" / "baselines" / "mini.jsonl").is_file(), err  # inside --results-dir


def test_gate_fails_on_null_measurements_bench_marked_nonfinite_and_on_misspelt_rule_fields(tmp_path):
    marked = records_file(tmp_path / "b.jsonl", {"quality.delta": None, "nonfinite": {"quality.delta": "nan"}})
    current = records_file(tmp_path / "c.jsonl", {})
    code, _, out = run_cli(["gate", current, "--baseline", marked, "--rule", "delta:-0.5"])
    assert code == 1 and "not a finite number" in out
    code, err, _ = run_cli(["gate", current, "--baseline", current, "--rule", "cost.peak_memroy_mb:+5%"])
    assert code == 2 and "did you mean 'cost.peak_memory_mb'" in err
    code, err = validate(tmp_path, MINI_SUITE + '\n[gate]\nrules = ["quality.detla:-1"]\n')
    assert code == 2 and "[gate] key 'rules'" in err


def test_markup_in_names_and_integers_past_float_range_are_shown_not_crashed_on(tmp_path):
    text = MINI_SUITE.replace("[models.clip]", '[models."[/]"]').replace('models = ["clip"]', 'models = ["[/]"]')
    code, err, out = run_cli(["plan", suite_file(tmp_path, text)])
    assert code == 0 and "[/]" in out, err
    huge = records_file(tmp_path / "h.jsonl", {"cost.peak_memory_mb": 10**400, "loss_curve": [[1, 10**400]]})
    for argv in (["report", huge, "--reports-dir", tmp_path / "rep"], ["compare", huge, huge]):
        code, err, _ = run_cli(argv)
        assert code in (0, 1) and "unexpected" not in err, err
    assert run_cli(["gate", huge, "--baseline", huge, "--rule", "peak_memory_mb:+5%"])[0] == 1


def test_run_checks_where_its_pages_go_before_training(tmp_path):
    suite = suite_file(tmp_path, MINI_SUITE)
    (tmp_path / "reports" / "mini.md").mkdir(parents=True)
    code, err, _ = run_cli(["run", suite, "--results-dir", tmp_path / "results", "--reports-dir", tmp_path / "reports"])
    assert code == 2 and "is a folder" in err and not (tmp_path / "results" / "mini.jsonl").exists()


def test_more_suites_and_data_that_only_failed_at_run_time(tmp_path):
    code, err = validate(tmp_path, MINI_SUITE.replace('[methods.full]\nkind = "full"',
                                                      '[methods.full]\nkind = "full"\nfreeze = ["vision", "projector", "language"]'))
    assert code == 2 and "nothing would train" in err, err
    _png(tmp_path / "a.png")
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": "a.png", "question": "q", "answers": ["a"]}) + "\n")
    text = MINI_SUITE.replace('[models.clip]\nfamily = "clip"', '[models.clip]\nfamily = "llava"').replace(
        'format = "scenes"\ntask = "classification"\nsplit = "target"\n', 'format = "vqa_jsonl"\npath = "one.jsonl"\n')
    code, err = validate(tmp_path, text)
    assert code == 2 and "cannot be split into train and eval" in err, err
    (tmp_path / "img.jsonl").write_text(json.dumps({"image": "a.png", "question": "<image>", "answers": ["a"]}) + "\n")
    with pytest.raises(DataError, match="besides the <image> placeholder"):
        formats.read_vqa_jsonl(tmp_path / "img.jsonl")
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it: usage, the reason, exit 2
        run_cli(["plan", suite_file(tmp_path, MINI_SUITE, "m.toml"), "--only", ""])
    assert exit_.value.code == 2


def test_a_sanitised_page_name_never_takes_a_real_suites_page():
    from bench.paths import page_name

    assert page_name("x") == "x" and page_name("../x") == "suite-x" and page_name("README") == "suite-README"
    assert page_name("") == page_name("..") == "suite-unnamed"


def test_a_results_path_that_is_a_folder_or_a_fifo_is_refused_by_run_and_read_as_empty_by_plan(tmp_path):
    suite = suite_file(tmp_path, MINI_SUITE)
    for kind in ("folder", "fifo"):
        results = tmp_path / kind
        results.mkdir()
        (results / "mini.jsonl").mkdir() if kind == "folder" else os.mkfifo(results / "mini.jsonl")
        code, err, _ = run_cli(["plan", suite, "--results-dir", results])
        assert code == 0, err
        code, err, _ = run_cli(["run", suite, "--results-dir", results, "--reports-dir", tmp_path / "rep"])
        assert code == 2 and "not a plain file" in err, err


def test_a_hand_edited_base_quality_is_never_reused(tmp_path):
    from bench.run.runner import Runner
    from bench.suite.load import load_suite

    suite = load_suite(suite_file(tmp_path, MINI_SUITE))
    runner = Runner(suite, results_dir=tmp_path / "results", reports_dir=tmp_path / "reports", show_progress=False)
    records_file(runner.results, {"quality.base": "lots", "quality.base_key": "k1"}, {"quality.base": float("nan"), "quality.base_key": "k2",
                 "cell_id": "c2"}, {"quality.base": 40.0, "quality.base_key": "k3", "cell_id": "c3", "quality.metric": None},
                 {"quality.base": 40.0, "quality.base_key": "k4", "cell_id": "c4"})
    assert list(runner._known_bases()) == ["k4"]  # only the whole, finite one


def test_plan_says_failed_for_a_cell_whose_record_is_not_ok(tmp_path):
    suite = suite_file(tmp_path, MINI_SUITE.replace('name = "mini"', 'name = "mini"\nrepeats = 1'))
    code, _, out = run_cli(["plan", suite, "--json", "--results-dir", tmp_path / "results"])
    cells = json.loads(out)["cells"]
    records_file(tmp_path / "results" / "mini.jsonl",
                 {"suite": "mini", "cell_id": cells[0]["cell_id"], "repeat": 0, "status": "oom"},
                 {"suite": "mini", "cell_id": cells[1]["cell_id"], "repeat": 0, "status": "ok"})
    code, err, out = run_cli(["plan", suite, "--json", "--results-dir", tmp_path / "results"])
    states = [(c["state"], c.get("failed_statuses")) for c in json.loads(out)["cells"]]
    assert code == 0 and states == [("failed", ["oom"]), ("done", None)], err
    code, _, out = run_cli(["plan", suite, "--results-dir", tmp_path / "results"])
    assert "failed (oom; --retry redoes it)" in out
