"""Small reads every state module needs (a leaf module: no segtool imports).

DuckDB 2 refuses new work on a connection while a result is unfinished, and
`fetchone()` leaves it unfinished. `one()` fetches everything (callers use it
on queries that return one row) and returns the first row or None."""

from __future__ import annotations


def one(result):
    rows = result.fetchall()
    return rows[0] if rows else None


def table_exists(con, schema: str, name: str) -> bool:
    row = one(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ? AND database_name = current_database()",
            [schema, name],
        )
    )
    return bool(row[0])
