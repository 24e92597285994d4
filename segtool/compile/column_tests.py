"""The column tests a model's YAML may declare (`tests: [unique, ...]`) and
how one entry is read: `validate` checks them (compile/checks.py), `segtool
test` runs them (execute/tests.py)."""

from __future__ import annotations

import re
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


def relationship_target(proj, to: Any, col) -> tuple[str, Any]:
    """What a relationships test's `to:` names: ("model", name) or
    ("source", (source, table)); an error at the column's line otherwise
    (validate reports it; `segtool test` marks that one test as an error)."""
    text = to if isinstance(to, str) else ""
    m = re.fullmatch(r"\s*ref\(\s*['\"](\w+)['\"]\s*\)\s*", text)
    if m:
        if m.group(1) not in proj.models:
            raise ProjectError(
                f"relationships on '{col.name}': unknown model '{m.group(1)}'",
                path=col.file,
                line=col.line,
                hint=did_you_mean(m.group(1), proj.models),
            )
        return "model", m.group(1)
    m = re.fullmatch(r"\s*source\(\s*['\"](\w+)['\"]\s*,\s*['\"](\w+)['\"]\s*\)\s*", text)
    if m:
        key = (m.group(1), m.group(2))
        if key not in proj.sources:
            raise ProjectError(
                f"relationships on '{col.name}': unknown source '{key[0]}.{key[1]}'",
                path=col.file,
                line=col.line,
                hint=did_you_mean(f"{key[0]}.{key[1]}", [f"{a}.{b}" for a, b in proj.sources]),
            )
        return "source", key
    raise ProjectError(
        f"relationships on '{col.name}': cannot resolve to: {to!r}",
        path=col.file,
        line=col.line,
        hint="use to: \"ref('model')\" or \"source('src', 'table')\"",
    )
