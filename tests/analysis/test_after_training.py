"""The report's Serving and Composition sections (bench/analysis/after_training.py), from synthetic records."""

import statistics

import pytest
from conftest import record, row, section
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.analysis import after_training, report

HEADER = ("| Model | Dataset | Method | Adapter size | Unmerged ms | Merged ms | 4-bit ms | Merged ÷ unmerged | "
          "Throughput unmerged / merged | Memory unmerged / merged / 4-bit | Δ after merge |")


def figures(latency_ms: float, throughput: float = 100.0, memory_mb: float = 50.0, *, unit="tokens/s", batch=16) -> dict:
    return {"latency_ms": latency_ms, "latency_ms_range": [latency_ms * 0.9, latency_ms * 1.2], "throughput": throughput,
            "unit": unit, "batch": batch, "batch_s_range": [0.1, 0.2], "weights_mb": memory_mb - 5.0, "activations_mb": 5.0,
            "peak_memory_mb": memory_mb}


def served(method="lora-r8", repeat=0, *, variants: dict, merged_delta=0.0, artifact_bytes=38_000, **more) -> dict:
    """An ok record of `method` whose serving measured `variants` (name -> figures)."""
    changes = {"cell_id": method, "repeat": repeat, "method.name": method,
               "serving": {"variants": variants, "rounds": 5, "memory_kind": "cuda_allocated", "wall_s": 4.2},
               "quality.merged_delta": merged_delta,
               "quality.merged": None if merged_delta is None else 58.9 + merged_delta}
    if artifact_bytes is not None:
        changes["artifact"] = {"kind": "adapter", "path": f"results/artifacts/q/{method}/{repeat}", "bytes": artifact_bytes,
                               "files": ["adapter_config.json", "adapter_model.safetensors"]}
    return record({**changes, **more})


def three(u, m, q=None, **throughputs) -> dict:
    out = {"unmerged": figures(u, throughputs.get("tu", 300.0), 120.0), "merged": figures(m, throughputs.get("tm", 400.0), 118.0)}
    if q is not None:
        out["4bit"] = figures(q, 200.0, 40.0)
    return out


# ---------------------------------------------------------------- serving


def test_serving_row_shows_each_variant_the_ratio_and_the_merge_delta():
    page = report.render_report([served(variants=three(12.0, 9.0, 20.0), merged_delta=-1.5625)], title="t")
    serving = section(page, "Serving")
    assert HEADER in serving
    assert row(serving, "llava-tiny", "scenes-vqa", "lora-r8") == [
        "llava-tiny", "scenes-vqa", "lora-r8", "37.1 KB", "12.0", "9.00", "20.0", "0.75", "300 / 400 tokens/s",
        "120 MB / 118 MB / 40.0 MB", "-1.6"]
    assert "interleave over 5 rounds" in serving and "a request of 16 samples" in serving and "`cuda_allocated`" in serving


def test_serving_takes_the_median_over_repeats_with_the_range_and_the_ratio_of_the_medians():
    records = [served(repeat=0, variants=three(10.0, 8.0, tu=100.0), merged_delta=0.0),
               served(repeat=1, variants=three(12.0, 9.0, tu=300.0), merged_delta=1.0),
               served(repeat=2, variants=three(30.0, 40.0, tu=200.0), merged_delta=2.0)]
    cells = row(section(report.render_report(records, title="t"), "Serving"), "llava-tiny", "scenes-vqa", "lora-r8")
    assert cells[4] == "12.0 (10.0–30.0, n=3)" and cells[5] == "9.00 (8.00–40.0, n=3)"
    assert cells[6] == "—"  # no 4-bit variant
    assert cells[7] == f"{9.0 / 12.0:.2f}" == "0.75"
    assert cells[8] == "200 / 400 tokens/s"
    assert cells[10] == "+1.0 ± 1.0"  # Δ after merge: mean ± std, as the report's other quality figures


def test_a_full_fine_tune_serves_only_merged_and_keeps_no_adapter():
    full = served("full", variants={"merged": figures(7.0, 500.0, 300.0, unit="images/s")}, merged_delta=None, artifact_bytes=None,
                  **{"method.kind": "full"})
    kept = served("full-saved", variants={"merged": figures(7.0, 500.0, 300.0)}, merged_delta=None, artifact_bytes=1.5 * 1024**3,
                  **{"method.kind": "full"})
    kept["artifact"]["kind"] = "full"
    serving = section(report.render_report([full, kept], title="t"), "Serving")
    assert row(serving, "llava-tiny", "scenes-vqa", "full")[3:] == ["—", "—", "7.00", "—", "—", "— / 500 images/s",
                                                                    "— / 300 MB / —", "—"]
    assert row(serving, "llava-tiny", "scenes-vqa", "full-saved")[3] == "1.5 GB (full model)"


