"""Aggregation over repeats, the noise rule and Pareto fronts, shared by report, compare and gate.

A *group* is every (latest) record of one cell_id: its repeats. Numbers are summarised over the
repeats that finished (status "ok"); a cell whose repeats all failed has no numbers.

The noise rule (`differs`): two groups differ on a field beyond noise when

    |mean_new - mean_old| > noise,   noise = max(range_old, range_new),   range = max - min

i.e. the change is larger than the spread any one configuration showed between its own repeats.
A side with a single value has no range and contributes nothing (a baseline run three times
still gives its spread to a one-off current run). With no repeats on either side nothing was
measured: noise is None and every change counts (the thresholds alone decide). The rule is deliberately conservative for a CI gate (it never
calls a shift inside the observed run-to-run spread a regression) and explainable in one line,
which a t-test on 2-3 repeats is not.

This module never imports torch.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field

from bench.fields import BY_PATH, KIND_MEANINGS, NUMERIC_FIELDS
from bench.records import latest_per_cell


@functools.lru_cache(maxsize=256)
def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def get(record: dict, dotted: str):
    """The value at a dotted path ("cost.peak_memory_mb"), or None where any part is absent or null."""
    value = record
    for part in _parts(dotted):  # called per record × field: the split is cached
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def number(value) -> float | None:
    # bools are ints in Python; a flag is not a measurement
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer past float range (a hand-edited file): not a measurement
        return None
    return value if math.isfinite(value) else None


def invalid_on_either_side(baseline: list[dict], current: list[dict], fields=NUMERIC_FIELDS) -> list[str]:
    """`invalid_numbers` of both sides of a comparison, each line saying which side."""
    return [f"{side} {p}" for side, records in (("baseline", baseline), ("current", current)) for p in invalid_numbers(records, fields)]


def invalid_numbers(records: list[dict], fields=NUMERIC_FIELDS) -> list[str]:
    """Where a measurement is present but not a finite number (NaN, inf, text, true): bench never writes
    one, so such a file was edited or corrupted, and a gate must not read it as "no value"."""
    out = []
    for r in records:
        marked = r.get("nonfinite") if isinstance(r.get("nonfinite"), dict) else {}  # bench stored NaN/inf as null
        for dotted in fields:
            value = get(r, dotted)
            if value is not None and number(value) is None:
                out.append(f"{r['cell_id']} repeat {r['repeat']}: {dotted} = {str(value)[:40]!r} is not a finite number")
            elif dotted in marked:
                out.append(f"{r['cell_id']} repeat {r['repeat']}: {dotted} was measured as {str(marked[dotted])[:10]}, "
                           "not a finite number")
    return out


@dataclass(frozen=True)
class Summary:
    """One field over the repeats of one cell."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @functools.cached_property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for a single value."""
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def spread(self) -> float | None:
        """max - min over the repeats; None when there is one value (no spread was measured)."""
        return self.max - self.min if self.n >= 2 else None


def summarize(records: list[dict], dotted: str, *, ok_only: bool = True) -> Summary | None:
    """The field over `records` (ok ones unless told otherwise); None when no record has a number."""
    values = []
    for r in records:
        if ok_only and r.get("status") != "ok":
            continue
        v = number(get(r, dotted))
        if v is not None:
            values.append(v)
    return Summary(tuple(values)) if values else None


@dataclass
class Group:
    """The repeats of one cell (latest record per repeat), ordered by repeat."""

    cell_id: str
    records: list[dict] = field(default_factory=list)

    @property
    def first(self) -> dict:
        return self.records[0]

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r.get("status") == "ok"]

    @property
    def status(self) -> str:
        """"ok" when every repeat is ok, else the first status that is not."""
        for r in self.records:
            if r.get("status") != "ok":
                return r.get("status", "error")
        return "ok"

    @property
    def message(self) -> str:
        for r in self.records:
            if r.get("status") != "ok" and r.get("message"):
                return str(r["message"])
        return ""

    @property
    def n(self) -> int:
        return len(self.records)

    def summary(self, dotted: str) -> Summary | None:
        return summarize(self.records, dotted)

    def mean(self, dotted: str) -> float | None:
        s = self.summary(dotted)
        return s.mean if s else None

    # names used by every table
    @property
    def model(self) -> str:
        return str(get(self.first, "model.name") or "?")

    @property
    def dataset(self) -> str:
        return str(get(self.first, "dataset.name") or "?")

    @property
    def method(self) -> str:
        return str(get(self.first, "method.name") or "?")

    @property
    def metric(self) -> str | None:
        return get(self.first, "quality.metric")

    @property
    def higher_is_better(self) -> bool:
        hib = get(self.first, "quality.higher_is_better")
        return True if hib is None else bool(hib)

    @property
    def random_weights(self) -> bool:
        return get(self.first, "model.weights") == "random"


