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
    needed = ARGUMENTS[name]
    unknown = [a for a in args if a not in needed]
    if unknown:  # ignored, a `quote: false` or `severity: warn` changed nothing
        raise ProjectError(
            f"test '{name}' on column '{col.name}': unknown argument '{unknown[0]}'",
            path=col.file,
            line=col.line,
            hint=did_you_mean(str(unknown[0]), needed)
            or (f"{name} takes {', '.join(needed)}" if needed else f"{name} takes no arguments"),
        )
    missing = [a for a in needed if a not in args]
    if missing:
        raise ProjectError(
            f"test '{name}' on column '{col.name}' needs {', '.join(missing)}",
            path=col.file,
            line=col.line,
            hint="e.g. accepted_values: {values: [a, b]} or relationships: {to: \"ref('m')\", field: id}",
        )
    if name == "accepted_values":
        _check_values(args["values"], col)
    return name, args


# the arguments each test takes (all of them required)
ARGUMENTS = {
    "unique": (),
    "not_null": (),
    "accepted_values": ("values",),
    "relationships": ("to", "field"),
}


def _check_values(values: Any, col) -> None:
    """accepted_values' list: not empty, no null (NOT IN a list holding NULL is
    never true: the test passed whatever the column held), and no YAML
    boolean among text (`no`, `yes`, `on`, `off` are booleans to YAML: a list
    of country codes with NO in it compared the column to a boolean)."""

    def bad(message: str, hint: str) -> ProjectError:
        return ProjectError(
            f"accepted_values on column '{col.name}': {message}",
            path=col.file,
            line=col.line,
            hint=hint,
        )

    if not isinstance(values, list) or not values:
        raise bad("values must be a non-empty list", "values: [a, b]")
    if any(v is None for v in values):
        raise bad(
            "a null among the values accepts nothing (and the test passed whatever the column held)",
            "NULLs are not checked by accepted_values: leave null out (not_null tests for it)",
        )
    if any(isinstance(v, bool) for v in values) and any(isinstance(v, str) for v in values):
        words = ", ".join(str(v) for v in values if isinstance(v, bool))
        raise bad(
            f"{words} among text values is a YAML boolean (no, yes, on, off, true and false are)",
            "quote them as text: values: ['NO', 'US']",
        )


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
