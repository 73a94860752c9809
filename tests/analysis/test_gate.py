import copy

import pytest
from conftest import record
from rich.console import Console

from bench.analysis.gate import gate, render_markdown, render_terminal
from bench.errors import BenchError
from bench.suite.rules import DEFAULT_RULES, StatusRule, Threshold, parse_rule, parse_rules


def cells(**per_cell) -> list[dict]:
    """One record per cell id; values are dicts of overrides."""
    return [record(cell_id=cid, **{"method.name": cid, **changes}) for cid, changes in per_cell.items()]


BASE = cells(lora={"cost.peak_memory_mb": 100.0}, ia3={"cost.peak_memory_mb": 80.0})


def test_the_same_records_pass_every_default_rule():
    result = gate(BASE, copy.deepcopy(BASE))
    assert result.passed
    assert len(result.rows) == len(BASE) * len(DEFAULT_RULES)
    assert {r.verdict for r in result.rows} == {"pass"}
    assert result.messages() == []


def test_twenty_percent_more_peak_memory_fails_naming_cell_rule_old_and_new():
    current = cells(lora={"cost.peak_memory_mb": 120.0}, ia3={"cost.peak_memory_mb": 80.0})
    result = gate(BASE, current, ["peak_memory_mb:+5%"])
    assert not result.passed
    [failure] = result.failures
    assert failure.cell_id == "lora" and failure.old == 100.0 and failure.new == 120.0
    [message] = result.messages()
    for part in ("lora", "llava-tiny", "scenes-vqa", "peak_memory_mb:+5%", "100", "120", "+20.0 %"):
        assert part in message


def test_two_percent_on_a_five_percent_rule_passes():
    current = cells(lora={"cost.peak_memory_mb": 102.0}, ia3={"cost.peak_memory_mb": 80.0})
    assert gate(BASE, current, ["peak_memory_mb:+5%"]).passed


def test_a_change_beyond_the_threshold_but_inside_the_repeat_spread_passes():
    def repeats(values):
        return [record(cell_id="lora", repeat=i, seed=i, **{"cost.train_wall_s": v}) for i, v in enumerate(values)]

    old, new = repeats([10.0, 14.0, 12.0]), repeats([14.5, 13.0, 16.0])  # +23 % in the mean, spread 4 and 3
    result = gate(old, new, ["train_wall_s:+20%"])
    [row] = result.rows
    assert row.old == pytest.approx(12.0) and row.new == pytest.approx(14.5)
    assert row.noise == pytest.approx(4.0)
    assert row.verdict == "pass" and row.note == "within noise"
    assert result.passed
    # the same +23 % with tight repeats is a regression
    tight = gate(repeats([12.0, 12.1, 11.9]), repeats([14.5, 14.6, 14.4]), ["train_wall_s:+20%"])
    assert not tight.passed


def test_a_missing_cell_fails_and_a_new_cell_only_warns():
    current = cells(lora={"cost.peak_memory_mb": 100.0}, dora={"cost.peak_memory_mb": 90.0})
    result = gate(BASE, current)
    assert not result.passed
    assert [g.cell_id for g in result.missing] == ["ia3"]
    assert [g.cell_id for g in result.extra] == ["dora"]
    assert any("ia3" in m and "missing" in m for m in result.messages())
    assert not any("dora" in m for m in result.messages())
    assert gate(BASE[:1], current[:1]).passed and gate(BASE[:1], current).passed


@pytest.mark.parametrize("text", ["peak_memory_mb:5%", "peak_memory_mb", "peak_memory_mb:+five%", "wallclock:+5%",
                                  "status:fine", "cost.:+5%", "model.name:+1", ""])
def test_a_bad_rule_string_raises_a_bench_error_naming_it_and_the_accepted_forms(text):
    with pytest.raises(BenchError) as err:
        parse_rule(text)
    message = str(err.value)
    assert repr(text) in message
    assert "accepted forms" in message and "peak_memory_mb" in message and "status:ok" in message


def test_parse_rules_names_the_position_and_rejects_a_bare_string():
    with pytest.raises(BenchError, match=r"suites/q.toml: \[gate\] rules\[1\]"):
        parse_rules(["delta:-0.5", "delta:0.5"], file="suites/q.toml")
    with pytest.raises(BenchError) as err:
        parse_rules(["delta:0.5"])
    assert "[gate]" not in str(err.value)  # from the command line: no suite table to name
    with pytest.raises(BenchError, match="list of strings"):
        parse_rules("delta:-0.5")


def test_short_and_dotted_field_names_resolve_to_the_same_check():
    assert parse_rule("peak_memory_mb:+5%") == Threshold("peak_memory_mb:+5%", "cost.peak_memory_mb", 1, 5.0, True)
    dotted = parse_rule("cost.peak_memory_mb:+5%")
    assert dotted.field == "cost.peak_memory_mb" and dotted.percent
    assert parse_rule("delta:-0.5").field == "quality.delta"
    assert parse_rule(" status : ok ") == StatusRule()
    assert [r.text for r in parse_rules(DEFAULT_RULES)] == DEFAULT_RULES


