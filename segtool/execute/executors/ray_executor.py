"""The Ray executor: embedding on a pool of encoder actors (Ray Data
`map_batches`), assignment of large segmentations as Ray tasks.

Embedding, step by step (docs/scale.md):

1. The plan's work set (distinct texts with no cached vector, rn 1..todo,
   longest first) is read from DuckDB once, in rn order, and cut into shards
   of `batch_size` texts (default: the local chunk, 2,048 texts, or 256 for a
   transformer on CPU workers, so each shard holds the texts one local encode
   call would get). Each shard is written as a Parquet
   file in memory (zstd: texts shrink 3-5x) and put in Ray's object store. The
   object store, not a folder: a remote cluster (`ray://`, KubeRay) cannot
   read the driver's disk, and objects the driver puts live on the cluster.
2. `ray.data.from_arrow_refs(shards).map_batches(_EncodeActor, batch_size=1,
   compute=ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker)`: each
   actor builds the encoder once (device and dtype resolved as locally),
   checks that its fingerprint is the driver's (same model files and
   settings, else its vectors would land in the wrong cache) and encodes one
   shard per call, in one `encode` call, so vectors are bit-identical to a
   local run's with the same chunk.
3. Vector shards stream back to the driver in the order they finish; each is
   committed to the cache in its own transaction. A killed run keeps every
   committed shard and the next run's plan sends only the rest. A worker
   that dies is restarted by Ray Data and its shard retried; rows already
   committed are never written twice (each text's rn is marked when committed).

Assignment: chunks of users' input blocks go to Ray tasks with the fitted
model (its JSON params and npz arrays, put once); at most 2 x workers chunks
are in flight, and results are written as they come back.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import EncoderError, ExecutionError, SegtoolError
from segtool.execute.executors import EmbedStats, EmbedWork, Fitted, chunk_rows
from segtool.state.frames import arrow_matrix, arrow_numpy

RAY_HINT = "pip install 'segtool[ray]' (Ray Data), or set the target's executor to kind: local"


def require_ray():
    """The ray module, or an error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ExecutionError(
            f"the target's executor is Ray, but Ray Data cannot be imported ({exc})",
            hint=RAY_HINT,
        ) from exc
    return ray


def describe_spec(spec) -> str:
    """`Ray (4 workers x 1 GPU, address auto)`."""
    n = spec.workers
    each = (
        f" x {spec.gpus_per_worker:g} GPU"
        if spec.gpus_per_worker
        else f" x {spec.cpus_per_worker:g} CPU"
    )
    address = spec.address or os.environ.get("RAY_ADDRESS")
    where = f"address {address}" if address else "local instance"
    return f"Ray ({n} worker{'s' if n != 1 else ''}{each}, {where})"


def connect(spec, gpus: float | None = None):
    """Join the cluster at `address` (or RAY_ADDRESS), else start a Ray
    instance on this machine; reuse a Ray this process already joined.
    Then make sure some node can host one worker (`gpus` per worker: the
    spec's for embedding, 0 for assignment tasks): Ray would queue an actor
    that no node can hold forever, without a word."""
    from segtool.project.reach import confirm_ray_address

    # checked at load (loader.py); again here, where the connection is made,
    # for a spec that did not come through a loaded project
    confirm_ray_address(spec.address)
    ray = require_ray()
    address = spec.address or os.environ.get("RAY_ADDRESS")
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    if not ray.is_initialized():
        if address:
            _probe(address, spec.connect_timeout_s)
        try:
            if address:
                with warnings.catch_warnings():  # Ray Client warns, then raises: the error says it
                    warnings.simplefilter("ignore", UserWarning)
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:  # "local": a new instance, even when `ray start` runs one here
                ray.init(
                    address="local",
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ExecutionError(
                f"could not connect to {where}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
                hint=CONNECT_HINT,
            ) from exc
    _wait_for_a_node(
        ray,
        where,
        cpus=spec.cpus_per_worker,
        gpus=spec.gpus_per_worker if gpus is None else gpus,
        timeout_s=spec.resources_timeout_s if address else 0,
    )
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # segtool shows its own progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... and Ray Data would say so once per process
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return ray


CONNECT_HINT = (
    "start the cluster (`ray start --head`, `ray up`, KubeRay) or leave `address` "
    "unset to start a local instance; the models and texts this run built are kept, "
    "and the next run embeds from there"
)


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of `ray://host:port` or `host:port`; None for `auto`,
    `local` and other forms Ray resolves itself."""
    rest = address.removeprefix("ray://").split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast on an address nothing answers at: ray.init retries an
    unreachable head for minutes (21 s to over two measured here)."""
    import socket

    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout_s).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ExecutionError(
            f"could not connect to the Ray cluster at {address}: {hp[0]}:{hp[1]} "
            f"did not accept a connection within {timeout_s:g} s ({reason})",
            hint=CONNECT_HINT + "; a slow network: raise the executor's connect_timeout_s",
        ) from exc


