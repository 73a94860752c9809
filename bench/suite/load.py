"""Suite files: TOML → a validated, frozen Suite. Nothing here imports torch.

Every problem is reported as a SuiteError naming the file, the table and the key, with a fix;
unknown keys get a "did you mean". Validation happens before any model is built.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError, DataError, SuiteError
from bench.keyspec import MAX_DEPTH, SEED_MAX, Key, type_name
from bench.models.base import COMPONENTS
from bench.models.catalog import ADAPTER_KINDS, FAMILIES, METHOD_KINDS, RANKED_KINDS
from bench.paths import baseline_problem, suite_name_problem
from bench.suite.keys import (
    CLUSTER_KEYS,
    EXCLUDE_KEYS,
    GATE_KEYS,
    GRID_KEYS,
    MAX_SWEEP,
    METHOD_KEYS,
    MODEL_KEYS,
    SUITE_KEYS,
    SWEEPABLE,
    TOP_LEVEL,
    TRAIN_KEYS,
)


@dataclass(frozen=True)
class Entry:
    """A named [models.X] / [datasets.X] / [methods.X] table with defaults filled in (train overrides apart)."""

    name: str
    config: dict
    train: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    exclude: tuple[dict, ...] = ()
    train: dict = field(default_factory=dict)
    retention: str | None = None  # a dataset its cells are also evaluated on, base and tuned


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    settings: dict  # [suite] with defaults
    defaults: dict  # [defaults] merged over TRAIN_KEYS defaults
    models: dict[str, Entry]
    datasets: dict[str, Entry]
    methods: dict[str, Entry]
    grids: tuple[Grid, ...]
    gate: dict
    cluster: dict = field(default_factory=dict)  # [cluster] with defaults: cells as submitit jobs when it names an executor
    # dataset name -> {reason: records} its cells leave out under on_bad_sample = "skip" (bench/data/problems.py)
    left_out: dict = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def seeds(self) -> tuple[int, ...]:
        if self.settings.get("seeds"):
            return tuple(self.settings["seeds"])
        return tuple(self.defaults["seed"] + i for i in range(self.settings["repeats"]))


class _Checker:
    """Validation helpers bound to one file, so every message names it."""

    def __init__(self, file: str):
        self.file = file
        self.problems: dict = {}  # dataset name -> the records its files hold that a cell cannot use (Problems)

    def fail(self, where: str, message: str, fix: str | None = None) -> SuiteError:
        return SuiteError(message, file=self.file, where=where, fix=fix)

    def table(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, got {type_name(value)}", f"write it as [{where}] with key = value lines")
        return value

    def keys(self, table: dict, spec: dict, where: str) -> dict:
        """Check names, types and ranges of `table` against `spec`; return it with defaults filled in."""
        for key in table:
            if key not in spec:
                close = difflib.get_close_matches(key, list(spec), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(sorted(spec))}"
                if isinstance(table[key], dict) and "train" not in (key,):
                    hint += f' (a name with a dot must be quoted: [{where.rsplit(".", 1)[0]}."{where.rsplit(".", 1)[-1]}.{key}"])'
                raise self.fail(f"[{where}] key '{key}'", "unknown key", hint)
        out = {}
        for key, k in spec.items():
            if key not in table:
                if k.required:
                    raise self.fail(f"[{where}] key '{key}'", "missing required key", f"add {key} = ... ({k.doc})")
                out[key] = k.default
                continue
            out[key] = self.value(table[key], k, f"[{where}] key '{key}'")
        return out

    def value(self, value: Any, k: Key, where: str):
        problem = k.problem(value)
        if problem and k.choices and isinstance(value, str) and value not in k.choices:
            close = difflib.get_close_matches(value, [str(c) for c in k.choices], n=1)
            raise self.fail(where, problem, (f"did you mean '{close[0]}'? " if close else "") + k.doc)
        if problem:
            raise self.fail(where, problem, k.doc or None)
        types = k.type if isinstance(k.type, tuple) else (k.type,)
        return float(value) if float in types and isinstance(value, int) else value

    def names(self, value: Any, known: dict, kind: str, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, f"must be a list of {kind} names", f'e.g. {kind}s = ["name"]')
        if not value:
            raise self.fail(where, "is empty", f"name at least one of: {', '.join(known) or '(none defined)'}")
        for v in value:
            if v not in known:
                close = difflib.get_close_matches(v, list(known), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"define it as [{kind}s.{v}] or use one of: {', '.join(known) or '(none defined)'}"
                raise self.fail(where, f"unknown {kind} '{v}'", hint)
        return tuple(value)




def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file. Raises SuiteError (or DataError for dataset files) on any problem."""
    path = Path(path)
    file = str(path)
    try:
        if not path.is_file():
            raise SuiteError("no such suite file" if not path.exists() else "is not a file", file=file,
                             fix="check the path; suites live in suites/*.toml")
        data = path.read_bytes()
    except OSError as exc:  # too long a name, a folder we may not read, ...
        raise SuiteError(f"cannot read the suite file ({exc.strerror or exc})", file=file, fix="check the path") from None
    try:
        raw = tomllib.loads(decode_text(data, file=file))
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"not valid TOML: {exc}", file=file, fix="fix the syntax at the line and column named") from None
    except RecursionError:
        raise SuiteError("arrays or tables nested too deeply to read", file=file,
                         fix=f"a suite needs at most {MAX_DEPTH} levels of nesting") from None
    _check_depth(raw, file)
    return parse_suite(raw, path.resolve(), display=file)


