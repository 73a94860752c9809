import subprocess
import sys
from pathlib import Path

import pytest
from conftest import record, row, section

from bench.analysis import report

ROOT = Path(__file__).parents[2]


def method(name, memory, wall, delta, **more):
    return record(cell_id=name, **{"method.name": name, "cost.peak_memory_mb": memory, "cost.train_wall_s": wall,
                                   "quality.delta": delta, "quality.tuned": None if delta is None else 31.2 + delta, **more})


RECORDS = [
    method("full", 90.0, 125.0, 30.0, **{"params.trainable_pct": 100.0, "params.trainable": 299520}),
    method("lora", 40.0, 3.21, 27.7),
    method("ia3", 45.0, 2.0, 10.0),
    method("bad", 60.0, 6.0, 5.0),
]


def test_results_table_has_time_in_human_units_and_delta_with_its_metric():
    page = report.render_report(RECORDS, title="Quickstart")
    assert page.splitlines()[1] == "# Quickstart"
    assert "| Model | Dataset | Method | Device | Time | Δ vqa_acc |" in page
    assert row(page, "llava-tiny", "scenes-vqa", "lora") == ["llava-tiny", "scenes-vqa", "lora", "cpu", "3.2 s ★", "+27.7 vqa_acc"]
    full = row(page, "llava-tiny", "scenes-vqa", "full")
    assert full[4] == "2 min 05 s ★" and full[5] == "**+30.0 vqa_acc**"  # the best Δ is bold
    assert row(page, "llava-tiny", "scenes-vqa", "bad")[4] == "6.0 s"  # dominated in time: no star


def test_method_table_shows_base_once_params_memory_and_quality_with_pareto_stars():
    page = report.render_report(RECORDS, title="t")
    block = section(page, "Cost and quality per model × dataset")
    assert "| Method | % params trainable | Peak memory | Quality |" in block
    assert block.count("*base (not tuned)*") == 1 and row(block, "*base (not tuned)*")[3] == "31.2 vqa_acc"
    assert row(block, "lora") == ["lora", "3.12 % (9.3 K)", "40.0 MB ★", "58.9 (+27.7)"]
    assert row(block, "full")[1:3] == ["100.00 % (299.5 K)", "90.0 MB ★"]
    assert row(block, "ia3")[2] == "45.0 MB" and row(block, "bad")[2] == "60.0 MB"  # dominated by lora


def test_repeats_show_mean_and_std_and_noise_near_the_best_is_marked():
    records = [
        method("lora", 40.0, 3.0, 27.0, repeat=0), method("lora", 41.0, 3.2, 29.0, repeat=1),
        method("full", 90.0, 5.0, 28.0, repeat=0), method("full", 90.0, 5.0, 30.0, repeat=1),
        method("ia3", 45.0, 2.0, 10.0, repeat=0), method("ia3", 45.0, 2.0, 10.4, repeat=1),
    ]
    page = report.render_report(records, title="t")
    assert row(page, "llava-tiny", "scenes-vqa", "full")[5] == "**+29.0 ± 1.4 vqa_acc (n=2)**"
    assert row(page, "llava-tiny", "scenes-vqa", "lora")[5] == "≈ +28.0 ± 1.4 vqa_acc (n=2)"  # 1 apart, spread 2
    assert row(page, "llava-tiny", "scenes-vqa", "ia3")[5] == "+10.2 ± 0.3 vqa_acc (n=2)"
    assert row(page, "llava-tiny", "scenes-vqa", "lora")[4].startswith("3.1 s ± 141 ms")


def test_failed_cells_show_status_and_message_and_are_listed():
    records = RECORDS + [
        method("big", None, None, None, status="oom", message="CUDA out of memory | tried 2 GiB\nGPU 0"),
        method("slow", None, None, None, status="timeout", message="exceeded timeout_s=600"),
    ]
    page = report.render_report(records, title="t")
    big = row(page, "llava-tiny", "scenes-vqa", "big")
    assert big[4] == "**OOM**" and big[5] == "CUDA out of memory \\| tried 2 GiB GPU 0"
    assert row(section(page, "Cost and quality per model × dataset"), "slow")[2:] == ["**timeout**", "exceeded timeout_s=600"]
    failures = section(page, "Failures")
    assert "| llava-tiny | scenes-vqa | big | 0 | **OOM** | CUDA out of memory \\| tried 2 GiB GPU 0 |" in failures
    assert "exceeded timeout_s=600" in failures
    assert "Every cell finished." in section(report.render_report(RECORDS, title="t"), "Failures")


