"""bench.fields: one table of measured fields, and every reader of records agrees with it."""

from __future__ import annotations

from bench import fields
from bench.analysis import compare, report, stats
from bench.suite import rules


def test_every_field_has_a_unique_alias_a_unit_and_a_known_direction():
    assert len({f.alias for f in fields.FIELDS}) == len(fields.FIELDS)
    for f in fields.FIELDS:
        assert f.path.split(".")[0] in ("cost", "quality", "params", "serving", "artifact") and f.unit
        assert f.better in ("lower", "higher", "quality", None)


def test_gate_accepts_every_field_by_alias_and_path_and_nothing_else():
    for f in fields.FIELDS:
        assert rules.parse_rule(f"{f.alias}:+5%").field == f.path == rules.parse_rule(f"{f.path}:-1").field
    for unknown in ("cost.peak_memroy_mb", "quality.detla", "cost.breakdown_mb"):
        try:
            rules.parse_rule(f"{unknown}:+5%")
        except rules.RuleError:
            continue
        raise AssertionError(f"{unknown} was accepted")


def test_compare_stats_and_report_read_the_same_tables():
    assert compare.FIELDS == {f.path: f.better for f in fields.FIELDS if f.compared}
    assert set(compare.FIELDS) <= set(stats.NUMERIC_FIELDS) == {f.path for f in fields.FIELDS}
    assert compare.ENV_COMPARED == fields.ENV_COMPARED and report.ENV_KEYS[: len(fields.ENV_COMPARED)] == fields.ENV_COMPARED
