"""Materialize SQL models: view, table, incremental (with unique_key).

The caller wraps all models of a run in one transaction, so a failing model
leaves every table as it was. Errors point at the line of the model file, with
the SQL actually run (target/run/...) as context."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from segtool.compile.sql import MODEL_SCHEMA, CompiledModel, compile_model, quote_ident, relation
from segtool.errors import DataError, ExecutionError, SqlError
from segtool.project.loader import LoadedProject
from segtool.state.db import relation_exists
from segtool.state.result import one
from segtool.words import counted


def sql_error(
    exc: duckdb.Error, compiled_path: str, cm: CompiledModel, model: str
) -> SqlError | ExecutionError:
    """A model that failed at run time: the line of the model file, with the
    compiled line (in target/run/) only as context."""
    msg = str(exc).strip()
    m = re.search(r"LINE (\d+):", msg)
    compiled_line = int(m.group(1)) if m else None
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
    if isinstance(exc, duckdb.ConversionException):
        # raised while reading rows: DuckDB's location can be an offset into
        # a view this model reads, shown against this model's text (a line
        # that has nothing to do with the cast)
        compiled_line = None
    # the statement ran was `CREATE ... AS\n<sql>`: one line before the model's
    line = cm.source_line(compiled_line - 1) if compiled_line and compiled_line > 1 else None
    # without its `LINE n:` line (the run file's numbering), DuckDB's caret
    # line under it points at nothing
    detail = "\n".join(
        "    " + ln
        for ln in msg.splitlines()[1:6]
        if ln.strip() and not ln.startswith("LINE ") and set(ln.strip()) != {"^"}
    )
    where = (
        f" ({compiled_path}, line {compiled_line - 1})"
        if compiled_line and compiled_line > 1
        else f" ({compiled_path})"
    )
    hint = "fix the model and run again; the compiled SQL that ran is in " + compiled_path
    if "Permission Error" in msg:
        hint = (
            "the SQL fence refused a file: read files through source(); if the project "
            "folder moved, views made before still read the old paths, and a run without "
            "-s/--exclude makes them again"
        )
    if isinstance(exc, duckdb.ConversionException):
        hint = (
            "a value in the data does not convert to the type it is cast to: fix it in the "
            "data, or cast with try_cast (the cast may be in a model this one reads, such as "
            f"a staging view); the compiled SQL that ran is in {compiled_path}"
        )
    return SqlError(
        f"model '{model}' failed{where}: {first}"
        + (f"\n{detail.rstrip()}" if detail.strip() else ""),
        path=cm.path,
        line=line,
        hint=hint,
    )


def write_sql(target_dir: Path, sub: str, model_path: str, sql: str) -> Path:
    from segtool.project.reach import check_inside

    out = check_inside(target_dir, target_dir / sub / model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(sql + "\n", encoding="utf-8")
    return out


def build_model(
    con: duckdb.DuckDBPyConnection,
    proj: LoadedProject,
    cm: CompiledModel,
    *,
    action: str,
    target_dir: Path,
) -> dict[str, int | None]:
    """Materialize a model as the plan decided (create | rebuild | incremental).
    Returns what it wrote: {"rows": None} for a view, {"rows": n} for a table, and
    "deleted" when an incremental merge deleted rows (delete_not_in)."""
    rel = relation(cm.name)
    mat = cm.config.materialized
    existing = relation_exists(con, MODEL_SCHEMA, cm.name)
    incremental = action == "incremental"
    run_cm = compile_model(proj, proj.models[cm.name], incremental=True) if incremental else cm
    run_path = write_sql(target_dir, "run", cm.path, proj.secrets.mask(run_cm.sql))
    shown = proj.relpath(run_path)
    out: dict[str, int | None] = {"rows": None}
    try:
        if existing and existing != ("view" if mat == "view" else "table"):
            con.execute(f"DROP {'VIEW' if existing == 'view' else 'TABLE'} {rel}")
        if mat == "view":
            con.execute(f"CREATE OR REPLACE VIEW {rel} AS\n{run_cm.sql}")
        elif not incremental:
            con.execute(f"CREATE OR REPLACE TABLE {rel} AS\n{run_cm.sql}")
            out["rows"] = one(con.execute(f"SELECT count(*) FROM {rel}"))[0]
            if mat == "incremental":
                _check_unique_key(con, cm, rel)
        else:
            tmp = quote_ident(f"__segtool_new_{cm.name}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {tmp} AS\n{run_cm.sql}")
            keep = cm.config.delete_not_in
            out = merge_incremental(con, cm, tmp, rel, relation(keep) if keep else None)
            con.execute(f"DROP TABLE {tmp}")
    except duckdb.Error as exc:
        raise sql_error(exc, shown, run_cm, cm.name) from exc
    return out


def merge_incremental(
    con, cm: CompiledModel, new: str, rel: str, keep: str | None = None
) -> dict[str, int]:
    """Delete the rows `new` replaces (by unique_key), insert `new`; then,
    with `keep` (the relation of delete_not_in), delete the rows whose key is
    not in it. Returns {"rows": rows of `new`} (+ "deleted" with `keep`)."""
    new_types = dict(
        con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {new})").fetchall()
    )
    old_types = dict(
        con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {rel})").fetchall()
    )
    rebuild = (
        "run with --full-refresh to rebuild it"
        if cm.config.full_refresh is not False
        else "it has full_refresh=false, so --full-refresh keeps its rows: select the old columns, or remove full_refresh=false and run with --full-refresh to rebuild it"
    )
    if set(new_types) != set(old_types):
        raise SqlError(
            f"incremental model '{cm.name}' changed its columns ({', '.join(sorted(set(new_types) ^ set(old_types)))})",
            path=cm.path,
            hint=rebuild,
        )
    for col, typ in new_types.items():
        if typ != old_types[col]:
            _check_stored_as(con, cm, new, col, typ, old_types[col], rebuild)
    _check_unique_key(con, cm, new)
    keys = cm.config.unique_keys

    def same_key(other: str) -> str:
        return " AND ".join(f"t.{quote_ident(k)} = {other}.{quote_ident(k)}" for k in keys)

    if keys:
        con.execute(
            f"DELETE FROM {rel} AS t WHERE EXISTS (SELECT 1 FROM {new} AS n WHERE {same_key('n')})"
        )
    con.execute(f"INSERT INTO {rel} BY NAME SELECT * FROM {new}")
    out = {"rows": one(con.execute(f"SELECT count(*) FROM {new}"))[0]}
    if keep is not None and keys:
        # a NULL key matches nothing, so its row goes too
        gone = one(
            con.execute(
                f"DELETE FROM {rel} AS t WHERE NOT EXISTS (SELECT 1 FROM {keep} AS d WHERE {same_key('d')})"
            )
        )
        out["deleted"] = int(gone[0]) if gone else 0
    return out


def _check_unique_key(con, cm: CompiledModel, rel: str) -> None:
    """A merge replaces rows by their unique_key: a NULL key matches no row
    (each merge added the row again) and a key twice in one batch was
    inserted twice, both without a word."""
    keys = cm.config.unique_keys
    if not keys:
        return
    cols = ", ".join(quote_ident(k) for k in keys)
    named = ", ".join(keys)
    nulls = one(
        con.execute(
            f"SELECT count(*) FROM {rel} WHERE "
            + " OR ".join(f"{quote_ident(k)} IS NULL" for k in keys)
        )
    )[0]
    if nulls:
        raise DataError(
            f"incremental model '{cm.name}' returns {counted(nulls, 'row')} with a NULL in its unique_key ({named}): "
            "a NULL key matches no row, so every merge would add such a row again",
            path=cm.path,
            hint="filter those rows out, or give them a key",
        )
    dup = one(
        con.execute(
            f"SELECT {cols}, count(*) FROM {rel} GROUP BY ALL HAVING count(*) > 1 ORDER BY count(*) DESC, {cols} LIMIT 1"
        )
    )
    if dup:
        key = ", ".join(str(v) for v in dup[:-1])
        raise DataError(
            f"incremental model '{cm.name}' returns {dup[-1]} rows for {named} {key}: "
            "a merge replaces rows by their unique_key, so it must be unique",
            path=cm.path,
            hint="aggregate to one row per key, or name the columns that make a row unique",
        )


def _check_stored_as(
    con, cm: CompiledModel, new: str, col: str, typ: str, held: str, rebuild: str
) -> None:
    """The merge inserts `new` into the table, which casts each value to the
    table's type: amounts 4.99 and 0.49 were stored in an INTEGER column as 5
    and 0, without a word. A type that keeps every value of this batch is
    fine; one that changes a value, or a text column taking other values (a
    first build with no rows reads every CSV column as text), is an error."""
    q = quote_ident(col)
    back = f"TRY_CAST(TRY_CAST({q} AS {held}) AS {typ})"
    row = one(
        con.execute(
            f"SELECT {q}::VARCHAR, TRY_CAST({q} AS {held})::VARCHAR FROM {new} "
            f"WHERE {q} IS NOT NULL AND {back} IS DISTINCT FROM {q} LIMIT 1"
        )
    )
    if row is None and not (held == "VARCHAR" and typ != "VARCHAR"):
        return
    example = (
        f": {row[0]} would be stored as {row[1] if row[1] is not None else 'NULL'}"
        if row
        else ": its values would be stored as text"
    )
    raise SqlError(
        f"incremental model '{cm.name}' returns column '{col}' as {typ}, but its table holds {held}{example}",
        path=cm.path,
        hint=f"{rebuild} with the new type, or cast '{col}' to {held} in the SQL",
    )


def check_key(
    con: duckdb.DuckDBPyConnection,
    proj: LoadedProject,
    model: str,
    users: str,
    rel: str | None = None,
) -> None:
    """The entity key must exist, be non-NULL and unique in models that feed
    features, texts or segments. `rel`: where the model is read (default main)."""
    key = proj.key
    rel = rel or relation(model)
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()]
    path = proj.models[model].path
    if key not in cols:
        raise DataError(
            f"model '{model}' has no key column '{key}' (it feeds {users})",
            hint=f"select the entity key as `{key}`, or change entity.key in segtool_project.yml (columns: {', '.join(cols[:12])})",
            path=path,
        )
    k = quote_ident(key)
    nulls = one(con.execute(f"SELECT count(*) FROM {rel} WHERE {k} IS NULL"))[0]
    if nulls:
        raise DataError(
            f"model '{model}' has {counted(nulls, 'row')} with NULL {key}",
            hint=f"filter them out (`where {key} is not null`) or fix the upstream data",
            path=path,
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
            f"model '{model}' must have one row per {proj.spec.entity.name}, but {counted(total, f'{key} value', verb=('repeats', 'repeat'))}: {examples}",
            hint="aggregate to one row per key (GROUP BY) before it feeds features, texts or segments",
            path=path,
        )
