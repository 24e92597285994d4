#!/usr/bin/env python3
"""The embedding stage on a local target and on a Ray target, same machine.

Builds a project of --n users, each with a synthetic shopper story (a
shorter variant of the texts of benchmarks/embed.py), and for each encoder runs
`segtool run -s +embedding.story.ENCODER` on an empty database twice: on the
`dev` target (executor local) and on the `ray` target (executor ray,
--workers actors of --cpus-per-worker CPUs each, the default batch size).
Both runs happen in this process, on a Ray instance started once at the
start (its start is timed apart: a cluster that is already up does not pay
it). The stage time is the embedding step's `seconds` in run_results.json:
reading the work set, encoding, committing every vector; for Ray also
staging the shards, starting the actors and loading the model in each.

    ratio = ray stage seconds / local stage seconds   (the overhead of Ray on one machine)

With --assign, the stored k-means fit of a segmentation on the hashing
vectors assigns every user again through executors.predict, in chunks of
ASSIGN_CHUNK users: loading the blocks from DuckDB, predicting here, and
predicting on Ray tasks (blocks shipped through the object store).

    python benchmarks/ray_embed.py                           # 20,000 users, hashing + MiniLM 2,000
    python benchmarks/ray_embed.py --n 5000 --model-n 500 --repeat 1 --max-load 99   # smoke test
    python benchmarks/ray_embed.py --n 200000 --assign --skip minilm

Not a test. Numbers are only meaningful on a quiet machine: before each
timed run the script waits (60 s at a time, up to --max-wait) for the
1-minute load average to drop below --max-load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _quiet import wait_quiet  # benchmarks/_quiet.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CATEGORIES = [
    "running shoes", "kitchen gadgets", "organic snacks", "board games", "skin care",
    "phone accessories", "garden tools", "baby clothes", "vinyl records", "camping gear",
]  # fmt: skip
SENTENCES = [
    "Shopper from {city} who first ordered {m} months ago.",
    "Placed {n} orders in the last {d} days, mostly {c1} and {c2}.",
    "Average basket is {b} euros; the largest order was {B} euros for {c1}.",
    "Used a discount code on {p}% of orders and abandoned {a} carts this quarter.",
    "Browses {c2} often but has never bought from that category.",
    "Left a {s}-star review mentioning fast delivery and good packaging.",
]
CITIES = ["Lyon", "Berlin", "Austin", "Osaka", "Leeds", "Pune"]


def stories(n: int, seed: int = 7) -> list[str]:
    """Deterministic shopper stories of 2-6 sentences (about 25-90 tokens)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            " ".join(
                rng.choice(SENTENCES).format(
                    city=rng.choice(CITIES),
                    m=rng.randint(1, 60),
                    n=rng.randint(1, 40),
                    d=rng.choice([30, 60, 90]),
                    c1=rng.choice(CATEGORIES),
                    c2=rng.choice(CATEGORIES),
                    b=rng.randint(10, 300),
                    B=rng.randint(300, 900),
                    p=rng.randint(0, 90),
                    a=rng.randint(0, 9),
                    s=rng.randint(1, 5),
                )  # fmt: skip
                for _ in range(rng.randint(2, 6))
            )
        )
    return out


