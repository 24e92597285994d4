"""Materialize SQL models: view, table, incremental (with unique_key).

The caller wraps all models of a run in one transaction, so a failing model
leaves every table as it was. Errors point at the SQL file actually run
(target/run/...) and its line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from segtool.compile.sql import MODEL_SCHEMA, CompiledModel, compile_model, quote_ident, relation
from segtool.errors import DataError, ExecutionError, SqlError
from segtool.project.loader import LoadedProject
from segtool.state.db import relation_exists
from segtool.state.result import one


@dataclass
class ModelResult:
    name: str
    materialized: str
    action: str  # created | replaced | incremental | full-refresh
    rows: int | None
    seconds: float


def sql_error(
    exc: duckdb.Error, compiled_path: str, sql: str, model: str
) -> SqlError | ExecutionError:
    msg = str(exc).strip()
    m = re.search(r"LINE (\d+):", msg)
    line = int(m.group(1)) if m else None
    first = msg.splitlines()[0] if msg else type(exc).__name__
    if isinstance(exc, duckdb.IOException) and ("No space left" in msg or "disk" in msg.lower()):
        return ExecutionError(
            f"model '{model}': disk full while writing: {first}",
            hint="free disk space and run again",
        )
    if isinstance(exc, duckdb.OutOfMemoryException):
        return ExecutionError(
            f"model '{model}': out of memory: {first}",
            hint="set memory_limit in profiles.yml or lower threads",
        )
    detail = "\n".join("    " + ln for ln in msg.splitlines()[1:6])
    return SqlError(
        f"model '{model}' failed: {first}" + (f"\n{detail}" if detail else ""),
        path=compiled_path,
        line=line,
        hint="the compiled SQL is in that file; fix the model under models/ and run again",
    )


def write_sql(target_dir: Path, sub: str, model_path: str, sql: str) -> Path:
    out = target_dir / sub / model_path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(sql + "\n", encoding="utf-8")
    return out


def build_model(
    con: duckdb.DuckDBPyConnection,
    proj: LoadedProject,
    cm: CompiledModel,
    *,
    full_refresh: bool,
    target_dir: Path,
) -> ModelResult:
    import time

    t0 = time.perf_counter()
    rel = relation(cm.name)
    mat = cm.config.materialized
    existing = relation_exists(con, MODEL_SCHEMA, cm.name)
    incremental = mat == "incremental" and existing == "table" and not full_refresh
    run_cm = compile_model(proj, proj.models[cm.name], incremental=True) if incremental else cm
    run_path = write_sql(target_dir, "run", cm.path, proj.secrets.mask(run_cm.sql))
    shown = proj.relpath(run_path)
    rows = None
    try:
        if existing and existing != ("view" if mat == "view" else "table"):
            con.execute(f"DROP {'VIEW' if existing == 'view' else 'TABLE'} {rel}")
            existing = None
        if mat == "view":
            con.execute(f"CREATE OR REPLACE VIEW {rel} AS\n{run_cm.sql}")
            action = "replaced" if existing else "created"
        elif not incremental:
            con.execute(f"CREATE OR REPLACE TABLE {rel} AS\n{run_cm.sql}")
            rows = one(con.execute(f"SELECT count(*) FROM {rel}"))[0]
            action = (
                "full-refresh"
                if (mat == "incremental" and existing)
                else ("replaced" if existing else "created")
            )
        else:
            tmp = quote_ident(f"__segtool_new_{cm.name}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {tmp} AS\n{run_cm.sql}")
            new_cols = [r[0] for r in con.execute(f"DESCRIBE {tmp}").fetchall()]
            old_cols = [r[0] for r in con.execute(f"DESCRIBE {rel}").fetchall()]
            if set(new_cols) != set(old_cols):
                raise SqlError(
                    f"incremental model '{cm.name}' changed its columns ({', '.join(sorted(set(new_cols) ^ set(old_cols)))})",
                    path=cm.path,
                    hint="run with --full-refresh to rebuild it",
                )
            keys = cm.config.unique_key
            if keys:
                keys = [keys] if isinstance(keys, str) else list(keys)
                cond = " AND ".join(f"t.{quote_ident(k)} = n.{quote_ident(k)}" for k in keys)
                con.execute(
                    f"DELETE FROM {rel} AS t WHERE EXISTS (SELECT 1 FROM {tmp} AS n WHERE {cond})"
                )
            con.execute(f"INSERT INTO {rel} BY NAME SELECT * FROM {tmp}")
            rows = one(con.execute(f"SELECT count(*) FROM {tmp}"))[0]
            con.execute(f"DROP TABLE {tmp}")
            action = "incremental"
    except duckdb.Error as exc:
        raise sql_error(exc, shown, run_cm.sql, cm.name) from exc
    return ModelResult(cm.name, mat, action, rows, time.perf_counter() - t0)


def check_key(con: duckdb.DuckDBPyConnection, proj: LoadedProject, model: str, users: str) -> None:
    """The entity key must exist, be non-NULL and unique in models that feed
    features, texts or segments."""
    key = proj.key
    rel = relation(model)
    cols = [r[0] for r in con.execute(f"DESCRIBE {rel}").fetchall()]
    path = proj.models[model].path
    if key not in cols:
        raise DataError(
            f"{path}: model '{model}' has no key column '{key}' (it feeds {users})",
            hint=f"select the entity key as `{key}`, or change entity.key in segtool_project.yml (columns: {', '.join(cols[:12])})",
        )
    k = quote_ident(key)
    nulls = one(con.execute(f"SELECT count(*) FROM {rel} WHERE {k} IS NULL"))[0]
    if nulls:
        raise DataError(
            f"{path}: model '{model}' has {nulls} row(s) with NULL {key}",
            hint=f"filter them out (`where {key} is not null`) or fix the upstream data",
        )
    dups = con.execute(
        f"SELECT {k}, count(*) AS n FROM {rel} GROUP BY {k} HAVING count(*) > 1 ORDER BY n DESC, {k} LIMIT 5"
    ).fetchall()
    if dups:
        total = one(
            con.execute(
                f"SELECT count(*) FROM (SELECT {k} FROM {rel} GROUP BY {k} HAVING count(*) > 1)"
            )
        )[0]
        examples = ", ".join(f"{r[0]!r} ({r[1]} rows)" for r in dups)
        raise DataError(
            f"{path}: model '{model}' must have one row per {proj.spec.entity.name}, but {total} {key} value(s) repeat: {examples}",
            hint="aggregate to one row per key (GROUP BY) before it feeds features, texts or segments",
        )
