"""The column tests a model's YAML may declare (`tests: [unique, ...]`) and
how one entry is read: `validate` checks them (compile/checks.py), `segtool
test` runs them (execute/tests.py)."""

from __future__ import annotations

from typing import Any

from segtool.errors import ProjectError, did_you_mean

COLUMN_TESTS = ("unique", "not_null", "accepted_values", "relationships")


def parse_test(test: Any, col) -> tuple[str, dict]:
    """(test name, arguments) of one entry under a column's `tests:`."""
    if isinstance(test, str):
        name, args = test, {}
    elif isinstance(test, dict) and len(test) == 1:
        name, args = next(iter(test.items()))
        args = args or {}
    else:
        raise ProjectError(
            f"cannot read test {test!r} on column '{col.name}'",
            path=col.file,
            line=col.line,
            hint="write `- unique` or `- accepted_values: {values: [...]}`",
        )
    if name not in COLUMN_TESTS:
        raise ProjectError(
            f"unknown test '{name}' on column '{col.name}'",
            path=col.file,
            line=col.line,
            hint=did_you_mean(name, COLUMN_TESTS),
        )
    if not isinstance(args, dict):
        raise ProjectError(
            f"test '{name}' on column '{col.name}' takes a mapping of arguments",
            path=col.file,
            line=col.line,
        )
    needed = {"accepted_values": ("values",), "relationships": ("to", "field")}.get(name, ())
    missing = [a for a in needed if a not in args]
    if missing:
        raise ProjectError(
            f"test '{name}' on column '{col.name}' needs {', '.join(missing)}",
            path=col.file,
            line=col.line,
            hint="e.g. accepted_values: {values: [a, b]} or relationships: {to: \"ref('m')\", field: id}",
        )
    return name, args
