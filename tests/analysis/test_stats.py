import pytest
from conftest import record

from bench.analysis import stats


def test_get_follows_dotted_paths_and_returns_none_for_absent_or_null():
    r = record()
    assert stats.get(r, "cost.peak_memory_mb") == 41.5
    assert stats.get(r, "cost.mfu") is None
    assert stats.get(r, "cost.no_such_key") is None
    assert stats.get(r, "status.deeper") is None


def test_summary_mean_sample_std_min_max():
    s = stats.Summary((1.0, 2.0, 3.0, 6.0))
    assert s.n == 4 and s.mean == 3.0
    assert s.std == pytest.approx(2.1602468994692865)  # n - 1 in the denominator
    assert (s.min, s.max, s.spread) == (1.0, 6.0, 5.0)
    one = stats.Summary((4.0,))
    assert one.std is None and one.spread is None


def test_group_by_cell_groups_repeats_and_keeps_the_latest_record_of_each_repeat():
    records = [
        record(cell_id="a", repeat=0, **{"cost.peak_memory_mb": 10.0}),
        record(cell_id="b", repeat=0),
        record(cell_id="a", repeat=1, **{"cost.peak_memory_mb": 14.0}),
        record(cell_id="a", repeat=0, **{"cost.peak_memory_mb": 12.0}),  # a re-run of repeat 0 replaces it
    ]
    groups = stats.group_by_cell(records)
    assert list(groups) == ["a", "b"]
    a = groups["a"].summary("cost.peak_memory_mb")
    assert a.values == (12.0, 14.0) and a.mean == 13.0


def test_summaries_use_only_finished_repeats_and_report_the_first_failure():
    records = [
        record(cell_id="a", repeat=0, **{"cost.train_wall_s": 2.0}),
        record(cell_id="a", repeat=1, status="oom", message="out of memory", **{"cost.train_wall_s": 99.0}),
    ]
    g = stats.group_by_cell(records)["a"]
    assert g.summary("cost.train_wall_s").values == (2.0,)
    assert g.status == "oom" and g.message == "out of memory"
    assert len(g.ok) == 1


def test_null_and_boolean_values_are_not_numbers():
    r = record(**{"cost.mfu": None, "model.trust_remote_code": True})
    assert stats.summarize([r], "cost.mfu") is None
    assert stats.summarize([r], "model.trust_remote_code") is None


def test_differs_uses_the_repeat_spread_as_noise():
    tight_old, tight_new = stats.Summary((10.0, 10.2)), stats.Summary((11.0, 11.1))
    assert stats.noise(tight_old, tight_new) == pytest.approx(0.2)
    assert stats.differs(tight_old, tight_new)
    wide_old = stats.Summary((8.0, 12.0))
    assert not stats.differs(wide_old, tight_new)  # 1.05 apart, but one config already spread over 4


def test_differs_without_repeats_counts_any_difference_and_one_sided_repeats_give_their_spread():
    assert stats.noise(stats.Summary((1.0,)), stats.Summary((2.0,))) is None
    assert stats.differs(stats.Summary((1.0,)), stats.Summary((1.01,)))
    assert not stats.differs(stats.Summary((1.0,)), stats.Summary((1.0,)))
    assert not stats.differs(stats.Summary((9.0, 11.0, 10.0)), stats.Summary((11.5,)))


def test_pareto_front_minimises_cost_and_maximises_gain():
    points = [("cheap-bad", 1.0, 1.0), ("mid", 2.0, 5.0), ("dominated", 3.0, 4.0), ("dear-best", 9.0, 6.0),
              ("tie", 2.0, 5.0)]
    assert stats.pareto_front(points) == {"cheap-bad", "mid", "tie", "dear-best"}


def test_pareto_cells_orient_lower_is_better_metrics_and_skip_random_weights():
    lower = [
        record(cell_id="x", **{"quality.higher_is_better": False, "quality.delta": -5.0, "cost.peak_memory_mb": 50.0}),
        record(cell_id="y", **{"quality.higher_is_better": False, "quality.delta": -1.0, "cost.peak_memory_mb": 60.0}),
    ]
    groups = list(stats.group_by_cell(lower).values())
    assert stats.pareto_cells(groups, "cost.peak_memory_mb") == {"x"}  # cheaper and a larger improvement
    rand = record(cell_id="z", **{"model.weights": "random"})
    assert stats.gain(stats.group_by_cell([rand])["z"]) is None


def test_group_summary_skips_nulls_and_differs_beyond_the_repeat_spread():
    old = stats.group_by_cell([record(cell_id="a", repeat=i, **{"cost.peak_memory_mb": v}) for i, v in enumerate([40.0, 42.0])])["a"]
    new = stats.group_by_cell([record(cell_id="a", repeat=i, **{"cost.peak_memory_mb": v}) for i, v in enumerate([50.0, 51.0])])["a"]
    assert old.summary("cost.peak_memory_mb").mean == 41.0 and old.summary("cost.peak_memory_mb").n == 2
    assert old.summary("cost.mfu") is None  # null on the CPU: no summary
    assert stats.differs(old.summary("cost.peak_memory_mb"), new.summary("cost.peak_memory_mb"))
    assert not stats.differs(old.summary("cost.train_wall_s"), new.summary("cost.train_wall_s"))
