"""`segtool assign`: put users from a file into the existing segments of a
segmentation, through the same features, texts, encoder and fitted model as
a run, without changing any state. Each row is scored on its own, so one
user alone gets the same answer as in a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segtool.compile.predicates import bind_predicate, segmentation_predicates
from segtool.compile.sql import (
    SOURCE_READERS,
    infer_format,
    lossless_cast_sql,
    quote_ident,
    sql_literal,
)
from segtool.errors import DataError, EncoderError, ProjectError
from segtool.state import tables, vectors
from segtool.state.db import column_types
from segtool.state.frames import first_column, key_column, registered


def _read_input(con, path: Path, given: Path) -> None:
    """The file into table `input` (with its row order, __ord), read by the
    reader a source of the same name would get (compile/sql.py). The name is
    the one given: a link `users.csv -> export_2024` is a CSV file."""
    fmt = infer_format(given.name)
    if fmt is None:
        raise ProjectError(
            f"cannot tell the format of {path}", hint="use a .csv, .parquet or .json file"
        )
    reader = SOURCE_READERS[fmt]
    import duckdb

    source = f"{reader}({sql_literal(str(path))})"
    try:
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
        # a column of the file named __ord made DuckDB rename segtool's row
        # order: keys and features were then sorted by the file's column and
        # zipped with other users' rows (138,724 of 200,000 wrong, exit 0)
        clash = [c for c in columns if c.lower() == "__ord"]
        if clash:
            raise DataError(
                f"{path} has a column '{clash[0]}', the name segtool gives the file's row order",
                hint="rename or drop that column",
            )
        con.execute(f"CREATE TABLE input AS SELECT *, row_number() OVER () AS __ord FROM {source}")
    except duckdb.Error as exc:
        from segtool.state.db import first_line

        raise DataError(f"cannot read {path}: {first_line(exc)}") from exc


def _check_keys(mem, key: str, path) -> None:
    """One row per user: a missing key came out as 0 (NumPy has no NULL), and
    a repeated one would get two answers."""
    from segtool.state.result import one
    from segtool.words import counted

    k = quote_ident(key)
    (nulls,) = one(mem.execute(f"SELECT count(*) - count({k}) FROM input"))
    if nulls:
        raise DataError(
            f"{path}: {counted(nulls, 'row', verb=('has', 'have'))} no {key}",
            hint="the file has one row per user, each with its key",
        )
    repeated = mem.execute(
        f"SELECT {k}, count(*) AS n FROM input GROUP BY {k} HAVING n > 1 ORDER BY n DESC, {k} LIMIT 3"
    ).fetchall()
    if repeated:
        (keys,) = one(
            mem.execute(
                f"SELECT count(*) FROM (SELECT {k} FROM input GROUP BY {k} HAVING count(*) > 1)"
            )
        )
        shown = ", ".join(f"{v!r} ({n} rows)" for v, n in repeated)
        raise DataError(
            f"{path}: {counted(keys, key + ' value', verb=('repeats', 'repeat'))}: {shown}"
            + (", ..." if keys > len(repeated) else ""),
            hint="the file has one row per user",
        )


def assign_file(project, name: str, path: Path):
    import duckdb
    import polars as pl

    from segtool.execute.segment.store import active_fit as _active_fit
    from segtool.execute.segment.store import restore as _restore
    from segtool.execute.texts import render_rows, text_renderer

    proj = project.loaded
    seg = proj.segmentation(name)
    key = proj.key
    k = quote_ident(key)
    mem = duckdb.connect(":memory:")
    from segtool.state.db import setup_connection

    # fenced like a run; the input file is the one path the command adds
    setup_connection(mem, proj, threads=proj.target.threads, extra_paths=(Path(path).resolve(),))
    _read_input(mem, Path(path).resolve(), Path(path))
    cols = {r[0] for r in mem.execute("DESCRIBE input").fetchall()} - {"__ord"}
    if key not in cols:
        if Path(path).stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes)", hint="give a header row at least")
        raise DataError(
            f"{path} has no key column '{key}'", hint=f"columns: {', '.join(sorted(cols))}"
        )
    db = project.connect(read_only=True)
    try:
        _model_types(mem, db, proj, seg, Path(path))
        _check_keys(mem, key, path)  # in the key's type: '1' and '1.0' are one user
        lacking = _lacking(db, proj, seg, cols, path)
        preds = segmentation_predicates(proj, seg)
        if preds.population is not None:
            mem.execute(f"CREATE VIEW main.{quote_ident(_base(proj, seg))} AS SELECT * FROM input")
            with lacking(f"the population of segmentation '{name}'"):
                bind_predicate(mem, _base(proj, seg), preds.population)
            inside = first_column(
                mem, f"SELECT {preds.population.wrapped} FROM input ORDER BY __ord"
            ).astype(bool)
        else:
            inside = None
        if seg.is_rules:
            with lacking(f"segmentation '{name}'"):
                return _assign_rules(project, seg, mem, db, inside)
        active = _active_fit(db, name)
        if active is None:
            raise ProjectError(
                f"segmentation '{name}' has no fitted model yet", hint=f"segtool run -s +{name}"
            )
        _check_fit_current(project, seg, active[1], db)
        transformers, model, params = _restore(active)
        keys = key_column(mem, f"SELECT {k} FROM input ORDER BY __ord")
        blocks = []
        for inp, t in zip(seg.inputs, transformers):
            if inp.features:
                fs = proj.features[inp.features]
                missing = [c for c in fs.columns if c not in cols]
                if missing:
                    raise DataError(
                        f"{path} lacks {'column' if len(missing) == 1 else 'columns'} {', '.join(missing)} of features '{fs.name}'"
                    )
                df = mem.sql(
                    f"SELECT {', '.join(quote_ident(c) for c in fs.columns)} FROM input ORDER BY __ord"
                ).pl()
                with lacking(f"features '{fs.name}'", values=True):
                    blocks.append(t.transform(df, keys))
            else:
                with lacking(f"text '{inp.embedding.text}'", values=True):
                    blocks.append(_vectors(project, db, mem, inp, render_rows, text_renderer))
        labels, dist, conf = model.predict(blocks, keys)
        mapping = {int(a): int(b) for a, b in params["label_to_id"].items()}
        ids = np.array([mapping.get(int(x), -1) for x in labels], dtype=np.int64)
        names = dict(
            db.execute(
                f"SELECT segment_id, label FROM {tables.CATALOG} WHERE segmentation = ?",
                [name],
            ).fetchall()
        )
        out = pl.DataFrame(
            {
                key: keys,
                "segment_id": ids,
                "segment": [names.get(int(i), f"segment {i}") for i in ids],
                "distance": dist.astype(np.float64),
                "confidence": conf.astype(np.float64),
            }
        )
        if inside is not None:
            out = out.with_columns(
                pl.when(pl.Series(inside))
                .then(pl.col("segment_id"))
                .otherwise(None)
                .alias("segment_id"),
                pl.when(pl.Series(inside))
                .then(pl.col("segment"))
                .otherwise(pl.lit("outside population"))
                .alias("segment"),
                # not in any segment: no distance to one, no confidence in one
                *(
                    pl.when(pl.Series(inside)).then(pl.col(c)).otherwise(None).alias(c)
                    for c in ("distance", "confidence")
                ),
            )
        return out
    finally:
        db.close()
        mem.close()


def _model_types(mem, db, proj, seg, path: Path) -> None:
    """Give the input's columns the types they have in the models the
    segmentation reads, as a run's rows have them: a value that does not
    convert is the file's error, named with its column and a row. Without
    this, a key past BIGINT came out as a float (two users as one key), a
    number held as text failed inside a template (`type str doesn't define
    __round__`, blaming the project) and a header-only CSV (every column
    text) failed as 'not numeric'. Nested types (LIST, STRUCT, MAP): Parquet
    and JSON carry them; a CSV holds them as text, parsed when it is
    DuckDB's own notation (`[a, b]`, `{'k': 1}`)."""
    import duckdb

    from segtool.execute.segment.drivers import feeding_models

    wanted: dict[str, str] = {}
    for m in sorted(feeding_models(proj, seg)):
        for col, typ in column_types(db, tables.MODELS, m).items():
            wanted.setdefault(col, typ)
    have = dict(mem.execute("SELECT column_name, column_type FROM (DESCRIBE input)").fetchall())
    k = quote_ident(proj.key)
    for col, typ in wanted.items():
        if col not in have or have[col] == typ:
            continue
        c = quote_ident(col)
        try:
            bad = mem.execute(
                f"SELECT {k}, {c} FROM input WHERE {c} IS NOT NULL AND {lossless_cast_sql(c, typ)} IS NULL "
                "ORDER BY __ord LIMIT 1"
            ).fetchall()
        except duckdb.Error:  # no cast between the two types at all
            bad = [(None, None)]
        if bad:
            nested = typ.endswith("]") or typ.startswith(("STRUCT", "MAP", "UNION"))
            user, value = bad[0]
            where = (
                ""
                if user is None
                else f" (e.g. {value!r})"
                if col == proj.key
                else f" (e.g. {proj.key} {user!r}: {value!r})"
            )
            raise DataError(
                f"{path}: column '{col}' is {typ} in the project's models, but the file holds "
                f"it as {have[col]}, which does not read as {typ}{where}",
                hint=(
                    "a CSV cannot carry lists or structs: give the users as Parquet or JSON "
                    "(e.g. export them with DuckDB `COPY ... TO 'users.parquet'`), or write the "
                    "column in DuckDB's notation: [a, b]"
                    if nested and have[col] == "VARCHAR"
                    else f"give '{col}' values of the model's type"
                ),
            )
        mem.execute(f"ALTER TABLE input ALTER {c} TYPE {typ} USING CAST({c} AS {typ})")