def decode_text(data: bytes, *, file: str) -> str:
    """UTF-8 text, with or without a byte-order mark; anything else is named for what it is."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SuiteError("is UTF-16 text; suites are UTF-8", file=file, fix="save the file as UTF-8")
    if b"\x00" in data:
        raise SuiteError("is not a text file (it holds NUL bytes)", file=file, fix="point at a .toml suite file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", file=file,
                         fix="save the file as UTF-8") from None


def _check_depth(raw: dict, file: str) -> None:
    """Reject nesting deeper than any suite needs, before code that walks it recursively."""
    stack = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SuiteError("arrays or tables nested too deeply", file=file, fix=f"a suite needs at most {MAX_DEPTH} levels of nesting")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))


def parse_suite(raw: dict, path: Path, *, display: str | None = None) -> Suite:
    c = _Checker(display or str(path))
    for key in raw:
        if key not in TOP_LEVEL:
            close = difflib.get_close_matches(key, TOP_LEVEL, n=1)
            raise c.fail(f"table [{key}]", "unknown table", f"did you mean [{close[0]}]?" if close else f"allowed tables: {', '.join(TOP_LEVEL)}")

    settings = c.keys(c.table(raw.get("suite", {}), "suite"), SUITE_KEYS, "suite")
    if settings["name"] is None:
        settings["name"] = path.stem
        if suite_name_problem(path.stem):
            raise c.fail("[suite] key 'name'", f"the file name {suite_name_problem(path.stem)}",
                         'set [suite] name = "my-suite" (letters, digits, -_.), or rename the file')
    elif suite_name_problem(settings["name"]):
        raise c.fail("[suite] key 'name'", suite_name_problem(settings["name"]), 'e.g. name = "vlm-costs"')
    if settings["seeds"] is not None:
        seeds = settings["seeds"]
        seed_key = Key(int, min=0, max=SEED_MAX)
        if not seeds or len(seeds) > SUITE_KEYS["repeats"].max or any(seed_key.problem(s) for s in seeds):
            raise c.fail("[suite] key 'seeds'", f"must be a list of integers in 0 … 2^63 − 1 (1 to {SUITE_KEYS['repeats'].max} of them)",
                         "e.g. seeds = [0, 1]")
        if len(set(seeds)) != len(seeds):
            raise c.fail("[suite] key 'seeds'", "lists a seed twice, so two repeats would be the same run", "give distinct seeds")
    defaults = c.keys(_sweeps(c, c.table(raw.get("defaults", {}), "defaults"), "defaults"), TRAIN_KEYS, "defaults")
    if settings["seeds"] is None and defaults["seed"] + settings["repeats"] - 1 > SEED_MAX:
        raise c.fail("[defaults] key 'seed'", "seed + repeats − 1 exceeds 2^63 − 1", "use a smaller seed")

    models = _entries(c, raw, "models", lambda name, t: _model(c, name, t))
    from bench.data.loader import resolve_mix  # a mix's `of` names become the tables they name

    raw = {**raw, "datasets": resolve_mix(raw.get("datasets", {}), file=c.file, from_suite=True)}
    datasets = _entries(c, raw, "datasets", lambda name, t: _dataset(c, name, t, path.parent))
    methods = _entries(c, raw, "methods", lambda name, t: _method(c, name, t))

    grids_raw = raw.get("grid", [])
    if isinstance(grids_raw, dict):
        grids_raw = [grids_raw]
    if not isinstance(grids_raw, list) or not grids_raw:
        raise c.fail("[[grid]]", "the suite has no grid, so it expands to zero cells", "add [[grid]] with models, datasets and methods lists")
    grids = tuple(_grid(c, i, g, models, datasets, methods) for i, g in enumerate(grids_raw))

    gate = c.keys(c.table(raw.get("gate", {}), "gate"), GATE_KEYS, "gate")
    if gate["baseline"] is not None and baseline_problem(path.parent, gate["baseline"]):
        raise c.fail("[gate] key 'baseline'", baseline_problem(path.parent, gate["baseline"]),
                     'e.g. baseline = "../results/baselines/<suite>.jsonl" (`bench baseline update` writes it)')
    if gate["rules"] is not None:
        from bench.suite.rules import parse_rules

        try:
            parse_rules(gate["rules"])
        except BenchError as exc:
            raise c.fail("[gate] key 'rules'", exc.message, exc.fix) from None
    cluster = c.keys(c.table(raw.get("cluster", {}), "cluster"), CLUSTER_KEYS, "cluster")
    suite = Suite(settings["name"], path, settings, defaults, models, datasets, methods, grids, gate, cluster)

    from bench.suite.plan import expand  # a suite must expand to at least one cell

    try:
        cells = expand(suite)
    except SuiteError as exc:  # a composition's sources are checked once the grids expand
        raise c.fail(exc.where, exc.message, exc.fix) from None
    if not cells:
        raise c.fail("[[grid]]", "every combination is excluded, so the suite expands to zero cells", "remove or narrow the exclude entries")
    for cell in cells:
        _check_devices(c, cell, settings)
        _check_sweep(c, cell)
    return replace(suite, left_out=_bad_records(c, cells, defaults))


def _check_sweep(c: _Checker, cell) -> None:
    """A cell with a sweep: one device (the trials run in the cell's process), and fixed values for what it sweeps."""
    if not cell.train["sweep"]:
        return
    if cell.train["devices"] > 1:
        raise c.fail(f"key 'sweep' of cell {cell.label}", "a sweep runs its trials in the cell's one process, and this "
                     f"cell trains on {cell.train['devices']} devices", "sweep on one device, then set the picked values")


def _check_devices(c: _Checker, cell, settings: dict) -> None:
    """A cell on several devices: what its processes and FSDP can do, known before anything runs (what this machine
    has is the runner's check)."""
    train, method = cell.train, cell.method
    if train["devices"] == 1:
        return
    where = f"key 'devices' of cell {cell.label}"
    if method.get("objective") == "dpo":
        raise c.fail(where, "a DPO cell trains in one process (TRL's trainer holds its reference there)",
                     f"set devices = 1 for method '{method['name']}', e.g. train = {{devices = 1}}")
    if cell.sources:  # a merge is set to one device when its cell is made (suite/plan.py); this is a fusion
        raise c.fail(where, "an X-LoRA fusion (kind = \"fusion\") trains in one process: PEFT's X-LoRA is not offered over "
                     "several devices here", f"set devices = 1 for method '{method['name']}', e.g. train = {{devices = 1}}")
    if not settings["isolate"]:
        raise c.fail(where, f"devices = {train['devices']} starts one process per device from the cell's own process, "
                     "but the suite sets isolate = false (cells run inside bench's process)", "drop isolate = false")
    if train["distributed"] != "fsdp":
        return
    where = f"key 'distributed' of cell {cell.label}"
    if settings["device"] == "cpu":
        raise c.fail(where, 'distributed = "fsdp" shards over GPUs (accelerate runs FSDP on CUDA only), and the suite '
                     'sets device = "cpu"', 'use distributed = "ddp" on the CPU')
    if not METHOD_KINDS[method["kind"]].fsdp:
        taken = [k for k, m in METHOD_KINDS.items() if m.fsdp and m.adapter]
        raise c.fail(where, f"method '{method['name']}' is {method['kind']}; FSDP here takes full fine-tuning and the "
                     f"adapters peft documents for FSDP ({', '.join(taken)})",
                     f'use distributed = "ddp" for it, e.g. [methods.{method["name"]}] train = {{distributed = "ddp"}}')
    if method["kind"] == "qlora" and train["precision"] != "bf16":
        raise c.fail(where, f"QLoRA under FSDP keeps its 4-bit weights in bf16 storage so FSDP can flatten them with the "
                     f"rest, which needs precision = \"bf16\" (this cell has {train['precision']})",
                     'set precision = "bf16" for this cell, or use distributed = "ddp"')


def _entries(c: _Checker, raw: dict, kind: str, build) -> dict[str, Entry]:
    table = c.table(raw.get(kind, {}), kind)
    return {name: build(name, c.table(t, f"{kind}.{name}")) for name, t in table.items()}


def _train(c: _Checker, value, where: str) -> dict:
    if value is None:
        return {}
    table = _sweeps(c, c.table(value, where), where)
    checked = c.keys(table, TRAIN_KEYS, where)
    return {k: checked[k] for k in table}  # only the keys the entry sets: they override, the rest inherit


def _sweeps(c: _Checker, table: dict, where: str) -> dict:
    """A training table with its sweep gathered and checked: `lr = [1e-4, 3e-4]` is `sweep = {lr = [1e-4, 3e-4]}`;
    every swept key must be one a sweep may vary, every value valid for its key, the combinations few enough."""
    lists = {k: v for k, v in table.items() if k in SWEEPABLE and isinstance(v, list)}
    sweep = table.get("sweep")
    if not lists and sweep is None:
        return table
    if sweep is not None and not isinstance(sweep, dict):
        raise c.fail(f"[{where}] key 'sweep'", "must be a table of lists", "e.g. sweep = {lr = [1e-4, 3e-4, 1e-3]}")
    if lists and sweep:
        raise c.fail(f"[{where}] key 'sweep'", f"is given beside {', '.join(lists)} = [...], which is a sweep too",
                     "put every swept key in one place: sweep = {lr = [...], weight_decay = [...]}")
    sweep = dict(lists or sweep)
    combinations = 1
    for key, values in sweep.items():
        at = f"[{where}] key 'sweep.{key}'" if not lists else f"[{where}] key '{key}'"
        if key not in SWEEPABLE:
            raise c.fail(at, "is not a key a sweep may vary", f"sweep one of: {', '.join(SWEEPABLE)}")
        if not isinstance(values, list) or not values:
            raise c.fail(at, "must be a non-empty list of values", f"e.g. {key} = [{TRAIN_KEYS[key].default}, ...]")
        checked = [c.value(v, TRAIN_KEYS[key], at) for v in values]
        if len(set(map(repr, checked))) != len(checked):
            raise c.fail(at, "lists a value twice", "give each value once")
        sweep[key] = checked
        combinations *= len(checked)
    if combinations > MAX_SWEEP:
        raise c.fail(f"[{where}] key 'sweep'", f"has {combinations} combinations; at most {MAX_SWEEP} train per cell",
                     "sweep fewer values, or fewer keys at once")
    return {**{k: v for k, v in table.items() if k not in lists}, "sweep": sweep}


def _model(c: _Checker, name: str, table: dict) -> Entry:
    where = f"models.{name}"
    cfg = c.keys(table, MODEL_KEYS, where)
    info = FAMILIES[cfg["family"]]
    _chat_model_keys(c, cfg, table, info, where)
    if cfg["preset"] is not None and cfg["preset"] not in info.presets:
        raise c.fail(f"[{where}] key 'preset'", f"family {cfg['family']} has no preset '{cfg['preset']}'", f"use one of: {', '.join(info.presets)}")
    if cfg["backend"] not in info.backends:
        raise c.fail(f"[{where}] key 'backend'", f"family {cfg['family']} has no backend '{cfg['backend']}'", f"use one of: {', '.join(info.backends)}")
    if cfg["weights"] is None:
        cfg["weights"] = "pretrained" if cfg["checkpoint"] else ("zoo" if cfg["preset"] == "tiny" else "random")
    if cfg["weights"] == "pretrained" and not cfg["checkpoint"]:
        raise c.fail(f"[{where}] key 'weights'", "weights = \"pretrained\" needs a checkpoint",
                     'set checkpoint = "<hf id or local dir>", or weights = "random" to measure cost only')
    if cfg["weights"] == "zoo" and (cfg["preset"] != "tiny" or cfg["checkpoint"]):
        raise c.fail(f"[{where}] key 'weights'", "weights = \"zoo\" is bench's own pretrained base for the tiny preset only",
                     'use preset = "tiny" without a checkpoint, or weights = "random"/"pretrained"')
    if cfg["weights"] == "zoo" and cfg["backend"] != "transformers":
        raise c.fail(f"[{where}] key 'backend'", "the zoo bases are built with the transformers backend", 'use weights = "random" with backend = "open_clip"')
    if cfg["weights"] == "zoo":
        from bench.suite.zoo import recipe_id

        cfg["zoo_recipe"] = recipe_id(cfg["family"])  # a rebuilt base is a different model: new cell ids, new base quality
    train = _train(c, cfg.pop("train"), f"{where}.train")
    return Entry(name, {"name": name, **cfg}, train)


def _chat_model_keys(c: _Checker, cfg: dict, table: dict, info, where: str) -> None:
    """Family auto has no presets and takes everything from its checkpoint; `components` overrides what the chat
    families find in the model. Neither changes an existing suite's cell ids: an unset `components` is dropped."""
    components = cfg.pop("components")
    if not info.presets:
        if "preset" in table:
            raise c.fail(f"[{where}] key 'preset'", f"family {cfg['family']} has no presets: its checkpoint is the "
                         "architecture", "drop `preset`, or use family smolvlm or qwen2_vl for their presets")
        if not cfg["checkpoint"]:
            raise c.fail(f"[{where}] key 'checkpoint'", f"family {cfg['family']} needs a checkpoint (it has no preset)",
                         'set checkpoint = "<hf id or local dir>", e.g. "HuggingFaceTB/SmolVLM-Instruct"')
        cfg["preset"] = None
    if components is None:
        return
    if not info.chat_template:
        raise c.fail(f"[{where}] key 'components'", f"family {cfg['family']} has fixed components",
                     "drop `components`: only the chat families (smolvlm, qwen2_vl, auto) find theirs in the model")
    for comp, prefixes in components.items():
        at = f"[{where}] key 'components.{comp}'"
        if comp not in COMPONENTS:
            raise c.fail(at, f"unknown component {comp!r}", f"use: {', '.join(COMPONENTS)}")
        if not isinstance(prefixes, list) or not prefixes or not all(isinstance(p, str) and p for p in prefixes):
            raise c.fail(at, "must be a non-empty list of module names", 'e.g. ["model.language_model", "lm_head"]')
    if "language" not in components:
        raise c.fail(f"[{where}] key 'components'", "names no language component, so adapters have nothing to target",
                     'add language = ["<the language model\'s module name>", "lm_head"]')
    cfg["components"] = components


def _dataset(c: _Checker, name: str, table: dict, base_dir: Path) -> Entry:
    from bench.data.loader import DATASET_KEYS, FORMATS, check_dataset

    where = f"datasets.{name}"
    spec = dict(DATASET_KEYS)
    spec["format"] = Key(str, None, DATASET_KEYS["format"].doc, choices=tuple(FORMATS), required=True)
    spec["train"] = Key(dict, None, "training-setting overrides for cells of this dataset")
    cfg = c.keys(table, spec, where)
    cfg = {k: v for k, v in cfg.items() if v is not None or k in table}
    tasks = FORMATS[cfg["format"]]
    if cfg.get("task") is None:
        if len(tasks) > 1:
            raise c.fail(f"[{where}] key 'task'", f"format {cfg['format']} offers several tasks", f"set task to one of: {', '.join(tasks)}")
        cfg["task"] = tasks[0]
    elif cfg["task"] not in tasks:
        raise c.fail(f"[{where}] key 'task'", f"format {cfg['format']} has no task '{cfg['task']}'", f"use one of: {', '.join(tasks)}")
    train = _train(c, cfg.pop("train", None), f"{where}.train")
    try:  # every record's problems collected: the cells' on_bad_sample decides once the grids expand (_bad_records)
        c.problems[name] = check_dataset(cfg, base_dir=base_dir, file=c.file, where=f"[{where}]", on_bad_sample="skip")
    except DataError as exc:
        raise _in_entry(c, exc, where) from None
    return Entry(name, {"name": name, **cfg}, train)


def _in_entry(c: _Checker, exc: DataError, where: str) -> DataError:
    """A problem inside a data file, named by the suite entry that points at it, then the file and record."""
    if exc.file == c.file:
        return exc
    inner = ": ".join(p for p in (exc.file, exc.where, exc.message) if p)
    return DataError(inner, file=c.file, where=f"[{where}]", fix=exc.fix)


def _bad_records(c: _Checker, cells, defaults: dict) -> dict:
    """One policy from validation to the end of the run: a dataset's records that a cell cannot use stop the suite
    where a cell reading them (as its data, a mix's part or its retention data) says on_bad_sample = "error", every
    problem listed at once; under "skip" they are left out when the cell loads its data. Returns, per dataset, what
    the cells will leave out by reason."""
    from bench.data.problems import listing

    policies: dict[str, set[str]] = {}
    for cell in cells:
        names = [cell.dataset["name"], *(p["name"] for p in cell.dataset.get("of") or () if isinstance(p, dict))]
        if cell.retention:
            names.append(cell.retention["name"])
        for name in names:
            policies.setdefault(name, set()).add(cell.train["on_bad_sample"])
    left_out, refused = {}, []
    for name, problems in c.problems.items():
        if problems.errors and "error" in policies.get(name, {defaults["on_bad_sample"]}):
            refused.append(_in_entry(c, listing(problems.errors), f"datasets.{name}"))
        elif problems.items:
            left_out[name] = problems.counts()
    if len(refused) == 1:
        raise refused[0]
    if refused:  # every dataset's problems in one round
        text = "\n".join(f"{e.where}: {e.message}" for e in refused)
        raise DataError(f"{len(refused)} datasets hold records a cell cannot use:\n{text}", file=c.file,
                        fix=refused[0].fix)
    return left_out


def _method(c: _Checker, name: str, table: dict) -> Entry:
    where = f"methods.{name}"
    cfg = c.keys(table, METHOD_KEYS, where)
    kind = cfg["kind"]
    if kind in RANKED_KINDS and cfg["alpha"] is None:
        cfg["alpha"] = float(2 * cfg["r"])
    if cfg["targets"] is not None:
        if not cfg["targets"]:
            raise c.fail(f"[{where}] key 'targets'", "is empty, so no module would be adapted",
                         'name modules per component, e.g. targets = { language = ["q_proj", "v_proj"] }, or remove the key '
                         "to use the family's recipe")
        for comp, leaves in cfg["targets"].items():
            if not isinstance(leaves, list) or not leaves or not all(isinstance(x, str) for x in leaves):
                raise c.fail(f"[{where}] key 'targets'", f"targets.{comp} must be a non-empty list of module names",
                             f'e.g. targets = {{ {comp} = ["q_proj", "v_proj"] }}')
    for key in ("train_full", "freeze"):
        if cfg[key] is not None and not all(isinstance(x, str) for x in cfg[key]):
            raise c.fail(f"[{where}] key '{key}'", "must be a list of component names", f'e.g. {key} = ["projector"]')
    keep = _method_keys(kind)  # only what matters for this kind, so equal methods hash equal and records stay readable
    keep |= _objective_keys(c, cfg, table, where)
    for key in table:
        if key not in keep and key != "train" and not (key == "objective" and METHOD_KINDS[kind].trains):
            fix = {"freeze": 'remove it (an adapter method trains only its adapters and train_full; the rest stays frozen), '
                             'or use kind = "full"',
                   "targets": f"remove it, or use an adapter kind ({', '.join(ADAPTER_KINDS)})"}
            fix["train_full"] = fix["targets"]
            raise c.fail(f"[{where}] key '{key}'", f"has no meaning for kind = \"{kind}\"", fix.get(key, "remove it"))
    if METHOD_KINDS[kind].composes:
        _composition(c, cfg, where)
    train = _train(c, cfg.pop("train"), f"{where}.train")
    for key in ("sweep", "devices"):
        if not METHOD_KINDS[kind].trains and train.get(key) not in (None, TRAIN_KEYS[key].default):
            raise c.fail(f"[{where}.train] key '{key}'", f"a {kind} trains nothing, so it has nothing to "
                         f"{'sweep' if key == 'sweep' else 'split over devices'}", "remove it from this method")
    return Entry(name, {"name": name, **{k: v for k, v in cfg.items() if k in keep}}, train)


def _objective_keys(c: _Checker, cfg: dict, table: dict, where: str) -> set[str]:
    """The objective's keys a method keeps: none for plain SFT (so its cell id is what it was), objective and beta for
    DPO, and start_from when the method trains on from another cell's adapter."""
    kind = METHOD_KINDS[cfg["kind"]]
    keep = set()
    if cfg["objective"] == "dpo":
        if not kind.trains or kind.composes:
            raise c.fail(f"[{where}] key 'objective'", f"a {cfg['kind']} cannot train with DPO",
                         "use DPO with full fine-tuning or an adapter kind (lora, qlora, ia3, ...)")
        keep |= {"objective", "beta"}
        if cfg.get("train_full"):
            raise c.fail(f"[{where}] key 'train_full'", "a DPO cell trains its adapter alone: what trains beside it "
                         "would be shared with TRL's reference adapter, moving the reference too",
                         "remove train_full (a source's projector is kept as the source trained it)")
    elif "beta" in table:
        raise c.fail(f"[{where}] key 'beta'", "has no meaning unless objective = \"dpo\"", 'add objective = "dpo", or remove it')
    if cfg["start_from"] is not None:
        if not kind.adapter or not kind.trains or kind.composes:
            raise c.fail(f"[{where}] key 'start_from'", f"a {cfg['kind']} cannot start from another cell's adapter",
                         "use start_from with an adapter kind (lora, qlora, ia3, prompt_tuning, ...)")
        at = f"{where}.start_from"
        cfg["start_from"] = _cell_ref(c, cfg["start_from"], at)
        keep.add("start_from")
    return keep


# a table naming one cell of the suite (a merge's source, a start_from): the model is the naming cell's own unless given
CELL_REF_KEYS = {"model": Key(str), "dataset": Key(str, required=True), "method": Key(str, required=True)}


def _cell_ref(c: _Checker, table, where: str) -> dict:
    return {k: v for k, v in c.keys(c.table(table, where), CELL_REF_KEYS, where).items() if v is not None}


def _composition(c: _Checker, cfg: dict, where: str) -> None:
    """A merge method's sources (tables naming a cell), one weight per source and, where the combination needs one, a
    density; which cells they name is checked once the grids expand (bench/suite/compose.py)."""
    from bench.suite.compose import WITH_DENSITY

    sources = cfg["sources"]
    if not sources:
        raise c.fail(f"[{where}] key 'sources'", f"is missing or empty: a {cfg['kind']} builds on the adapters of other cells",
                     'e.g. sources = [{dataset = "scenes-vqa", method = "lora-r8"}, {dataset = "digits-vqa", method = "lora-r8"}]')
    cfg["sources"] = [_cell_ref(c, t, f"{where}.sources[{i}]") for i, t in enumerate(sources)]
    weights = cfg["weights"]
    if weights is None:
        cfg["weights"] = [round(1 / len(sources), 6)] * len(sources)
    elif len(weights) != len(sources) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and
                                                  math.isfinite(w) for w in weights):
        raise c.fail(f"[{where}] key 'weights'", f"must be one finite number per source ({len(sources)})",
                     f"e.g. weights = [{', '.join(['0.5'] * len(sources))}]")
    else:
        cfg["weights"] = [float(w) for w in weights]
    if cfg["combination"] not in WITH_DENSITY and cfg["density"] is not None:
        raise c.fail(f"[{where}] key 'density'", f"combination = \"{cfg['combination']}\" prunes nothing, so a density "
                     "would change the cell's id and not its adapter", f"remove it, or use one of {', '.join(WITH_DENSITY)}")
    if cfg["combination"] in WITH_DENSITY and cfg["density"] is None:
        raise c.fail(f"[{where}] key 'density'", f"combination = \"{cfg['combination']}\" prunes each adapter to a share of "
                     "its weights, and none is given", "e.g. density = 0.5")


