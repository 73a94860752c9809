"""How sure a Δ is: 95 % intervals from a paired bootstrap over the evaluation items, with the seeds resampled too.

Each record keeps its evaluation's per-item scores, base and tuned on the same items (quality.items). A cell's Δ is
the mean over its seeds of the mean over items of (tuned − base). Two things make it uncertain: which items the
evaluation happened to hold (resampled with replacement, the same resample for every seed, since the seeds were
scored on the same items and the base pairs with each) and which seeds the training drew (resampled with
replacement). One seed: the item bootstrap alone. The 2.5th and 97.5th percentiles of the resampled Δ are the
interval (Efron's percentile bootstrap). A method against the best of its model × dataset: the same over the
difference of their Δ (of their tuned scores, with one base), the items paired, each side's seeds resampled on their
own.

Resampling is seeded: the same records always give the same interval. Reads records only; never imports torch.
"""

from __future__ import annotations

import numpy as np

from bench.fields import PREFERENCE_ITEMS, PREFERENCE_STATS

ROUNDS = 2000  # bootstrap resamples: the interval's ends move by well under 0.1 point between seeds of the resampling
LEVEL = 0.95
SEED = 0
_BLOCK = 250  # resamples drawn at a time: a block of (resamples × items) weights stays small for 10k-item evaluations


def item_scores(record: dict, side: str) -> dict[int, float] | None:
    """{eval item: score} of one side ("base" or "tuned") of a record's evaluation, or None where it kept none."""
    items = (record.get("quality") or {}).get("items")
    if not isinstance(items, dict) or not isinstance(items.get(side), list):
        return None
    ids = items.get("ids")
    values = items[side]
    ids = ids if isinstance(ids, list) and len(ids) == len(values) else list(range(len(values)))
    pairs = [(i, v) for i, v in zip(ids, values) if isinstance(i, int) and _finite(v)]
    return dict(pairs) if len(pairs) == len(values) and values else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _matrix(records: list[dict], side: str, ids: list[int]) -> np.ndarray:
    tables = [item_scores(r, side) for r in records]  # once per record: a table per item made it quadratic
    return np.array([[table[i] for i in ids] for table in tables], dtype=np.float64)


def _common_ids(tables: list[dict[int, float] | None]) -> list[int] | None:
    if not tables or any(t is None for t in tables):
        return None
    ids = set(tables[0])
    for t in tables[1:]:
        ids &= set(t)
    return sorted(ids) or None


def _bootstrap(sides: list[np.ndarray], signs: list[float], rng: np.random.Generator) -> np.ndarray:
    """ROUNDS resampled values of Σ sign × (mean over resampled seeds of the mean over resampled items) of each
    (seeds × items) matrix; the items resampled once per round for every side (paired), the seeds per side."""
    n_items = sides[0].shape[1]
    out = np.empty(ROUNDS)
    for start in range(0, ROUNDS, _BLOCK):
        rounds = min(_BLOCK, ROUNDS - start)
        item_weights = _resample_counts(rng, rounds, n_items) / n_items
        total = np.zeros(rounds)
        for matrix, sign in zip(sides, signs):
            seeds = matrix.shape[0]
            seed_weights = _resample_counts(rng, rounds, seeds) / seeds
            total += sign * ((seed_weights @ matrix) * item_weights).sum(axis=1)
        out[start:start + rounds] = total
    return out


def _resample_counts(rng: np.random.Generator, rounds: int, n: int) -> np.ndarray:
    """(rounds × n) times each of n things is drawn in a resample of n with replacement (a multinomial draw, made from
    uniform indices: several times faster than numpy's multinomial)."""
    drawn = rng.integers(0, n, (rounds, n)) + (np.arange(rounds) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=rounds * n).reshape(rounds, n)


def _interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _deltas(records: list[dict], ids: list[int]) -> np.ndarray:
    return _matrix(records, "tuned", ids) - _matrix(records, "base", ids)


def _ids(records: list[dict]) -> list[int] | None:
    return _common_ids([item_scores(r, side) for r in records for side in ("base", "tuned")])


def delta_interval(records: list[dict]) -> tuple[float, float] | None:
    """The 95 % interval of a cell's Δ over its ok records (one per seed), or None where a record kept no items."""
    ids = _ids(records)
    if ids is None:
        return None
    return _interval(_bootstrap([_deltas(records, ids)], [1.0], np.random.default_rng(SEED)))


def difference_interval(a: list[dict], b: list[dict]) -> tuple[float, float] | None:
    """The 95 % interval of (a's Δ − b's Δ), two methods evaluated on the same items: the items paired (with one base,
    the difference of their tuned scores); None without items in common."""
    ids = _ids(a + b)
    if ids is None:
        return None
    return _interval(_bootstrap([_deltas(a, ids), _deltas(b, ids)], [1.0, -1.0], np.random.default_rng(SEED)))


def pair_values(record: dict, name: str, section: str = "extra") -> list[float] | None:
    """A DPO record's value of one reward statistic (`name`: "accuracy" or "margin") for each held-out pair, from
    quality.<section>.preference_items (section "extra": the tuned model; "base_extra": the untuned one), or None."""
    kept = ((record.get("quality") or {}).get(section) or {})
    kept = kept.get(PREFERENCE_ITEMS) if isinstance(kept, dict) else None
    values = kept.get(name) if isinstance(kept, dict) else None
    if not isinstance(values, list) or not values or not all(_finite(v) for v in values):
        return None
    return [float(v) for v in values]


def pair_interval(records: list[dict], name: str, *, delta: bool) -> tuple[float, float] | None:
    """The 95 % interval of a DPO cell's reward statistic over its ok records (one per seed), bootstrapped over the
    held-out pairs (the same resample for every seed, all scored on the same pairs) and the seeds, as `delta_interval`:
    of the tuned model's (`delta` false), or of tuned − base (`delta` true), paired by pair. The base is the model as
    DPO starts, which is its own reference: every reward 0, so its statistics are 0 pair by pair, unless the records
    kept the untuned model's (base_extra). None where a record kept no pairs, or their counts differ."""
    tuned = [pair_values(r, name) for r in records]
    if not tuned or any(t is None for t in tuned) or len({len(t) for t in tuned}) != 1:
        return None
    matrix = np.array(tuned, dtype=np.float64)
    if delta:
        base = [pair_values(r, name, "base_extra") for r in records]
        if all(b is not None and len(b) == matrix.shape[1] for b in base):
            matrix = matrix - np.array(base, dtype=np.float64)
        elif any(_base_measured(r, name) for r in records):
            return None  # the base measured, pair by pair not kept: nothing to pair with
    return _interval(_bootstrap([matrix], [1.0], np.random.default_rng(SEED)))


def _base_measured(record: dict, name: str) -> bool:
    extra = (record.get("quality") or {}).get("base_extra")
    return isinstance(extra, dict) and any(_finite(extra.get(stat)) for stat, short in PREFERENCE_STATS.items()
                                           if short == name)


def contains_zero(interval: tuple[float, float] | None) -> bool:
    return interval is not None and interval[0] <= 0 <= interval[1]
