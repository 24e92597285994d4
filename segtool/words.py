"""Counts as people write them: `1 row`, `2 rows`, `1,553 users`."""

from __future__ import annotations


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
