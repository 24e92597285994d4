"""Counts and values as people write them: `1 row`, `2 rows`, `1,553 users`;
`1,382` (not 1.38e+03), `18:35`, `94 days`. `segtool show`, the report and
segment labels all say a value this way."""

from __future__ import annotations

import math
import re


def counted(
    n: int, noun: str, plural: str | None = None, verb: tuple[str, str] | None = None
) -> str:
    """`n` with its noun in number; `plural` for nouns that do not take -s;
    `verb` (singular, plural) follows in agreement: `1 user has`, `2 users have`."""
    text = f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"
    return text if verb is None else f"{text} {verb[0] if n == 1 else verb[1]}"


def above(value: float, threshold: float) -> str:
    """`value` with the fewest decimals (2 to 6) that still show it above
    `threshold`: 'drift 0.0045 > 0.001', not 'drift 0.00 > 0.001'."""
    for places in range(2, 7):
        if round(value, places) > threshold:
            return f"{value:.{places}f}"
    return f"{value:.6g}"


def with_article(noun: str) -> str:
    """`noun` after its indefinite article: 'a view', 'an incremental'."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
# a time of day as drivers store it (time.isoformat): 18:35:16.500000
_TIME = re.compile(r"^(\d{2}:\d{2}):(\d{2})(?:\.\d+)?$")
# a length of time as drivers store it (str(timedelta)): 3 days, 4:05:06.5,
# -1 day, 23:00:00, 3:00:00 (one hour digit: a time of day has two)
_INTERVAL = re.compile(r"^(?:(?P<d>-?\d+) days?, )?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def number_str(x: float) -> str:
    """`1,382` from 1,000 on (not 1.38e+03), else three significant digits;
    as the report's heatmap, `show` and labels all say a number."""
    x = float(x)
    if abs(x) >= 1e15 or not math.isfinite(x):  # 1e+300, not 301 digits in a label
        return f"{x:.3g}"
    if abs(x) >= 999.5:  # .3g would write 1e+03
        return f"{x:,.0f}"
    return f"{x:.0f}" if x.is_integer() else f"{x:.3g}"


def duration_str(seconds: float) -> str:
    """A length of time in days (`1.5 days`); under a day in hours, minutes
    or seconds (`3 h`, `20 min`), no fractions of a second."""
    s = float(seconds)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if abs(s) >= size:
            n = number_str(s / size)
            return f"{n} {unit}" + ("s" if unit == "day" and n != "1" else "")
    return f"{number_str(round(s))} s" if s else "0 days"


def interval_seconds(x: str, hms: bool = False) -> float | None:
    """The seconds of a str(timedelta); `hms`: also of a bare H:MM:SS with
    two hour digits (which reads as a time of day on its own)."""
    m = _INTERVAL.match(x)
    if m is None or not (m["d"] or len(m["h"]) == 1 or hms):
        return None
    days = int(m["d"] or 0)
    return days * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])


def value_str(x, interval: bool = False) -> str:
    """A value of a trait or a bin as `show`, the report and labels say it:
    numbers with thousands separators, a date for a timestamp, a time of day
    to the second (HH:MM where the seconds are 0), a length of time in days.
    `interval`: a bare H:MM:SS is a length of time (the other value of the
    pair was one)."""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 1000 else str(x)
    if isinstance(x, float):
        return number_str(x)
    x = str(x)
    if _TIMESTAMP.match(x):
        return x[:10]  # a date is enough next to a median
    seconds = interval_seconds(x, hms=interval)
    if seconds is not None:
        return duration_str(seconds)
    t = _TIME.match(x)
    if t:
        return t[1] if t[2] == "00" else f"{t[1]}:{t[2]}"
    return x
