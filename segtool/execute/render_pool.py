"""Render work sets on more than one CPU.

Jinja rendering is pure Python: one core renders ~20,000 shopper stories a
second. Above RENDER_POOL_MIN users, batches go to worker processes (a
`forkserver` pool: clean processes, nothing inherited from DuckDB's or
torch's threads), each of which compiles the template once. Rows travel as
Arrow IPC buffers both ways (no per-row pickling); a worker renders with the
same `render_rows` (and the same per-user time limit) as the main process, so
the texts are byte for byte the same.

Starting such a pool costs about as much as rendering 10,000 users on 2
cores, so a smaller work set of at least RENDER_SPLIT_MIN users is split in
two instead (render_split): a forked child, which already holds the compiled
template and the rows, renders one half's texts while this process renders
the other. The child only renders and writes its texts (length-prefixed
UTF-8, no pickle) into a pipe, then leaves with os._exit (no atexit
handlers, no flush of inherited buffers); it never touches DuckDB, whose
threads are not in it. Linux only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

# below this many users to render, one process is faster than starting workers
RENDER_POOL_MIN = int(os.environ.get("SEGTOOL_RENDER_POOL_MIN", "20000"))
# from this many, a smaller work set renders in two halves (a fork and this process)
RENDER_SPLIT_MIN = int(os.environ.get("SEGTOOL_RENDER_SPLIT_MIN", "2000"))
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


def render_batch(proj, spec, table, render) -> tuple[list[tuple], int, int]:
    """render_rows over an Arrow table of model rows, on two CPUs when there
    are enough rows and a fork is available (render_split), else here."""
    from segtool.encoders._device import available_cpus

    if table.num_rows >= RENDER_SPLIT_MIN and sys.platform == "linux" and available_cpus() > 1:
        return render_split(proj, spec, table, render)
    return _render_here(proj, spec, table, render)


def render_split(proj, spec, table, render) -> tuple[list[tuple], int, int]:
    """render_rows over `table` with the second part's texts rendered in a
    forked child: each side converts its own rows from Arrow and renders them.
    This side also imports Polars meanwhile (the texts are written through a
    Polars frame next: state/frames.py), so the child takes the larger part
    when that import is still to come. If the child fails for any reason (a
    template error for one of its users, a time limit, a kill), its part is
    rendered here, so errors read exactly as in one process."""
    import gc
    import signal

    from segtool.execute.texts import render_texts, text_rows

    n = table.num_rows
    cut = n // 2 if "polars" in sys.modules else n * 2 // 5
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no memory or process slot for a child: one process it is
        os.close(read_fd)
        os.close(write_fd)
        return _render_here(proj, spec, table, render)
    if pid == 0:  # the child: render, write, leave; never return into the caller
        code = 1
        try:
            os.close(read_fd)
            gc.disable()  # short-lived: collecting would copy the parent's pages
            rows = table.slice(cut).to_pylist()
            data = _pack(render_texts(proj, spec, rows, render))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(data)
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the parent rendering this part
            pass
        finally:
            os._exit(code)
    os.close(write_fd)
    reaped = False
    with os.fdopen(read_fd, "rb") as pipe:
        try:
            import polars  # noqa: F401 - see the docstring

            texts = render_texts(proj, spec, table.slice(0, cut).to_pylist(), render)
            data = pipe.read()
            _, status = os.waitpid(pid, 0)
            reaped = True
        finally:
            if not reaped:  # an error in this part, or Ctrl-C: the child's part is not needed
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
    if os.waitstatus_to_exitcode(status) == 0:
        texts += _unpack(data)
    else:
        texts += render_texts(proj, spec, table.slice(cut).to_pylist(), render)
    return text_rows(*_keys_and_row_hashes(proj, table), texts)


def _render_here(proj, spec, table, render) -> tuple[list[tuple], int, int]:
    from segtool.execute.texts import render_rows

    return render_rows(proj, spec, table.to_pylist(), render)


def _keys_and_row_hashes(proj, table) -> tuple[list, list]:
    keys = table.column(proj.key).to_pylist()
    if "__row_hash" in table.column_names:
        return keys, table.column("__row_hash").to_pylist()
    return keys, [None] * len(keys)


def _pack(texts: list[tuple[str, bool]]) -> bytes:
    """Texts and their cut flags as bytes: count, byte lengths, flags, UTF-8."""
    import struct

    encoded = [t.encode("utf-8", "surrogatepass") for t, _ in texts]
    head = struct.pack(f"<q{len(encoded)}q", len(encoded), *map(len, encoded))
    return head + bytes(bool(cut) for _, cut in texts) + b"".join(encoded)


def _unpack(data: bytes) -> list[tuple[str, bool]]:
    import struct

    (n,) = struct.unpack_from("<q", data)
    lengths = struct.unpack_from(f"<{n}q", data, 8)
    flags = data[8 + 8 * n : 8 + 9 * n]
    pos, out = 8 + 9 * n, []
    for length, cut in zip(lengths, flags, strict=True):
        out.append((data[pos : pos + length].decode("utf-8", "surrogatepass"), bool(cut)))
        pos += length
    return out