def group_by_cell(records: list[dict]) -> dict[str, Group]:
    """cell_id -> Group, in first-seen order; a re-run repeat replaces the older record of that repeat."""
    groups: dict[str, Group] = {}
    for r in latest_per_cell(records):
        groups.setdefault(r["cell_id"], Group(r["cell_id"])).records.append(r)
    for g in groups.values():
        g.records.sort(key=lambda r: r.get("repeat", 0) or 0)
    return groups


def noise(a: Summary | None, b: Summary | None) -> float | None:
    """The larger repeat spread of the two sides; None when neither side has two values."""
    spreads = [s.spread for s in (a, b) if s is not None and s.spread is not None]
    return max(spreads) if spreads else None


def differs(a: Summary | None, b: Summary | None) -> bool:
    """Whether the means differ beyond noise (module docstring). Unmeasured noise: any difference counts."""
    if a is None or b is None:
        return False
    n = noise(a, b)
    delta = abs(b.mean - a.mean)
    return delta > 0 if n is None else delta > n


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names of the points not dominated when cost (x) is minimised and gain (y) maximised.

    A point is dominated when another has cost <= and gain >= with at least one strictly better.
    Equal points are both kept.
    """
    front = set()
    for name, x, y in points:
        dominated = any(
            (ox <= x and oy >= y) and (ox < x or oy > y) for oname, ox, oy in points if oname != name
        )
        if not dominated:
            front.add(name)
    return front


def gain(group: Group) -> float | None:
    """Mean Δ quality oriented so that larger is better (a lower-is-better metric's delta is negated)."""
    d = group.mean("quality.delta")
    if d is None or group.random_weights:
        return None
    return d if group.higher_is_better else -d


def pareto_cells(groups: list[Group], cost_field: str) -> set[str]:
    """cell_ids on the (cost, Δ quality) front among `groups` (one model x dataset); needs both numbers."""
    points = []
    for g in groups:
        x, y = g.mean(cost_field), gain(g)
        if x is not None and y is not None:
            points.append((g.cell_id, x, y))
    return pareto_front(points)


def by_model_dataset(groups) -> dict[tuple[str, str], list[Group]]:
    """(model, dataset) -> its groups, in first-seen order."""
    out: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        out.setdefault((g.model, g.dataset), []).append(g)
    return out


def _kinds(group: Group, dotted: str, kind_path: str) -> list[str]:
    """The kinds of the numbers `group.summary(dotted)` averages ("unrecorded" where a record names none)."""
    return sorted({str(get(r, kind_path) or "unrecorded") for r in group.ok if number(get(r, dotted)) is not None})


def unlike_kinds(dotted: str, old: Group, new: Group) -> str:
    """Why the two sides' numbers of `dotted` count different things ("" when both count one and the same kind): the
    field's kind (bench.fields) differs between them, or is mixed within one."""
    kind_path = BY_PATH[dotted].kind if dotted in BY_PATH else None
    if kind_path is None:
        return ""
    o, n = _kinds(old, dotted, kind_path), _kinds(new, dotted, kind_path)
    if not o or not n or (o == n and len(o) == 1):  # a side without numbers is not a comparison of two kinds
        return ""
    name = kind_path.rsplit(".", 1)[-1]
    return f"not comparable: {name} is {' + '.join(o)} in the baseline, {' + '.join(n)} now ({KIND_MEANINGS[kind_path]})"
