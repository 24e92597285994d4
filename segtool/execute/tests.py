"""`segtool test`: column tests from models/*.yml (unique, not_null,
accepted_values, relationships) and segmentation tests. Each failing test
names itself and shows a few offending rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import duckdb

from segtool.compile.sql import quote_ident, relation, source_sql, sql_literal
from segtool.errors import ProjectError, did_you_mean
from segtool.state.result import one

COLUMN_TESTS = ("unique", "not_null", "accepted_values", "relationships")


@dataclass
class TestResult:
    name: str
    node: str
    status: str  # pass | fail | error
    failures: int = 0
    message: str = ""
    examples: list[Any] = field(default_factory=list)
    path: str | None = None
    line: int | None = None


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


def _resolve_to(project, to: str) -> str:
    proj = project.loaded
    m = re.fullmatch(r"\s*ref\(\s*['\"](\w+)['\"]\s*\)\s*", to)
    if m:
        if m.group(1) not in proj.models:
            raise ProjectError(
                f"relationships: unknown model '{m.group(1)}'",
                hint=did_you_mean(m.group(1), proj.models),
            )
        return relation(m.group(1))
    m = re.fullmatch(r"\s*source\(\s*['\"](\w+)['\"]\s*,\s*['\"](\w+)['\"]\s*\)\s*", to)
    if m and (m.group(1), m.group(2)) in proj.sources:
        return source_sql(proj.sources[(m.group(1), m.group(2))], proj.root)
    raise ProjectError(
        f"relationships: cannot resolve to: {to!r}",
        hint="use to: \"ref('model')\" or \"source('src', 'table')\"",
    )


def column_test_sql(project, rel: str, col: str, name: str, args: dict) -> tuple[str, str]:
    """(query returning offending rows, test name)."""
    c = quote_ident(col)
    if name == "not_null":
        return f"SELECT * FROM {rel} WHERE {c} IS NULL", "not_null"
    if name == "unique":
        return (
            f"SELECT {c}, count(*) AS n FROM {rel} WHERE {c} IS NOT NULL GROUP BY {c} HAVING count(*) > 1",
            "unique",
        )
    if name == "accepted_values":
        values = args.get("values")
        if not isinstance(values, list) or not values:
            raise ProjectError(f"accepted_values on '{col}' needs `values: [...]`")
        lits = ", ".join(sql_literal(v) for v in values)
        return (
            f"SELECT {c}, count(*) AS n FROM {rel} WHERE {c} IS NOT NULL AND {c} NOT IN ({lits}) GROUP BY {c}",
            "accepted_values",
        )
    if name == "relationships":
        to, fld = args.get("to"), args.get("field")
        if not to or not fld:
            raise ProjectError(f"relationships on '{col}' needs `to:` and `field:`")
        parent = _resolve_to(project, to)
        return (
            f"SELECT {c}, count(*) AS n FROM {rel} c WHERE {c} IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {parent} p WHERE p.{quote_ident(fld)} = c.{c}) GROUP BY {c}",
            "relationships",
        )
    raise AssertionError(name)


def run_tests(project, select=(), exclude=(), reporter=None, state_dir=None) -> list[TestResult]:
    from segtool.report.console import Reporter

    rep = reporter or Reporter(quiet=True)
    nodes = project.ls(select, exclude, state_dir)
    con = project.connect(read_only=True)
    results: list[TestResult] = []
    try:
        for node in nodes:
            if node.kind == "model":
                props = project.loaded.models[node.name].props
                cols = props.columns if props else []
                rel = relation(node.name)
            elif node.kind == "source":
                cols = node.spec.table.columns
                rel = source_sql(node.spec, project.loaded.root)
            else:
                continue
            for col in cols:
                for test in col.all_tests():
                    name, args = parse_test(test, col)
                    sql, kind = column_test_sql(project, rel, col.name, name, args)
                    tname = f"{kind}({node.name}.{col.name})"
                    try:
                        # grouped queries carry n per value: count rows, not values
                        count = "coalesce(sum(n), 0)" if kind != "not_null" else "count(*)"
                        n = one(con.execute(f"SELECT {count} FROM ({sql})"))[0]
                        ex = con.execute(f"SELECT * FROM ({sql}) LIMIT 5").fetchall() if n else []
                        status = "fail" if n else "pass"
                        msg = f"{n} offending row(s)" if n else ""
                    except duckdb.Error as exc:
                        status, n, ex = "error", 0, []
                        msg = str(exc).splitlines()[0]
                    results.append(
                        TestResult(
                            tname, node.unique_id, status, int(n), msg, ex, col.file, col.line
                        )
                    )
        from segtool.execute.segment import segmentation_tests

        for node in nodes:
            if node.kind == "segmentation":
                results += segmentation_tests(project, con, node)
    finally:
        con.close()
    _report(rep, results)
    return results


def _report(rep, results: list[TestResult]) -> None:
    for r in results:
        mark = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}[r.status]
        rep.line(f"{mark:<5} {r.name}" + (f": {r.message}" if r.message else ""))
        if r.status == "fail" and r.examples:
            for e in r.examples:
                rep.line(f"        {e}")
    n_fail = sum(r.status == "fail" for r in results)
    n_err = sum(r.status == "error" for r in results)
    n_pass = sum(r.status == "pass" for r in results)
    rep.line(f"{n_pass} passed, {n_fail} failed" + (f", {n_err} errors" if n_err else ""))
