"""Embeddings: encode only texts with no cached vector for this encoder.

Cache: `_segtool.embeddings(encoder_fp, text_hash, vector)`. Identical texts
are embedded once. Work is committed chunk by chunk, so a killed run keeps
what it did and the next run continues where it stopped."""

from __future__ import annotations

import os
import time

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.errors import EncoderError
from segtool.execute.render import text_table
from segtool.state.db import STATE
from segtool.state.result import one

# texts per committed chunk: a crash loses at most this much work
CHUNK = int(os.environ.get("SEGTOOL_EMBED_CHUNK", "2048"))


def preflight(runner, uids: list[str]) -> None:
    """Missing models and unavailable packages fail before anything is written."""
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


def vectors_to_arrow(vecs: np.ndarray):
    import pyarrow as pa

    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    flat = pa.array(vecs.reshape(-1))
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, vecs.size + 1, vecs.shape[1], dtype=np.int32)), flat
    )


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
        work = quote_ident(f"__segtool_embed_{text_name}_{enc_name}")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {work} AS
            SELECT text_hash, any_value(text) AS text, row_number() OVER (ORDER BY text_hash) AS rn
            FROM {table} t
            WHERE NOT EXISTS (SELECT 1 FROM {STATE}.embeddings e WHERE e.encoder_fp = ? AND e.text_hash = t.text_hash)
            GROUP BY text_hash""",
            [fp],
        )
        users, distinct = one(
            con.execute(f"SELECT count(*), count(DISTINCT text_hash) FROM {table}")
        )
        todo = one(con.execute(f"SELECT count(*) FROM {work}"))[0]
        if todo:
            enc.encode(["warm up"])  # load the model now, so texts/s measures encoding only
        embedded = 0
        t_enc = 0.0
        with runner.rep.progress(f"embed {text_name} with {enc_name}", todo) as bar:
            for lo in range(1, todo + 1, CHUNK):
                rows = con.execute(
                    f"SELECT text_hash, text FROM {work} WHERE rn >= ? AND rn < ? ORDER BY rn",
                    [lo, lo + CHUNK],
                ).fetchall()
                te = time.perf_counter()
                vecs = enc.encode([r[1] for r in rows])
                t_enc += time.perf_counter() - te
                if vecs.shape[0] != len(rows) or not np.isfinite(vecs).all():
                    raise EncoderError(
                        f"encoder '{enc_name}' returned {vecs.shape[0]} vectors for {len(rows)} texts or non-finite values"
                    )
                import pyarrow as pa

                batch = pa.table(
                    {"text_hash": [r[0] for r in rows], "vector": vectors_to_arrow(vecs)}
                )
                con.register("__segtool_vectors", batch)
                # one statement = one committed chunk (autocommit)
                con.execute(
                    f"INSERT INTO {STATE}.embeddings SELECT ?, text_hash, CAST(vector AS FLOAT[]), ? FROM __segtool_vectors",
                    [fp, runner.run_id],
                )
                con.unregister("__segtool_vectors")
                embedded += len(rows)
                bar.advance(len(rows))
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
    """Vectors for the users in `keys_sql` (a query returning the key column),
    in that query's order. Returns (keys, matrix)."""
    k = quote_ident(key)
    tbl = con.sql(
        f"""SELECT u.{k} AS k, e.vector AS v
        FROM ({keys_sql}) u
        JOIN {text_table(text_name)} t ON t.{k} = u.{k}
        JOIN {STATE}.embeddings e ON e.encoder_fp = '{encoder_fp}' AND e.text_hash = t.text_hash
        ORDER BY u.__ord"""
    ).to_arrow_table()
    keys = tbl.column("k").to_numpy(zero_copy_only=False)
    col = tbl.column("v").combine_chunks()
    n = len(col)
    if n == 0:
        return keys, np.zeros((0, 0), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return keys, flat.reshape(n, -1)


def clean_cache(project) -> int:
    """Delete vectors no current text uses with a current encoder."""
    from segtool.state.db import table_exists

    con = project.connect(read_only=False)
    try:
        texts = [t for t in project.loaded.texts if table_exists(con, STATE, "texts__" + t)]
        if not texts:
            n = one(con.execute(f"SELECT count(*) FROM {STATE}.embeddings"))[0]
            con.execute(f"DELETE FROM {STATE}.embeddings")
            return int(n)
        used = " UNION ".join(f"SELECT text_hash FROM {text_table(t)}" for t in texts)
        fps = []
        for name in project.loaded.encoders:
            try:
                from segtool.encoders import build_encoder

                fps.append(build_encoder(project.loaded.encoders[name], project.root).fingerprint())
            except EncoderError:
                continue
        fp_list = ", ".join("'" + f + "'" for f in fps) or "''"
        cond = f"encoder_fp NOT IN ({fp_list}) OR text_hash NOT IN ({used})"
        n = one(con.execute(f"SELECT count(*) FROM {STATE}.embeddings WHERE {cond}"))[0]
        con.execute(f"DELETE FROM {STATE}.embeddings WHERE {cond}")
        con.execute("CHECKPOINT")
        return int(n)
    finally:
        con.close()