def test_random_weights_show_quality_as_not_applicable():
    rand = {"model.weights": "random", "quality.base": None, "quality.tuned": None}
    records = [method("lora", 40.0, 3.0, None, **rand), method("full", 90.0, 5.0, None, **rand)]
    page = report.render_report(records, title="t")
    assert row(page, "llava-tiny", "scenes-vqa", "lora")[5] == "n/a (random weights)"
    block = section(page, "Cost and quality per model × dataset")
    assert row(block, "*base (not tuned)*")[3] == "n/a (random weights)"
    assert row(block, "full")[3] == "n/a (random weights)"


def test_environment_table_warns_on_mixed_environments_and_marks_remote_code():
    h100 = {"env.device_name": "NVIDIA H100 80GB HBM3", "env.device_count": 1, "env.torch": "2.11.0", "env.git_dirty": True}
    records = [RECORDS[0], method("lora", 40.0, 3.0, 27.0, **h100, **{"model.trust_remote_code": True, "model.name": "odd-vlm"})]
    page = report.render_report(records, title="t")
    env = section(page, "Environment")
    assert "2 different environments" in env and "device_name, device_count, torch, git_dirty" in env
    assert "| NVIDIA H100 80GB HBM3 | 1 | 2.11.0 | 5.23.0 | 0.21.2 | 0.50.2 | a1b2c3d (dirty) | 1 |" in env
    assert "| cpu | 0 | 2.15.0 | 5.23.0 | 0.21.2 | 0.50.2 | a1b2c3d | 1 |" in env
    assert "uncommitted changes" in env
    assert "`trust_remote_code=True`" in env and "odd-vlm" in env
    assert row(page, "odd-vlm ⚠", "scenes-vqa", "lora")[3] == "NVIDIA H100 80GB HBM3"
    assert "different environments" not in report.render_report(RECORDS, title="t")


def test_cost_details_show_step_time_throughput_estimate_error_and_mfu_only_when_present():
    page = report.render_report(RECORDS, title="t")
    cost = section(page, "Cost details")
    assert "Estimate" not in cost and "MFU" not in cost and "Peak reserved" not in cost  # all null on the CPU
    assert row(cost, "llava-tiny", "scenes-vqa", "lora")[3:7] == ["24 ms ± 3 ms", "330", "9,120", "40.0 MB"]
    gpu = [method("lora", 200.0, 3.0, 27.0, **{"cost.estimate_mb": 180.0, "cost.mfu": 0.123, "cost.peak_reserved_mb": 256.0,
                                                "cost.memory_kind": "cuda_allocated"})]
    cost = section(report.render_report(gpu, title="t"), "Cost details")
    assert "| Estimate (error) | MFU |" in cost
    assert row(cost, "llava-tiny", "scenes-vqa", "lora")[6:] == ["200 MB", "256 MB", "180 MB (-10 %)", "12.3 %"]
    # an RSS figure holds the runtime's pages too: the estimate is shown, its "error" is not
    rss = [method("lora", 200.0, 3.0, 27.0, **{"cost.estimate_mb": 1.5, "cost.memory_kind": "cpu_rss_hwm"})]
    assert row(section(report.render_report(rss, title="t"), "Cost details"), "llava-tiny", "scenes-vqa", "lora")[-1] == "1.5 MB"
    # tensor bytes on the CPU count what the estimate models: the error is shown, and the page says what was counted
    cpu = [method("lora", 5.0, 3.0, 27.0, **{"cost.estimate_mb": 4.6, "cost.memory_kind": "cpu_tensors"})]
    cost = section(report.render_report(cpu, title="t"), "Cost details")
    assert row(cost, "llava-tiny", "scenes-vqa", "lora")[-1] == "4.6 MB (-8 %)"
    assert "`cpu_tensors` is live tensor bytes" in cost and "MemTracker" in cost


