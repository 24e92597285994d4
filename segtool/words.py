"""Counts as people write them: `1 row`, `2 rows`, `1,553 users`."""

from __future__ import annotations


def counted(
    n: int, noun: str, plural: str | None = None, verb: tuple[str, str] | None = None
) -> str:
    """`n` with its noun in number; `plural` for nouns that do not take -s;
    `verb` (singular, plural) follows in agreement: `1 user has`, `2 users have`."""
    text = f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"
    return text if verb is None else f"{text} {verb[0] if n == 1 else verb[1]}"
