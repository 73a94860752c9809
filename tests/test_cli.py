"""bench.cli: exit codes, messages without tracebacks, `plan` output, a torch-free fast path, README key tables."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from bench.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((REPO / "tests" / "record-fixture.json").read_text())
COMMANDS = ("validate", "plan", "run", "report", "compare", "gate", "baseline", "zoo")


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` in a fresh process, from the repository root."""
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def write_records(path: Path, *changes: dict) -> Path:
    """One example record per dict of dotted-path overrides."""
    lines = []
    for change in changes:
        r = copy.deepcopy(EXAMPLE)
        for dotted, value in change.items():
            *parents, last = dotted.split(".")
            node = r
            for p in parents:
                node = node[p]
            node[last] = value
        lines.append(json.dumps(r))
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- help and validate


def test_help_lists_every_command():
    for argv in ([sys.executable, "-m", "bench", "--help"], [str(Path(sys.executable).parent / "bench"), "--help"]):
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        for command in COMMANDS:
            assert command in out.stdout, (argv[0], command)


def test_validate_a_good_suite_exits_0(capsys):
    assert main(["validate", str(REPO / "suites" / "quickstart.toml"), str(REPO / "suites" / "vlm_costs.toml")]) == 0
    out = capsys.readouterr().out
    assert "quickstart.toml: ok" in out and "suite 'vlm_costs', 15 cells" in out


def test_validate_a_malformed_suite_exits_2_naming_file_table_and_key(mini_suite, write_suite):
    path = write_suite(mini_suite.read_text().replace("steps = 2", "stepz = 2"), "typo.toml")
    out = bench("validate", str(path))
    assert out.returncode == 2 and out.stdout == ""
    for part in (str(path), "[defaults]", "'stepz'", "unknown key", "did you mean 'steps'?"):
        assert part in out.stderr, part
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("text, message", [
    ("[suite\nname = 1", "not valid TOML"),
    ("[defaults]\nlr = \"fast\"\n", "[defaults] key 'lr'"),
])
def test_other_bad_input_exits_2_without_a_traceback(write_suite, capsys, text, message):
    path = write_suite(text, "bad.toml")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and message in err and "Traceback" not in err
    assert main(["validate", str(path.parent / "missing.toml")]) == 2
    assert "no such suite file" in capsys.readouterr().err


# ---------------------------------------------------------------- plan


