"""What SQL a project may run, checked with DuckDB's own parser.

* A model is exactly one SELECT statement (WITH ... SELECT, FROM-first and
  VALUES included). A second statement is an error naming its line; nothing
  is ever wrapped in parentheses or scanned as text to decide this.
* A rule or population predicate is exactly one expression: it must parse as
  the WHERE clause of `SELECT 1 WHERE (...)` and leave every other part of
  that statement as it was (no UNION, GROUP BY, ORDER BY, ... smuggled in).
* A few table functions change the database or run SQL given as a string
  (checkpoint, logging, `query`, ...): a model may not call them.

What a SELECT can reach outside the database is the job of the connection
fence (state/db.py), not of this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import duckdb

from segtool.errors import ProjectError

# table functions a model may not call: they change the database or the
# session, or run SQL handed over as a string (which hides it from these checks)
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "checkpoint",
        "force_checkpoint",
        "enable_logging",
        "disable_logging",
        "truncate_duckdb_logs",
        "enable_profiling",
        "disable_profiling",
        "add_grammar_extension",
        "remove_grammar_extension",
        "register_external_resource",
        "register_external_resource_type",
        "create_external_resource",
        "destroy_external_resource",
        "deregister_external_resource",
        "json_execute_serialized_sql",
        "query",
        "query_table",
    }
)
# functions whose result changes from run to run on the same data: a model
# using them is rebuilt on every run (see plan)
VOLATILE_FUNCTIONS = frozenset(
    {
        "now",
        "current_timestamp",
        "get_current_timestamp",
        "current_date",
        "today",
        "current_time",
        "get_current_time",
        "transaction_timestamp",
        "random",
        "uuid",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "nextval",
        "currval",
        "setseed",
    }
)


_FILE_READERS = ("read_", "parquet_", "sniff_", "glob")


@dataclass(frozen=True)
class SelectShape:
    """What a checked SELECT calls: its table functions, and whether its result
    can change without its inputs changing."""

    table_functions: frozenset[str]  # read_csv, range, ... called in FROM
    volatile: bool  # uses now()/random()/... or could not be inspected
    file_reads: int = 0  # calls of file-reading table functions (source() makes some)

    @property
    def reads_files(self) -> bool:
        return self.file_reads > 0


@lru_cache(maxsize=1)
def _parser() -> duckdb.DuckDBPyConnection:
    # an in-memory connection only for parsing (extract_statements and
    # json_serialize_sql): the module-level functions would open DuckDB's
    # default connection too (~0.04 s per process)
    return duckdb.connect(":memory:")


def _serialize(sql: str) -> dict:
    (text,) = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0]
    return json.loads(text)


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _first_token_offset(query: str) -> int:
    """Offset of the first token that is not a comment (0 if none)."""
    try:
        for offset, kind in duckdb.tokenize(query):
            if kind != duckdb.token_type.comment:
                return offset
    except duckdb.Error:
        pass
    return len(query) - len(query.lstrip())


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _function_names(tree: dict) -> tuple[list[str], set[str]]:
    """(table function calls, scalar/aggregate function names) anywhere in the tree."""
    tables: list[str] = []
    scalars: set[str] = set()
    for n in _walk(tree):
        if n.get("type") == "TABLE_FUNCTION" and isinstance(n.get("function"), dict):
            name = n["function"].get("function_name")
            if name:
                tables.append(str(name).lower())
        elif n.get("class") == "FUNCTION" and n.get("function_name"):
            scalars.add(str(n["function_name"]).lower())
    return tables, scalars


def check_select(sql: str, *, what: str, path: str | None, line_of=None) -> SelectShape:
    """`sql` must be exactly one SELECT statement. `line_of(compiled_line)`
    maps a line of `sql` to the line of the file the user edits."""
    line_of = line_of or (lambda n: n)

    def at(offset: int) -> int | None:
        return line_of(_line_at(sql, offset))

    try:
        statements = _parser().extract_statements(sql)
    except duckdb.Error as exc:
        msg = str(exc).strip()
        m = re.search(r"LINE (\d+):", msg)
        raise ProjectError(
            f"{what}: {msg.splitlines()[0] if msg else type(exc).__name__}",
            path=path,
            line=line_of(int(m.group(1))) if m else None,
            hint="a model is one SELECT statement",
        ) from None
    if not statements:
        raise ProjectError(f"{what} is empty", path=path, line=1)
    if len(statements) > 1:
        offset = len(statements[0].query) + _first_token_offset(statements[1].query)
        kind = statements[1].type.name
        article = "an" if kind[0] in "AEIOU" else "a"
        raise ProjectError(
            f"{what} holds more than one statement: {article} {kind} statement follows the SELECT",
            path=path,
            line=at(offset),
            hint="a model is exactly one SELECT (or WITH ... SELECT); segtool creates the table or view itself",
        )
    stmt = statements[0]
    if stmt.type != duckdb.StatementType.SELECT:
        hint = "a model is exactly one SELECT (or WITH ... SELECT)"
        if stmt.type.name == "MULTI":
            hint += "; PIVOT without an explicit IN list runs several statements: list the values"
        raise ProjectError(
            f"{what} is not a SELECT (it is {stmt.type.name})",
            path=path,
            line=at(_first_token_offset(stmt.query)),
            hint=hint,
        )
    tree = _serialize(sql)
    if tree.get("error"):
        # DuckDB cannot serialise a few SELECT forms (SUMMARIZE, ...): accept
        # them, inside the fence, as volatile (rebuilt every run)
        return SelectShape(frozenset(), volatile=True)
    calls, scalars = _function_names(tree)
    tables = set(calls)
    bad = sorted(tables & FORBIDDEN_FUNCTIONS)
    if bad:
        i = sql.lower().find(bad[0] + "(")
        raise ProjectError(
            f"{what} calls {bad[0]}(), which a model may not use",
            path=path,
            line=at(i) if i >= 0 else None,
            hint="models read data; they do not change the database or run SQL from strings",
        )
    volatile = bool((tables | scalars) & VOLATILE_FUNCTIONS)
    reads = sum(1 for c in calls if c.startswith(_FILE_READERS))
    return SelectShape(frozenset(tables), volatile=volatile, file_reads=reads)


# ----------------------------------------------------------------------------- predicates


def _strip_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_locations(v)
            for k, v in node.items()
            if k not in ("query_location", "query_location_length")
        }
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


@lru_cache(maxsize=1)
def _baseline() -> dict:
    tree = _serialize("SELECT 1 WHERE (true)")
    node = _strip_locations(tree["statements"][0])
    node["node"].pop("where_clause")
    return node


def check_expression(expr: str, *, what: str, path: str | None, line: int | None) -> None:
    """`expr` must be exactly one SQL expression (a predicate)."""

    def refuse(detail: str) -> ProjectError:
        return ProjectError(
            f"{what}: invalid predicate `{expr}`: not a single SQL expression ({detail})",
            path=path,
            line=line,
            hint="a predicate is one boolean expression over the model's columns: no statements, no semicolons",
        )

    probe = f"SELECT 1 WHERE ({expr}\n)"
    try:
        statements = _parser().extract_statements(probe)
    except duckdb.Error as exc:
        raise refuse(str(exc).strip().splitlines()[0]) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise refuse("it holds a statement separator")
    tree = _serialize(probe)
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        raise refuse(str(tree.get("error_message", "it does not parse")).splitlines()[0])
    stmt = _strip_locations(tree["statements"][0])
    if stmt.get("node", {}).get("where_clause") is None:
        raise refuse("it does not parse as a WHERE clause")
    stmt["node"].pop("where_clause")
    if stmt != _baseline():
        raise refuse("it reaches outside the WHERE clause")
    # a subquery may call a table function: the ones models may not call,
    # neither may a predicate (`(select count(*) from checkpoint()) >= 0`)
    calls, _ = _function_names(tree)
    bad = sorted(set(calls) & FORBIDDEN_FUNCTIONS)
    if bad:
        raise ProjectError(
            f"{what}: predicate `{expr}` calls {bad[0]}(), which project SQL may not use",
            path=path,
            line=line,
            hint="a predicate reads the model's columns; it does not change the database or run SQL from strings",
        )
