"""Composed cells (kind = "merge"): which cells they read, checked when the suite is read, and the order they run in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import REPO, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.errors import SuiteError
from bench.suite.compose import waves
from bench.suite.load import load_suite
from bench.suite.plan import expand

HEAD = """
[suite]
name = "comp"

[defaults]
steps = 2
batch_size = 4

[models.a]
family = "llava"
weights = "random"

[models.b]
family = "llava"
weights = "random"

[models.c]
family = "clip"
weights = "random"

[datasets.x]
format = "scenes"
task = "vqa"
train_size = 8
eval_size = 4

[datasets.y]
format = "scenes"
task = "vqa"
split = "source"
train_size = 8
eval_size = 4

[datasets.z]
format = "scenes"
task = "classification"
train_size = 8
eval_size = 4

[methods.lora]
kind = "lora"
r = 4

[methods.lora16]
kind = "lora"
r = 16

[methods.ia3]
kind = "ia3"
"""


def suite_with(tmp_path, methods: str, grids: str):
    path = tmp_path / "comp.toml"
    path.write_text(HEAD + methods + grids)
    return path


TRAINED = """
[[grid]]
models = ["a", "b"]
datasets = ["x", "y"]
methods = ["lora", "lora16", "ia3"]
"""


def composed(name: str = "m", grid_models: str = '["a"]') -> str:
    return f"""
