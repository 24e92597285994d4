"""Render large work sets on up to 8 CPUs (MAX_WORKERS).

Jinja rendering is pure Python: one core renders ~10,000 shopper stories a
second. Above RENDER_POOL_MIN users, batches go to worker processes (a
`forkserver` pool: clean processes, nothing inherited from DuckDB's or
torch's threads), each of which compiles the template once. Rows travel as
Arrow IPC buffers both ways (no per-row pickling); a worker renders with the
same `render_rows` (and the same per-user time limit) as the main process, so
the texts are byte for byte the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

# below this many users to render, one process is faster than starting workers
RENDER_POOL_MIN = int(os.environ.get("SEGTOOL_RENDER_POOL_MIN", "20000"))
SUB_BATCH = 5_000
# a bound on memory and start-up (each worker is a fresh interpreter); not tuned
# beyond the 2-core machines segtool is benchmarked on
MAX_WORKERS = 8


@dataclass(frozen=True)
class RenderJob:
    """What a worker needs to render one text node (picklable, small)."""

    templates: dict[str, tuple[str, str]]  # name -> (text, path)
    template: str
    key: str
    text_name: str
    max_chars: int
    vars: dict[str, Any]


def job_for(proj, spec) -> RenderJob:
    return RenderJob(
        templates={n: (t.text, t.path) for n, t in proj.templates.items()},
        template=spec.template,
        key=proj.key,
        text_name=spec.name,
        max_chars=spec.max_chars,
        vars=dict(proj.vars),
    )


_WORKER: dict[str, Any] = {}


def _init(job: RenderJob) -> None:
    from segtool.execute.texts import text_renderer
    from segtool.project.secrets import Secrets

    templates = {
        n: SimpleNamespace(name=n, text=text, path=path)
        for n, (text, path) in job.templates.items()
    }
    secrets = Secrets()
    proj = SimpleNamespace(key=job.key, templates=templates, vars=job.vars, env_var=secrets.env_var)
    spec = SimpleNamespace(name=job.text_name, template=job.template, max_chars=job.max_chars)
    _WORKER.update(proj=proj, spec=spec, render=text_renderer(proj, spec))


def _to_ipc(table) -> bytes:
    """An Arrow table as one IPC stream (how rows cross processes)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(buf: bytes):
    import pyarrow as pa

    return pa.ipc.open_stream(buf).read_all()


def _render(ipc: bytes) -> tuple[bytes, int, int]:
    from segtool.execute.texts import render_rows, rendered_batch

    rows = _from_ipc(ipc).to_pylist()
    out, n_trunc, n_empty = render_rows(_WORKER["proj"], _WORKER["spec"], rows, _WORKER["render"])
    return _to_ipc(rendered_batch(out).to_arrow()), n_trunc, n_empty


def workers_for(n_work: int) -> int:
    """How many processes to render `n_work` users with (1: no pool)."""
    from segtool.encoders._device import available_cpus

    if n_work < RENDER_POOL_MIN:
        return 1
    return max(1, min(available_cpus(), MAX_WORKERS))


def render_parallel(job: RenderJob, batches: Iterator, workers: int):
    """Yield (rendered Arrow table, truncated, empty) per batch, in order.
    `batches` yields Arrow tables of model rows (with __row_hash)."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(job,)) as pool:
        pending = []
        for table in batches:
            for lo in range(0, table.num_rows, SUB_BATCH):
                pending.append(pool.submit(_render, _to_ipc(table.slice(lo, SUB_BATCH))))
                while len(pending) > 2 * workers:  # bounded: the main process keeps up
                    yield _result(pending.pop(0))
        for fut in pending:
            yield _result(fut)


def _result(fut):
    ipc, n_trunc, n_empty = fut.result()
    return _from_ipc(ipc), n_trunc, n_empty
