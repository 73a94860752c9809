"""Cells that compose adapters other cells of the suite trained (`kind = "merge"`): which cells they read, checked when
the suite is read, and the order they run in. Nothing here imports torch.

A composed method names its sources by model, dataset and method name ({dataset, method}, the model being the composed
cell's own unless named); each names exactly one cell of the suite. A composed cell's id includes its sources' ids, so
a source trained differently makes a new composed cell. Sources may themselves be composed (their kept adapter is the
composition), but not in a cycle.
"""

from __future__ import annotations

from dataclasses import replace

from bench.errors import SuiteError
from bench.models.catalog import METHOD_KINDS

# PEFT's LoraModel.add_weighted_adapter combination types; those that add the sources' matrices element-wise need equal ranks
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
                "magnitude_prune", "magnitude_prune_svd")
SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
WITH_DENSITY = tuple(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))
COMPOSABLE = ("lora", "qlora", "merge")  # LoRA adapters compose (QLoRA's is one; a merge keeps one)


def composes(method: dict) -> bool:
    return bool(METHOD_KINDS[method["kind"]].composes)


def resolve(cells: list, grids_of: dict | None = None) -> list:
    """`cells` with every composed cell's sources resolved (Cell.sources: their ids, in the method's order) and its id
    made from theirs; a SuiteError naming the method's key for a source that names no cell, one of another base model,
    one that is not a LoRA adapter, ranks a combination cannot add, or a cycle."""
    by_names: dict[tuple, list] = {}
    for cell in cells:
        by_names.setdefault((cell.model["name"], cell.dataset["name"], cell.method["name"]), []).append(cell)
    done: dict[str, object] = {}
    rank_of: dict[str, int | None] = {}  # a settled merge's adapter rank (what a merge of it adds)

    def settle(cell, path: tuple):
        if not composes(cell.method) and not cell.method.get("start_from"):
            return cell
        if cell.cell_id in done:
            return done[cell.cell_id]
        key = "sources" if composes(cell.method) else "start_from"
        where = f"[methods.{cell.method['name']}] key '{key}'"
        ids = [c.cell_id for c in path]
        if cell.cell_id in ids:
            chain = " → ".join(c.label for c in (*path[ids.index(cell.cell_id):], cell))
            raise SuiteError(f"the composition is a cycle: {chain}", where=where,
                             fix="a composed cell cannot read its own adapter, through other compositions or not")
        sources = []
        for i, spec in enumerate(cell.method["sources"] if key == "sources" else [cell.method["start_from"]]):
            model = spec.get("model", cell.model["name"])
            label = f"sources[{i}]" if key == "sources" else "start_from"
            found = by_names.get((model, spec["dataset"], spec["method"]), [])
            name = f"{model}/{spec['dataset']}/{spec['method']}"
            if model != cell.model["name"]:
                raise SuiteError(f"{label} is cell {name}, of model '{model}'; cell {cell.label} composes over "
                                 f"model '{cell.model['name']}'", where=where,
                                 fix="compose adapters trained on the composed cell's own base model")
            if not found:
                raise SuiteError(f"{label} names no cell of the suite: no grid pairs {name}", where=where,
                                 fix="name a model/dataset/method that a [[grid]] expands to, or add that grid")
            if len(found) > 1:
                raise SuiteError(f"{label} names {len(found)} cells ({name} in grids with different training "
                                 "settings)", where=where, fix="give those grids different method names")
            source = found[0]
            if key == "start_from":
                _check_same_adapter(cell, source, name, where)
            elif source.method["kind"] not in COMPOSABLE:
                raise SuiteError(f"sources[{i}] is cell {name}, a {source.method['kind']} cell; only LoRA adapters "
                                 f"compose ({', '.join(COMPOSABLE)})", where=where, fix="name a cell of kind lora or qlora")
            if source.train["save"] is False:
                raise SuiteError(f"{label} is cell {name}, which keeps no adapter (save = false)", where=where,
                                 fix="let the source keep its adapter (save = true, the default)")
            sources.append(settle(source, (*path, cell)))
        ranks = [rank_of.get(s.cell_id, s.method.get("r")) for s in sources]
        _check_ranks(cell, ranks, where)
        settled = replace(cell, sources=tuple(s.cell_id for s in sources), cell_id=_composed_id(cell, sources))
        done[cell.cell_id] = settled
        rank_of[settled.cell_id] = _combined_rank(cell.method.get("combination"), ranks)
        return settled

    return [settle(cell, ()) for cell in cells]


# what a method says beside the adapter's shape: a cell may start from an adapter trained with another objective, with
# another dropout (DPO turns it off) or other parameters trained beside it (DPO trains none)
NOT_ADAPTER = ("name", "objective", "beta", "start_from", "dropout", "train_full")


def _check_same_adapter(cell, source, name: str, where: str) -> None:
    """A cell that starts from another's adapter trains that adapter on: its method must describe the same one."""
    ours = {k: v for k, v in cell.method.items() if k not in NOT_ADAPTER}
    theirs = {k: v for k, v in source.method.items() if k not in NOT_ADAPTER}
    if ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise SuiteError(f"start_from is cell {name}, whose adapter differs from method '{cell.method['name']}' in "
                         f"{', '.join(differ)} ({', '.join(f'{k} = {theirs.get(k)!r}' for k in differ)})", where=where,
                         fix="give the method the same kind and adapter settings as the cell it starts from")


def _check_ranks(cell, ranks: list, where: str) -> None:
    combination = cell.method.get("combination")  # a merge's; X-LoRA mixes experts of any rank
    if combination in SAME_RANK and len(set(ranks)) > 1:
        raise SuiteError(f"combination = \"{combination}\" adds the sources' matrices, and their ranks differ "
                         f"({', '.join(str(r) for r in ranks)})", where=where.replace("'sources'", "'combination'"),
                         fix='use combination = "cat" or "svd", or sources of one rank')


def _combined_rank(combination: str | None, ranks: list) -> int | None:
    """The rank of the adapter add_weighted_adapter makes: cat stacks the sources', svd keeps the largest, the others
    the one they share."""
    known = [r for r in ranks if isinstance(r, int)]
    if combination is None or not known:
        return None
    return sum(known) if combination == "cat" else max(known)


def _composed_id(cell, sources: list) -> str:
    from bench.suite.plan import identity, stable_hash

    return stable_hash({"model": cell.model, "dataset": cell.dataset, "method": cell.method,
                        "train": identity(cell.train), "sources": [s.cell_id for s in sources]})


def waves(jobs: list) -> list[list]:
    """The jobs in waves that run one after the other: first every job no other one waits for, then the composed cells
    whose sources ran in the wave before, and so on (the order within a wave kept)."""
    cells = {j.cell.cell_id: j.cell for j in jobs}
    depth: dict[str, int] = {}

    def level(cell_id: str) -> int:
        if cell_id not in depth:
            cell = cells.get(cell_id)
            depth[cell_id] = 1 + max((level(s) for s in cell.sources), default=-1) if cell is not None else -1
        return depth[cell_id]

    out: dict[int, list] = {}
    for job in jobs:
        out.setdefault(max(0, level(job.cell.cell_id)), []).append(job)
    return [out[k] for k in sorted(out)]
