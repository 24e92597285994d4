"""All terminal output goes through a Reporter: rich when attached to a
terminal, plain lines otherwise (CI logs, tests, pipes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class Reporter:
    def __init__(self, *, quiet: bool = False, stream=None, color: bool | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stdout
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.rich = tty if color is None else color
        self._console = None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                file=self.stream, highlight=False, force_terminal=self.rich, soft_wrap=True
            )
        return self._console

    def line(self, text: str = "") -> None:
        if self.quiet:
            return
        if self.rich:
            self.console.print(text, markup=False)
        else:
            print(text, file=self.stream)

    info = line

    def warn(self, text: str) -> None:
        if self.rich:
            self.console.print(f"[yellow]warning:[/yellow] {text}", markup=True)
        else:
            print(f"warning: {text}", file=self.stream)

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
    ) -> None:
        if self.quiet:
            return
        if self.rich:
            from rich.table import Table

            t = Table(title=title, show_edge=False, header_style="bold")
            for h in headers:
                t.add_column(str(h))
            for r in rows:
                t.add_row(*[_fmt(c) for c in r])
            self.console.print(t)
            return
        self.line(format_table(headers, rows, title))

    @contextmanager
    def progress(self, label: str, total: int | None) -> Iterator[Any]:
        """A progress bar on a terminal; a start/end line elsewhere."""
        if self.quiet or not self.rich:
            yield _NoProgress()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as p:
            task = p.add_task(label, total=total)
            yield _RichProgress(p, task)


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass


class _RichProgress:
    def __init__(self, p, task):
        self.p, self.task = p, task

    def advance(self, n: int = 1) -> None:
        self.p.advance(self.task, n)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.3f}".rstrip("0").rstrip(".")
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [len(str(h)) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    out = [title] if title else []
    out.append("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip())
    out.append("  ".join("-" * w for w in widths))
    for r in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def error_text(exc) -> str:
    """A SegtoolError as the CLI prints it: `path:line:col: message` (or
    `error: message` without a location) and an indented hint."""
    return exc.format() if exc.location() else f"error: {exc.format()}"