def _base(proj, seg) -> str:
    from segtool.compile.segments import base_model

    return base_model(proj, seg)


def _lacking(db, proj, seg, cols: set[str], path):
    """A context for the steps that read the file's columns: an error that
    names a column the segmentation's models have and the file lacks
    ("'revenue' is undefined" from a template, 'Referenced column "revenue"
    not found' from a rule) blamed the project; it is the file's."""
    from contextlib import contextmanager

    from segtool.execute.segment.drivers import feeding_models

    models = sorted(feeding_models(proj, seg))
    missing = {c for m in models for c in column_types(db, tables.MODELS, m) if c not in cols}

    hint = f"add it to the file: it has the columns of {', '.join(models)} the segmentation reads"

    @contextmanager
    def lacking(what: str, values: bool = False):
        """`values`: the step computes from the file's values (a template, a
        feature transform), so an error there is about them."""
        try:
            yield
        except ProjectError as exc:
            named = sorted(c for c in missing if f"'{c}'" in exc.message or f'"{c}"' in exc.message)
            if not named and missing and "Undefined" in exc.message:
                # an undefined value used, not named (`revenue | round`: "type
                # StrictUndefined doesn't define __round__"): the file's gap still
                gaps = sorted(missing)
                raise DataError(
                    f"{path} lacks column{'s' if len(gaps) > 1 else ''} "
                    f"{', '.join(repr(c) for c in gaps[:5])}{', ...' if len(gaps) > 5 else ''}, "
                    f"and {what} failed without {'them' if len(gaps) > 1 else 'it'}: {exc.message}",
                    hint=hint,
                ) from exc
            if not named:
                if values and not isinstance(exc, EncoderError):
                    # a NULL revenue failed the template, and the hint said "fix the model"
                    exc.hint = f"{what} read {path}'s values here, not a model's: check the file"
                raise
            raise DataError(
                f"{path} lacks column '{named[0]}', which {what} reads",
                hint=hint,
            ) from exc

    return lacking