def _wait_for_a_node(ray, where: str, *, cpus: float, gpus: float, timeout_s: float) -> None:
    """Return once an alive node has `cpus` CPUs and `gpus` GPUs (its
    totals: a busy node frees them later), waiting up to `timeout_s` for an
    autoscaler to add one; else an error that names what the nodes have."""
    need = {"CPU": cpus, "GPU": gpus}
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(all(r.get(k, 0) >= v for k, v in need.items() if v) for r in nodes):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    have = (
        ", ".join(f"{r.get('CPU', 0):g} CPU {r.get('GPU', 0):g} GPU" for r in nodes)
        or "no node alive"
    )
    want = " and ".join(f"{v:g} {k}" for k, v in need.items() if v)
    waited = f" (waited {timeout_s:g} s)" if timeout_s else ""
    raise ExecutionError(
        f"{where} has no node with {want} for one worker{waited}: its nodes have {have}; "
        "Ray would queue the workers forever",
        hint="lower the executor's gpus_per_worker / cpus_per_worker (gpus_per_worker: 0 "
        "for CPU workers), add such a node, or for an autoscaling cluster raise "
        "resources_timeout_s",
    )


# A segtool error raised on a worker reaches the driver inside Ray's own
# errors (ActorDiedError, RayTaskError), whose cause chains stop short of it:
# its message and hint travel in the text, base64 JSON between these marks
_CARRIED = re.compile(r"\[segtool-error:([A-Za-z0-9+/=]+)\]")


class _CarriedError(RuntimeError):
    """A SegtoolError raised on a Ray worker, as text the driver reads back."""

    def __init__(self, exc: SegtoolError):
        state = {k: v for k, v in exc.__dict__.items() if isinstance(v, str | int | None)}
        payload = base64.b64encode(
            json.dumps({"type": type(exc).__name__, **state}).encode()
        ).decode()
        super().__init__(f"{exc.message} [segtool-error:{payload}]")


