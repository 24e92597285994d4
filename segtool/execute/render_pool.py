"""Render work sets on more than one CPU.

Jinja rendering is pure Python: one core renders ~20,000 shopper stories a
second. From 20,000 users (100,000 on two CPUs: workers_for), batches go to
worker processes (a `forkserver` pool: clean processes, nothing inherited
from DuckDB's or torch's threads), each of which compiles the template once.
Rows travel as Arrow IPC buffers both ways (no per-row pickling); a worker
renders with the same `render_rows` (and the same per-user time limit) as
the main process, so the texts are byte for byte the same.

Starting such a pool costs about as much as rendering 10,000 users on 2
cores, so a smaller work set (on two CPUs, any below 100,000) of at least
RENDER_SPLIT_MIN users renders on two CPUs instead, 20,000 rows at a time
(render_split): a forked child, which already holds the compiled template
and the rows, renders chunks from the end while this process imports what
the run needs next and renders chunks from the start.
The child only renders and writes its frontier and texts (length-prefixed
UTF-8, no pickle) into a pipe, then leaves with os._exit (no atexit
handlers, no flush of inherited buffers); it never touches DuckDB, whose
threads are not in it. Linux only.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

# from this many users to render, a pool of workers (None: by CPUs, below)
_pool_min = os.environ.get("SEGTOOL_RENDER_POOL_MIN")
RENDER_POOL_MIN: int | None = int(_pool_min) if _pool_min else None
# On two CPUs the split (render_split) renders on both as well, without the
# pool's start-up and IPC: examples/ecommerce's 1M-user period-2 run (59,892
# users) rendered in 3.2 s instead of 3.7 s, its embedding 1.2 instead of 1.8 s
# (SciPy imported meanwhile); a 200k full run the same within noise; a 1M
# full run 57 instead of 49 s (the pool's workers render while this process
# reads and writes DuckDB). With more CPUs the pool has more workers.
POOL_MIN_TWO_CPUS, POOL_MIN_MORE_CPUS = 100_000, 20_000
# from this many, a smaller work set renders on two CPUs (a fork and this process)
RENDER_SPLIT_MIN = int(os.environ.get("SEGTOOL_RENDER_SPLIT_MIN", "2000"))
SUB_BATCH = 5_000
BACKSTOP_HINT = "10x SEGTOOL_RENDER_TIMEOUT of CPU in one user's render"
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
    from segtool.execute.texts import model_rows, render_rows, rendered_batch

    rows = model_rows(_from_ipc(ipc))
    out, n_trunc, n_empty = render_rows(_WORKER["proj"], _WORKER["spec"], rows, _WORKER["render"])
    return _to_ipc(rendered_batch(out).to_arrow()), n_trunc, n_empty


def workers_for(n_work: int) -> int:
    """How many processes to render `n_work` users with (1: no pool)."""
    from segtool.encoders._device import available_cpus

    cpus = available_cpus()
    pool_min = RENDER_POOL_MIN
    if pool_min is None:
        pool_min = POOL_MIN_TWO_CPUS if cpus <= 2 else POOL_MIN_MORE_CPUS
    if n_work < pool_min:
        return 1
    return max(1, min(cpus, MAX_WORKERS))


def render_parallel(job: RenderJob, batches: Iterator, workers: int):
    """Yield (rendered Arrow table, truncated, empty) per batch, in order.
    `batches` yields Arrow tables of model rows (with __row_hash)."""
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    from segtool.errors import ProjectError

    ctx = multiprocessing.get_context("forkserver")
    try:
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init, initargs=(job,)
        ) as pool:
            pending = []
            for table in batches:
                for lo in range(0, table.num_rows, SUB_BATCH):
                    pending.append(pool.submit(_render, _to_ipc(table.slice(lo, SUB_BATCH))))
                    while len(pending) > 2 * workers:  # bounded: the main process keeps up
                        yield _result(pending.pop(0))
            for fut in pending:
                yield _result(fut)
    except BrokenProcessPool as exc:
        # a worker was killed: by the render CPU backstop (its stack, with the
        # template's frame, is on stderr above), for memory, or from outside
        raise ProjectError(
            f"text '{job.text_name}': a render worker process ended abruptly",
            hint=f"a template call past the CPU backstop ({BACKSTOP_HINT}) ends its process, "
            "with its Python stack printed above; so do the system's memory limits",
        ) from exc


def _result(fut):
    ipc, n_trunc, n_empty = fut.result()
    return _from_ipc(ipc), n_trunc, n_empty


def render_batch(proj, spec, table, render, prefetch=()) -> tuple[list[tuple], int, int]:
    """render_rows over an Arrow table of model rows, on two CPUs when there
    are enough rows and a fork is available (render_split), else here."""
    from segtool.encoders._device import available_cpus

    if table.num_rows >= RENDER_SPLIT_MIN and sys.platform == "linux" and available_cpus() > 1:
        return render_split(proj, spec, table, render, prefetch)
    return _render_here(proj, spec, table, render)


def render_split(proj, spec, table, render, prefetch=()) -> tuple[list[tuple], int, int]:
    """render_rows over `table` on two CPUs: a forked child renders chunks of
    SPLIT_CHUNK rows from the end while this process first imports `prefetch`
    (modules the rest of the run needs: Polars, the encoder's libraries) and
    then renders chunks from the start; they meet wherever the work left
    them, so neither waits for the other however long the imports take.

    The child reports each chunk it has done (its frontier) and, when told to
    stop or at row 0, sends its texts. Where both rendered the same rows this
    process's texts are kept. Once they meet, this process goes on rendering
    the rows after `done` until the child's texts arrive, so it never waits
    idle on a child that is slow or hangs (a forked child can hang on a lock
    another thread held at the fork): with every row rendered here the child
    is killed. If the child fails for any reason (a template error for one of
    its users, a time limit, a kill), the rows it did not deliver are
    rendered here, in order, so errors read exactly as in one process."""
    import gc
    import importlib
    import signal

    from segtool.execute.texts import model_rows, render_texts, text_rows

    n = table.num_rows
    read_fd, write_fd = os.pipe()  # child -> here: frontier reports, then the texts
    stop_r, stop_w = os.pipe()  # here -> child: closed when this side is done
    # Ctrl-C between the fork and the child's `try` would raise in the child and
    # send it back into the caller (closing the parent's database, releasing its
    # lock): SIGINT stays blocked until the child ignores it
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pid = os.fork()
    except OSError:  # no memory or process slot for a child: one process it is
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in (read_fd, write_fd, stop_r, stop_w):
            os.close(fd)
        return _render_here(proj, spec, table, render)
    if pid == 0:  # the child: render, write, leave; never return into the caller
        code = 1
        try:
            # Ctrl-C reaches the whole process group: the parent stops this child
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_fd)
            os.close(stop_w)
            gc.disable()  # short-lived: collecting would copy the parent's pages
            _render_from_the_end(proj, spec, table, render, write_fd, stop_r)
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the parent rendering its rows
            pass
        finally:
            os._exit(code)
    os.close(write_fd)
    os.close(stop_r)
    reports = _Reports(read_fd)
    status = None
    try:
        # a Ctrl-C held back since the fork arrives here, where `finally` stops the child
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for name in prefetch:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the step that needs it reports it, in its words
                pass

        def render_rows(lo, hi):
            return render_texts(proj, spec, model_rows(table.slice(lo, hi - lo)), render)

        texts, done = _render_up_to_the_child(reports, n, render_rows)
        os.close(stop_w)
        stop_w = None
        texts, done = _render_until_the_child_answers(reports, n, texts, done, render_rows)
        delivered = reports.delivered() if reports.ended else None
        if not reports.ended:  # every row is rendered here: the child is not needed
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        if stop_w is not None:
            os.close(stop_w)
        reports.close()
        if status is None:  # an error in this part, or Ctrl-C: the child's part is not needed
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    code = os.waitstatus_to_exitcode(status)
    if code == -getattr(signal, "SIGPROF", 0) and done < n:
        # the CPU backstop ended the child (its stack is on stderr): rendering
        # its rows here would run the same call for as long again, then end
        # this process without a word
        from segtool.errors import ProjectError

        raise ProjectError(
            f"text '{spec.name}': a user's render ran one call past the CPU backstop "
            f"({BACKSTOP_HINT})",
            hint="the Python stack printed above names the template and the call",
        )
    if code == 0 and delivered is not None:
        lo, theirs = delivered
        texts += theirs[done - lo :]
    else:
        texts += render_texts(proj, spec, model_rows(table.slice(done)), render)
    return text_rows(*_keys_and_row_hashes(proj, table), texts)


def _render_up_to_the_child(reports, n: int, render_rows) -> tuple[list, int]:
    """render_split's part here: chunks from row 0 up while they lie below the
    child's frontier. Returns the texts and the row they reach (`done`).

    The frontier is read once per chunk: it falls while this side renders, and
    a chunk's end taken from a second, lower reading could fall below `done`
    (an empty slice, `done` moving back: rows rendered here and again by the
    child, more texts than users)."""
    texts: list = []
    done = 0
    while (frontier := reports.frontier(n)) > done:
        hi = min(done + SPLIT_CHUNK, frontier)
        texts += render_rows(done, hi)
        done = hi
    return texts, done


def _render_until_the_child_answers(reports, n: int, texts: list, done: int, render_rows):
    """After the sides met: render on from `done`, a chunk at a time, until
    the child has sent its texts (or left) or every row is rendered here.
    Returns the texts and the row they reach."""
    while not reports.poll() and done < n:
        hi = min(done + SPLIT_CHUNK, n)
        texts += render_rows(done, hi)
        done = hi
    return texts, done


# rows a side of render_split claims at a time: small enough that the two
# sides meet within ~10 ms, large enough that reporting costs nothing
SPLIT_CHUNK = 256


_REPORT = struct.Struct("<cq")  # b"F" + frontier, or b"T" + texts' byte length


def _render_from_the_end(proj, spec, table, render, out_fd: int, stop_fd: int) -> None:
    """The child's part of render_split: chunks from the last row down, a
    frontier report after each, until row 0 or the parent closes `stop_fd`;
    then its texts (from its frontier to the end) in one message."""
    import select

    from segtool.execute.texts import model_rows, render_texts

    chunks = []
    lo = table.num_rows
    with os.fdopen(out_fd, "wb") as out:
        while lo > 0 and not select.select([stop_fd], [], [], 0)[0]:
            start = max(0, lo - SPLIT_CHUNK)
            chunks.append(
                render_texts(proj, spec, model_rows(table.slice(start, lo - start)), render)
            )
            lo = start
            out.write(_REPORT.pack(b"F", lo))
            out.flush()
        data = _pack([t for chunk in reversed(chunks) for t in chunk])
        out.write(_REPORT.pack(b"T", len(data)))
        out.write(data)


class _Reports:
    """The parent's end of render_split's pipe: the child's frontier, read
    without waiting, and its texts, read at the end."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lowest: int | None = None
        self.buf = bytearray()
        self.ended = False  # the child closed its end: all it sent is in buf
        os.set_blocking(fd, False)

    def _drain(self) -> bool:
        """Read what the pipe holds now; True at its end (the child left)."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            self.buf += chunk

    def frontier(self, n: int) -> int:
        """The lowest row the child has rendered so far (n: none yet)."""
        self._drain()
        self._parse_frontiers()
        return n if self.lowest is None else self.lowest

    def _parse_frontiers(self) -> None:
        size = _REPORT.size
        while len(self.buf) >= size and self.buf[:1] == b"F":
            _, lo = _REPORT.unpack_from(self.buf)
            self.lowest = lo
            del self.buf[:size]

    def poll(self) -> bool:
        """Read what the child sent, without waiting; once its texts have
        begun to arrive, read them to the end (it is sending, not stuck).
        True when the child has closed its end."""
        if not self.ended:
            self.ended = self._drain()
            self._parse_frontiers()
            if not self.ended and self.buf[:1] == b"T":
                os.set_blocking(self.fd, True)
                while chunk := os.read(self.fd, 1 << 20):
                    self.buf += chunk
                self.ended = True
        return self.ended

    def delivered(self) -> tuple[int, list[tuple[str, bool]]] | None:
        """(the child's frontier, its texts from there on), or None when it
        left without sending them whole."""
        self._parse_frontiers()
        size = _REPORT.size
        if len(self.buf) < size or self.buf[:1] != b"T" or self.lowest is None:
            return None
        _, length = _REPORT.unpack_from(self.buf)
        if len(self.buf) != size + length:
            return None
        return self.lowest, _unpack(bytes(self.buf[size:]))

    def close(self) -> None:
        os.close(self.fd)


def _render_here(proj, spec, table, render) -> tuple[list[tuple], int, int]:
    from segtool.execute.texts import model_rows, render_rows

    return render_rows(proj, spec, model_rows(table), render)


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