def test_thresholds_fail_in_the_direction_of_their_sign():
    memory, throughput = parse_rule("peak_memory_mb:+5%"), parse_rule("tokens_per_s:-10%")
    assert memory.fails(100, 105.1) and not memory.fails(100, 105.0) and not memory.fails(100, 50)
    assert throughput.fails(1000, 899) and not throughput.fails(1000, 900) and not throughput.fails(1000, 5000)
    delta = parse_rule("delta:-0.5")  # absolute points
    assert delta.fails(10.0, 9.4) and not delta.fails(10.0, 9.6)
    assert delta.fails(-2.0, -2.6)  # a negative old delta: the margin is still 0.5 points
    assert parse_rule("quality.delta:-10%").fails(-10.0, -11.5)  # percent of |old|


def test_delta_rule_fails_on_a_quality_drop_and_mirrors_lower_is_better_metrics():
    base = cells(lora={"quality.delta": 20.0})
    assert not gate(base, cells(lora={"quality.delta": 19.0}), ["delta:-0.5"]).passed
    assert gate(base, cells(lora={"quality.delta": 19.6}), ["delta:-0.5"]).passed
    lower = {"quality.higher_is_better": False}
    base = cells(lora={**lower, "quality.delta": -20.0})
    assert gate(base, cells(lora={**lower, "quality.delta": -25.0}), ["delta:-0.5"]).passed  # more improvement
    assert not gate(base, cells(lora={**lower, "quality.delta": -19.0}), ["delta:-0.5"]).passed


def test_status_rule_fails_when_an_ok_cell_stops_finishing_and_is_reported_once():
    current = cells(lora={"status": "oom", "message": "CUDA out of memory", "cost.peak_memory_mb": None},
                    ia3={"cost.peak_memory_mb": 80.0})
    result = gate(BASE, current, ["status:ok", "peak_memory_mb:+5%"])
    assert not result.passed
    [failure] = result.failures
    assert failure.rule.text == "status:ok" and (failure.old, failure.new) == ("ok", "oom")
    assert "lora" in failure.message() and "ok → oom" in failure.message()
    memory_row = next(r for r in result.rows if r.cell_id == "lora" and r.rule.field == "cost.peak_memory_mb")
    assert memory_row.verdict == "n/a"
    # without a status rule the vanished value itself fails
    assert not gate(BASE, current, ["peak_memory_mb:+5%"]).passed
    # a cell that failed before and still fails is not a regression
    assert gate(current, current, ["status:ok", "peak_memory_mb:+5%"]).passed


def test_quality_rules_do_not_apply_to_random_weights():
    rand = {"model.weights": "random", "quality.delta": None, "quality.tuned": None, "quality.base": None}
    result = gate(cells(lora=rand), cells(lora=rand), ["delta:-0.5", "peak_memory_mb:+5%"])
    assert [r.verdict for r in result.rows] == ["n/a", "pass"] and result.passed
    # a gate whose every numeric check is "not applicable" compared nothing: it fails closed
    result = gate(cells(lora=rand), cells(lora=rand), ["delta:-0.5"])
    assert [r.verdict for r in result.rows] == ["n/a"] and not result.passed
    assert "nothing was compared" in result.messages()[0]
    # the current records turned to random weights: the baseline's quality is not checked, so it fails
    result = gate(cells(lora={}), cells(lora=rand), ["delta:-0.5"])
    assert [r.verdict for r in result.rows] == ["fail"]


def test_environment_differences_are_warnings_in_every_rendering():
    current = copy.deepcopy(BASE)
    for r in current:
        r["env"]["device_name"] = "NVIDIA H100 80GB HBM3"
    result = gate(BASE, current)
    assert result.passed
    assert any("device_name" in w and "H100" in w for w in result.warnings)
    assert "Environment differs" in result.render_markdown()


def test_renderings_name_the_failure():
    current = cells(lora={"cost.peak_memory_mb": 120.0}, ia3={"cost.peak_memory_mb": 80.0})
    result = gate(BASE, current, ["peak_memory_mb:+5%"])
    md = result.render_markdown()
    assert md.startswith("# Gate: FAILED (1 failure)")
    assert "**FAIL**" in md and "`peak_memory_mb:+5%`" in md
    assert render_markdown(result) == md
    console = Console(record=True, width=200, color_system=None)
    render_terminal(result, console)
    text = console.export_text()
    assert "gate FAILED" in text and "lora" in text and "120" in text
    assert "ia3" not in text.split("checks passed")[0]  # passing checks are left out of the table


def test_terminal_prints_brackets_in_messages_literally():
    current = cells(lora={"status": "error", "message": "[Errno 2] No such file: [bold]x[/]", "method.name": "lora[r=8]"},
                    ia3={"cost.peak_memory_mb": 80.0})
    console = Console(record=True, width=200, color_system=None)
    gate(BASE, current).render_terminal(console)
    text = console.export_text()
    assert "[Errno 2] No such file: [bold]x[/]" in text and "lora[r=8]" in text


def test_terminal_table_fits_an_80_column_terminal():
    current = cells(lora={"cost.peak_memory_mb": 120.0, "model.name": "a-rather-long-model-name",
                          "dataset.name": "coco-captions-2017"}, ia3={"cost.peak_memory_mb": 80.0})
    base = [dict(r, model=dict(r["model"], name="a-rather-long-model-name") if r["cell_id"] == "lora" else r["model"],
                 dataset=dict(r["dataset"], name="coco-captions-2017") if r["cell_id"] == "lora" else r["dataset"]) for r in BASE]
    console = Console(record=True, width=80, color_system=None)
    gate(base, current).render_terminal(console)
    table = [line for line in console.export_text().splitlines() if line[:1] in "┏┃┡│└"]
    assert table and all(line[-1] in "┓┃┩│┘" for line in table)  # the right border is not cut off