def test_plan_json_lists_every_cell(mini_suite, tmp_path, capsys):
    assert main(["plan", str(mini_suite), "--json", "--results-dir", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan) == {"suite", "results", "cells"}
    assert plan["suite"] == "mini" and plan["results"] == str(tmp_path / "mini.jsonl")
    assert [c["method"] for c in plan["cells"]] == ["lora", "full"]
    for cell in plan["cells"]:
        assert set(cell) == {"cell_id", "model", "dataset", "method", "state", "pending_repeats", "repeats", "devices", "distributed"}
        assert (cell["model"], cell["dataset"], cell["state"], cell["pending_repeats"], cell["repeats"]) == ("clip", "cls", "pending", 1, 1)
        assert (cell["devices"], cell["distributed"]) == (1, "ddp")
        assert len(cell["cell_id"]) == 12


def test_plan_json_with_params_and_estimate(mini_suite, tmp_path, capsys):
    assert main(["plan", str(mini_suite), "--json", "--params", "--estimate", "--results-dir", str(tmp_path)]) == 0
    cells = {c["method"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
    assert cells["full"]["params"]["trainable"] == cells["full"]["params"]["total"] == 166_465  # tiny CLIP
    assert cells["lora"]["params"]["trainable"] == 8_193 + 2 * 2 * 4 * (64 + 64)  # projections + r=4 adapters on q, v
    assert cells["full"]["estimate"]["total_mb"] > cells["lora"]["estimate"]["total_mb"] > 0


def test_plan_previews_no_cost_for_a_skipped_cell_and_does_not_fail_on_it(mini_suite, tmp_path, capsys):
    text = mini_suite.read_text().replace('kind = "full"', 'kind = "prompt_tuning"')  # CLIP: skipped at plan time
    suite = tmp_path / "skip.toml"
    suite.write_text(text)
    assert main(["plan", str(suite), "--json", "--params", "--estimate", "--results-dir", str(tmp_path)]) == 0
    cells = {c["method"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
    assert cells["full"]["state"] == "skip" and "prompt tuning" in cells["full"]["skip_reason"]
    assert "params" not in cells["full"] and "estimate" not in cells["full"]
    assert cells["lora"]["params"]["trainable"] > 0 and cells["lora"]["estimate"]["total_mb"] > 0


def test_plan_marks_recorded_cells_done(mini_suite, tmp_path, capsys):
    main(["plan", str(mini_suite), "--json", "--results-dir", str(tmp_path)])
    lora = json.loads(capsys.readouterr().out)["cells"][0]
    write_records(tmp_path / "mini.jsonl", {"cell_id": lora["cell_id"], "suite": "mini", "repeat": 0})
    main(["plan", str(mini_suite), "--json", "--results-dir", str(tmp_path)])
    states = [c["state"] for c in json.loads(capsys.readouterr().out)["cells"]]
    assert states == ["done", "pending"]


def test_plan_of_the_shipped_suite_imports_no_torch_and_is_fast(tmp_path):
    code = f"""
import json, sys, time
start = time.perf_counter()
from bench.cli import main
rc = [main(["validate", "suites/vlm_costs.toml"]), main(["plan", "suites/vlm_costs.toml", "--results-dir", {str(tmp_path)!r}])]
heavy = sorted(m for m in ("torch", "transformers", "peft", "bitsandbytes", "open_clip") if m in sys.modules)
print(json.dumps({{"rc": rc, "heavy": heavy, "seconds": time.perf_counter() - start}}), file=sys.stderr)
"""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - start
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report["rc"] == [0, 0] and report["heavy"] == []
    assert "15 cells" in out.stdout
    assert wall < 2.0, f"validate + plan took {wall:.2f} s (in-process {report['seconds']:.2f} s)"


# ---------------------------------------------------------------- report and gate


def test_report_writes_the_page_and_exits_0(tmp_path, capsys):
    records = write_records(tmp_path / "r.jsonl", {}, {"cell_id": "second", "method.name": "ia3"})
    out = tmp_path / "page" / "quickstart.md"
    assert main(["report", str(records), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.is_file() and "ia3" in out.read_text()


def test_report_of_no_records_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["report", str(empty), "-o", str(tmp_path / "x.md")]) == 2
    assert "no readable records" in capsys.readouterr().err and not (tmp_path / "x.md").exists()


def test_gate_exit_codes(tmp_path, capsys):
    baseline = write_records(tmp_path / "base.jsonl", {})
    same = write_records(tmp_path / "same.jsonl", {})
    hungrier = write_records(tmp_path / "hungrier.jsonl", {"cost.peak_memory_mb": EXAMPLE["cost"]["peak_memory_mb"] * 1.5})
    assert main(["gate", str(same), "--baseline", str(baseline)]) == 0
    assert main(["gate", str(hungrier), "--baseline", str(baseline)]) == 1
    assert main(["gate", str(hungrier), "--baseline", str(baseline), "--rule", "status:ok"]) == 0  # only the rules given
    capsys.readouterr()
    assert main(["gate", str(same), "--baseline", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["gate", str(same)]) == 2
    assert "no baseline given" in capsys.readouterr().err


def test_gate_failure_in_a_subprocess_prints_a_table_not_a_traceback(tmp_path):
    baseline = write_records(tmp_path / "base.jsonl", {})
    hungrier = write_records(tmp_path / "hungrier.jsonl", {"cost.peak_memory_mb": EXAMPLE["cost"]["peak_memory_mb"] * 1.5})
    out = bench("gate", str(hungrier), "--baseline", str(baseline), "--rule", "peak_memory_mb:+5%")
    assert out.returncode == 1 and "peak_memory_mb" in out.stdout and "Traceback" not in out.stderr


# ---------------------------------------------------------------- README


def test_readme_key_tables_are_generated_from_bench_keys():
    from bench.suite.keys import markdown_tables

    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- keys:begin -->", 1)[1].split("<!-- keys:end -->", 1)[0]
    assert block.strip() == markdown_tables().strip(), "run `.venv/bin/python -m bench.suite.keys` to sync README.md"


def test_key_docs_render_in_markdown_tables():
    from bench.suite.keys import markdown_tables

    text = markdown_tables()
    assert "results/&lt;name>.jsonl" in text  # a bare <name> would be swallowed as an HTML tag
    assert "| `lr` | 0.001 | peak learning rate |" in text
    assert "| `family` | required | model family (`clip` / `blip2` / `llava` / `smolvlm` / `qwen2_vl` / `auto`) |" in text


def test_cluster_options_come_from_the_flags_over_the_suites_cluster_table():
    from argparse import Namespace

    from bench.cli import _cluster_options
    from bench.errors import BenchError
    from bench.suite.keys import CLUSTER_KEYS

    table = {k: key.default for k, key in CLUSTER_KEYS.items()}
    none = Namespace(executor=None, partition=None, gpus_per_cell=None, cpus_per_cell=None, poll_s=None)
    assert _cluster_options(none, table) is None  # no executor anywhere: cells forked here
    slurm = _cluster_options(none, {**table, "executor": "slurm", "partition": "a100", "gpus_per_cell": 2})
    assert (slurm.executor, slurm.partition, slurm.gpus_per_cell, slurm.poll_s) == ("slurm", "a100", 2, 30.0)
    flags = Namespace(executor="local", partition=None, gpus_per_cell=None, cpus_per_cell=None, poll_s=0.5)
    assert (_cluster_options(flags, {**table, "executor": "slurm"}).executor, _cluster_options(flags, table).poll_s) == ("local", 0.5)
    assert _cluster_options(Namespace(**{**vars(flags), "poll_s": None}), table).poll_s == 1.0  # local: no scheduler to spare
    for bad in ({"poll_s": float("nan")}, {"gpus_per_cell": -1}, {"cpus_per_cell": 0}):
        with pytest.raises(BenchError):
            _cluster_options(Namespace(**{**vars(flags), **bad}), table)
    with pytest.raises(BenchError, match="--partition applies only with --executor"):
        _cluster_options(Namespace(**{**vars(none), "partition": "x"}), table)


@pytest.mark.parametrize("given, ok", [("0", True), ("2", True), ("-1", False), ("two", False), ("1025", False)])
def test_jobs_takes_zero_for_as_many_as_fit_and_refuses_the_rest_with_a_message(given, ok, capsys):
    from bench.cli import build_parser

    parser = build_parser()
    if ok:
        assert parser.parse_args(["run", "s.toml", "--jobs", given]).jobs == int(given)
        return
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["run", "s.toml", "--jobs", given])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--jobs" in err and "0 (as many as fit)" in err and "Traceback" not in err


def test_a_run_with_nothing_left_points_at_retry_for_the_cells_that_did_not_finish(mini_suite, tmp_path):
    """A fixed input does not run a failed cell again by itself: the run says which flag does."""
    suite = mini_suite.parent / "diverges.toml"
    suite.write_text(mini_suite.read_text().replace('[suite]\nname = "mini"', '[suite]\nname = "mini"\nisolate = false')
                     .replace("[methods.full]\nkind = \"full\"", "[methods.full]\nkind = \"full\"\ntrain = { diverge_loss = 1e-9 }"))
    args = ["run", suite, "--results-dir", tmp_path / "r", "--reports-dir", tmp_path / "p", "--no-progress"]
    code, err, _ = run_cli(args)
    assert code == 0 and "1 cell-run(s) did not finish ok" in err and "--retry" not in err
    code, err, _ = run_cli(args)
    assert code == 0 and "ran 0 cell-run(s)" in err
    assert "1 cell-run(s) recorded earlier did not finish ok; `bench run --retry` runs them again" in " ".join(err.split())
    code, err, _ = run_cli([*args, "--retry"])
    assert code == 0 and "recorded earlier" not in err