def _check_fit_current(project, seg, stored_fit_hash: str, db) -> None:
    """The stored fit was made in the spaces of its inputs as they were: an
    encoder whose weights changed since puts new vectors through the old fit
    (350 of 400 users came out in other segments, without a word). The plan
    refits then; assign says so instead of guessing."""
    from segtool.compile.segments import fit_is_current

    if fit_is_current(project, seg, stored_fit_hash, db):
        return
    raise DataError(
        f"segmentation '{seg.name}' was fitted with other inputs than the project's now "
        "(an encoder's model, a feature set or the segmentation changed): the stored model "
        "does not fit them",
        hint=f"segtool run -s +{seg.name} refits it (`segtool run --dry-run` shows why)",
    )


def _vectors(project, db, mem, inp, render_rows, text_renderer) -> np.ndarray:
    """Render each row's text, reuse cached vectors, encode the rest."""
    from segtool.execute.texts import model_rows

    proj = project.loaded
    spec = proj.texts[inp.embedding.text]
    rows = model_rows(
        mem.sql("SELECT * EXCLUDE (__ord) FROM input ORDER BY __ord").to_arrow_table()
    )
    rendered, _, _ = render_rows(proj, spec, rows, text_renderer(proj, spec))
    encoders = project.encoders(con=db)
    enc = encoders.get(inp.embedding.encoder)
    fp = encoders.fingerprint(inp.embedding.encoder)
    hashes = [r[2] for r in rendered]
    cached = {}
    found = vectors.lookup(db, fp)
    if found is not None and hashes:
        with registered(db, "__h", {"h": hashes}):
            for h, v in db.execute(
                f"SELECT e.text_hash, e.vector FROM {found[0]} e JOIN __h ON e.text_hash = __h.h"
            ).fetchall():
                cached[h] = np.asarray(v, dtype=np.float32)
    todo = [i for i, h in enumerate(hashes) if h not in cached]
    if todo:
        vecs = enc.encode([rendered[i][3] for i in todo])
        for i, v in zip(todo, vecs):
            cached[hashes[i]] = v
    return np.stack([cached[h] for h in hashes]) if hashes else np.zeros((0, enc.dim), np.float32)