[[grid]]
models = {grid_models}
datasets = ["x", "y"]
methods = ["{name}"]
"""


def test_the_shipped_composition_suite_reads_and_orders_its_cells():
    suite = load_suite(REPO / "suites" / "composition.toml")
    cells = expand(suite)
    by_id = {c.cell_id: c for c in cells}
    merged = [c for c in cells if c.sources]
    assert len(merged) == 14 and all(s in by_id and not by_id[s].sources for c in merged for s in c.sources)
    linear = next(c for c in merged if c.method["name"] == "linear")
    assert [by_id[s].dataset["name"] for s in linear.sources] == ["target", "source"]
    assert linear.method["weights"] == [0.5, 0.5]


def test_a_composed_cell_is_named_by_its_sources(tmp_path):
    methods = '[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}, {dataset = "y", method = "lora"}]\n'
    before = {c.label: c.cell_id for c in expand(load_suite(suite_with(tmp_path, methods, TRAINED + composed())))}
    changed = HEAD.replace("[methods.lora]\nkind = \"lora\"\nr = 4", "[methods.lora]\nkind = \"lora\"\nr = 4\ndropout = 0.1")
    path = tmp_path / "changed.toml"
    path.write_text(changed + methods + TRAINED + composed())
    after = {c.label: c.cell_id for c in expand(load_suite(path))}
    assert after["a × x × m"] != before["a × x × m"]  # a source trained differently: a new composed cell
    assert after["a × x × ia3"] == before["a × x × ia3"]


# (methods text, grids text, fragments the message must contain)
BAD = {
    "unknown cell": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}, {dataset = "z", method = "lora"}]\n',
                     TRAINED + composed(), ["[methods.m] key 'sources'", "sources[1]", "a/z/lora", "no grid"]),
    "unknown method name": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lorra"}]\n',
                            TRAINED + composed(), ["[methods.m] key 'sources'", "a/x/lorra"]),
    "another base model": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}, '
                           '{model = "b", dataset = "y", method = "lora"}]\n',
                           TRAINED + composed(), ["[methods.m] key 'sources'", "sources[1]", "model 'b'", "own base model"]),
    "cycle": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "n"}]\n'
              '[methods.n]\nkind = "merge"\nsources = [{dataset = "x", method = "m"}]\n',
              TRAINED + composed("m") + composed("n"), ["key 'sources'", "cycle", "a × x × m", "a × x × n"]),
    "self": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "m"}]\n',
             TRAINED + composed("m"), ["[methods.m] key 'sources'", "cycle"]),
    "not lora": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "ia3"}]\n',
                 TRAINED + composed(), ["[methods.m] key 'sources'", "ia3 cell", "lora"]),
    "ranks differ for linear": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}, '
                                '{dataset = "y", method = "lora16"}]\n',
                                TRAINED + composed(), ["[methods.m] key 'combination'", "ranks differ", "cat"]),
    "weights count": ('[methods.m]\nkind = "merge"\nweights = [1.0]\nsources = [{dataset = "x", method = "lora"}, '
                      '{dataset = "y", method = "lora"}]\n', TRAINED + composed(), ["[methods.m] key 'weights'", "per source (2)"]),
    "ties without density": ('[methods.m]\nkind = "merge"\ncombination = "ties"\nsources = [{dataset = "x", method = "lora"}, '
                             '{dataset = "y", method = "lora"}]\n', TRAINED + composed(), ["[methods.m] key 'density'"]),
    "no sources": ('[methods.m]\nkind = "merge"\n', TRAINED + composed(), ["[methods.m] key 'sources'", "missing or empty"]),
    "source without its keys": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x"}]\n', TRAINED + composed(),
                                ["[methods.m.sources[0]] key 'method'", "missing required key"]),
    "rank on a merge": ('[methods.m]\nkind = "merge"\nr = 4\nsources = [{dataset = "x", method = "lora"}]\n',
                        TRAINED + composed(), ["[methods.m] key 'r'", "no meaning"]),
    "source keeps nothing": ('[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}]\n'
                             '[methods.lora.train]\nsave = false\n', TRAINED + composed(), ["key 'sources'", "save = false"]),
    "a combination on a fusion": ('[methods.m]\nkind = "fusion"\ncombination = "cat"\nsources = [{dataset = "x", method = "lora"}]\n',
                                  TRAINED + composed(), ["[methods.m] key 'combination'", "no meaning"]),
    "a fusion over another model": ('[methods.m]\nkind = "fusion"\nsources = [{model = "b", dataset = "x", method = "lora"}]\n',
                                    TRAINED + composed(), ["[methods.m] key 'sources'", "model 'b'"]),
    "a merge over devices": ('[methods.m]\nkind = "merge"\ntrain = {devices = 2}\nsources = [{dataset = "x", method = "lora"}]\n',
                             TRAINED + composed(), ["[methods.m.train] key 'devices'", "trains nothing"]),
    "a sweep on a merge": ('[methods.m]\nkind = "merge"\ntrain = {lr = [1e-3, 1e-2]}\nsources = [{dataset = "x", method = "lora"}]\n',
                           TRAINED + composed(), ["[methods.m.train] key 'sweep'", "trains nothing"]),
    "a density without pruning": ('[methods.m]\nkind = "merge"\ndensity = 0.5\nsources = [{dataset = "x", method = "lora"}]\n',
                                  TRAINED + composed(), ["[methods.m] key 'density'", "prunes nothing"]),
    "a fusion over devices": ('[methods.m]\nkind = "fusion"\ntrain = {devices = 2}\nsources = [{dataset = "x", method = "lora"}]\n',
                              TRAINED + composed(), ["key 'devices'", "X-LoRA"]),
    "a merge of a cat merge, linear": ('[methods.c]\nkind = "merge"\ncombination = "cat"\nweights = [1.0, 1.0]\n'
                                       'sources = [{dataset = "x", method = "lora"}, {dataset = "y", method = "lora"}]\n'
                                       '[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "c"}, '
                                       '{dataset = "x", method = "lora"}]\n',
                                       TRAINED + composed("c") + composed("m"), ["[methods.m] key 'combination'", "8, 4"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_composition_names_the_key_and_exits_2(tmp_path, case):
    methods, grids, fragments = BAD[case]
    path = suite_with(tmp_path, methods, grids)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    text = info.value.render()
    assert str(path) in text and "fix:" in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    code, err, _ = run_cli(["validate", str(path)])
    assert code == 2 and "Traceback" not in err


def test_a_sweep_of_the_defaults_skips_composed_cells(tmp_path):
    methods = '[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}]\n'
    path = suite_with(tmp_path, methods, TRAINED + composed())
    path.write_text(path.read_text().replace("batch_size = 4", "batch_size = 4\nlr = [1e-3, 1e-2]"))
    cells = expand(load_suite(path))
    assert all(c.train["sweep"] is None for c in cells if c.sources)
    assert all(c.train["sweep"] for c in cells if not c.sources)


# ---------------------------------------------------------------- order


@dataclass(frozen=True)
class FakeCell:
    cell_id: str
    sources: tuple = ()


@dataclass(frozen=True)
class Job:
    cell: FakeCell
    repeat: int = 0


@st.composite
def dags(draw):
    """Jobs whose cells read only cells listed before them (some of them not among the jobs: recorded already)."""
    n = draw(st.integers(1, 12))
    cells = []
    for i in range(n):
        sources = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        cells.append(FakeCell(f"c{i}", tuple(f"c{j}" for j in sources)))
    kept = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    jobs = [Job(c, r) for c, k in zip(cells, kept) if k for r in range(draw(st.integers(1, 2)))]
    return draw(st.permutations(jobs))


@settings(max_examples=200, deadline=None)
@given(dags())
def test_waves_run_every_job_once_and_sources_first(jobs):
    out = waves(list(jobs))
    assert sorted(map(id, (j for w in out for j in w))) == sorted(map(id, jobs))
    wave_of = {j.cell.cell_id: i for i, w in enumerate(out) for j in w}
    for i, wave in enumerate(out):
        assert wave
        for job in wave:
            assert all(wave_of[s] < i for s in job.cell.sources if s in wave_of)
        order = [j for j in jobs if wave_of[j.cell.cell_id] == i]
        assert wave == order  # the order within a wave is the jobs' own


def test_a_fusion_is_skipped_where_peft_has_no_x_lora_for_the_family(tmp_path):
    methods = '[methods.f]\nkind = "fusion"\nsources = [{dataset = "z", method = "lora"}]\n'
    grids = '[[grid]]\nmodels = ["c"]\ndatasets = ["z"]\nmethods = ["lora", "f"]\n'
    cells = {c.method["name"]: c for c in expand(load_suite(suite_with(tmp_path, methods, grids)))}
    assert cells["lora"].skip_reason is None
    assert "X-LoRA" in cells["f"].skip_reason and "clip" in cells["f"].skip_reason
    assert cells["f"].sources == (cells["lora"].cell_id,)


def test_a_fusion_keeps_a_suite_wide_sweep_and_a_merge_does_not(tmp_path):
    methods = ('[methods.f]\nkind = "fusion"\nsources = [{dataset = "x", method = "lora"}, {dataset = "y", method = "lora"}]\n'
               '[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}]\n')
    path = suite_with(tmp_path, methods, TRAINED + composed("f") + composed("m"))
    path.write_text(path.read_text().replace("batch_size = 4", "batch_size = 4\nlr = [1e-3, 1e-2]"))
    cells = {(c.dataset["name"], c.method["name"]): c for c in expand(load_suite(path)) if c.model["name"] == "a"}
    assert cells[("x", "f")].train["sweep"] == {"lr": [1e-3, 1e-2]}  # X-LoRA trains its classifier
    assert cells[("x", "m")].train["sweep"] is None


def test_a_suite_wide_device_count_leaves_merges_on_one_device(tmp_path):
    methods = '[methods.m]\nkind = "merge"\nsources = [{dataset = "x", method = "lora"}]\n'
    path = suite_with(tmp_path, methods, TRAINED + composed())
    path.write_text(path.read_text().replace('[suite]\nname = "comp"', '[suite]\nname = "comp"\ndevice = "cpu"')
                    .replace("batch_size = 4", "batch_size = 4\ndevices = 2"))
    cells = expand(load_suite(path))
    assert all(c.train["devices"] == 1 for c in cells if c.sources)
    assert all(c.train["devices"] == 2 for c in cells if not c.sources)
