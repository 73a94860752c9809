"""DPO cells on the report page (bench/analysis/preferences.py): TRL's reward statistics beside the task metric, each
with its 95 % interval over the held-out pairs (bench/analysis/intervals.py pair_interval)."""

import re

import numpy as np
import pytest
from conftest import record, row, section

from bench.analysis import intervals, report
from bench.fields import PREFERENCE_ITEMS

PAIRS = 128


def pairs(accuracy_pct: float, margin_mean: float, *, seed: int = 0, spread: float = 0.2) -> dict:
    """Per-pair values as a DPO evaluation keeps them: accuracy_pct % of the pairs ordered right (0/100), margins about
    margin_mean."""
    rng = np.random.default_rng(seed)
    right = round(PAIRS * accuracy_pct / 100)
    accuracy = [100.0] * right + [0.0] * (PAIRS - right)
    margin = (margin_mean + spread * rng.standard_normal(PAIRS)).round(6)
    margin += round(margin_mean - margin.mean(), 6)  # exactly margin_mean on average, as TRL's logged mean is
    return {"accuracy": accuracy, "margin": [float(v) for v in margin]}


def dpo(accuracy_pct=70.3125, margin=0.3, *, kept=True, seed=0, **more):
    """A DPO cell's record: the task metric's Δ with its per-item scores, and TRL's statistics with (kept) each pair's."""
    items = pairs(accuracy_pct, margin, seed=seed)
    extra = {"exact_match": 40.0, "preference_accuracy": accuracy_pct,
             "reward_margin": round(sum(items["margin"]) / PAIRS, 6)}
    if kept:
        extra[PREFERENCE_ITEMS] = items
    scores = {"base": [0.0, 100.0] * 32, "tuned": [0.0, 100.0] * 32}
    return record(cell_id="dpo", **{"method.name": "dpo-lora-r8", "method.objective": "dpo", "method.beta": 0.1,
                                    "dataset.name": "chart-pairs", "dataset.task": "preference", "quality.metric": "exact_match",
                                    "quality.base": 50.0, "quality.tuned": 50.0, "quality.delta": 0.0,
                                    "quality.items": scores, "quality.extra": extra,
                                    "quality.base_extra": {"exact_match": 40.0}, "seed": seed, "repeat": seed, **more})


def bounds(text: str) -> tuple[float, float]:
    lo, hi = re.search(r"\[([-+\d.]+), ([-+\d.]+)\]", text).groups()
    return float(lo), float(hi)


def test_dpo_cells_show_preference_accuracy_and_reward_margin_with_intervals_beside_the_task_metric():
    page = report.render_report([dpo()], title="t")
    results = row(page, "llava-tiny", "chart-pairs", "dpo-lora-r8")[5]
    assert results.startswith("_+0.0 exact_match [+0.0, +0.0]_ · preference accuracy 70.3 [")
    assert "(chance 50) · Δ reward margin +0.300 [" in results
    # the interval is the bootstrap's over the 128 pairs: about ± 1.96 standard errors of a share of 70 %
    se = 100 * (0.703 * 0.297 / PAIRS) ** 0.5
    lo, hi = bounds(results.split("preference accuracy", 1)[1])
    assert lo < 70.3 < hi and 1.6 * se < 70.3 - lo < 2.4 * se and 1.6 * se < hi - 70.3 < 2.4 * se
    assert (lo, hi) == pytest.approx(intervals.pair_interval([dpo()], "accuracy", delta=False), abs=0.05)
    lo, hi = bounds(results.split("reward margin", 1)[1])
    se = 0.2 / PAIRS ** 0.5
    assert 1.6 * se < 0.3 - lo < 2.4 * se and 1.6 * se < hi - 0.3 < 2.4 * se

    table = section(page, "Preferences (DPO)")
    assert "| Model | Dataset | Method | Δ task metric | Preference accuracy: tuned | base | Δ preference accuracy |" in table
    cells = row(table, "llava-tiny", "chart-pairs", "dpo-lora-r8")
    assert cells[3] == "_+0.0 exact_match [+0.0, +0.0]_"
    accuracy, base, delta = cells[4:7]
    assert re.fullmatch(r"70\.3 \[6\d\.\d, 7\d\.\d\]", accuracy)
    assert base == "0.0 (reference: every pair ties)"  # the model as DPO starts is its own reference
    assert delta == "n/a: read the tuned value against 50"  # from ties, any change at all orders half the pairs right
    margin, base, delta = cells[7:10]
    assert re.fullmatch(r"0\.300 \[0\.2\d\d, 0\.3\d\d\]", margin) and base == "0.000 (reference)"
    assert re.fullmatch(r"\+0\.300 \[\+0\.2\d\d, \+0\.3\d\d\]", delta) and bounds(delta) == bounds(margin)