def test_random_weights_have_no_merge_delta():
    rand = served(variants=three(12.0, 9.0), merged_delta=None, **{"model.weights": "random", "quality.tuned": None})
    assert row(section(report.render_report([rand], title="t"), "Serving"), "llava-tiny", "scenes-vqa", "lora-r8")[10] == "—"


def test_serving_errors_and_left_out_variants_are_listed_below_the_table():
    broken = record(cell_id="broken", **{"method.name": "ia3", "serving": {"error": "RuntimeError: no | kernel\nfor this", "wall_s": 0.1}})
    noted = served(variants=three(12.0, 9.0))
    noted["serving"]["notes"] = ["4bit: NotImplementedError: no 4-bit layer for ia3"]
    serving = section(report.render_report([broken, noted], title="t"), "Serving")
    assert "- llava-tiny / scenes-vqa / ia3, repeat 0: RuntimeError: no \\| kernel for this" in serving
    assert "- llava-tiny / scenes-vqa / lora-r8, repeat 0: 4bit: NotImplementedError: no 4-bit layer for ia3" in serving
    assert "| llava-tiny | scenes-vqa | ia3 |" not in serving  # nothing measured: no row
    only_error = report.render_report([broken], title="t")
    assert "## Serving" in only_error and HEADER not in only_error


def test_sections_are_absent_without_their_data_and_sit_before_failures():
    plain = report.render_report([record()], title="t")
    assert "## Serving" not in plain and "## Composition" not in plain
    page = report.render_report([served(variants=three(1.0, 1.0)), *composition_records()], title="t")
    order = [page.index(f"## {title}\n") for title in ("Cost details", "Serving", "Composition", "Failures", "Environment")]
    assert order == sorted(order)


def test_names_with_pipes_are_escaped_in_both_sections():
    odd = served("lo|ra", variants=three(2.0, 1.0), **{"dataset.name": "sce|nes"})
    serving = section(report.render_report([odd], title="t"), "Serving")
    assert row(serving, "llava-tiny", "sce\\|nes", "lo\\|ra")[7] == "0.50"
    merged = record(cell_id="m", **{"method": {"name": "mi|x", "kind": "merge", "combination": "linear",
                                               "sources": [{"model": "llava-tiny", "dataset": "scenes-vqa", "method": "a|b"}]},
                                    "dataset.name": "o|ther"})
    composition = section(report.render_report([merged], title="t"), "Composition")
    assert "| Adapter / combination | o\\|ther (vqa_acc) | scenes-vqa |" in composition
    assert "| mi\\|x = linear of a\\|b @ scenes-vqa | 58.9 | — |" not in composition  # folded: the adapter reused
    assert row(composition, "a\\|b @ scenes-vqa") == ["a\\|b @ scenes-vqa", "58.9", "—"]


def test_hand_edited_serving_sections_do_not_break_the_page():
    records = [served("a", variants="fast"), served("b", variants={"merged": "x", "unmerged": {"latency_ms": "slow"}}),
               record(cell_id="c", **{"method.name": "c", "serving": ["no"]})]
    serving = section(report.render_report(records, title="t"), "Serving")
    assert row(serving, "llava-tiny", "scenes-vqa", "b")[4:10] == ["—", "—", "—", "—", "—", "—"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-3, 1e5), st.floats(1e-3, 1e5)), min_size=1, max_size=4))
def test_the_ratio_column_is_merged_over_unmerged_of_the_median_latencies(latencies):
    records = [served(repeat=i, variants=three(u, m)) for i, (u, m) in enumerate(latencies)]
    cells = row(section(report.render_report(records, title="t"), "Serving"), "llava-tiny", "scenes-vqa", "lora-r8")
    unmerged, merged = statistics.median(u for u, _ in latencies), statistics.median(m for _, m in latencies)
    assert cells[7] == f"{merged / unmerged:.2f}"
    assert cells[4].split(" (")[0] == after_training.fmt_ms(unmerged)
    assert (" (" in cells[5]) == (len(latencies) > 1) and (f"n={len(latencies)})" in cells[5]) == (len(latencies) > 1)


@pytest.mark.parametrize("ms,text", [(0.8412, "0.84"), (12.34, "12.3"), (1250.0, "1,250"), (None, "—")])
def test_fmt_ms(ms, text):
    assert after_training.fmt_ms(ms) == text


@pytest.mark.parametrize("n,text", [(512, "512 B"), (36_864, "36.0 KB"), (150 * 1024**2, "150 MB"), (1.25 * 1024**3, "1.2 GB"), (None, "—")])
def test_fmt_bytes(n, text):
    assert after_training.fmt_bytes(n) == text


# ---------------------------------------------------------------- composition


def trained(method, dataset, tuned, base, repeat=0, **more) -> dict:
    return record(cell_id=f"{method}@{dataset}", repeat=repeat, **{"method.name": method, "dataset.name": dataset,
                                                                      "quality.tuned": tuned, "quality.base": base,
                                                                      "quality.delta": tuned - base, **more})


