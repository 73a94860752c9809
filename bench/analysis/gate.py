"""The regression gate: short rule strings checked against a baseline, cell by cell, for CI.

A rule is `FIELD:SIGN AMOUNT[%]`; the sign names the bad direction:

    peak_memory_mb:+5%    fail when new > old * 1.05
    tokens_per_s:-10%     fail when new < old * 0.90
    delta:-0.5            fail when new < old - 0.5   (points)
    train_wall_s:+2       fail when new > old + 2     (seconds)
    status:ok             fail when a cell that was ok is not ok now

FIELD is a field of bench.fields, by its short alias (peak_memory_mb) or its dotted path (cost.peak_memory_mb).
Percentages are of |old|. Quality rules are read on the metric's own scale: for a metric whose
`higher_is_better` is false the sign is mirrored, so `delta:-0.5` always means "0.5 points worse".

Each side is the mean over its repeats. A rule fails only when the change is beyond its threshold
AND beyond the measured noise: the larger max-min spread of the repeats of either side
(bench/analysis/stats.py), where repeats exist. A numeric value that existed in the baseline and is gone
now fails (with `status:ok` among the rules that cell is reported once, by the status rule);
a baseline cell missing from the current records fails; a new cell is only a warning.
A field whose row in bench.fields names a kind (peak_memory_mb: cost.memory_kind, RSS or tensor bytes) is
compared only between numbers of one and the same kind; otherwise the check fails saying so, and the fix
is a baseline re-recorded on purpose (`bench baseline update SUITE`), never a ratio of two different things.
Reads records only; never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.analysis import stats
from bench.analysis.compare import env_differences, fmt_value, terminal_table
from bench.analysis.markdown import cell_text
from bench.analysis.stats import Group, Summary
from bench.suite.rules import DEFAULT_RULES, Rule, StatusRule, Threshold, parse_rule


@dataclass
class GateRow:
    cell_id: str
    model: str
    dataset: str
    method: str
    rule: Rule
    old: float | str | None
    new: float | str | None
    noise: float | None
    verdict: str  # "pass" | "fail" | "n/a"
    note: str = ""

    @property
    def change(self) -> str:
        if not isinstance(self.old, float) or not isinstance(self.new, float):
            return "—" if self.old == self.new or self.old is None or self.new is None else f"{self.old} → {self.new}"
        diff = self.new - self.old
        text = ("+" if diff >= 0 else "") + fmt_value(diff)
        if self.old != 0:
            text += f" ({diff / abs(self.old) * 100:+.1f} %)"
        return text

    @property
    def label(self) -> str:
        return f"{self.cell_id} ({self.model} / {self.dataset} / {self.method})"

    def message(self) -> str:
        text = (f"{self.label}: rule {self.rule.text} {'failed' if self.verdict == 'fail' else self.verdict}: "
                f"{_show(self.old)} → {_show(self.new)}")
        if isinstance(self.old, float) and isinstance(self.new, float):
            text += f", change {self.change}"
        if self.noise is not None:
            text += f", repeat spread {fmt_value(self.noise)}"
        return text + (f"; {self.note}" if self.note else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _show(v) -> str:
    return fmt_value(v) if isinstance(v, float) else ("—" if v is None else str(v))


@dataclass
class GateResult:
    rows: list[GateRow]
    missing: list[Group]
    extra: list[Group]
    warnings: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # why the files cannot be trusted: fails closed

    @property
    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if r.verdict == "fail"]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.missing and not self.invalid

    def messages(self) -> list[str]:
        """One line per failure: cell, rule, old and new values."""
        out = list(self.invalid)
        out += [r.message() for r in self.failures]
        out += [f"{g.cell_id} ({g.model} / {g.dataset} / {g.method}): missing from the current records" for g in self.missing]
        return out

    def _counts(self) -> str:
        count = {v: sum(1 for r in self.rows if r.verdict == v) for v in ("pass", "fail", "n/a")}
        return f"{count['pass']} of {len(self.rows)} checks passed, {count['fail']} failed, {count['n/a']} not applicable"

    def render_markdown(self) -> str:
        lines = ["# Gate: " + ("passed" if self.passed else f"FAILED ({_plural(len(self.messages()), 'failure')})"), ""]
        lines += [f"> ⚠ **Environment differs** — {w}" for w in self.warnings]
        if self.warnings:
            lines.append("")
        if self.messages():
            lines += ["## Failures", ""] + [f"- {cell_text(m)}" for m in self.messages()] + [""]
        if self.rows:
            lines += [self._counts() + ".", "",
                      "<details><summary>Every check</summary>", "",
                      "| Cell | Model | Dataset | Method | Rule | Old | New | Change | Spread | Verdict |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in self.rows:
                verdict = "**FAIL**" if r.verdict == "fail" else r.verdict
                noise = "—" if r.noise is None else fmt_value(r.noise)
                cells = [f"`{r.cell_id}`", r.model, r.dataset, r.method, f"`{r.rule.text}`", _show(r.old),
                         _show(r.new), r.change, noise, verdict + (f" ({r.note})" if r.note else "")]
                lines.append("| " + " | ".join(cell_text(c) for c in cells) + " |")
            lines += ["", "</details>", ""]
        if self.extra:
            lines += ["## New cells (not gated)", ""]
            lines += [f"- `{g.cell_id}` {g.model} / {g.dataset} / {g.method}" for g in self.extra] + [""]
        return "\n".join(lines)

    def render_terminal(self, console=None, *, show_all: bool = False) -> None:
        """A rich table of the failed checks (every check with `show_all`), then the verdict.
        Names, values and messages are plain Text, never markup."""
        from rich.text import Text

        console, table = terminal_table(console, self.warnings, "bench gate", "Rule", ("Old → new", "Change", "Spread"))
        shown = [r for r in self.rows if show_all or r.verdict == "fail"]
        for r in shown:
            style = {"fail": "bold red", "pass": "green"}.get(r.verdict, "dim")
            table.add_row(Text(f"{r.model} / {r.dataset} / {r.method}"), Text(r.rule.text),
                          Text(f"{_show(r.old)} → {_show(r.new)}"), Text(r.change),
                          "—" if r.noise is None else fmt_value(r.noise),
                          Text.assemble((r.verdict, style), (f" {r.note}" if r.note else "", "dim")))
        if shown:
            console.print(table)
        console.print(Text(self._counts()))
        for label, style, groups in (("missing: ", "bold red", self.missing), ("new (not gated): ", "yellow", self.extra)):
            for g in groups:
                console.print(Text.assemble((label, style), f"{g.cell_id} {g.model} / {g.dataset} / {g.method}"))
        if self.passed:
            console.print(Text("gate passed", "bold green"))
        else:
            console.print(Text.assemble(("gate FAILED", "bold red"), f" ({_plural(len(self.messages()), 'failure')})"))
            for m in self.messages():
                console.print(Text.assemble(("  ✗ ", "red"), m))


def render_markdown(result: GateResult) -> str:
    """Module-level form of GateResult.render_markdown (the same shape as bench.analysis.compare's)."""
    return result.render_markdown()


def render_terminal(result: GateResult, console=None, *, show_all: bool = False) -> None:
    """Module-level form of GateResult.render_terminal."""
    result.render_terminal(console, show_all=show_all)


def _check(rule: Rule, old: Group, new: Group, status_gated: bool) -> tuple[object, object, float | None, str, str]:
    """(old, new, noise, verdict, note) of one rule on one pair of cells.

    `status_gated`: a status rule is in force, so a value that vanished because the cell stopped
    finishing is reported once, by that rule, instead of once per numeric rule."""
    if isinstance(rule, StatusRule):
        return old.status, new.status, None, "fail" if rule.fails(old.status, new.status) else "pass", new.message if new.status != "ok" else ""
    if rule.field.startswith("quality.") and new.random_weights and not old.random_weights:
        return None, None, None, "fail", "the current records have random weights; the baseline's quality cannot be checked"
    if rule.field.startswith("quality.") and old.random_weights:
        return None, None, None, "n/a", "random weights"
    o, n = old.summary(rule.field), new.summary(rule.field)
    if o is None:
        return None, _mean(n), None, "n/a", "no baseline value"
    if n is None:
        if status_gated and new.status != "ok" and old.status == "ok":
            return o.mean, None, None, "n/a", f"cell is {new.status} now (see status:ok)"
        return o.mean, None, None, "fail", f"no value now (status {new.status})"
    if unlike := _unlike_kinds(rule.field, old, new):
        return o.mean, n.mean, None, "fail", unlike
    noise = stats.noise(o, n)
    # mirror quality rules of lower-is-better metrics so the sign always means "worse"
    flip = -1.0 if rule.field.startswith("quality.") and not new.higher_is_better else 1.0
    beyond_threshold = rule.fails(flip * o.mean, flip * n.mean)
    if beyond_threshold and not stats.differs(o, n):
        return o.mean, n.mean, noise, "pass", "within noise"
    return o.mean, n.mean, noise, "fail" if beyond_threshold else "pass", ""


def _unlike_kinds(dotted: str, old: Group, new: Group) -> str:
    """Why the two sides' numbers of `dotted` count different things, and what to do ("" when they do not)."""
    why = stats.unlike_kinds(dotted, old, new)
    if not why:
        return ""
    suite = stats.get(new.first, "suite_file") or "SUITE"
    return f"{why}; re-record the baseline on purpose: `bench baseline update {suite}`"


def _mean(s: Summary | None) -> float | None:
    return s.mean if s else None


def gate(baseline_records: list[dict], current_records: list[dict], rules=None) -> GateResult:
    """Check every rule on every cell present in both; `rules` are strings or parsed rules (default DEFAULT_RULES)."""
    rules = [r if isinstance(r, (Threshold, StatusRule)) else parse_rule(r) for r in (rules or DEFAULT_RULES)]
    old_groups = stats.group_by_cell(baseline_records)
    new_groups = stats.group_by_cell(current_records)
    status_gated = any(isinstance(r, StatusRule) for r in rules)
    # fail closed: nothing to compare against, or numbers that are not numbers, is never a pass
    invalid = [] if baseline_records else ["the baseline holds no records: nothing was checked"]
    gated = [r.field for r in rules if isinstance(r, Threshold)]
    invalid += stats.invalid_on_either_side(baseline_records, current_records, gated)
    rows = []
    for cell_id, old in old_groups.items():
        new = new_groups.get(cell_id)
        if new is None:
            continue
        for rule in rules:
            o, n, noise, verdict, note = _check(rule, old, new, status_gated)
            rows.append(GateRow(cell_id, new.model, new.dataset, new.method, rule, o, n, noise, verdict, note))
    numeric = [r for r in rows if isinstance(r.rule, Threshold)]
    if numeric and all(r.verdict == "n/a" for r in numeric):
        invalid.append(f"none of the {len(numeric)} numeric checks could be made (no baseline values): nothing was compared")
    return GateResult(
        rows,
        missing=[g for cid, g in old_groups.items() if cid not in new_groups],
        extra=[g for cid, g in new_groups.items() if cid not in old_groups],
        warnings=env_differences(baseline_records, current_records),
        invalid=invalid,
    )
