"""Embeddings: encode only texts with no cached vector for this encoder.

Cache: one fixed-size vector table per encoder fingerprint (state/vectors.py).
Identical texts are embedded once. Work is committed chunk by chunk, so a
killed run keeps what it did and the next run continues where it stopped."""

from __future__ import annotations

import os
import time

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.errors import EncoderError, SegtoolError
from segtool.execute.render import text_table
from segtool.state import vectors
from segtool.state.db import STATE
from segtool.state.result import one

# texts per committed chunk: a crash loses at most this much work
CHUNK = int(os.environ.get("SEGTOOL_EMBED_CHUNK", "2048"))


def preflight(runner, uids: list[str]) -> None:
    """Missing models, unavailable packages and a device that is not there fail
    before anything is written."""
    from segtool.encoders import check_encoder

    graph = runner.project.graph().graph
    seen = set()
    for uid in uids:
        enc_name = graph[uid].data["encoder"]
        if enc_name in seen:
            continue
        seen.add(enc_name)
        spec = runner.proj.encoders[enc_name]
        problems = check_encoder(spec, runner.proj.root)
        if problems:
            raise EncoderError(
                f"{spec.file}:{spec.line}: encoder '{enc_name}': " + "; ".join(problems),
                hint="see docs/encoders.md (offline use); the database was not changed",
            )
        device = runner.opts.device or runner.proj.target.device or spec.device
        if spec.kind != "hashing" and device not in ("auto", "cpu"):
            from segtool.encoders._device import resolve_device

            try:
                resolve_device(device)  # imports torch: only when a device is asked for
            except EncoderError as exc:
                exc.message = f"encoder '{enc_name}': {exc.message}"
                exc.hint = (exc.hint or "") + "; the database was not changed"
                raise


def encoder_for(runner, name: str):
    cache = runner.__dict__.setdefault("_encoders", {})
    if name not in cache:
        from segtool.encoders import build_encoder

        spec = runner.proj.encoders[name]
        device = runner.opts.device or runner.proj.target.device
        cache[name] = build_encoder(
            spec,
            runner.proj.root,
            device_override=device,
            cache_dir=runner.project.target_dir / "onnx",
        )
    return cache[name]


def run_embeddings(runner, con, uids: list[str]) -> None:
    from segtool.execute.run import NodeResult
    from segtool.state.db import record_nodes

    graph = runner.project.graph().graph
    for uid in uids:
        node = graph[uid]
        t0 = time.perf_counter()
        text_name, enc_name = node.data["text"], node.data["encoder"]
        enc = encoder_for(runner, enc_name)
        fp = enc.fingerprint()
        table = text_table(text_name)
        found = vectors.lookup(con, fp)
        cached = (
            f"WHERE NOT EXISTS (SELECT 1 FROM {found[0]} e WHERE e.text_hash = t.text_hash)"
            if found
            else ""
        )
        work = quote_ident(f"__segtool_embed_{text_name}_{enc_name}")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {work} AS
            SELECT text_hash, any_value(text) AS text, row_number() OVER (ORDER BY text_hash) AS rn
            FROM {table} t {cached}
            GROUP BY text_hash"""
        )
        users, distinct = one(
            con.execute(f"SELECT count(*), count(DISTINCT text_hash) FROM {table}")
        )
        todo = one(con.execute(f"SELECT count(*) FROM {work}"))[0]
        if todo:
            enc.encode(["warm up"])  # load the model now, so texts/s measures encoding only
        embedded = 0
        t_enc = 0.0
        store = found[0] if found else None
        with runner.rep.progress(f"embed {text_name} with {enc_name}", todo) as bar:
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
                        run_id=runner.run_id,
                    )
                vectors.insert(con, store, [r[0] for r in rows], vecs, runner.run_id)
                embedded += len(rows)
                bar.advance(len(rows))
        if store is not None:
            vectors.touch(con, fp, encoder=enc_name, run_id=runner.run_id)
        con.execute(f"DROP TABLE {work}")
        secs = time.perf_counter() - t0
        stats = {
            "users": int(users),
            "distinct_texts": int(distinct),
            "cached": int(distinct - todo),
            "embedded": int(embedded),
            "texts_per_s": round(embedded / t_enc, 1) if t_enc > 0 else None,
            "device": enc.device if embedded else None,
            "encoder_fp": fp[:12],
            "seconds": round(secs, 3),
        }
        runner.results.append(
            NodeResult(
                uid,
                "embedding",
                "success",
                "embedded" if embedded else "cached",
                embedded,
                round(secs, 3),
                detail=stats,
            )
        )
        runner.summary.setdefault("embeddings", {})[node.name] = stats
        speed = f", {stats['texts_per_s']:,} texts/s on {stats['device']}" if embedded else ""
        runner.rep.line(
            f"  embed {node.name:<28} {users:,} users, {distinct:,} distinct texts: {distinct - todo:,} cached, {embedded:,} embedded{speed}"
        )
        record_nodes(con, [node], runner.run_id)


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
        JOIN {text_table(text_name)} t ON t.{k} = u.{k}
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
    from segtool.encoders import build_encoder
    from segtool.state.db import table_exists

    proj = project.loaded
    con = project.connect(read_only=False)
    try:
        if not table_exists(con, STATE, "encoders"):
            return {"removed": 0, "kept": []}
        current: dict[str, str] = {}  # fingerprint -> encoder name
        unbuildable: dict[str, str] = {}  # encoder name -> why
        for name, spec in proj.encoders.items():
            try:
                current[build_encoder(spec, proj.root).fingerprint()] = name
            except SegtoolError as exc:
                unbuildable[name] = exc.message
        texts = [t for t in proj.texts if table_exists(con, STATE, "texts__" + t)]
        used = " UNION ".join(f"SELECT text_hash FROM {text_table(t)}" for t in texts)
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
            from segtool.execute.run import rollback

            rollback(con)
            raise
        con.execute("CHECKPOINT")
        return {"removed": removed, "kept": kept}
    finally:
        con.close()
