"""Embeddings: encode only texts with no cached vector for this encoder.

Cache: one fixed-size vector table per encoder fingerprint (state/vectors.py).
Identical texts are embedded once. Work is committed chunk by chunk, so a
killed run keeps what it did and the next run continues where it stopped."""

from __future__ import annotations

import os
import time

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.errors import EncoderError
from segtool.execute.context import StepResult
from segtool.state import tables, vectors
from segtool.state.db import STATE
from segtool.state.result import one

# texts per committed chunk: a crash loses at most this much work
CHUNK = int(os.environ.get("SEGTOOL_EMBED_CHUNK", "2048"))


def preflight(project, encoders, embedding_nodes) -> None:
    """Missing models, unavailable packages and a device that is not there fail
    before anything is written."""
    from segtool.encoders import check_encoder

    seen = set()
    for node in embedding_nodes:
        enc_name = node.data["encoder"]
        if enc_name in seen:
            continue
        seen.add(enc_name)
        spec = project.loaded.encoders[enc_name]
        problems = check_encoder(spec, project.root)
        if problems:
            raise EncoderError(
                f"encoder '{enc_name}': " + "; ".join(problems),
                hint="see docs/encoders.md (offline use); the database was not changed",
                path=spec.file,
                line=spec.line,
            )
        device = encoders.device_for(enc_name)
        if spec.kind != "hashing" and device not in ("auto", "cpu"):
            from segtool.encoders._device import resolve_device

            try:
                resolve_device(device)  # imports torch: only when a device is asked for
            except EncoderError as exc:
                exc.message = f"encoder '{enc_name}': {exc.message}"
                exc.hint = (exc.hint or "") + "; the database was not changed"
                raise


def execute_embedding(ctx, step) -> StepResult:
    """Embed the texts the plan put in work_table('embed', ...), one committed
    chunk at a time: a killed run keeps what it did."""
    from segtool.state.tables import work_table

    t0 = time.perf_counter()
    node = ctx.graph[step.unique_id]
    if step.action == "skip":
        return StepResult.of(step)
    con = ctx.con
    text_name, enc_name = node.data["text"], node.data["encoder"]
    enc = ctx.encoders.get(enc_name)
    fp = ctx.encoders.fingerprint(enc_name)
    work = work_table("embed", node.name.replace(".", "__"))
    todo = one(con.execute(f"SELECT count(*) FROM {work}"))[0]
    found = vectors.lookup(con, fp)
    store = found[0] if found else None
    if todo:
        enc.encode(["warm up"])  # load the model now, so texts/s measures encoding only
    embedded = 0
    t_enc = 0.0
    with ctx.reporter.progress(f"embed {text_name} with {enc_name}", todo) as bar:
        for lo in range(1, todo + 1, CHUNK):
            rows = con.execute(
                f"SELECT text_hash, text FROM {work} WHERE rn >= ? AND rn < ? ORDER BY rn",
                [lo, lo + CHUNK],
            ).fetchall()
            te = time.perf_counter()
            vecs = enc.encode([r[1] for r in rows])
            t_enc += time.perf_counter() - te
            if vecs.ndim != 2 or vecs.shape[0] != len(rows) or not np.isfinite(vecs).all():
                raise EncoderError(
                    f"encoder '{enc_name}' returned {vecs.shape[0]} vectors for {len(rows)} texts or non-finite values"
                )
            if store is None:
                store = vectors.ensure(
                    con,
                    fp,
                    encoder=enc_name,
                    kind=enc.spec.kind,
                    dim=vecs.shape[1],
                    run_id=ctx.run_id,
                )
            vectors.insert(con, store, [r[0] for r in rows], vecs, ctx.run_id)
            embedded += len(rows)
            bar.advance(len(rows))
    if store is not None:
        vectors.touch(con, fp, encoder=enc_name, run_id=ctx.run_id)
    return StepResult.of(
        step,
        time.perf_counter() - t0,
        embedded=embedded,
        texts_per_s=round(embedded / t_enc, 1) if t_enc > 0 else None,
        device=enc.device if embedded else None,
    )


def load_vectors(con, text_name: str, encoder_fp: str, keys_sql: str, key: str):
    """Vectors for the users in `keys_sql` (a query returning the key column and
    __ord), in that order. Returns (keys, matrix)."""
    k = quote_ident(key)
    found = vectors.lookup(con, encoder_fp)
    if found is None:
        return np.zeros(0, dtype=object), np.zeros((0, 0), dtype=np.float32)
    table, dim = found
    tbl = con.sql(
        f"""SELECT u.{k} AS k, e.vector AS v
        FROM ({keys_sql}) u
        JOIN {tables.texts(text_name)} t ON t.{k} = u.{k}
        JOIN {table} e ON e.text_hash = t.text_hash
        ORDER BY u.__ord"""
    ).to_arrow_table()
    keys = tbl.column("k").to_numpy(zero_copy_only=False)
    return keys, vectors.to_matrix(tbl.column("v"), dim)


def clean_cache(project) -> dict:
    """Delete vectors that no current text uses with a current encoder.

    An encoder that cannot be built today (its model folder moved, a package is
    missing) keeps every vector it wrote: the registry says which vectors are
    its, and deleting them would make the next run re-embed everything once
    the model is back. Returns {"removed": n, "kept": [(encoder, n, why)]}."""
    from segtool.state.db import table_exists

    proj = project.loaded
    encoders = project.encoders()
    con = project.connect(read_only=False)
    try:
        if not table_exists(con, STATE, "encoders"):
            return {"removed": 0, "kept": []}
        current: dict[str, str] = {}  # fingerprint -> encoder name
        unbuildable: dict[str, str] = {}  # encoder name -> why
        for name in proj.encoders:
            fp, why = encoders.try_fingerprint(name)
            if fp is None:
                unbuildable[name] = why
            else:
                current[fp] = name
        texts = [t for t in proj.texts if table_exists(con, STATE, "texts__" + t)]
        used = " UNION ".join(f"SELECT text_hash FROM {tables.texts(t)}" for t in texts)
        removed = 0
        kept: list[tuple[str, int, str]] = []
        con.execute("BEGIN")
        try:
            for entry in vectors.registered(con):
                fp, name = entry["encoder_fp"], entry["encoder"]
                table = vectors.relation(entry["table_name"])
                n = one(con.execute(f"SELECT count(*) FROM {table}"))[0]
                if name in unbuildable:
                    kept.append((name, int(n), unbuildable[name]))
                    continue
                if name is None and unbuildable and fp not in current:
                    # written before the registry named encoders: it may be theirs
                    kept.append(("(unnamed)", int(n), "may belong to " + ", ".join(unbuildable)))
                    continue
                if fp not in current:  # an old version of an encoder, or a removed one
                    con.execute(f"DROP TABLE {table}")
                    con.execute(f"DELETE FROM {vectors.REGISTRY} WHERE encoder_fp = ?", [fp])
                    removed += int(n)
                    continue
                if used:
                    gone = one(
                        con.execute(f"SELECT count(*) FROM {table} WHERE text_hash NOT IN ({used})")
                    )[0]
                    con.execute(f"DELETE FROM {table} WHERE text_hash NOT IN ({used})")
                else:
                    gone = n
                    con.execute(f"DELETE FROM {table}")
                removed += int(gone)
            con.execute("COMMIT")
        except BaseException:
            from segtool.state.db import rollback

            rollback(con)
            raise
        con.execute("CHECKPOINT")
        return {"removed": removed, "kept": kept}
    finally:
        con.close()
