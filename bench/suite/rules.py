"""The gate's rule grammar: `FIELD:SIGN AMOUNT[%]` strings parsed into checks (see bench/analysis/gate.py).

Here, not in the gate, because a suite's `[gate] rules` are validated with the suite, and validating
a suite must not pull in the analysis code. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from bench.errors import BenchError
from bench.fields import ALIASES, NUMERIC_FIELDS

DEFAULT_RULES = [
    "status:ok",
    "peak_memory_mb:+5%",
    "step_s_median:+10%",
    "train_wall_s:+20%",
    "tokens_per_s:-10%",
    "delta:-0.5",
]
ACCEPTED = (
    "accepted forms: FIELD:+N% / FIELD:-N% (relative), FIELD:+N / FIELD:-N (absolute, in the field's unit), "
    "status:ok; the sign is the direction that fails. FIELD is one of "
    + ", ".join(sorted(ALIASES)) + " or its dotted name (" + ", ".join(NUMERIC_FIELDS) + ")"
)
_RULE_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*:\s*([+-])\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*$")


class RuleError(BenchError):
    """A gate rule string that cannot be parsed."""


@dataclass(frozen=True)
class Threshold:
    """A numeric rule: fails when `new` moves past `old` by more than `amount` in the direction `sign`."""

    text: str
    field: str  # dotted, e.g. "cost.peak_memory_mb"
    sign: int  # +1: an increase is bad; -1: a decrease is bad
    amount: float
    percent: bool

    def limit(self, old: float) -> float:
        margin = abs(old) * self.amount / 100 if self.percent else self.amount
        return old + self.sign * margin

    def fails(self, old: float, new: float) -> bool:
        limit = self.limit(old)
        return new > limit if self.sign > 0 else new < limit


@dataclass(frozen=True)
class StatusRule:
    """`status:ok`: fails when a cell that finished in the baseline does not finish now."""

    text: str = "status:ok"
    field: str = "status"

    def fails(self, old: str, new: str) -> bool:
        return old == "ok" and new != "ok"


Rule = Threshold | StatusRule


def parse_rule(text: str, *, file: str | None = None, where: str | None = None) -> Rule:
    if not isinstance(text, str):
        raise RuleError(f"gate rule {text!r} is not a string", file=file, where=where, fix=ACCEPTED)
    if re.fullmatch(r"\s*status\s*:\s*ok\s*", text):
        return StatusRule(text.replace(" ", ""))
    m = _RULE_RE.match(text)
    if not m:
        raise RuleError(f"cannot parse gate rule {text!r}", file=file, where=where, fix=ACCEPTED)
    name, sign, amount, percent = m.groups()
    dotted = ALIASES.get(name, name)
    if dotted not in NUMERIC_FIELDS:  # a misspelt field would make every check "not applicable": a silent pass
        close = difflib.get_close_matches(name, [*ALIASES, *NUMERIC_FIELDS], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RuleError(f"gate rule {text!r}: unknown field {name!r}", file=file, where=where, fix=hint + ACCEPTED)
    return Threshold(text.strip(), dotted, 1 if sign == "+" else -1, float(amount), bool(percent))


def parse_rules(texts, *, file: str | None = None) -> list[Rule]:
    """A suite's `[gate] rules = [...]` (or the command line's) as check objects."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise RuleError(f"gate rules must be a list of strings, not {type(texts).__name__}", file=file,
                        where="[gate] rules", fix='rules = ["peak_memory_mb:+5%", "delta:-0.5"]')
    # with a file the rules came from a suite's [gate] table; without one, from the command line
    return [parse_rule(t, file=file, where=f"[gate] rules[{i}]" if file else None) for i, t in enumerate(texts)]
