"""Δ's confidence intervals (bench/analysis/intervals.py): exact where there is nothing to resample, paired where the
items are shared, and honest: about 95 % of intervals cover the true Δ of a simulated evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.analysis.intervals import contains_zero, delta_interval, difference_interval, item_scores


def rec(base, tuned, ids=None) -> dict:
    items = {"base": list(base), "tuned": list(tuned)}
    if ids is not None:
        items["ids"] = list(ids)
    return {"quality": {"items": items}}


scores = st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(scores, st.floats(-50, 50, allow_nan=False), st.integers(1, 4))
def test_a_shift_of_every_item_by_c_has_the_interval_c_c(base, c, seeds):
    """Nothing varies: every resample of items and seeds gives Δ = c."""
    records = [rec(base, [b + c for b in base]) for _ in range(seeds)]
    lo, hi = delta_interval(records)
    assert lo == pytest.approx(c, abs=1e-9) and hi == pytest.approx(c, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=2, max_size=30))
def test_the_interval_is_reproducible_ordered_and_inside_the_items_range(pairs):
    base, tuned = [b for b, _ in pairs], [t for _, t in pairs]
    first = delta_interval([rec(base, tuned)])
    assert first == delta_interval([rec(base, tuned)])  # seeded resampling
    diffs = [t - b for b, t in pairs]
    assert min(diffs) - 1e-9 <= first[0] <= first[1] <= max(diffs) + 1e-9


def test_more_items_narrow_the_interval_as_the_square_root_of_their_number():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 50) * 100.0
    tuned = np.where(rng.random(50) < 0.3, 100 - base, base)  # 30 % of the items flip
    few = delta_interval([rec(base, tuned)])
    many = delta_interval([rec(np.tile(base, 16), np.tile(tuned, 16))])
    ratio = (few[1] - few[0]) / (many[1] - many[0])
    assert 3.2 <= ratio <= 4.8  # sqrt(16) = 4


def test_about_95_percent_of_intervals_cover_the_true_delta():
    """Simulated evaluations: 200 items answered right with probability 0.5 before and 0.55 after, independently; the
    true Δ is 5 points. The percentile bootstrap's coverage should be near 95 % (within simulation error)."""
    rng = np.random.default_rng(7)
    covered = 0
    trials = 150
    for _ in range(trials):
        base = (rng.random(200) < 0.5) * 100.0
        tuned = (rng.random(200) < 0.55) * 100.0
        lo, hi = delta_interval([rec(base, tuned)])
        covered += lo <= 5.0 <= hi
    assert 0.89 <= covered / trials <= 0.99


def test_seeds_that_disagree_widen_the_interval_beyond_the_items_alone():
    base = [0.0, 100.0] * 20
    one = rec(base, [b + 5 for b in base])
    other = rec(base, [b - 5 for b in base])
    assert delta_interval([one]) == pytest.approx((5, 5))
    lo, hi = delta_interval([one, other])
    assert lo == pytest.approx(-5) and hi == pytest.approx(5)  # resampled seeds: both, one twice, the other twice


def test_pairing_tells_apart_two_methods_whose_intervals_overlap():
    """Two methods that score the same items alike, one a point higher on every item: each Δ alone is uncertain (the
    items vary a lot), their difference is not (paired on the items)."""
    rng = np.random.default_rng(3)
    base = rng.random(80) * 100
    noise = rng.normal(0, 30, 80)
    a = [rec(base, base + noise + 1.0)]
    b = [rec(base, base + noise)]
    ia, ib = delta_interval(a), delta_interval(b)
    assert contains_zero(ia) and contains_zero(ib)  # alone, neither is told from 0
    assert difference_interval(a, b) == pytest.approx((1.0, 1.0))  # paired: exactly one point apart
    assert contains_zero(difference_interval(a, a))


def test_records_without_items_or_with_unusable_ones_give_no_interval():
    assert delta_interval([{"quality": {}}]) is None
    assert delta_interval([rec([1.0], ["x"])]) is None
    assert delta_interval([rec([], [])]) is None
    assert delta_interval([rec([1.0, 2.0], [1.0, float("nan")])]) is None
    assert item_scores(rec([1.0, 2.0], [3.0, 4.0], ids=[5, 9]), "tuned") == {5: 3.0, 9: 4.0}
    # items in common only: a record that skipped an unreadable sample pairs on the rest
    lo, hi = delta_interval([rec([0, 0, 0], [1, 1, 1], ids=[0, 1, 2]), rec([0, 0], [1, 1], ids=[0, 2])])
    assert (lo, hi) == pytest.approx((1, 1))
