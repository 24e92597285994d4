"""Commands over segment results: show, export, assign, diff, docs."""

from __future__ import annotations


def register(main) -> None:
    pass