def write_project(
    root: Path, n: int, model_n: int, workers: int, cpus: float, batch_size: int | None
) -> None:
    import csv

    (root / "data").mkdir(parents=True, exist_ok=True)
    with open(root / "data" / "users.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "story", "spend"])
        for i, s in enumerate(stories(n), 1):
            w.writerow([i, s, (i * 37) % 500])
    files = {
        "segtool_project.yml": "name: ray_bench\nentity: {name: user, key: user_id}\n",
        "profiles.yml": (
            "targets:\n"
            "  dev: {database: target/local.duckdb}\n"
            "  ray:\n"
            "    database: target/ray.duckdb\n"
            f"    executor: {{kind: ray, workers: {workers}, cpus_per_worker: {cpus}"
            + (f", batch_size: {batch_size}" if batch_size else "")
            + "}\n"
        ),
        "models/sources.yml": (
            "sources:\n  - name: raw\n    tables:\n      - name: users\n        path: data/users.csv\n"
        ),
        "models/users.sql": "{{ config(materialized='table') }}\nselect * from {{ source('raw', 'users') }}\n",
        "models/some_users.sql": (
            "{{ config(materialized='table') }}\n"
            f"select * from {{{{ ref('users') }}}} where user_id <= {model_n}\n"
        ),
        "templates/story.j2": "{{ story }}\n",
        "templates/story_small.j2": "{{ story }}\n",
        "segments/segments.yml": """
features:
  - name: spend
    model: users
    columns: {spend: {transform: log1p}}
texts:
  - {name: story, model: users, template: story.j2, max_chars: 2000}
  - {name: small, model: some_users, template: story_small.j2, max_chars: 2000}
encoders:
  - {name: hashing, kind: hashing, dim: 512}
  - name: minilm
    kind: transformers
    model: sentence-transformers/all-MiniLM-L6-v2
    device: cpu
segmentations:
  - name: clusters
    inputs:
      - {embedding: {text: story, encoder: hashing}}
      - {features: spend, weight: 0.2}
    reduce: {method: pca, n_components: 16}
    cluster: {method: kmeans, k: 8, seed: 1}
    labels: {keywords: 0}
  - name: small_clusters
    inputs:
      - {embedding: {text: small, encoder: minilm}}
    cluster: {method: kmeans, k: 4, seed: 1}
    labels: {keywords: 0}
""",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def run_stage(root: Path, target: str, node: str) -> dict:
    """`segtool run --target T -s +NODE` on an empty database, in this process;
    the embedding step's result."""
    from segtool.cli import main

    db = root / "target" / ("local.duckdb" if target == "dev" else "ray.duckdb")
    for p in (db, db.with_suffix(".duckdb.wal"), db.with_suffix(".duckdb.lock")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    main.main(
        ["run", "--project-dir", str(root), "--target", target, "-s", f"+{node}"],
        standalone_mode=False,
    )
    wall = time.perf_counter() - t0
    results = json.loads((root / "target" / "run_results.json").read_text())["results"]
    step = next(r for r in results if r["unique_id"] == node)
    return {"wall": wall, "seconds": step["seconds"], **step["detail"]}


def bench_assign(root: Path, workers: int, cpus: float) -> dict:
    """Every user of `clusters` assigned again with its stored fit, in
    ASSIGN_CHUNK chunks: load only, load + local predict, load + Ray predict."""
    import duckdb

    from segtool.api import Project
    from segtool.encoders.builder import Encoders
    from segtool.execute.executors import Fitted, executor_for, input_chunks
    from segtool.execute.segment import store
    from segtool.project.loader import load_project
    from segtool.project.specs import ExecutorSpec

    project = Project(load_project(root))
    loaded = project.loaded
    encoders = Encoders(loaded)
    seg = loaded.segmentations["clusters"]
    con = duckdb.connect(str(root / "target" / "local.duckdb"), read_only=True)
    n = con.execute("select count(*) from segments.clusters").fetchone()[0]
    users = "(SELECT user_id, row_number() OVER (ORDER BY user_id) AS __ord FROM segments.clusters)"
    fitted = Fitted.of("clusters", store.active_fit(con, "clusters"))

    def chunks():
        for lo, got in input_chunks(loaded, encoders.fingerprint, con, seg, users, n):
            yield lo, got.blocks, got.keys

    out = {"users": n}
    t = time.perf_counter()
    for _ in chunks():
        pass
    out["load_s"] = time.perf_counter() - t
    for name, ex in (
        ("local", executor_for(None)),
        ("ray", executor_for(ExecutorSpec(kind="ray", workers=workers, cpus_per_worker=cpus))),
    ):
        t = time.perf_counter()
        got = sum(len(p[1]) for p in ex.predict(fitted, chunks()))
        assert got == n
        out[f"{name}_s"] = time.perf_counter() - t
    con.close()
    return out


def bench_storage(n: int, dim: int, work: Path) -> list[tuple[str, int, float]]:
    """Bytes per cached vector and a full read back into numpy, for n unit
    vectors of `dim` float32 (dense, like a transformer's) keyed by 32-hex
    text hashes, in the layouts the vector cache could use."""
    import hashlib

    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    hashes = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(n)]
    flat = pa.array(vecs.reshape(-1))
    fixed = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table(
        {"text_hash": hashes, "vector": fixed, "run_id": pa.array([1] * n, pa.int32())}
    )
    out = []
    for name, sql_type in (
        (f"DuckDB FLOAT[{dim}] (the cache today)", f"FLOAT[{dim}]"),
        ("DuckDB FLOAT[] lists", "FLOAT[]"),
    ):
        path = work / f"storage_{sql_type.replace('[', '_').replace(']', '')}.duckdb"
        path.unlink(missing_ok=True)
        con = duckdb.connect(str(path))
        con.execute(f"CREATE TABLE v (text_hash VARCHAR, vector {sql_type}, run_id INTEGER)")
        con.register("t", table)
        con.execute(f"INSERT INTO v SELECT text_hash, vector::{sql_type}, run_id FROM t")
        con.unregister("t")
        con.execute("CHECKPOINT")
        con.close()
        size = path.stat().st_size
        con = duckdb.connect(str(path), read_only=True)
        t = time.perf_counter()
        got = 0
        from segtool.state.frames import arrow_batches

        for batch in arrow_batches(con.sql("SELECT vector FROM v"), 65_536):
            got += len(batch.column(0).flatten().to_numpy(zero_copy_only=False)) // dim
        read = time.perf_counter() - t
        con.close()
        assert got == n
        out.append((name, size, read))
    for name, vec, codec in (
        ("Parquet float32, zstd", fixed, "zstd"),
        ("Parquet float32, uncompressed", fixed, "none"),
        (
            "Parquet float16, zstd",
            pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1).astype(np.float16)), dim),
            "zstd",
        ),
    ):
        path = work / f"storage_{name.split(',')[0].replace(' ', '_')}_{codec}.parquet"
        pq.write_table(table.set_column(1, "vector", vec), path, compression=codec)
        t = time.perf_counter()
        pq.read_table(path, columns=["vector"]).column(0).combine_chunks().flatten().to_numpy()
        out.append((name, path.stat().st_size, time.perf_counter() - t))
    out.append((f"raw float32 ({dim} x 4 bytes)", n * dim * 4, float("nan")))
    return out