def _carried(text: str) -> SegtoolError | None:
    """The SegtoolError a _CarriedError put in `text`, rebuilt, or None."""
    from segtool import errors

    m = _CARRIED.search(text)
    if m is None:
        return None
    try:
        state = json.loads(base64.b64decode(m.group(1)))
    except ValueError:
        return None
    cls = getattr(errors, str(state.pop("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, SegtoolError)):
        cls = ExecutionError
    return errors._rebuild(cls, state)


class _EncodeActor:
    """One encoder actor: builds the encoder once, then encodes one shard per call.

    A segtool error (a model that is not on this node, another fingerprint)
    is kept and raised at the first shard as a _CarriedError: raised here, in
    the actor's creation, Ray reports only that the actor died, restarts it,
    and the driver never sees the message or its hint."""

    def __init__(
        self,
        spec: dict,
        root: str,
        device: str | None,
        threads: int | None,
        fingerprint: str,
    ):
        import ray

        node = ray.util.get_node_ip_address()
        self.worker = f"{node}/{(ray.get_runtime_context().get_actor_id() or 'driver')[:8]}"
        self.error: SegtoolError | None = None
        try:
            self._build(spec, root, device, threads, fingerprint, node)
        except SegtoolError as exc:
            self.error = exc

    def _build(self, spec, root, device, threads, fingerprint, node) -> None:
        from segtool.encoders import build_encoder
        from segtool.project.specs import EncoderSpec

        spec = EncoderSpec(**spec)
        self.enc = build_encoder(
            spec,
            Path(root),
            device_override=device,
            threads=threads,
        )
        prepare = getattr(self.enc, "prepare", None)
        if prepare is not None:
            prepare(None)  # a static encoder distils its model (once per machine)
        got = self.enc.fingerprint()
        if got != fingerprint:
            raise EncoderError(
                f"encoder '{spec.name}' on Ray worker {node} has fingerprint {got[:12]}, "
                f"the driver's is {fingerprint[:12]}: other model files or settings there, "
                "whose vectors would land in the wrong cache",
                hint="install the same segtool and model files on every node (docs/scale.md)",
            )
        self.enc.encode(["warm up"])  # load the model before the first shard
        self.device = self.enc.device

    def __call__(self, batch):
        if self.error is not None:
            raise _CarriedError(self.error)
        try:
            return self._encode(batch)
        except SegtoolError as exc:
            raise _CarriedError(exc) from None

    def _encode(self, batch):
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = []
        for i in range(batch.num_rows):
            shard = batch.column("shard")[i].as_py()
            table = pq.read_table(pa.BufferReader(batch.column("parquet")[i].as_buffer()))
            texts = table.column("text").to_pylist()
            t = time.perf_counter()
            vecs = np.ascontiguousarray(self.enc.encode(texts), dtype=np.float32)
            seconds = time.perf_counter() - t
            n = table.num_rows
            if vecs.ndim != 2 or vecs.shape[0] != n:
                raise EncoderError(
                    f"encoder '{self.enc.spec.name}' returned {vecs.shape[0]} vectors for {n} texts"
                )
            dim = vecs.shape[1]
            out.append(
                pa.table(
                    {
                        "rn": table.column("rn"),
                        "text_hash": table.column("text_hash"),
                        "vector": pa.FixedSizeListArray.from_arrays(
                            pa.array(vecs.reshape(-1), pa.float32()), dim
                        ),
                        "shard": pa.array(np.full(n, shard, dtype=np.int64)),
                        "worker": pa.array([self.worker] * n, pa.string()),
                        "device": pa.array([self.device] * n, pa.string()),
                        "seconds": pa.array(np.full(n, seconds, dtype=np.float64)),
                    }
                )
            )
        return pa.concat_tables(out)


def _predict_task(fitted: Fitted, blocks: list, keys: np.ndarray):
    from segtool.execute.executors.predict import predict_chunk

    return predict_chunk(fitted, blocks, keys)


def _failed(exc: Exception, committed: int) -> SegtoolError:
    """The error to report when the Ray side of embedding failed."""
    kept = f"the {committed:,} vectors this run committed are kept: run again to embed the rest"
    cause = _root_cause(exc)
    if cause is not None:
        cause.hint = f"{cause.hint}; {kept}" if cause.hint else kept
        return cause
    text = str(exc).strip()
    return ExecutionError(
        f"embedding on Ray failed: {text.splitlines()[0] if text else repr(exc)}", hint=kept
    )


def _root_cause(exc: BaseException) -> SegtoolError | None:
    """The segtool error behind a Ray error (an encoder that failed in an actor)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, SegtoolError) and type(cur).__module__.startswith("segtool"):
            return cur
        carried = _carried(str(cur))
        if carried is not None:
            return carried
        nxt = getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return None


class RayExecutor:
    kind = "ray"

    def __init__(self, spec):
        self.spec = spec
        self.workers = spec.workers

    def describe(self) -> str:
        return describe_spec(self.spec)

    # ------------------------------------------------------------------ embedding
    def embed(self, work: EmbedWork) -> EmbedStats:
        t0 = time.perf_counter()
        stats = EmbedStats()
        if not work.todo:
            return stats
        ray = connect(self.spec)
        t_connected = time.perf_counter()
        import pyarrow as pa
        import pyarrow.parquet as pq
        from ray.data import ActorPoolStrategy

        spec = self.spec
        shard_rows = spec.batch_size or chunk_rows(work, on_cpu=not spec.gpus_per_worker)
        refs = []
        staged = 0
        for i, table in enumerate(work.stream(shard_rows)):
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            blob = sink.getvalue()
            staged += blob.size
            refs.append(
                ray.put(
                    pa.table(
                        {
                            "shard": pa.array([i], pa.int64()),
                            "parquet": pa.array([blob.to_pybytes()], pa.binary()),
                        }
                    )
                )
            )
        t_staged = time.perf_counter()
        remote: dict[str, Any] = {"num_cpus": spec.cpus_per_worker}
        if spec.gpus_per_worker:
            remote["num_gpus"] = spec.gpus_per_worker
        # torch threads per actor: its CPUs (not the driver's --threads)
        threads = None if spec.gpus_per_worker else max(1, int(spec.cpus_per_worker))
        ds = ray.data.from_arrow_refs(refs).map_batches(
            _EncodeActor,
            fn_constructor_kwargs={
                "spec": work.spec.model_dump(),
                "root": str(work.root),
                "device": work.device,
                "threads": threads,
                "fingerprint": work.fingerprint,
            },
            batch_size=1,  # one shard per call: one encode call per shard
            batch_format="pyarrow",
            # one shard at a time per actor: a shard waits for a free actor
            # instead of queueing behind a busy one while another is idle
            compute=ActorPoolStrategy(
                size=min(spec.workers, len(refs)), max_tasks_in_flight_per_actor=1
            ),
            **remote,
        )
        per_worker: dict[str, dict] = {}
        results = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            first = self._commit_all(work, results, stats, per_worker)
        finally:
            # stops the streaming executor (and frees the actors) at once when a
            # commit failed or the run was interrupted; a no-op once it finished
            results.close()
        end = time.perf_counter()
        workers = sorted(per_worker.values(), key=lambda w: w["worker"])
        for w in workers:
            w["texts_per_s"] = round(w["texts"] / w["seconds"], 1) if w["seconds"] > 0 else None
        devices = sorted({w["device"] for w in workers})
        n = len(workers)
        stats.device = f"ray ({n} worker{'s' if n != 1 else ''}, {', '.join(devices)})"
        rates = [w["texts_per_s"] for w in workers if w["texts_per_s"]]
        stats.texts_per_s = round(sum(rates), 1) if rates else None
        stats.extra = {
            "shards": len(refs),
            "staged_mb": round(staged / 1e6, 2),
            # connecting (or starting a local Ray) apart from staging the shards
            "connect_s": round(t_connected - t0, 3),
            "stage_s": round(t_staged - t_connected, 3),
            "startup_s": round((first or end) - t0, 3),
            "per_worker": [
                {
                    "worker": w["worker"],
                    "device": w["device"],
                    "texts": w["texts"],
                    "texts_per_s": w["texts_per_s"],
                }
                for w in workers
            ],
        }
        return stats

    @staticmethod
    def _commit_all(work: EmbedWork, results, stats: EmbedStats, per_worker: dict) -> float | None:
        """Commit each vector shard as it comes back (one transaction each).
        Returns when the first one came back."""
        import pyarrow as pa

        done = np.zeros(work.todo + 1, dtype=bool)  # rn committed (a retried shard may come twice)
        first = None
        while True:
            try:
                out = next(results)
            except StopIteration:
                return first
            except Exception as exc:
                raise _failed(exc, stats.embedded) from exc
            if first is None:
                first = time.perf_counter()
            rn = arrow_numpy(out.column("rn").combine_chunks(), np.int64)
            fresh = ~done[rn]
            if not fresh.all():
                out = out.filter(pa.array(fresh))
                rn = rn[fresh]
            if not out.num_rows:
                continue
            vec = out.column("vector").combine_chunks()
            dim = vec.type.list_size
            vecs = arrow_matrix(vec, dim)
            work.commit(out.column("text_hash").to_pylist(), vecs)  # one transaction
            done[rn] = True
            stats.embedded += out.num_rows
            if work.progress is not None:
                work.progress.advance(out.num_rows)
            _account(per_worker, out)

    # ------------------------------------------------------------------ assignment
    def predict(
        self, fitted: Fitted, chunks: Iterable[tuple[Any, list, np.ndarray]]
    ) -> Iterator[tuple[Any, np.ndarray, np.ndarray, np.ndarray]]:
        """Each chunk on a Ray task, at most 2 x workers in flight; results in
        the order they finish."""
        ray = connect(self.spec, gpus=0)  # assignment tasks reserve CPUs only
        task = ray.remote(_predict_task).options(num_cpus=self.spec.cpus_per_worker)
        fitted_ref = ray.put(fitted)
        window = max(2, 2 * self.workers)
        inflight: dict[Any, Any] = {}
        it = iter(chunks)
        more = True
        while True:
            while more and len(inflight) < window:
                try:
                    tag, blocks, keys = next(it)
                except StopIteration:
                    more = False
                    break
                inflight[task.remote(fitted_ref, blocks, keys)] = tag
            if not inflight:
                return
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                tag = inflight.pop(ref)
                try:
                    labels, dist, conf = ray.get(ref)
                except Exception as exc:
                    cause = _root_cause(exc)
                    if cause is not None:
                        raise cause from exc
                    raise
                yield tag, labels, dist, conf


def _account(per_worker: dict[str, dict], out) -> None:
    """Add a committed block's shards to their workers' counts and encode time."""
    import pyarrow.compute as pc

    shards = out.column("shard").to_numpy()
    uniq, first, counts = np.unique(shards, return_index=True, return_counts=True)
    workers = pc.take(out.column("worker"), first).to_pylist()
    devices = pc.take(out.column("device"), first).to_pylist()
    seconds = out.column("seconds").to_numpy()[first]
    for w, d, s, n in zip(workers, devices, seconds, counts):
        entry = per_worker.setdefault(w, {"worker": w, "device": d, "texts": 0, "seconds": 0.0})
        entry["texts"] += int(n)
        entry["seconds"] += float(s)
