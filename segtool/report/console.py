"""All terminal output goes through a Reporter: rich when attached to a
terminal, plain lines otherwise (CI logs, tests, pipes)."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class Reporter:
    def __init__(self, *, quiet: bool = False, stream=None, color: bool | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stdout
        # a terminal gets rich output (bars, tables); colour within it follows
        # NO_COLOR (rich reads it). Plain output colours marks and warnings by
        # use_color (FORCE_COLOR when piped, never with NO_COLOR)
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
            from rich.text import Text

            self.console.print(Text("warning: ", style="yellow") + Text(text))
        else:
            print(paint("warning: ", "yellow", self.stream) + text, file=self.stream)

    def mark(self, mark: str, text: str) -> None:
        """A test result line: `PASS  name`, the mark coloured as use_color says."""
        if self.quiet:
            return
        if self.rich:
            from rich.text import Text

            self.console.print(
                Text(f"{mark:<5}", style=MARK_STYLES.get(mark, "")) + Text(f" {text}")
            )
        else:
            prefix = paint(f"{mark:<5}", MARK_STYLES.get(mark), self.stream)
            print(f"{prefix} {text}", file=self.stream)

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
    def progress(self, label: str, total: int | None, unit: str = "items") -> Iterator[Any]:
        """Progress of a long stage. On a terminal: a bar with done/total, rate
        and time left, moving as each batch finishes. Elsewhere (CI logs,
        pipes): a plain line every SEGTOOL_PROGRESS_INTERVAL seconds (default
        5), also while nothing finishes (a model loading), so a log never goes
        quiet. `advance` may be called from any thread."""
        if self.quiet or not total:
            yield _NoProgress()
            return
        if not self.rich:
            plain = _PlainProgress(self, label, total, unit)
            try:
                yield plain
            finally:
                plain.stop()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(unit),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as p:
            task = p.add_task(label, total=total)
            yield _RichProgress(p, task, label)


def progress_interval() -> float:
    try:
        return max(0.01, float(os.environ.get("SEGTOOL_PROGRESS_INTERVAL", "5")))
    except ValueError:
        return 5.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def note(self, status: str) -> None:
        pass

    def begin(self) -> None:
        pass


class _PlainProgress:
    """`  embed story with minilm: 4,096/19,353 (21%), 85 texts/s, 0:48 elapsed, eta 3:00`"""

    def __init__(self, reporter: Reporter, label: str, total: int, unit: str):
        import threading

        self.reporter, self.label, self.total, self.unit = reporter, label, total, unit
        self.done = 0
        self.t0 = self.t_work = time.monotonic()
        self.status = "starting"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._broken: OSError | None = None  # the ticker could not write (a closed pipe)
        self._thread = threading.Thread(target=self._tick, name="segtool-progress", daemon=True)
        self._thread.start()

    def advance(self, n: int = 1) -> None:
        if self._broken is not None:  # the output is gone: stop the stage here,
            raise self._broken  # not minutes later at its next line
        with self._lock:
            self.done += n

    def note(self, status: str) -> None:
        """What is happening before the first item is done ("loading the model")."""
        with self._lock:
            self.status = status

    def begin(self) -> None:
        """The work itself starts now: the rate (and eta) count from here, not
        from a model's loading."""
        with self._lock:
            self.t_work = time.monotonic()

    def line(self) -> str:
        with self._lock:
            done, status, t_work = self.done, self.status, self.t_work
        now = time.monotonic()
        elapsed = now - self.t0
        out = f"  {self.label}: {done:,}/{self.total:,} ({done / self.total:.0%})"
        if done:
            rate = done / max(now - t_work, 1e-9)
            out += f", {rate:,.0f} {self.unit}/s, {_clock(elapsed)} elapsed, eta {_clock((self.total - done) / rate)}"
        else:
            out += f", {_clock(elapsed)} elapsed, {status}"
        return out

    def _tick(self) -> None:
        every = progress_interval()
        while not self._stop.wait(every):
            try:
                self.reporter.line(self.line())
            except OSError as exc:  # `segtool run | head`: the reader left
                self._broken = exc
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _RichProgress:
    def __init__(self, p, task, label: str):
        self.p, self.task, self.label = p, task, label
        self.noted = False

    def advance(self, n: int = 1) -> None:
        if self.noted:  # the bar moves: it says what it does again
            self.noted = False
            self.p.update(self.task, description=self.label)
        self.p.advance(self.task, n)

    def note(self, status: str) -> None:
        self.noted = True
        self.p.update(self.task, description=f"{self.label} ({status})")

    def begin(self) -> None:
        pass  # rich's rate counts from the first advance already


def _rate_column_class():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def __init__(self, unit: str):
            super().__init__()
            self.unit = unit

        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="cyan")

    return RateColumn


def _RateColumn(unit: str):  # noqa: N802 - a class made on first use (rich loads lazily)
    return _rate_column_class()(unit)


