"""One setting's rules: its type, default, allowed values and bounds, and the check every value passes.

The suite's key tables (bench/suite/keys.py) and the dataset table (bench/data/loader.py) are made of
`Key`s, so a suite key and a dataset key are checked by the same code. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

NUMBER = (int, float)
SEED_MAX = 2**63 - 1  # torch, numpy and Python's random all take seeds in 0 … 2^63 − 1
MAX_TEXT = 4096  # longest string value (paths, names, templates): longer is a mistake, not a setting
MAX_DEPTH = 16  # deepest nesting of tables/arrays a suite may have


@dataclass(frozen=True)
class Key:
    type: type | tuple  # accepted Python types after TOML parsing
    default: Any = None
    doc: str = ""
    choices: tuple = ()
    min: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound
    required: bool = False
    max: float | None = None  # inclusive upper bound: beyond it a value is absurd, not ambitious
    below: float | None = None  # exclusive upper bound
    # whether the value enters a cell's id: "always"; "never" for how a cell runs rather than what it measures
    # (its input workers); "unless_default" for a key added after ids existed, so old records keep their ids
    in_id: str = "always"

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable for this key (type, finiteness, choices, bounds), or None.
        Every float must be finite: TOML allows nan and inf, and neither means anything as a setting."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            return f"must be {' or '.join(TYPE_WORDS.get(t, t.__name__) for t in types)}, got {type_name(value)} {short(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return f"is {len(value):,} characters long; at most {MAX_TEXT:,} are accepted"
        if self.choices and value not in self.choices:
            return f"{short(value)} is not one of {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self._in_range(value):
            return f"must be {self.range_text()}, got {value:,}"
        return None

    def _in_range(self, value) -> bool:
        return ((self.min is None or value >= self.min) and (self.above is None or value > self.above)
                and (self.max is None or value <= self.max) and (self.below is None or value < self.below))

    def range_text(self) -> str:
        lo = (self.min, "included") if self.min is not None else (self.above, "excluded") if self.above is not None else None
        hi = (self.max, "included") if self.max is not None else (self.below, "excluded") if self.below is not None else None
        if lo and hi:
            return f"between {lo[0]:,} ({lo[1]}) and {hi[0]:,} ({hi[1]})"
        if lo:
            return f"{'≥' if lo[1] == 'included' else '>'} {lo[0]:,}"
        return f"{'≤' if hi[1] == 'included' else '<'} {hi[0]:,}"


TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a table"}


def type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__)


def short(value: Any) -> str:
    """repr of a value, cut: error messages echo what the user wrote, never a page of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
