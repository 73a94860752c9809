"""The live display of `bench run`: cells done/total with ETA, each running cell (one line per slot), its step and loss.

On a terminal it is a rich live progress display; elsewhere (CI logs) one line per finished cell.
"""

from __future__ import annotations

import threading

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_STATUS_STYLE = {"ok": "green", "skipped": "dim", "oom": "yellow", "timeout": "yellow", "diverged": "magenta", "error": "red"}


class SuiteProgress:
    def __init__(self, total: int, *, console: Console | None = None, enabled: bool = True, slots: int = 1):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, disable=not enabled, transient=False,
        )
        self._cells = self.progress.add_task("cells", total=total, info="")
        self._items = [self.progress.add_task("", total=None, info="") for _ in range(slots)]  # one per cell run at once
        self._lock = threading.Lock()  # cells finish on several threads when they run side by side

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def start_item(self, label: str, steps: int | None, slot: int = 0) -> None:
        self.progress.reset(self._items[slot], total=steps or None, description=f"  {escape(label)}", info="")

    def event(self, event: tuple, slot: int = 0) -> None:
        if event and event[0] == "step":
            _, step, steps, loss = event
            self.progress.update(self._items[slot], completed=step, total=steps, info=f"loss {loss:.4f}")

    def events_of(self, slot: int):
        """The on_event callback of the cell running in `slot`."""
        return lambda event: self.event(event, slot)

    def log(self, text: str) -> None:
        self.console.print(text)

    def pass_item(self, label: str, why: str) -> None:
        """A cell-run this process will not run after all (another run claimed or recorded it)."""
        with self._lock:
            self.done += 1
            self.progress.advance(self._cells)
            self.console.print(f"[{self.done}/{self.total}] [dim]{escape(label)}: {escape(why)}[/]", highlight=False)

    def finish_item(self, record: dict) -> None:
        with self._lock:
            self.done += 1
            self.progress.advance(self._cells)
            self._print_finished(record)

    def _print_finished(self, record: dict) -> None:
        status = record["status"]
        style = _STATUS_STYLE.get(status, "white")
        q = record.get("quality") or {}
        cost = record.get("cost") or {}
        # names and messages come from the user's files: escaped, never read as markup
        parts = [f"[{style}]{status}[/]", escape(f"{record['model']['name']} × {record['dataset']['name']} × {record['method']['name']}")]
        if record.get("repeat"):
            parts.append(f"repeat {record['repeat']}")
        if q.get("delta") is not None:
            parts.append(escape(f"Δ {q['metric']} {q['delta']:+.2f}"))
        if cost.get("peak_memory_mb") is not None:
            parts.append(f"{cost['peak_memory_mb']:.0f} MB")
        if cost.get("train_wall_s") is not None:
            parts.append(f"{cost['train_wall_s']:.1f} s")
        if status != "ok" and record.get("message"):
            parts.append(escape(f"— {record['message'][:160]}"))
        self.console.print(f"[{self.done}/{self.total}] " + "  ".join(parts), highlight=False)
