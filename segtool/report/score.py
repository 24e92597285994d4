"""`segtool score`: how a segmentation agrees with labels a team already has.

The truth is a file (CSV, Parquet, JSON or JSON lines; the key column and one label
column) or a column of the segmentation's base model. Only users present in
both are scored; how many matched is part of the answer. Agreement does not
depend on segment ids or label names: adjusted Rand index (0 = chance, 1 =
the same grouping) and normalised mutual information (0 = independent,
1 = the same), with the confusion table (segments x truth labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from segtool.compile.sql import infer_format, lossless_cast_sql, quote_ident, sql_literal
from segtool.errors import DataError, did_you_mean
from segtool.execute.segment import drivers
from segtool.execute.segment.store import require_results
from segtool.report.console import format_table, markdown_table
from segtool.report.profile import base_column
from segtool.state import tables
from segtool.state.db import column_type


def _read_truth_file(path: Path, key: str, label_column: str | None):
    import duckdb
    import polars as pl

    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes)", hint="the truth file needs a header row")
    from segtool.compile.sql import SOURCE_READERS, infer_format

    # read as `segtool assign` reads its input and a source is read (a JSON
    # array and JSON lines alike; CSV or TSV sniffed, also under another name)
    reader = SOURCE_READERS[infer_format(path.name) or "csv"]
    con = duckdb.connect(":memory:")
    try:
        options = ""
        if reader == "read_csv":
            # labels as written: a sniffed number column made 1 and 1.0 one class
            # (the header, from the sniffer, names the label column to keep as text)
            names = [
                r[0]
                for r in con.execute("DESCRIBE SELECT * FROM read_csv(?)", [str(path)]).fetchall()
            ]
            labels = label_column or next((c for c in names if c != key), None)
            if labels in names:
                options = f", types = {{{sql_literal(labels)}: 'VARCHAR'}}"
        df = con.sql(f"SELECT * FROM {reader}(?{options})", params=[str(path)]).pl()
    except Exception as exc:  # noqa: BLE001 - any reader error, said plainly
        raise DataError(f"cannot read {path}: {exc}".splitlines()[0]) from None
    finally:
        con.close()
    if key not in df.columns:
        raise DataError(
            f"{path} has no key column '{key}' (columns: {', '.join(df.columns)})",
            hint="the truth file needs the entity key and one label column",
        )
    others = [c for c in df.columns if c != key]
    if label_column is None:
        if len(others) != 1:
            raise DataError(
                f"{path} has {len(others)} columns besides '{key}': say which holds the labels",
                hint="--label-column NAME",
            )
        label_column = others[0]
    if label_column not in df.columns:
        raise DataError(
            f"{path} has no column '{label_column}'",
            hint=did_you_mean(label_column, others) or f"columns: {', '.join(others)}",
        )
    # rows without a key match no user (left out, as a key that does not
    # convert); they were reported as a repeated key
    keyed = df.filter(pl.col(key).is_not_null())
    repeated = (
        keyed.group_by(key)
        .len()
        .filter(pl.col("len") > 1)
        .sort(["len", key], descending=[True, False])
    )
    if repeated.height:
        shown = ", ".join(f"{v!r} ({n} rows)" for v, n in repeated.head(3).iter_rows())
        raise DataError(
            f"{path}: the key '{key}' is not unique: {shown}"
            + (", ..." if repeated.height > 3 else ""),
            hint="give each user one row",
        )
    return df.select(pl.col(key), pl.col(label_column).cast(pl.Utf8).alias("truth")), label_column


def score_segmentation(
    project, name: str, truth: str, *, label_column: str | None = None, top: int = 12
) -> dict[str, Any]:
    from segtool.compile.segments import base_model
    from segtool.ml.metrics import adjusted_rand, nmi, transition_matrix

    proj = project.loaded
    seg = proj.segmentation(name)
    key = proj.key
    k = quote_ident(key)
    con = project.connect(read_only=True)
    try:
        require_results(con, name)
        # a file: relative to where segtool runs, else to the project
        path = Path(truth).expanduser()
        if not path.is_file() and not path.is_absolute() and (proj.root / path).is_file():
            path = proj.root / path
        if path.is_file():
            df, source_col = _read_truth_file(path, key, label_column)
            con.register("__segtool_truth", df.to_arrow())
            truth_rel, source = "__segtool_truth", f"{path} ({source_col})"
        else:
            if "/" in truth or infer_format(truth) is not None:
                # a file name, mistyped or missing (not a column: every column was listed)
                raise DataError(f"--truth {truth}: no such file")
            if label_column is not None:
                raise DataError(
                    f"--label-column is for a truth file; --truth {truth} is a column",
                    hint=f"drop --label-column, or give a file ({truth} is not one)",
                )
            model = base_model(proj, seg)
            column = truth.split(".", 1)[1] if truth.startswith(model + ".") else truth
            types = base_column(
                project, con, seg, model, column, f"'{name}'", f"--truth {truth}: not a file, and "
            )
            # labels are values users share: not the key, not a list per user
            # (stringified lists were scored as hundreds of "labels")
            if column == key or drivers.column_kind(types[column]) not in (
                "numeric",
                "categorical",
            ):
                raise DataError(
                    f"--truth {truth}: column '{column}' "
                    + ("is the key" if column == key else f"has type {types[column]}")
                    + ": the truth is a column of labels (text, numbers or dates), one per user",
                    hint="or give a file of the key and a label column",
                )
            truth_rel = f"(SELECT {k}, CAST({quote_ident(column)} AS VARCHAR) AS truth FROM {tables.model(model)})"
            source = f"{model}.{column}"
        # a file's keys in the table's key type: 1.0 is user 1; a key that
        # does not convert ('é' against BIGINT was an internal
        # ConversionException) is left out, as any user the file does not match
        key_type = column_type(con, tables.RESULTS, name, key) or "VARCHAR"
        joined = f"""SELECT s.{k} AS key, s.segment_id, s.segment, t.truth,
            CAST(t.{k} AS VARCHAR) AS written FROM {tables.segments(name)} s
            JOIN {truth_rel} t ON {lossless_cast_sql(f"t.{k}", key_type)} = s.{k}
            WHERE t.truth IS NOT NULL"""
        # a key written two ways ('1' and '01') is one user once converted:
        # counted twice, it skewed the scores (the file's own check saw two keys)
        twice = con.execute(
            f"SELECT key, list(written ORDER BY written) FROM ({joined}) "
            "GROUP BY key HAVING count(*) > 1 ORDER BY key LIMIT 3"
        ).fetchall()
        if twice:
            said = "; ".join(f"{u!r} as {', '.join(map(repr, ws))}" for u, ws in twice)
            raise DataError(
                f"{source}: the key '{key}' is not unique once read as {key_type}: {said}",
                hint="give each user one row",
            )
        rows = con.execute(f"SELECT segment_id, segment, truth FROM ({joined})").fetchall()
        total = con.execute(f"SELECT count(*) FROM {tables.segments(name)}").fetchall()[0][0]
    finally:
        con.close()
    if not rows:
        raise DataError(
            f"no user of '{name}' has a label in {source}",
            hint=f"the truth must use the key '{key}' of the segment table",
        )
    seg_ids = np.array([r[0] for r in rows])
    truth_labels = np.array([r[2] for r in rows], dtype=object).astype(str)
    seg_names = {}
    for sid, label, _ in rows:
        seg_names.setdefault(sid, label)
    # the table: segments by size, the `top` commonest truth labels, the rest as (other)
    ids, classes, counts = transition_matrix(seg_ids, truth_labels)
    per_class, per_seg = counts.sum(axis=0), counts.sum(axis=1)
    cols = sorted(range(len(classes)), key=lambda j: (-per_class[j], classes[j]))[:top]
    shown = [str(classes[j]) for j in cols]
    confusion = []
    for i in sorted(range(len(ids)), key=lambda i: (-per_seg[i], ids[i])):
        row = [int(counts[i, j]) for j in cols]
        if len(classes) > len(shown):
            row.append(int(per_seg[i] - sum(row)))
        sid = ids[i].item()
        confusion.append(
            {
                "segment_id": int(sid),
                "segment": seg_names[sid],
                "users": int(per_seg[i]),
                "counts": row,
            }
        )
    return {
        "segmentation": name,
        "truth": source,
        "matched": len(rows),
        "users": int(total),
        "truth_labels": int(len(classes)),
        "ari": round(adjusted_rand(truth_labels, seg_ids), 4),
        "nmi": round(nmi(truth_labels, seg_ids), 4),
        "columns": shown + (["(other)"] if len(classes) > len(shown) else []),
        "confusion": confusion,
    }


def format_score(sc: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(sc, indent=2, default=str)
    head = (
        f"{sc['segmentation']} vs {sc['truth']}: {sc['matched']:,} of {sc['users']:,} users labelled, "
        f"{sc['truth_labels']} truth labels\n"
        f"adjusted Rand index {sc['ari']:.3f} (0 = chance, 1 = same grouping); "
        f"normalised mutual information {sc['nmi']:.3f}"
    )
    headers = ["id", "segment", "users", *sc["columns"]]
    rows = [
        [r["segment_id"], r["segment"], f"{r['users']:,}"]
        + [f"{n:,}" if n else "·" for n in r["counts"]]
        for r in sc["confusion"]
    ]
    if fmt == "markdown":
        return head.replace("\n", "  \n") + "\n\n" + markdown_table(headers, rows)
    return head + "\n\n" + format_table(headers, rows, "confusion: segments x truth labels")