def test_an_interval_that_holds_chance_is_italic():
    page = report.render_report([dpo(50.0, 0.01)], title="t")
    cells = row(section(page, "Preferences (DPO)"), "llava-tiny", "chart-pairs", "dpo-lora-r8")
    assert cells[4].startswith("_50.0 [") and cells[4].endswith("]_")
    assert cells[9].startswith("_+0.0100 [") and cells[9].endswith("]_")  # 0.2 spread over 128 pairs: ± 0.035


def test_repeats_combine_their_seeds_as_the_delta_interval_does():
    one = intervals.pair_interval([dpo(60.0, 0.3)], "margin", delta=True)
    both = [dpo(60.0, 0.3, seed=0), dpo(80.0, 0.6, seed=1)]
    two = intervals.pair_interval(both, "margin", delta=True)
    assert two[0] < 0.45 < two[1] and two[1] - two[0] > one[1] - one[0]  # the seeds' spread counts too
    page = report.render_report(both, title="t")
    cells = row(section(page, "Preferences (DPO)"), "llava-tiny", "chart-pairs", "dpo-lora-r8")
    assert cells[4].startswith("70.0 ± 14.1 (n=2) [")


def test_a_measured_base_gives_a_paired_delta_for_both_statistics():
    base = pairs(50.0, 0.1, seed=7)
    measured = dpo(70.0, 0.3, **{"quality.base_extra": {"exact_match": 40.0, "preference_accuracy": 50.0,
                                                        "reward_margin": 0.1, PREFERENCE_ITEMS: base}})
    cells = row(section(report.render_report([measured], title="t"), "Preferences (DPO)"), "llava-tiny", "chart-pairs",
                "dpo-lora-r8")
    assert cells[5] == "50.0" and cells[6].startswith("+20.0 [") and cells[8] == "0.100"
    assert bounds(cells[6]) == pytest.approx(intervals.pair_interval([measured], "accuracy", delta=True), abs=0.05)
    # paired: the same as the bootstrap of each pair's difference
    differences = np.array(measured["quality"]["extra"][PREFERENCE_ITEMS]["accuracy"]) - np.array(base["accuracy"])
    alone = dpo(**{"quality.extra": {PREFERENCE_ITEMS: {"accuracy": list(differences)}}})
    assert intervals.pair_interval([measured], "accuracy", delta=True) == intervals.pair_interval([alone], "accuracy",
                                                                                                  delta=False)


def test_records_without_per_pair_values_show_the_means_alone_and_other_cells_no_section():
    page = report.render_report([dpo(kept=False)], title="t")
    cells = row(section(page, "Preferences (DPO)"), "llava-tiny", "chart-pairs", "dpo-lora-r8")
    assert cells[4] == "70.3" and cells[7] == "0.300" and cells[9] == "+0.300"
    assert "[" not in row(page, "llava-tiny", "chart-pairs", "dpo-lora-r8")[5].split("·", 1)[1]
    assert intervals.pair_interval([dpo(kept=False)], "accuracy", delta=False) is None
    assert intervals.pair_interval([dpo(), dpo(kept=False)], "margin", delta=True) is None  # one seed kept none
    sft = report.render_report([record()], title="t")
    assert "## Preferences (DPO)" not in sft and "preference accuracy" not in row(sft, "llava-tiny", "scenes-vqa", "lora-r8")[5]


def test_a_failed_dpo_cell_is_listed_without_numbers():
    failed = dpo(status="error", message="TypeError: boom")
    cells = row(section(report.render_report([failed], title="t"), "Preferences (DPO)"), "llava-tiny", "chart-pairs",
                "dpo-lora-r8")
    assert cells[3] == "TypeError: boom" and set(cells[4:]) == {"—"}
