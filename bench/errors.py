"""User-facing errors: each names the file, the place in it and the fix; the CLI prints them without a traceback."""

from __future__ import annotations


class BenchError(Exception):
    """An error caused by the user's input. `exit_code` 2 means nothing was run or written."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, where: str | None = None, fix: str | None = None):
        self.message = message
        self.file = file
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def __reduce__(self):  # file, where and fix survive the trip from a DataLoader worker or a cell's process
        return _rebuild, (type(self), self.message, self.file, self.where, self.fix)

    def render(self) -> str:
        head = ": ".join(p for p in (self.file, self.where) if p)
        text = f"{head}: {self.message}" if head else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


def _rebuild(cls, message, file, where, fix):
    return cls(message, file=file, where=where, fix=fix)


class SuiteError(BenchError):
    """A suite file is malformed: unknown key, wrong type, impossible value, dangling reference."""


class DataError(BenchError):
    """A dataset file or record is malformed; `where` names the record index and field."""


class CheckpointError(BenchError):
    """A named checkpoint cannot be found locally and the hub cannot be reached."""


class OutputError(BenchError):
    """Work was done but an output could not be written where it should go: exit 1, not "nothing was run"."""

    exit_code = 1
