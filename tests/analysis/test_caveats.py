"""What the report says beside its numbers (bench/analysis/caveats.py): the failures of a measured part inside a
finished cell, the data left out by reason, and the banner when Δ on the data does not measure the method."""

from conftest import record, row, section
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.analysis import report
from bench.fields import TEXT_COVERAGE_WARN_PCT


def cell(name, **more):
    return record(cell_id=name, **{"method.name": name, **more})


SERVING_ERROR = "TypeError: generate() got an unexpected keyword argument 'pixel_values' (at serving.py:120 in measure)"
NOTE = "merged, 4bit: prompt_tuning has no merged form (PEFT's merge_and_unload folds weight updates)"


def headings(page: str) -> list[str]:
    return [line for line in page.splitlines() if line.startswith("## ")]


# ---------------------------------------------------------------- failures of a measured part


def test_a_serving_error_in_a_finished_cell_is_listed_and_every_cell_finished_is_not_said_alone():
    records = [cell("lora", serving={"error": SERVING_ERROR}), cell("ia3", serving={"error": SERVING_ERROR}),
               cell("prompt", serving={"variants": {}, "notes": [NOTE]}), cell("full")]
    page = report.render_report(records, title="t")
    failures = section(page, "Failures")
    assert "Every cell finished." not in page
    assert failures.lstrip().startswith("Every cell finished; serving failed on 2 cells:")
    assert "| Model | Dataset | Method | Repeat | Part | Message |" in failures
    assert row(failures, "llava-tiny", "scenes-vqa", "lora") == ["llava-tiny", "scenes-vqa", "lora", "0", "serving",
                                                                 SERVING_ERROR]
    assert row(failures, "llava-tiny", "scenes-vqa", "ia3")[4] == "serving"
    # a variant deliberately left out is a note, not a failure
    assert "prompt" not in failures and "no merged form" not in failures
    assert "Variants left out:" in section(page, "Serving") and NOTE in section(page, "Serving")
    assert page.splitlines()[3].endswith("; 2 failed measurements inside finished cells (see *Failures*).")


def test_every_part_that_can_fail_inside_a_finished_cell_is_listed_with_its_message():
    records = [
        cell("base", **{"quality.note": "base evaluation failed: out of memory", "quality.base": None, "quality.delta": None}),
        cell("kept", artifact={"error": "OSError: [Errno 28] No space left on device"}),
        cell("merged", **{"quality.merged_error": "RuntimeError: merge_and_unload failed"}),
        cell("retained", **{"quality.retention": {"dataset": "scenes-src", "note": "retention dataset 'scenes-src' could "
                                                  "not be loaded: missing file"}}),
        cell("skipping", **{"cost.skipped_samples": {"train": 0, "eval": 3}}),
        cell("composed", composition={"sources": [], "error": "ValueError: adapters differ in rank"}),
        cell("counted", **{"quality.text_coverage": {"error": "AttributeError: no tokenizer"}}),
        cell("fine", **{"quality.retention": {"dataset": "scenes-src", "base": 30.0, "tuned": 29.0, "delta": -1.0}}),
    ]
    failures = section(report.render_report(records, title="t"), "Failures")
    assert failures.lstrip().startswith("Every cell finished; untuned evaluation failed on 1 cell, kept artifact failed on 1 "
                               "cell, merged evaluation failed on 1 cell, retention failed on 1 cell, evaluation skipped "
                               "samples on 1 cell, composition failed on 1 cell, text coverage failed on 1 cell:")
    parts = {name: row(failures, "llava-tiny", "scenes-vqa", name)[4:] for name in
             ("base", "kept", "merged", "retained", "skipping", "composed")}
    assert parts["base"] == ["untuned evaluation", "base evaluation failed: out of memory"]
    assert parts["kept"] == ["kept artifact", "OSError: [Errno 28] No space left on device"]
    assert parts["merged"] == ["merged evaluation", "RuntimeError: merge_and_unload failed"]
    assert parts["retained"][0] == "retention" and "could not be loaded" in parts["retained"][1]
    assert parts["skipping"] == ["evaluation", "3 of 64 evaluation samples skipped (their images could not be decoded): "
                                               "quality is over the rest"]
    assert parts["composed"] == ["composition", "ValueError: adapters differ in rank"]
    assert row(failures, "llava-tiny", "scenes-vqa", "counted")[4:] == ["text coverage", "AttributeError: no tokenizer"]
    assert "| fine |" not in failures


def test_failed_cells_and_failed_parts_are_listed_apart():
    records = [cell("big", status="oom", message="CUDA out of memory"), cell("lora", serving={"error": SERVING_ERROR})]
    failures = section(report.render_report(records, title="t"), "Failures")
    assert row(failures, "llava-tiny", "scenes-vqa", "big")[4] == "**OOM**"
    assert "Inside the cells that finished, serving failed on 1 cell:" in failures
    assert row(failures, "llava-tiny", "scenes-vqa", "lora")[4:] == ["serving", SERVING_ERROR]
    # a failed cell's own parts are its status: not listed again
    oom = [cell("big", status="oom", message="CUDA out of memory", serving={"error": SERVING_ERROR})]
    assert "Inside the cells" not in section(report.render_report(oom, title="t"), "Failures")