def composed(name, dataset, tuned, base, sources, combination="ties", weights=None, repeat=0, **more) -> dict:
    method = {"name": name, "kind": "merge", "combination": combination,
              "sources": [{"model": "llava-tiny", "dataset": d, "method": m} for m, d in sources]}
    if weights is not None:
        method["weights"] = weights
    composition = {"sources": [{"cell_id": f"{m}@{d}", "repeat": 0, "model": "llava-tiny", "dataset": d, "method": m,
                                "artifact": f"results/artifacts/s/{m}@{d}/0"} for m, d in sources]}
    return record(cell_id=f"{name}@{dataset}", repeat=repeat, method=method, composition=composition,
                  **{"dataset.name": dataset, "quality.tuned": tuned, "quality.base": base,
                     "quality.delta": None if tuned is None else tuned - base, **more})


def composition_records() -> list[dict]:
    both = [("lora", "vqa"), ("lora", "caps")]
    return [
        trained("lora", "vqa", 60.0, 30.0), trained("lora", "vqa", 62.0, 30.0, repeat=1), trained("lora", "caps", 40.0, 10.0),
        composed("mix", "vqa", 50.0, 30.0, both, weights=[0.7, 0.3]), composed("mix", "vqa", 54.0, 30.0, both, weights=[0.7, 0.3], repeat=1),
        composed("mix", "caps", 35.0, 10.0, both, weights=[0.7, 0.3]),
        composed("cat", "caps", 37.5, 10.0, both, combination="cat"),  # not evaluated on vqa
        composed("reuse", "caps", 12.0, 10.0, [("lora", "vqa")], combination="linear"),  # the vqa adapter on caps
        composed("again", "vqa", 61.0, 30.0, [("lora", "caps")], combination="linear"),  # the caps adapter on vqa
        composed("broken", "vqa", None, 30.0, [("lora", "gone")], status="skipped",
                 message="source lora @ gone did not finish (error)"),
    ]


def test_composition_table_has_base_sources_with_reuse_and_combinations_per_dataset():
    comp = section(report.render_report(composition_records(), title="t"), "Composition")
    assert "### llava-tiny" in comp
    assert "| Adapter / combination | vqa (vqa_acc) | caps (vqa_acc) |" in comp
    assert row(comp, "*base (not tuned)*") == ["*base (not tuned)*", "30.0", "10.0"]
    assert row(comp, "lora @ vqa") == ["lora @ vqa", "61.0 ± 1.4", "12.0"]  # own dataset: mean ± std; caps: "reuse"
    assert row(comp, "lora @ caps") == ["lora @ caps", "61.0", "40.0"]  # vqa: "again", the caps adapter reused
    assert row(comp, "mix = ties of 0.7 × lora @ vqa + 0.3 × lora @ caps") == [
        "mix = ties of 0.7 × lora @ vqa + 0.3 × lora @ caps", "52.0 ± 2.8", "35.0"]
    assert row(comp, "cat = cat of lora @ vqa + lora @ caps")[1:] == ["—", "37.5"]
    assert "reuse =" not in comp and "again =" not in comp  # shown on their source's row
    assert "lora @ gone" not in comp.split("Skipped")[0]  # a skipped cell is not in the table
    assert "- llava-tiny / vqa / broken, repeat 0: source lora @ gone did not finish (error)" in comp


def test_a_single_source_merge_on_its_own_dataset_keeps_its_own_row():
    records = [trained("lora", "vqa", 60.0, 30.0), composed("same", "vqa", 59.0, 30.0, [("lora", "vqa")], combination="linear"),
               composed("same", "caps", 11.0, 10.0, [("lora", "vqa")], combination="linear")]
    comp = section(report.render_report(records, title="t"), "Composition")
    assert row(comp, "lora @ vqa")[1:] == ["60.0", "—"]
    assert row(comp, "same = linear of lora @ vqa")[1:] == ["59.0", "11.0"]


def test_a_source_missing_from_the_records_or_failed_shows_so():
    records = [trained("lora", "vqa", 60.0, 30.0, status="error", message="boom"),
               composed("mix", "vqa", 50.0, 30.0, [("lora", "vqa"), ("ia3", "caps")])]
    comp = section(report.render_report(records, title="t"), "Composition")
    assert row(comp, "lora @ vqa")[1:] == ["**error**", "—"]
    assert row(comp, "ia3 @ caps")[1:] == ["—", "—"]
    assert row(comp, "*base (not tuned)*")[1:] == ["30.0", "—"]


def test_every_composed_cell_skipped_leaves_only_the_list():
    comp = section(report.render_report([composed("x", "vqa", None, 30.0, [("lora", "vqa")], status="skipped",
                                                  message="source lora @ vqa did not finish")], title="t"), "Composition")
    assert "| Adapter" not in comp and "- llava-tiny / vqa / x, repeat 0: source lora @ vqa did not finish" in comp
