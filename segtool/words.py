"""Counts as people write them: `1 row`, `2 rows`, `1,553 users`."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` with its noun in number; `plural` for nouns that do not take -s."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"
