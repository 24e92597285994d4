"""Where the heavy stages run: this process (`local`) or a Ray cluster (`ray`).

The embed stage (execute/embed.py) and the assignment of large
segmentations hand their work to the target's executor
(`profiles.yml`: `targets.NAME.executor`, docs/scale.md) through two calls:

    executor.embed(work: EmbedWork) -> EmbedStats
        encode the plan's work set (texts rn 1..work.todo) and hand every
        chunk of vectors to work.commit, which writes it to the cache in its
        own transaction (only this process writes to the database)
    executor.predict(fitted, chunks) -> iterator of (tag, labels, distance, confidence)
        apply a stored fit (params JSON + npz bytes, no pickle) to chunks of
        users' input blocks, in any order

`assign_users` is the assignment stage's entry: it streams the users of a
work table through `predict` chunk by chunk and writes their segments.

SQL, rendering, fitting and every write stay in this process: DuckDB has one
writer, and the run lock is this process's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

# A transformer on a CPU encodes tens of texts a second: a 2,048-text chunk
# would be a minute without a commit or a progress step. Chunks of this many
# texts commit (and move the progress bar) every few seconds instead.
CPU_MODEL_CHUNK = 256
SLOW_ON_CPU = ("transformers", "sentence-transformers")

# users per assignment chunk: a multiple of the ml package's row chunks
# (16,384), so a chunk is predicted exactly as the whole would be
ASSIGN_CHUNK = 262_144


@dataclass
class EmbedWork:
    """One embedding step's work, as the embed stage hands it to an executor."""

    spec: Any  # its EncoderSpec
    fingerprint: str  # the cache its vectors land in
    todo: int  # texts in the work set: rn 1..todo, longest first
    chunk: int  # texts per local chunk (SEGTOOL_EMBED_CHUNK)
    root: Path  # the project root (relative model folders)
    device: str | None  # the run's device override (--device, the target's device)
    local_encoder: Callable[[], Any]  # this process's encoder (built on first call)
    read: Callable[[int, int], tuple[list[str], list[str]]]  # rn in [lo, hi) -> (hashes, texts)
    stream: Callable[[int], Iterator[Any]]  # pyarrow tables (rn, text_hash, text) of n rows
    commit: Callable[[list[str], np.ndarray], None]  # one committed chunk
    progress: Any = None  # .advance(n); .note(status), .begin() when it has them


@dataclass
class EmbedStats:
    embedded: int = 0
    encode_seconds: float = 0.0  # local: time in encode(); ray: unused
    device: str | None = None
    texts_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # run_results detail


@dataclass
class Fitted:
    """A stored fit as it travels: the JSON params and the npz arrays."""

    key: str  # what the fit is: a process restores each fit once (predict.py)
    params: str
    arrays: bytes

    @classmethod
    def of(cls, name: str, fit_row) -> Fitted:
        import hashlib

        _, _, params, arrays = fit_row
        arrays = bytes(arrays)
        # by content: two databases (projects, tests in one process) can hold
        # different fits under the same name, fit id and fit hash
        digest = hashlib.blake2b(params.encode() + arrays, digest_size=16).hexdigest()
        return cls(f"{name}/{digest}", params, arrays)


def chunk_rows(work: EmbedWork, *, on_cpu: bool) -> int:
    """Texts per encode call and per committed chunk (a Ray shard): the same
    rule locally and on Ray workers, so both give bit-identical vectors."""
    if on_cpu and work.spec.kind in SLOW_ON_CPU:
        return min(work.chunk, CPU_MODEL_CHUNK)
    return work.chunk


class Executor(Protocol):
    kind: str  # "local" | "ray"
    workers: int

    def describe(self) -> str: ...

    def embed(self, work: EmbedWork) -> EmbedStats: ...

    def predict(
        self, fitted: Fitted, chunks: Iterable[tuple[Any, list, np.ndarray]]
    ) -> Iterator[tuple[Any, np.ndarray, np.ndarray, np.ndarray]]: ...


