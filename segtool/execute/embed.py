"""Embeddings: encode only texts with no cached vector for this encoder.

Cache: one fixed-size vector table per encoder fingerprint (state/vectors.py).
Identical texts are embedded once. Work is committed chunk by chunk, so a
killed run keeps what it did and the next run continues where it stopped."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from segtool.errors import EncoderError
from segtool.execute.context import StepResult
from segtool.state import tables, vectors
from segtool.state.db import STATE
from segtool.state.result import one

if TYPE_CHECKING:
    import numpy as np

# texts per committed chunk: a crash loses at most this much work
CHUNK = int(os.environ.get("SEGTOOL_EMBED_CHUNK", "2048"))


def preflight(project, encoders, embedding_nodes, say=None) -> None:
    """Missing models, unavailable packages and a device that is not there fail
    before anything is written; a static encoder is distilled here (once per
    machine), so the plan can fingerprint it."""
    from segtool.encoders import CPU_ONLY_KINDS, check_encoder
    from segtool.execute.executors import check as check_executor

    executor = project.loaded.target.executor
    check_executor(executor)  # Ray installed, for a target that embeds on Ray
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
                hint="see docs/encoders.md (`model`, offline use, `max_length`); the database was not changed",
                path=spec.file,
                line=spec.line,
            )
        device = encoders.device_for(enc_name)
        # on Ray the device is the workers': this process may have none
        # (an ONNX encoder's CUDA comes from onnxruntime-gpu, not torch: it says
        # itself when it cannot start)
        if (
            spec.kind not in CPU_ONLY_KINDS
            and spec.backend != "onnx"
            and device not in ("auto", "cpu")
            and executor.kind == "local"
        ):
            from segtool.encoders._device import resolve_device

            try:
                resolve_device(device)  # imports torch: only when a device is asked for
            except EncoderError as exc:
                exc.message = f"encoder '{enc_name}': {exc.message}"
                exc.hint = (exc.hint or "") + "; the database was not changed"
                raise
        encoders.prepare(enc_name, say)


def execute_embedding(ctx, step) -> StepResult:
    """Embed the texts the plan put in work_table('embed', ...) on the
    target's executor (execute/executors: this process, or Ray); every chunk
    of vectors is committed here, in its own transaction: a killed run keeps
    what it did."""
    from segtool.execute.executors import EmbedWork, executor_for
    from segtool.state.tables import work_table

    t0 = time.perf_counter()
    node = ctx.graph[step.unique_id]
    if step.action == "skip":
        return StepResult.of(step)
    con = ctx.con
    text_name, enc_name = node.data["text"], node.data["encoder"]
    spec = ctx.encoders.spec(enc_name)
    fp = ctx.encoders.fingerprint(enc_name)
    work = work_table("embed", node.name.replace(".", "__"))
    todo = one(con.execute(f"SELECT count(*) FROM {work}"))[0]
    found = vectors.lookup(con, fp)
    store = found[0] if found else None
    executor = executor_for(ctx.loaded.target.executor)

    def read(lo: int, hi: int) -> tuple[list[str], list[str]]:
        rows = con.execute(
            f"SELECT text_hash, text FROM {work} WHERE rn >= ? AND rn < ? ORDER BY rn", [lo, hi]
        ).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def stream(n: int):
        """The work set in rn order, as pyarrow tables of exactly n rows (the
        last one shorter): read once, to the end, before anything is written."""
        import pyarrow as pa

        from segtool.state.frames import arrow_batches

        reader = arrow_batches(
            con.sql(f"SELECT rn, text_hash, text FROM {work} ORDER BY rn"), 65_536
        )
        held: list = []
        have = 0
        for batch in reader:
            held.append(batch)
            have += batch.num_rows
            while have >= n:
                table = pa.Table.from_batches(held)
                yield table.slice(0, n)
                held = table.slice(n).to_batches()
                have -= n
        if have:
            yield pa.Table.from_batches(held)

    def commit(hashes: list[str], vecs: np.ndarray) -> None:
        nonlocal store
        import numpy as np

        if vecs.ndim != 2 or vecs.shape[0] != len(hashes) or not np.isfinite(vecs).all():
            raise EncoderError(
                f"encoder '{enc_name}' returned {vecs.shape[0]} vectors for {len(hashes)} texts or non-finite values"
            )
        if store is None:
            store = vectors.ensure(
                con, fp, encoder=enc_name, kind=spec.kind, dim=vecs.shape[1], run_id=ctx.run_id
            )
        vectors.insert(con, store, hashes, vecs, ctx.run_id)

    label = f"embed {text_name} with {enc_name}"
    if executor.kind != "local":
        label += f" on {executor.describe()}"
    with ctx.reporter.progress(label, todo, "texts") as bar:
        stats = executor.embed(
            EmbedWork(
                spec=spec,
                fingerprint=fp,
                todo=todo,
                chunk=CHUNK,
                root=ctx.loaded.root,
                device=ctx.encoders.device,
                local_encoder=lambda: ctx.encoders.get(enc_name),
                read=read,
                stream=stream,
                commit=commit,
                progress=bar,
            )
        )
    if store is not None:
        vectors.touch(con, fp, encoder=enc_name, run_id=ctx.run_id)
    con.execute(f"DROP TABLE {work}")  # every text in it is embedded (see render.py)
    for w in stats.extra.get("per_worker", []):
        rate = f", {w['texts_per_s']:,.0f} texts/s" if w["texts_per_s"] else ""
        ctx.reporter.line(
            f"    {executor.kind} worker {w['worker']} on {w['device']}: {w['texts']:,} texts{rate}"
        )
    seconds = time.perf_counter() - t0
    return StepResult.of(
        step,
        seconds,
        embedded=stats.embedded,
        texts_per_s=stats.texts_per_s,
        device=stats.device if stats.embedded else None,
        executor=executor.kind,
        workers=executor.workers,
        wall_texts_per_s=round(stats.embedded / seconds, 1)
        if stats.embedded and seconds > 0
        else None,
        **stats.extra,
    )


def clean_cache(project) -> dict:
    """Delete vectors that no current text uses with a current encoder.

    An encoder that cannot be built today (its model folder moved, a package is
    missing) keeps every vector it wrote: the registry says which vectors are
    its, and deleting them would make the next run re-embed everything once
    the model is back. Returns {"removed": n, "kept": [(encoder, n, why)]}."""
    from segtool.state.db import table_exists

    proj = project.loaded
    if not proj.database_path.exists():  # connecting would create an empty one
        return {"removed": 0, "kept": []}
    con = project.connect(read_only=False)
    try:
        if not table_exists(con, STATE, "encoders"):
            return {"removed": 0, "kept": []}
        # a database no run has migrated keys vectors by the fingerprints
        # before tokenizer.json counted: today's would find them all unused
        encoders = project.encoders(con=con)
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
