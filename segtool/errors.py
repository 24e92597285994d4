"""Error types. Library code raises these; cli.py turns them into
`path:line:col: message` plus a hint, and an exit code (1 user error, 2 failure)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class SegtoolError(Exception):
    """Base class. `exit_code` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def location(self) -> str:
        return ""

    def format(self) -> str:
        loc = self.location()
        text = f"{loc}: {self.message}" if loc else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return self.format()

    def __reduce__(self):
        # keep path/line/hint when an error crosses a process boundary (render workers)
        return (_rebuild, (type(self), dict(self.__dict__)))


@dataclass
class Location:
    path: str | None = None
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        parts = [self.path or "<project>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


class ProjectError(SegtoolError):
    """A problem in the project's files: exit 1."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        col: int | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, hint=hint)
        self.path = str(path) if path is not None else None
        self.line = line
        self.col = col

    def location(self) -> str:
        if self.path is None and self.line is None:
            return ""
        return str(Location(self.path, self.line, self.col))

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(path=self.path, line=self.line, col=self.col)
        return d


class ProjectErrors(ProjectError):
    """Several project errors found in one pass (validate reports them all)."""

    def __init__(self, errors: list[ProjectError]):
        self.errors = errors
        first = errors[0]
        super().__init__(
            first.message, path=first.path, line=first.line, col=first.col, hint=first.hint
        )

    def format(self) -> str:
        lines = [e.format() for e in self.errors]
        if len(self.errors) > 1:
            lines.append(f"{len(self.errors)} errors")
        return "\n".join(lines)


class DataError(ProjectError):
    """The data does not satisfy what the project requires (duplicate keys,
    NaN features, empty population...): exit 1. Like a ProjectError it may
    carry the `path`/`line` of the definition the data fails (a segmentation,
    a feature set, a model), as fields, so `--format github` can annotate it."""

    exit_code = 1


class SelectionError(SegtoolError):
    exit_code = 1


class LockError(SegtoolError):
    """Another run holds the database."""

    exit_code = 1


class ExecutionError(SegtoolError):
    """A runtime failure (SQL failed at run time, a database error): exit 2.
    A full disk (DiskFullError) and an encoder that cannot load (EncoderError)
    are errors a user fixes: exit 1."""

    exit_code = 2


class DiskFullError(SegtoolError):
    """The disk filled up. The stage that hit it was rolled back: exit 1, as
    for a locked database, since the fix is on the user's side."""

    exit_code = 1


class SqlError(ProjectError):
    """SQL that does not compile or bind. Points at the compiled SQL file."""


class EncoderError(ProjectError):
    """The encoder cannot be loaded (missing model, no network for it): exit 1,
    with the encoder's `path`/`line` when known."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The nearest valid name, phrased as a hint, or None."""
    choices = list(choices)
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    if match:
        return f"did you mean '{match[0]}'?"
    if choices and len(choices) <= 12:
        return "valid: " + ", ".join(sorted(choices))
    return None


def _rebuild(cls, state: dict) -> SegtoolError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, however it arrived: a KeyboardInterrupt, or DuckDB's own error
    for a query SIGINT stopped (this DuckDB raises RuntimeError('Query
    interrupted'), an InterruptException, or an error whose cause is the
    KeyboardInterrupt a Python callback got). They ended the run as 'internal
    error' (exit 2) instead of 'interrupted' (exit 130)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, KeyboardInterrupt) or type(cur).__name__ == "InterruptException":
            return True
        if type(cur) is RuntimeError and str(cur).strip() == "Query interrupted":
            return True
        # DuckDB reading a Python object when Ctrl-C came: "... failed: KeyboardInterrupt:"
        first = str(cur).split("\n", 1)[0]
        if "duckdb" in type(cur).__module__ and "KeyboardInterrupt" in first:
            return True
        cur = cur.__cause__ or cur.__context__
    return False