def test_random_weights_and_finished_records_without_errors_are_no_failures():
    rand = cell("rand", **{"model.weights": "random", "quality.base": None, "quality.tuned": None, "quality.delta": None,
                           "quality.note": "random weights: cost is real, quality is not applicable"})
    page = report.render_report([rand, cell("lora", serving={"variants": {}, "notes": [NOTE]})], title="t")
    assert section(page, "Failures").lstrip().startswith("Every cell finished.\n")
    assert "failed measurement" not in page


# ---------------------------------------------------------------- data left out


def test_skipped_data_is_counted_by_reason_per_dataset():
    reasons = {"missing image": 3, "empty answer": 2}
    records = [cell("lora", **{"dataset.skipped": reasons, "cost.skipped_samples": {"train": 2, "eval": 0}}),
               cell("ia3", **{"dataset.skipped": reasons, "cost.skipped_samples": {"train": 0, "eval": 0}}),
               cell("full", **{"dataset.name": "charts", "dataset.skipped": {"text-only record": 40, "unreadable image": 1,
                                                                            "a reason added later": 1}}),
               cell("clean", **{"dataset.name": "digits", "dataset.skipped": {}, "cost.skipped_samples": {"train": 0}})]
    page = report.render_report(records, title="t")
    data = section(page, "Data left out")
    assert "| Dataset | Left out when read | Skipped while making batches |" in data
    assert row(data, "scenes-vqa") == ["scenes-vqa", "5: 3 missing image, 2 empty answer", "train 0–2 (2 cell-runs)"]
    # in bench.data.problems.REASONS' order, an unknown reason last
    assert row(data, "charts") == ["charts", "42: 1 unreadable image, 40 text-only record, 1 a reason added later", "—"]
    assert "| digits |" not in data
    assert headings(page).index("## Data left out") == headings(page).index("## Results") + 1


def test_old_records_without_the_new_fields_render_as_before():
    page = report.render_report([cell("lora"), cell("ia3")], title="t")
    assert headings(page) == ["## Results", "## Cost and quality per model × dataset", "## Cost details", "## Failures",
                              "## Environment", "## Legend"]
    assert page.splitlines()[3] == "2 cells (2 finished), 2 records; last run 2026-11-23T21:05:02Z on cpu."
    assert page.splitlines()[5] == "## Results"  # no banner
    assert section(page, "Failures").strip() == "Every cell finished."


# ---------------------------------------------------------------- text coverage banner


def coverage(unknown, truncated, **more):
    return {"unknown_token_pct": unknown, "tokens": 1024, "texts": 300, "truncated": 31, "truncated_pct": truncated,
            "samples": 256, **more}


def test_the_banner_names_the_pairs_their_figures_and_the_fix():
    records = [cell("lora", **{"quality.text_coverage": coverage(37.5, 0.0)}),
               cell("ia3", **{"quality.text_coverage": coverage(12.0, 1.0)}),
               cell("full", **{"dataset.name": "charts", "quality.text_coverage": coverage(0.5, 12.1)}),
               cell("fine", **{"dataset.name": "digits", "quality.text_coverage": coverage(1.0, 1.0)})]
    page = report.render_report(records, title="t")
    top = page.split("## Results", 1)[0]
    assert "> ⚠ **Δ on this data does not measure the method.**" in top
    assert ("> - llava-tiny / scenes-vqa: 37.5 % of the target text's tokens are the tokenizer's unknown token (1,024 "
            "tokens in 300 texts); max_seq_len = 48 cut 0.0 % of the training samples (31 of 256)") in top
    assert "> - llava-tiny / charts: 0.5 % of the target text's tokens" in top and "cut 12.1 %" in top
    assert "digits" not in top and "12.0 %" not in top  # one line per pair: its worst record
    assert "a real checkpoint whose tokenizer knows the data's words" in top and "larger `max_seq_len`" in top


def test_no_banner_for_random_weights_or_records_without_coverage():
    rand = cell("rand", **{"model.weights": "random", "quality.text_coverage": coverage(90.0, 90.0)})
    failed = cell("failed", **{"quality.text_coverage": {"error": "AttributeError: no tokenizer"}})
    assert "does not measure the method" not in report.render_report([rand, failed, cell("lora")], title="t")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([TEXT_COVERAGE_WARN_PCT, TEXT_COVERAGE_WARN_PCT - 0.01,
                                           TEXT_COVERAGE_WARN_PCT + 0.01, 0.0, 100.0])
                          | st.floats(TEXT_COVERAGE_WARN_PCT - 1, TEXT_COVERAGE_WARN_PCT + 1),
                          st.floats(0, TEXT_COVERAGE_WARN_PCT + 1) | st.none()), min_size=1, max_size=3))
def test_the_banner_shows_exactly_when_a_figure_is_above_the_threshold(figures):
    records = [cell(f"m{i}", **{"quality.text_coverage": coverage(unknown, truncated)})
               for i, (unknown, truncated) in enumerate(figures)]
    page = report.render_report(records, title="t")
    above = any(v is not None and v > TEXT_COVERAGE_WARN_PCT for pair in figures for v in pair)
    assert ("does not measure the method" in page) == above