# C0 and C1 controls (ESC, and CSI 0x9b that some terminals read as ESC [) too:
# a product name with an escape sequence set the terminal's title through show
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(v: Any) -> str:
    """Text for one line of a text table or list: line breaks, tabs and other
    control characters become one space (a segment label "VIP\\nline2" split
    the rows of show and diff)."""
    return _LINE_BREAKS.sub(" ", str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.3f}".rstrip("0").rstrip(".")
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else one_line(v)


def char_width(ch: str) -> int:
    """Terminal columns of one character: 2 for East Asian wide and
    full-width ones (CJK, most emoji), 0 for combining marks and zero-width
    characters, else 1 (rich's table, as its own tables count)."""
    from rich.cells import get_character_cell_size

    return get_character_cell_size(ch)


def display_width(text: str) -> int:
    """Terminal columns `text` takes: 日本語 takes 6, not 3."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def pad(text: str, width: int) -> str:
    """`text` padded with spaces to `width` terminal columns (str.ljust pads
    to a number of characters: a CJK label pushed every later column out)."""
    return text + " " * max(0, width - display_width(text))


def wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width` terminal columns, broken at spaces; a word
    wider than a line is broken between characters. textwrap.wrap, which
    counts characters, for text where each character takes one column."""
    import textwrap

    width = max(width, 1)
    if display_width(text) == len(text):
        return textwrap.wrap(text, width)
    lines: list[str] = []
    line, used = "", 0
    for word in text.split():
        w = display_width(word)
        if line and used + 1 + w <= width:
            line, used = f"{line} {word}", used + 1 + w
            continue
        if line:
            lines.append(line)
            line, used = "", 0
        for ch in word:  # a word wider than a line: as many characters as fit
            cw = char_width(ch)
            if used + cw > width and line:
                lines.append(line)
                line, used = "", 0
            line, used = line + ch, used + cw
    if line:
        lines.append(line)
    return lines


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    width: int | None = None,
) -> str:
    """A plain text table. With `width` (a terminal's), the widest columns are
    narrowed until a line fits and their cells wrap at word boundaries. Widths
    are terminal columns (display_width): a CJK character or an emoji takes
    two, so the columns after it still line up."""
    headers = [one_line(h) for h in headers]  # values of a column (show --vs, score)
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [display_width(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], display_width(c))
    if width:
        floor = [max(display_width(h), 8) for h in headers]
        while sum(widths) + 2 * (len(widths) - 1) > width:
            i = max(range(len(widths)), key=lambda j: widths[j] - floor[j])
            if widths[i] <= floor[i]:
                break
            widths[i] -= 1
    out = [title] if title else []
    out.append("  ".join(pad(h, w) for h, w in zip(headers, widths)).rstrip())
    out.append("  ".join("-" * w for w in widths))
    for r in cells:
        wrapped = [wrap(c, w) or [""] if display_width(c) > w else [c] for c, w in zip(r, widths)]
        for k in range(max(len(x) for x in wrapped)):
            parts = [pad(x[k] if k < len(x) else "", w) for x, w in zip(wrapped, widths)]
            out.append("  ".join(parts).rstrip())
    return "\n".join(out)


def terminal_width(stream=None) -> int | None:
    """The width to fit output to: a terminal's, or COLUMNS when set; None
    (full lines) when piped without COLUMNS."""
    import shutil

    stream = stream or sys.stdout
    if not (hasattr(stream, "isatty") and stream.isatty()):
        cols = os.environ.get("COLUMNS", "")
        return int(cols) if cols.isdigit() and int(cols) > 20 else None
    return shutil.get_terminal_size((120, 40)).columns


def md_escape(s) -> str:
    """Text for one line of Markdown: `|` escaped, line breaks as spaces."""
    return one_line(s).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table. In a cell `|` is escaped and a newline becomes
    a space; a row shorter than the headers ends in empty cells."""
    out = ["| " + " | ".join(md_escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        cells = (md_escape(_fmt(c)) for c in r)
        out.append("| " + " | ".join(cells) + " |" + " |" * (len(headers) - len(r)))
    return "\n".join(out)


def error_text(exc) -> str:
    """A SegtoolError as the CLI prints it: `path:line:col: message` (or
    `error: message` without a location) and an indented hint."""
    return exc.format() if exc.location() else f"error: {exc.format()}"


def use_color(stream) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org);
    FORCE_COLOR forces it."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


MARK_STYLES = {"PASS": "green", "FAIL": "red", "ERROR": "bold red", "SKIP": "dim"}


def paint(text: str, style: str | None, stream=None) -> str:
    """`text` in a colour (a MARK_STYLES value) when `stream` shows colour."""
    import click

    if not style or not use_color(stream or sys.stdout):
        return text
    if style == "dim":
        return click.style(text, dim=True)
    return click.style(text, fg=style.removeprefix("bold "), bold=style.startswith("bold "))
