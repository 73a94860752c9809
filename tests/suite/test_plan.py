"""Planning: cells, stable ids, exclusions, overrides, --only."""

from __future__ import annotations

from conftest import MINI_SUITE, REPO

from bench.suite.load import load_suite
from bench.suite.plan import base_key, expand


def test_vlm_costs_expands_to_15_cells():
    cells = expand(load_suite(REPO / "suites" / "vlm_costs.toml"))
    assert len(cells) == 15
    assert len({c.cell_id for c in cells}) == 15


def test_cell_ids_are_stable_and_change_with_config(write_suite):
    a = {c.method["name"]: c.cell_id for c in expand(load_suite(write_suite(MINI_SUITE, "a.toml")))}
    b = {c.method["name"]: c.cell_id for c in expand(load_suite(write_suite(MINI_SUITE, "b.toml")))}
    assert a == b  # same config, same ids (the file name plays no part)
    changed = MINI_SUITE.replace("r = 4", "r = 8")
    c = {c.method["name"]: c.cell_id for c in expand(load_suite(write_suite(changed, "c.toml")))}
    assert c["lora"] != a["lora"] and c["full"] == a["full"]


def test_overrides_apply_in_order(write_suite):
    text = MINI_SUITE.replace("r = 4", "r = 4\ntrain = { lr = 0.5, steps = 7 }").replace(
        'methods = ["lora", "full"]', 'methods = ["lora", "full"]\ntrain = { steps = 9 }')
    cells = {c.method["name"]: c for c in expand(load_suite(write_suite(text)))}
    assert cells["lora"].train["lr"] == 0.5
    assert cells["lora"].train["steps"] == 9  # the grid's override is the most specific
    assert cells["full"].train["lr"] == 1e-3


def test_exclude_and_only(write_suite):
    text = MINI_SUITE + 'exclude = [{method = "full"}]\n'
    cells = expand(load_suite(write_suite(text)))
    assert [c.method["name"] for c in cells] == ["lora"]
    assert cells[0].matches("clip/cls/lo*") and cells[0].matches(cells[0].cell_id) and not cells[0].matches("*/full")


def test_base_key_shared_across_methods(mini_suite):
    cells = expand(load_suite(mini_suite))
    assert len({base_key(c) for c in cells}) == 1