def test_cost_details_say_when_cells_ran_side_by_side():
    alone = [method("lora", 5.0, 3.0, 27.0, **{"cost.concurrent_cells": 1})]
    assert "side by side" not in section(report.render_report(alone, title="t"), "Cost details")
    side = [method("lora", 5.0, 3.0, 27.0, **{"cost.concurrent_cells": 2})]  # before cost.timed_alone: trained together
    assert "without taking turns" in section(report.render_report(side, title="t"), "Cost details")
    turns = [method("lora", 5.0, 3.0, 27.0, **{"cost.concurrent_cells": 2, "cost.timed_alone": True})]
    said = section(report.render_report(turns, title="t"), "Cost details")
    assert "Cells ran side by side (2 at a time" in said and "took turns at their timed work" in said
    assert "without taking turns" not in said


def test_cost_details_show_the_wait_for_data_when_records_have_it():
    assert "Data wait" not in section(report.render_report(RECORDS, title="t"), "Cost details").split("\n\n")[0]
    fed = [method("lora", 40.0, 3.0, 27.0, **{"cost.data_wait_s": 0.5, "cost.data_wait_pct": 12.4}),
           method("ia3", 45.0, 2.0, 10.0, **{"cost.data_wait_s": None, "cost.data_wait_pct": None})]
    cost = section(report.render_report(fed, title="t"), "Cost details")
    assert "| Data wait |" in cost
    assert row(cost, "llava-tiny", "scenes-vqa", "lora")[7] == "500 ms (12 %)"
    assert row(cost, "llava-tiny", "scenes-vqa", "ia3")[7] == "—"


def test_an_empty_record_list_renders_a_page():
    page = report.render_report([], title="Empty")
    assert "# Empty" in page and "No records." in page


@pytest.mark.parametrize("seconds,text", [(0.0245, "24 ms"), (3.21, "3.2 s"), (125, "2 min 05 s"), (3720, "1 h 02 min"), (None, "—")])
def test_fmt_time(seconds, text):
    assert report.fmt_time(seconds) == text


def test_write_report_writes_the_page_and_linked_pngs_and_the_index_reads_them(tmp_path):
    records = [dict(r, loss_curve=[[1, 4.0], [10, 2.0]]) for r in RECORDS]
    written = report.write_report(records, tmp_path / "reports" / "quickstart.md")
    page_path, pngs = written[0], written[1:]
    assert page_path == tmp_path / "reports" / "quickstart.md"
    assert {p.name for p in pngs} == {"loss-llava-tiny--scenes-vqa.png", "pareto-memory.png", "pareto-time.png"}
    page = page_path.read_text()
    assert "# Benchmark: quickstart" in page
    for png in pngs:
        assert png.parent == tmp_path / "reports" / "quickstart" and png.read_bytes()[:4] == b"\x89PNG"
        assert f"](quickstart/{png.name})" in page  # linked relative to the page
    # a second suite on another device, and a stray page without metadata
    gpu = [dict(r, suite="gpu-full", finished_at="2026-12-01T10:00:00Z",
                env=dict(r["env"], device_name="NVIDIA H100 80GB HBM3", device_count=1)) for r in RECORDS]
    report.write_report(gpu, tmp_path / "reports" / "gpu-full.md")
    (tmp_path / "reports" / "notes.md").write_text("# hand-written\n")
    index = report.write_index(tmp_path / "reports").read_text()
    assert "| [gpu-full](gpu-full.md) | gpu-full | 2026-12-01T10:00:00Z | NVIDIA H100 80GB HBM3 | 4/4 |" in index
    assert "| [quickstart](quickstart.md) | quickstart | 2026-11-23T21:05:02Z | cpu | 4/4 |" in index
    assert "| [notes](notes.md) | ? | ? | ? | ? |" in index
    assert "README" not in index.split("\n", 1)[1]


def test_page_metadata_round_trips_names_with_double_dashes(tmp_path):
    records = [method("lora", 40.0, 3.0, 27.0, suite="a--b", **{"env.device_name": "gpu --x"})]
    path = tmp_path / "p.md"
    path.write_text(report.render_report(records, title="t"))
    assert "--b" not in path.read_text().splitlines()[0]  # "--" may not appear inside an HTML comment
    meta = report.read_page_meta(path)
    assert meta["suites"] == ["a--b"] and meta["devices"] == ["gpu --x"]


def test_report_compare_gate_and_stats_import_neither_torch_nor_matplotlib():
    code = ("import sys, bench.analysis.report, bench.analysis.compare, bench.analysis.gate, bench.analysis.stats, bench.analysis.plots; "
            "bad = [m for m in ('torch', 'matplotlib', 'scipy', 'pandas') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
