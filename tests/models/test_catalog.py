"""The spec table (bench/models/catalog.py) and every list derived from it agree; unsupported kinds are skipped."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import MINI_SUITE, run_cli

from bench import cli
from bench.errors import SuiteError
from bench.models import FAMILY_MODULES, get_family
from bench.models.catalog import ADAPTER_KINDS, FAMILIES, METHOD_KINDS, RANKED_KINDS
from bench.suite import keys, load, zoo
from bench.tasks import TASK_MODULES


def test_every_derived_list_agrees_with_the_table():
    assert keys.MODEL_KEYS["family"].choices == tuple(FAMILIES) == tuple(FAMILY_MODULES) == tuple(TASK_MODULES)
    assert keys.METHOD_KEYS["kind"].choices == tuple(METHOD_KINDS)
    assert load.ADAPTER_KINDS == ADAPTER_KINDS and load.RANKED_KINDS == RANKED_KINDS
    assert set(zoo.RECIPES) == {name for name, info in FAMILIES.items() if "tiny" in info.presets}  # zoo: tiny bases
    for name in zoo.RECIPES:  # `bench zoo build --family` takes every family with a zoo base
        assert cli.build_parser().parse_args(["zoo", "build", "--family", name]).family == [name]
    for name, info in FAMILIES.items():
        assert set(info.unsupported_methods) <= set(METHOD_KINDS), name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_adapter_kind_has_default_targets_on_every_backend_or_says_why_not(family):
    module = get_family(family)
    for backend in FAMILIES[family].backends:
        for kind in ADAPTER_KINDS:
            try:
                targets = module.default_targets(kind, backend)
            except SuiteError as exc:
                assert "explicit `targets`" in exc.render()
                continue
            assert targets and set(targets) <= set(FAMILIES[family].components), (family, backend, kind)


def test_a_kind_in_the_table_that_a_family_does_not_support_is_skipped_with_its_reason(tmp_path, monkeypatch):
    info = dataclasses.replace(FAMILIES["clip"], unsupported_methods={"lora": "measured: peft refuses it here"})
    monkeypatch.setitem(FAMILIES, "clip", info)
    path = tmp_path / "s.toml"
    path.write_text(MINI_SUITE)
    code, err, out = run_cli(["plan", path, "--json"])
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads(out)["cells"]}
    assert rows["lora"]["state"] == "skip" and "measured: peft refuses it here" in rows["lora"]["skip_reason"]
    assert rows["full"]["state"] == "pending"
