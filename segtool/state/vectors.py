"""The embedding cache: one table of fixed-size vectors per encoder fingerprint.

    _segtool.encoders            encoder_fp -> table, encoder name, kind, dim, runs
    _segtool."vectors__<fp16>"   text_hash VARCHAR, vector FLOAT[dim], run_id

Why not one table of `FLOAT[]` lists keyed by (fingerprint, text hash): a
fixed-size array cannot hold a vector of the wrong length (lists could, and
were reshaped silently), it stores no per-row offsets, and a join touches
only the encoder's own rows instead of filtering a shared table by
fingerprint. There is no index: lookups are hash joins against the work set
(an ART index over tens of millions of text hashes would cost more memory
than it saves), and rows are only ever inserted for hashes not yet present. The registry also says which encoder
wrote which vectors, so `clean --cache` can keep the vectors of an encoder it
cannot build today (a model folder that moved) instead of deleting them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segtool.compile.sql import quote_ident
from segtool.state.frames import arrow_batches, arrow_matrix, arrow_numpy
from segtool.state.result import one, table_exists
from segtool.state.tables import ENCODERS as REGISTRY  # noqa: E402
from segtool.state.tables import (
    STATE,  # noqa: E402
    texts,  # noqa: E402
)
from segtool.words import counted

if TYPE_CHECKING:
    import numpy as np

REGISTRY_DDL = f"""CREATE TABLE IF NOT EXISTS {REGISTRY} (
    encoder_fp VARCHAR PRIMARY KEY, table_name VARCHAR, encoder VARCHAR, kind VARCHAR,
    dim INTEGER, first_run INTEGER, last_run INTEGER)"""


def _table_name(fp: str) -> str:
    return f"vectors__{fp[:16]}"


def relation(table_name: str) -> str:
    return f"{STATE}.{quote_ident(table_name)}"


def lookup(con, fp: str) -> tuple[str, int] | None:
    """(relation, dim) of the vectors of fingerprint `fp`, or None (also when
    the database has no vector registry yet)."""
    if not table_exists(con, STATE, "encoders"):
        return None
    row = one(con.execute(f"SELECT table_name, dim FROM {REGISTRY} WHERE encoder_fp = ?", [fp]))
    return (relation(row[0]), int(row[1])) if row else None


def ensure(con, fp: str, *, encoder: str, kind: str, dim: int, run_id: int | None) -> str:
    """The vectors table of `fp`, created (and registered) on first use."""
    found = lookup(con, fp)
    if found is not None:
        return found[0]
    name = _table_name(fp)
    taken = {r[0] for r in con.execute(f"SELECT table_name FROM {REGISTRY}").fetchall()}
    if name in taken:  # two fingerprints sharing 16 hex digits: use the whole one
        name = f"vectors__{fp}"
    con.execute(
        f"CREATE TABLE {relation(name)} (text_hash VARCHAR, vector FLOAT[{int(dim)}], run_id INTEGER)"
    )
    con.execute(
        f"INSERT INTO {REGISTRY} VALUES (?, ?, ?, ?, ?, ?, ?)",
        [fp, name, encoder, kind, int(dim), run_id, run_id],
    )
    return relation(name)


def touch(con, fp: str, *, encoder: str, run_id: int) -> None:
    """Remember that `encoder` used these vectors in this run."""
    con.execute(
        f"UPDATE {REGISTRY} SET encoder = ?, last_run = ? WHERE encoder_fp = ?",
        [encoder, run_id, fp],
    )


def insert(con, table: str, hashes: list[str], vectors: np.ndarray, run_id: int | None) -> None:
    """One statement: in autocommit mode, one committed chunk."""
    import numpy as np

    from segtool.state.frames import registered

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    with registered(con, "__segtool_vectors", {"text_hash": hashes, "vector": vectors}):
        con.execute(
            f"INSERT INTO {table} SELECT text_hash, vector, ? FROM __segtool_vectors",
            [run_id],
        )


def registered(con) -> list[dict]:
    rows = con.execute(
        f"SELECT encoder_fp, table_name, encoder, kind, dim, first_run, last_run FROM {REGISTRY} ORDER BY first_run, encoder_fp"
    ).fetchall()
    keys = ("encoder_fp", "table_name", "encoder", "kind", "dim", "first_run", "last_run")
    return [dict(zip(keys, r)) for r in rows]


def count(con, fp: str) -> int:
    found = lookup(con, fp)
    return int(one(con.execute(f"SELECT count(*) FROM {found[0]}"))[0]) if found else 0


def migrate_lists(con) -> list[str]:
    """State v1 -> v2: move `_segtool.embeddings` (FLOAT[] lists keyed by
    fingerprint) into one fixed-size table per fingerprint. Vectors whose length
    differs from their encoder's usual length cannot be trusted: they are dropped
    (the next run embeds those texts again) and reported."""
    notes = []
    con.execute(REGISTRY_DDL)
    exists = one(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'embeddings' AND database_name = current_database()",
            [STATE],
        )
    )[0]
    if not exists:
        return notes
    groups = con.execute(
        f"""SELECT encoder_fp, len(vector) AS d, count(*) AS n, min(run_id), max(run_id)
        FROM {STATE}.embeddings GROUP BY 1, 2 ORDER BY 1, n DESC"""
    ).fetchall()
    seen: set[str] = set()
    for fp, dim, n, first, last in groups:
        if fp in seen:
            notes.append(
                f"dropped {counted(n, 'cached vector')} of length {dim} for encoder fingerprint {fp[:12]} "
                "(its other vectors are longer or shorter): those texts are embedded again"
            )
            continue
        seen.add(fp)
        table = ensure(con, fp, encoder=None, kind=None, dim=int(dim), run_id=first)
        con.execute(
            f"""INSERT INTO {table} SELECT text_hash, any_value(CAST(vector AS FLOAT[{int(dim)}])), min(run_id)
            FROM {STATE}.embeddings WHERE encoder_fp = ? AND len(vector) = ? GROUP BY text_hash""",
            [fp, int(dim)],
        )
        con.execute(f"UPDATE {REGISTRY} SET last_run = ? WHERE encoder_fp = ?", [last, fp])
    con.execute(f"DROP TABLE {STATE}.embeddings")
    return notes


def load_vectors(con, text_name: str, encoder_fp: str, users_sql: str, key: str, n: int):
    """Vectors of the users in `users_sql` (the key column and a dense __ord
    1..n), row __ord-1 of an (n, dim) float32 matrix. Returns (matrix, rows
    found). Streamed in record batches straight into the matrix: no sort of
    the vectors, no intermediate copy (at 1M users a copy is a gigabyte)."""
    import numpy as np

    k = quote_ident(key)
    found = lookup(con, encoder_fp)
    if found is None:
        return np.zeros((n, 0), dtype=np.float32), 0
    table, dim = found
    out = np.zeros((n, dim), dtype=np.float32)
    got = 0
    reader = arrow_batches(
        con.sql(
            f"""SELECT CAST(u.__ord AS BIGINT) AS o, e.vector AS v
            FROM ({users_sql}) u
            JOIN {texts(text_name)} t ON t.{k} = u.{k}
            JOIN {table} e ON e.text_hash = t.text_hash"""
        ),
        65_536,
    )
    for batch in reader:
        rows = arrow_numpy(batch.column(0), np.int64) - 1
        out[rows] = arrow_matrix(batch.column(1), dim)
        got += len(rows)
    return out, got