def _method_keys(kind: str) -> set[str]:
    """The [methods.NAME] keys that mean something for `kind`."""
    if kind == "full":
        return {"kind", "freeze"}
    if kind == "prompt_tuning":  # virtual tokens only: no targets, nothing trained beside them
        return {"kind", "num_virtual_tokens"}
    if METHOD_KINDS[kind].composes:
        return {"kind", "sources"} | ({"combination", "weights", "density"} if not METHOD_KINDS[kind].trains else set())
    keep = {"kind", "train_full", "targets"}
    if kind in RANKED_KINDS:
        keep |= {"r", "alpha", "dropout"}
    if kind == "qlora":
        keep |= {"quant_type", "double_quant", "compute_dtype"}
    return keep


def _grid(c: _Checker, i: int, table, models, datasets, methods) -> Grid:
    where = f"grid[{i}]"
    cfg = c.keys(c.table(table, where), GRID_KEYS, where)
    g_models = c.names(cfg["models"], models, "model", f"[{where}] key 'models'")
    g_datasets = c.names(cfg["datasets"], datasets, "dataset", f"[{where}] key 'datasets'")
    g_methods = c.names(cfg["methods"], methods, "method", f"[{where}] key 'methods'")
    excludes = []
    for j, ex in enumerate(cfg["exclude"]):
        ew = f"{where}.exclude[{j}]"
        ex = {k: v for k, v in c.keys(c.table(ex, ew), EXCLUDE_KEYS, ew).items() if v is not None}
        if not ex:
            raise c.fail(f"[{ew}]", "an empty exclude matches every cell", "name a model, dataset and/or method")
        for k, known in (("model", models), ("dataset", datasets), ("method", methods)):
            if k in ex:
                c.names([ex[k]], known, k, f"[{ew}] key '{k}'")
        excludes.append(ex)
    for m in g_models:
        family = models[m].config["family"]
        for d in g_datasets:
            if not trains_on(FAMILIES[family].task, datasets[d].config["task"]) and not any(_excludes(ex, m, d, None) for ex in excludes):
                raise c.fail(
                    f"[{where}]",
                    f"model '{m}' ({family}) trains on {FAMILIES[family].task} data, dataset '{d}' is {datasets[d].config['task']}",
                    f"pair {family} models with a {FAMILIES[family].task} dataset, or add exclude = [{{model = \"{m}\", dataset = \"{d}\"}}]",
                )
    for m in g_models:
        _check_components(c, models[m], [methods[k] for k in g_methods])
    _check_objectives(c, [models[m] for m in g_models], [datasets[d] for d in g_datasets], [methods[k] for k in g_methods],
                      lambda m, d, k: any(_excludes(ex, m, d, k) for ex in excludes))
    if cfg["retention"] is not None:
        (retention,) = c.names([cfg["retention"]], datasets, "dataset", f"[{where}] key 'retention'")
        task = datasets[retention].config["task"]
        other = next((d for d in g_datasets if datasets[d].config["task"] != task), None)
        if other is not None:
            raise c.fail(f"[{where}] key 'retention'", f"dataset '{retention}' is {task}, dataset '{other}' of this grid is "
                         f"{datasets[other].config['task']}: a retention dataset is scored by the cells' own task",
                         "name a dataset of the grid's task, or give the other datasets a grid of their own")
    return Grid(g_models, g_datasets, g_methods, tuple(excludes), _train(c, cfg["train"], f"{where}.train"),
                cfg["retention"])