def _assign_rules(project, seg, mem, db, inside):
    import polars as pl

    from segtool.compile.segments import rules_case
    from segtool.execute.segment.store import require_results

    proj = project.loaded
    require_results(db, seg.name)  # ids are the stored ones: none before a run
    mem.execute(f"CREATE OR REPLACE VIEW main.{quote_ident(seg.model)} AS SELECT * FROM input")
    for _, pred in segmentation_predicates(proj, seg).rules:
        bind_predicate(mem, seg.model, pred)
    df = mem.sql(
        f"SELECT {quote_ident(proj.key)}, {rules_case(proj, seg)} AS segment FROM input ORDER BY __ord"
    ).pl()
    ids = dict(
        db.execute(
            # the live rule segments (a retired cluster may carry the same label)
            f"SELECT label, segment_id FROM {tables.CATALOG} WHERE segmentation = ? AND died_run IS NULL",
            [seg.name],
        ).fetchall()
    )
    # a rule added since the last run has no id yet: its users had none (exit 0)
    new = sorted(set(df["segment"].drop_nulls().to_list()) - ids.keys())
    if new:
        raise DataError(
            f"segmentation '{seg.name}': segment {', '.join(map(repr, new))} of its rules "
            "has no id yet (a rule added since the last run)",
            hint=f"segtool run -s {seg.name}",
        )
    df = df.with_columns(
        pl.col("segment")
        .replace_strict(ids, default=None, return_dtype=pl.Int64)
        .alias("segment_id"),
        pl.lit(None, dtype=pl.Float64).alias("distance"),
        # certain where a rule holds; no segment (no default): no confidence in one
        pl.when(pl.col("segment").is_null()).then(None).otherwise(1.0).alias("confidence"),
    )
    if inside is not None:  # outside: no segment, so no id and no confidence in one
        keep = pl.Series(inside)
        df = df.with_columns(
            pl.when(keep).then(pl.col("segment")).otherwise(pl.lit("outside population")),
            pl.when(keep).then(pl.col("segment_id")).otherwise(None),
            pl.when(keep).then(pl.col("confidence")).otherwise(None),
        )
    return df.select(proj.key, "segment_id", "segment", "distance", "confidence")
