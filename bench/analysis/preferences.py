"""The report's DPO cells (`method.objective = "dpo"`): their task metric's Δ says little of what DPO did (scored on the
prompts against the chosen answer), so TRL's reward statistics on the held-out pairs stand beside it — preference
accuracy (the share of pairs whose implicit reward β·(log π − log π_ref) is higher for the chosen answer, 0–100) and
reward margin (its mean difference), tuned, base and Δ, each with its 95 % interval (bench/analysis/intervals.py's
`pair_interval`, over each pair's values in quality.extra.preference_items).

The base is the model as DPO starts, which is its own reference: every reward is 0, so both statistics are 0 there,
unless a record kept the untuned model's (quality.base_extra). Reads records only; never imports torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.analysis import intervals, stats
from bench.analysis.markdown import cell_text, pm, table
from bench.analysis.stats import Group
from bench.fields import PREFERENCE_STATS

if TYPE_CHECKING:  # report imports this module from its page renderer; the page type is only named here
    from bench.analysis.report import Page

# each statistic's label, and how many significant digits its largest figure is written with (accuracy: 0.1 point)
LABELS = {"preference_accuracy": "preference accuracy", "reward_margin": "reward margin"}
SIGNIFICANT = 3
# what a policy moved at random away from its reference scores: half the pairs ordered the right way, margins around 0
CHANCE = {"preference_accuracy": 50.0, "reward_margin": 0.0}


def is_dpo(g: Group) -> bool:
    return stats.get(g.first, "method.objective") == "dpo" and not g.random_weights


class Statistic:
    """One reward statistic of one DPO cell over its finished repeats: tuned, base and Δ, with intervals."""

    def __init__(self, g: Group, stat: str):
        self.stat, self.chance = stat, CHANCE[stat]
        self.tuned = g.summary(f"quality.extra.{stat}")
        measured = g.summary(f"quality.base_extra.{stat}")
        self.base_measured = measured is not None
        self.base = measured.mean if measured is not None else 0.0  # the reference: every reward 0
        self.tuned_ci = intervals.pair_interval(g.ok, PREFERENCE_STATS[stat], delta=False)
        self.delta_ci = intervals.pair_interval(g.ok, PREFERENCE_STATS[stat], delta=True)
        self.digits = 1 if stat == "preference_accuracy" else self._decimals()

    @property
    def has_delta(self) -> bool:
        """Whether tuned − base says what DPO did: not for the accuracy against the reference, where every pair ties
        (0), since any change at all orders about half of them the right way."""
        return self.base_measured or self.base == self.chance

    def _decimals(self) -> int:
        """Decimals that write the largest of the statistic's figures with SIGNIFICANT digits (margins run from 1e-4
        on a barely trained tiny model to several nats)."""
        figures = [abs(v) for v in (self.base, *(self.tuned.values if self.tuned else ()), *(self.tuned_ci or ()),
                                    *(self.delta_ci or ())) if v]
        if not figures:
            return SIGNIFICANT - 1
        return min(8, max(1, SIGNIFICANT - 1 - math.floor(math.log10(max(figures)))))

    def _number(self, value: float, signed: bool) -> str:
        return f"{value:+.{self.digits}f}" if signed else f"{value:.{self.digits}f}"

    def _with(self, text: str, interval, signed: bool, against: float) -> str:
        """`text` with the interval after it; in italics when the interval holds `against` (no evidence)."""
        if interval is None:
            return text
        text += f" [{self._number(interval[0], signed)}, {self._number(interval[1], signed)}]"
        return f"_{text}_" if interval[0] <= against <= interval[1] else text

    def tuned_text(self) -> str:
        if self.tuned is None:
            return "—"
        text = pm(self.tuned, lambda v: self._number(v, False))
        return self._with(text + (f" (n={self.tuned.n})" if self.tuned.n > 1 else ""), self.tuned_ci, False, self.chance)

    def base_text(self) -> str:
        if self.base_measured:
            return self._number(self.base, False)
        return self._number(self.base, False) + (" (reference: every pair ties)" if self.base != self.chance
                                                 else " (reference)")

    def delta_text(self) -> str:
        if self.tuned is None:
            return "—"
        if not self.has_delta:
            return f"n/a: read the tuned value against {self.chance:g}"
        return self._with(self._number(self.tuned.mean - self.base, True), self.delta_ci, True, 0.0)

    def headline(self) -> str:
        """The Results table's words for it: its Δ where that says what DPO did, else the tuned value against chance."""
        if self.has_delta:
            return f"Δ {LABELS[self.stat]} {self.delta_text()}"
        return f"{LABELS[self.stat]} {self.tuned_text()} (chance {self.chance:g})"


def reward_statistics(g: Group) -> list[Statistic]:
    """The cell's reward statistics that its records hold, in PREFERENCE_STATS' order (none for a cell that is not DPO)."""
    if not is_dpo(g) or not g.ok:
        return []
    return [s for stat in PREFERENCE_STATS if (s := Statistic(g, stat)).tuned is not None]


def results_suffix(g: Group) -> str:
    """What the Results table's Δ cell of a DPO cell adds beside the task metric: each statistic's headline (the
    accuracy against chance, the margin's Δ) with its interval."""
    shown = reward_statistics(g)
    return "".join(f" · {s.headline()}" for s in shown)


def preferences_section(page: Page) -> list[str]:
    """## Preferences (DPO): one row per DPO cell, the task metric's Δ beside the reward statistics."""
    rows = []
    for g in page.groups:
        if not is_dpo(g):
            continue
        shown = {s.stat: s for s in reward_statistics(g)}
        if not g.ok:
            rows.append([page.model_label(g), cell_text(g.dataset), cell_text(g.method), cell_text(g.message or g.status, 80),
                         *["—"] * 3 * len(PREFERENCE_STATS)])
            continue
        row = [page.model_label(g), cell_text(g.dataset), cell_text(g.method), page.delta_text(g)]
        for stat in PREFERENCE_STATS:
            s = shown.get(stat)
            row += [s.tuned_text(), s.base_text(), s.delta_text()] if s else ["—"] * 3
        rows.append(row)
    if not rows:
        return []
    header = ["Model", "Dataset", "Method", "Δ task metric"]
    for stat in PREFERENCE_STATS:
        label = LABELS[stat].capitalize()
        header += [f"{label}: tuned", "base", f"Δ {LABELS[stat]}"]
    return ["## Preferences (DPO)", "",
            "DPO cells' task metric (the family task's, on the prompts, scored against the chosen answer) beside TRL's "
            "reward statistics on the held-out pairs: *preference accuracy*, the share of pairs whose implicit reward "
            "β·(log π − log π_ref) is higher for the chosen answer than for the rejected one (0–100), and *reward "
            "margin*, their mean difference. The base is the model as DPO starts, its own reference (the untuned model, "
            "or the SFT adapter it starts from): every reward is 0 there — *(reference)* —, unless the record measured "
            "it. At the reference every pair ties, so its accuracy is 0, and any change at all orders about half the "
            "pairs the right way: the accuracy is read against 50 (chance), not as a Δ; the margin starts at 0, which "
            "is chance too. [lo, hi]: the 95 % interval, from a bootstrap over the held-out pairs (tuned and base "
            "paired), the repeats' seeds resampled too; _italic_: the interval holds chance (a tuned accuracy 50, a "
            "Δ or a tuned margin 0) — no evidence DPO taught the preference. Without per-pair "
            "values (records before `quality.extra.preference_items`) the mean alone is shown.", ""] + table(header, rows) + [""]