def trains_on(family_task: str, data_task: str) -> bool:
    """Whether a family of `family_task` trains on data of `data_task`: its own, or, for the instruction families,
    preference pairs (DPO; SFT trains on the chosen answers)."""
    return data_task == family_task or (family_task == "vqa" and data_task == "preference")


def _check_objectives(c: _Checker, models: list[Entry], datasets: list[Entry], methods: list[Entry], excluded) -> None:
    """DPO trains on preference pairs, written by a chat template."""
    for method in methods:
        if method.config.get("objective") != "dpo":
            continue
        where = f"[methods.{method.name}] key 'objective'"
        for dataset in datasets:
            if dataset.config["task"] != "preference" and not all(excluded(m.name, dataset.name, method.name) for m in models):
                raise c.fail(where, f"objective = \"dpo\" trains on preference pairs, and dataset '{dataset.name}' is "
                             f"{dataset.config['task']} data", "pair DPO methods with a preference dataset (format = "
                             "\"preference\", or task = \"preference\" of scenes or charts), or add an exclude")
        for model in models:
            family = model.config["family"]
            if not FAMILIES[family].chat_template and not all(excluded(model.name, d.name, method.name) for d in datasets):
                raise c.fail(where, f"TRL's DPO writes each pair with the processor's chat template, and model "
                             f"'{model.name}' ({family}) has none", "use a chat family (smolvlm, qwen2_vl, auto)")