def executor_for(spec) -> Executor:
    """The executor an ExecutorSpec (a target's `executor:`) asks for."""
    if spec is None or spec.kind == "local":
        from segtool.execute.executors.local import LocalExecutor

        return LocalExecutor()
    from segtool.execute.executors.ray_executor import RayExecutor

    return RayExecutor(spec)


def check(spec) -> None:
    """Fail before anything is written when the target's executor cannot run
    here (Ray not installed). Connecting to the cluster happens when there is
    work for it."""
    if spec is not None and spec.kind == "ray":
        from segtool.execute.executors.ray_executor import require_ray

        require_ray()


# ----------------------------------------------------------------------------- assignment


def input_chunks(proj, fingerprint, con, seg, users: str, n: int, chunk: int | None = None):
    """(offset, loaded inputs) of the `n` users of `users` (key, __ord 1..n),
    `chunk` users at a time, each chunk's __ord renumbered from 1."""
    from segtool.execute.segment.inputs import load_inputs

    chunk = chunk or ASSIGN_CHUNK
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        sql = f"SELECT * EXCLUDE (__ord), __ord - {lo} AS __ord FROM {users} WHERE __ord > {lo} AND __ord <= {hi}"
        yield lo, load_inputs(proj, fingerprint, con, seg, sql)


def assign_users(ctx, seg, users: str, n: int, fit_row, *, chunk: int = ASSIGN_CHUNK) -> dict:
    """Assign the `n` users of the work table `users` (key, __ord 1..n) with
    the stored fit `fit_row` ((fit_id, fit_hash, params, arrays), as
    store.active_fit returns it) and write their segments (full=False).

    Users are loaded chunk by chunk (`chunk` users) in this process. With a
    Ray target and more than `assign_min_users` users, each chunk's blocks go
    to a worker with the fit (its params and arrays, restored there without
    pickle) and predictions come back in any order; otherwise they are
    predicted here. Prediction is row by row, so the result is the same
    either way, bit for bit. Returns run_results detail."""
    import time

    import numpy as np

    from segtool.execute.segment import store

    t0 = time.perf_counter()
    spec = ctx.loaded.target.executor
    executor = (
        executor_for(spec)
        if spec.kind != "local" and n > spec.assign_min_users
        else executor_for(None)
    )
    fitted = Fitted.of(seg.name, fit_row)
    mapping = {int(a): int(b) for a, b in json.loads(fitted.params)["label_to_id"].items()}
    lut_keys = np.array(sorted(mapping), dtype=np.int64)
    lut_vals = np.array([mapping[k] for k in lut_keys], dtype=np.int64)
    con, proj = ctx.con, ctx.loaded

    def chunks():
        for _, loaded in input_chunks(proj, ctx.encoders.fingerprint, con, seg, users, n, chunk):
            yield loaded.keys, loaded.blocks, loaded.keys

    done = 0
    with ctx.reporter.progress(f"assign {seg.name} ({executor.describe()})", n, "users") as bar:
        for keys, labels, dist, conf in executor.predict(fitted, chunks()):
            ids = to_ids(labels, lut_keys, lut_vals)
            store.write_assignments(
                con, proj, seg.name, keys, ids, dist, conf, ctx.run_id, full=False
            )
            done += len(keys)
            bar.advance(len(keys))
    seconds = time.perf_counter() - t0
    return {
        "executor": executor.kind,
        "workers": executor.workers,
        "users_per_s": round(done / seconds, 1) if seconds > 0 and done else None,
    }


def to_ids(labels: np.ndarray, lut_keys: np.ndarray, lut_vals: np.ndarray) -> np.ndarray:
    """Cluster labels -> stable segment ids (-1 for labels the fit does not map)."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64)
    if lut_keys.size == 0:
        return np.full(labels.shape, -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(lut_keys, labels), 0, lut_keys.size - 1)
    return np.where(lut_keys[pos] == labels, lut_vals[pos], -1)