def bench_commits(n: int, dim: int, chunk: int, work: Path) -> float:
    """Vectors per second the driver commits into the cache: state.vectors.insert
    of `chunk` vectors at a time, each its own transaction, as the embed stage
    does with every shard that comes back."""
    import duckdb
    import numpy as np

    from segtool.state import vectors
    from segtool.state.db import CHECKPOINT_THRESHOLD

    path = work / "commits.duckdb"
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")  # as a run sets it
    con.execute("CREATE SCHEMA _segtool")
    con.execute(vectors.REGISTRY_DDL)
    table = vectors.ensure(con, "f" * 64, encoder="bench", kind="hashing", dim=dim, run_id=1)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((chunk, dim), dtype=np.float32)
    t = time.perf_counter()
    for lo in range(0, n, chunk):
        hashes = [f"{i:032x}" for i in range(lo, lo + chunk)]
        vectors.insert(con, table, hashes, block, 1)
    con.close()  # the checkpoint a run's close does, counted
    seconds = time.perf_counter() - t
    return (n // chunk) * chunk / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="users (hashing encoder)")
    ap.add_argument("--model-n", type=int, default=2_000, help="users embedded with MiniLM")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="best of N per cell")
    ap.add_argument("--skip", default="", help="comma list: hashing, minilm")
    ap.add_argument("--assign", action="store_true", help="also time assignment (local vs Ray)")
    ap.add_argument(
        "--storage", type=int, default=0, help="also measure the vector cache's size: N vectors"
    )
    ap.add_argument("--dim", type=int, default=384, help="vector size for --storage")
    ap.add_argument("--batch-size", type=int, default=None, help="the ray target's batch_size")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--max-wait", type=float, default=900)
    ap.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segtool-ray-bench-"))
    root = work / "project"
    shutil.rmtree(root, ignore_errors=True)
    write_project(root, args.n, args.model_n, args.workers, args.cpus_per_worker, args.batch_size)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    t = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_init = time.perf_counter() - t
    cpus = ray.cluster_resources().get("CPU", 0)
    print(f"ray.init (a local instance, {cpus:g} CPUs): {ray_init:.1f} s", flush=True)

    rows = []
    raw: dict = {"ray_init_s": ray_init, "args": {k: str(v) for k, v in vars(args).items()}}
    for enc, text in (("hashing", "story"), ("minilm", "small")):
        if enc in skip:
            continue
        node = f"embedding.{text}.{enc}"
        best: dict[str, dict] = {}
        for r in range(args.repeat):
            for target in ("dev", "ray"):
                load = wait_quiet(args.max_load, args.max_wait)
                got = run_stage(root, target, node)
                got["load"] = load
                raw.setdefault(enc, []).append({"target": target, "round": r, **got})
                if target not in best or got["seconds"] < best[target]["seconds"]:
                    best[target] = got
                print(
                    f"  {enc:8} {target:4} round {r + 1}: stage {got['seconds']:.2f} s "
                    f"({got['embedded']:,} texts), load {load:.2f}",
                    flush=True,
                )
        lo, ra = best["dev"], best["ray"]
        rows.append(
            (
                enc,
                lo["embedded"],
                lo["seconds"],
                lo["embedded"] / lo["seconds"],
                ra["seconds"],
                ra["embedded"] / ra["seconds"],
                ra["seconds"] / lo["seconds"],
                ra.get("startup_s"),
                ra.get("stage_s"),
                ra.get("texts_per_s"),
            )
        )
    print()
    print(
        "| encoder | texts | local stage s | local texts/s | ray stage s | ray texts/s "
        "| ray / local | ray: to first vectors s | ray: staging s | ray: actors' encode texts/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for enc, n, ls, lr, rs, rr, ratio, first, staged, enc_rate in rows:
        print(
            f"| {enc} | {n:,} | {ls:.2f} | {lr:,.0f} | {rs:.2f} | {rr:,.0f} | {ratio:.2f}x "
            f"| {first:.2f} | {staged:.2f} | {enc_rate:,.0f} |"
        )
    if args.assign:
        if "hashing" in skip:
            run_stage(root, "dev", "embedding.story.hashing")
        from segtool.cli import main as cli

        cli.main(
            ["run", "--project-dir", str(root), "-s", "+segmentation.clusters"],
            standalone_mode=False,
        )
        wait_quiet(args.max_load, args.max_wait)
        a = bench_assign(root, args.workers, args.cpus_per_worker)
        raw["assign"] = a
        n = a["users"]
        print()
        print(
            "| assignment of | load blocks s | load + local predict s | load + Ray predict s | ray / local |"
        )
        print("|---|---:|---:|---:|---:|")
        print(
            f"| {n:,} users (hashing 512-d + 1 feature, PCA 16, k-means 8) | {a['load_s']:.2f} "
            f"| {a['local_s']:.2f} ({n / a['local_s']:,.0f}/s) | {a['ray_s']:.2f} ({n / a['ray_s']:,.0f}/s) "
            f"| {a['ray_s'] / a['local_s']:.2f}x |"
        )
    if args.storage:
        rows = bench_storage(args.storage, args.dim, work)
        raw["storage"] = rows
        print()
        print(f"| {args.storage:,} vectors of {args.dim} floats | bytes per vector | full read s |")
        print("|---|---:|---:|")
        for name, size, read in rows:
            print(f"| {name} | {size / args.storage:,.0f} | {read:.2f} |")
        rate = bench_commits(args.storage, args.dim, 2048, work)
        raw["commits_per_s"] = rate
        print(f"\ncommits into the cache (2,048 vectors a transaction): {rate:,.0f} vectors/s")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    ray.shutdown()


if __name__ == "__main__":
    main()