def _check_components(c: _Checker, model: Entry, methods: list[Entry]) -> None:
    """Components named by a method (freeze, train_full, targets) must exist in the model's family."""
    family = model.config["family"]
    known = FAMILIES[family].components
    for method in methods:
        cfg = method.config
        for key, names in (("freeze", cfg.get("freeze") or []), ("train_full", cfg.get("train_full") or []),
                           ("targets", list(cfg.get("targets") or {}))):
            bad = [n for n in names if n not in known]
            if bad:
                raise c.fail(f"[methods.{method.name}] key '{key}'",
                             f"names component(s) {bad} that model '{model.name}' ({family}) does not have",
                             f"use: {', '.join(known)}")
        if set(cfg.get("freeze") or []) >= set(known):
            raise c.fail(f"[methods.{method.name}] key 'freeze'", f"freezes every component of model '{model.name}' "
                         f"({', '.join(known)}), so nothing would train", "leave at least one component unfrozen")


def _excludes(ex: dict, model: str, dataset: str, method: str | None) -> bool:
    """True when the exclude entry matches; method=None means 'whatever the method' (it must not name one)."""
    if "model" in ex and ex["model"] != model:
        return False
    if "dataset" in ex and ex["dataset"] != dataset:
        return False
    if "method" in ex:
        return method is not None and ex["method"] == method
    return True
