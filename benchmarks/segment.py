#!/usr/bin/env python3
"""Whole-run timings of examples/ecommerce: full, incremental, --refit, and a
hand-written scikit-learn script for the same clustering.

For each --users size, a copy of examples/ecommerce is made under --workdir
with the `behaviour` segmentation on --encoder (default `fast`, the example's
static encoder distilled from all-MiniLM-L6-v2; `hashing` for a weight-free
run), and:

  full        period-1 data, empty target/: `segtool run`
  incremental period-2 data (`generate.py --period 2` into the same folder:
              ~5% new users, ~1% changed, ~0.2% deleted), from the state the
              full run left: `segtool run`
  --refit     `segtool run --refit` on the period-2 data
  no-op       `segtool run` again, nothing changed
  hand-written  what a user would write instead of the `behaviour` node:
              read user_features (rfm columns) and the cached hashing vectors
              from the DuckDB file, log1p + StandardScaler, block weights as
              segtool's (sqrt(w / mean squared row norm)), PCA(16), KMeans(6,
              seed 7, n_init="auto"), write a (user_id, segment_id) table back

Wall time is the `segtool run` process (interpreter start included), peak
RSS its largest resident set (sampled from /proc every 0.2 s); stage seconds
come from target/run_results.json: models (all SQL models), texts
(rendering), embeddings, one column per segmentation. The no-op rerun and
the incremental run are reported as fractions of the full run (goals: 3% and
10%). A static encoder is distilled before the first timed run (once per
machine, into $SEGTOOL_CACHE), so no run pays for it.

Every cell is the best of --repeat runs (the incremental run restarts from a
copy of the full run's state each time). Before each timed step the script
waits (up to --max-wait s, 60 s at a time) until the 1-minute load average is
under --max-load: the numbers are only meaningful on a quiet machine.

    python benchmarks/segment.py --users 100000,1000000 --repeat 2
    python benchmarks/segment.py --users 20000 --repeat 1 --max-load 99   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _quiet import LOADS, wait_quiet  # benchmarks/_quiet.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ecommerce"
GENERATE = EXAMPLE / "generate.py"
# the console script, bound to this interpreter
SEGTOOL = [sys.executable, "-m", "segtool"]
# as on a user's machine: Python caches segtool's compiled modules (some
# sandboxes set PYTHONDONTWRITEBYTECODE, which recompiles them in every run:
# about 0.12 s of a run here)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
RFM = {  # column -> transform, as features `rfm` in segments.yml
    "recency_days": "log1p",
    "orders": "log1p",
    "revenue": "log1p",
    "avg_order_value": "log1p",
    "n_categories": "none",
    "views_lookback": "log1p",
}


# ----------------------------------------------------------------------------- helpers


def sh(args: list[str]) -> float:
    """Run a command (exit on failure); its wall seconds."""
    return sh_rss(args)[0]


def generate(data: Path, users: int, period: int) -> float:
    return sh(
        [
            sys.executable,
            str(GENERATE),
            "--users",
            str(users),
            "--out",
            str(data),
            "--seed",
            "42",
            "--period",
            str(period),
        ]
    )


ENCODER = "fast"
MEMORY_LIMIT: str | None = None  # the target's DuckDB memory_limit (None: DuckDB's default)


def make_project(dest: Path) -> None:
    """Copy the example (no data, no target) with behaviour on ENCODER."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("data", "target", "__pycache__"))
    path = dest / "segments" / "segments.yml"
    doc = yaml.safe_load(path.read_text())
    for seg in doc["segmentations"]:
        if seg["name"] == "behaviour":
            for inp in seg["inputs"]:
                if "embedding" in inp:
                    inp["embedding"]["encoder"] = ENCODER
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if MEMORY_LIMIT:
        profiles = dest / "profiles.yml"
        doc = yaml.safe_load(profiles.read_text())
        for target in doc["targets"].values():
            target["memory_limit"] = MEMORY_LIMIT
        profiles.write_text(yaml.safe_dump(doc, sort_keys=False))


def sh_rss(args: list[str]) -> tuple[float, float]:
    """Run a command; (wall seconds, peak RSS in MB, sampled from /proc)."""
    import threading

    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    peak = [0]

    def sample() -> None:
        while p.poll() is None:
            try:
                for line in open(f"/proc/{p.pid}/status"):
                    if line.startswith("VmRSS"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = p.communicate()
    wall = time.perf_counter() - t0  # the process's; the sampler may still sleep up to 0.2 s
    t.join()
    if p.returncode != 0:
        sys.exit(
            f"{' '.join(map(str, args))} failed (exit {p.returncode}):\n{out[-4000:]}\n{err[-4000:]}"
        )
    return wall, peak[0] / 1024


def segtool_run(project: Path, *extra: str) -> dict:
    # the database was just copied (or the data just generated): its pages
    # are still dirty in the page cache, and the run's first fsync (DuckDB's
    # checkpoint) would flush those too (~0.5 s at 200k users). A user's
    # database is not a file written a second ago: flush before timing.
    os.sync()
    wall, rss = sh_rss([*SEGTOOL, "run", "-q", "--project-dir", str(project), *extra])
    res = json.loads((project / "target" / "run_results.json").read_text())
    if res["status"] != "success":
        sys.exit(f"run failed: {res}")
    stages: dict[str, float] = {"models": 0.0, "texts": 0.0, "embeddings": 0.0}
    for r in res["results"]:
        kind = r["kind"]
        if kind == "model":
            stages["models"] += r["seconds"]
        elif kind == "text":
            stages["texts"] += r["seconds"]
        elif kind == "embedding":
            stages["embeddings"] += r["seconds"]
        elif kind == "segmentation":
            stages["seg:" + r["unique_id"].split(".", 1)[1]] = r["seconds"]
    segs = res["summary"].get("segmentations", {})
    return {
        "wall": wall,
        "rss_mb": rss,
        "elapsed": res["elapsed_seconds"],
        "stages": stages,
        "segs": segs,
        "summary": res["summary"],
    }


def best(runs: list[dict]) -> dict:
    """Fastest run by wall time; each stage is the fastest over the runs too."""
    b = dict(min(runs, key=lambda r: r["wall"]))
    b["stages"] = {k: min(r["stages"][k] for r in runs) for k in runs[0]["stages"]}
    return b


# ----------------------------------------------------------------------------- the hand-written script


def hand_written(db: Path, out_table: str = "hand_behaviour") -> dict:
    """The `behaviour` clustering as a user would write it without segtool."""
    import duckdb
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    con = duckdb.connect(str(db))
    cols = ", ".join(f"f.{c}" for c in RFM)
    ((vectors,),) = con.execute(  # the encoder's vector table (one per encoder fingerprint)
        "SELECT table_name FROM _segtool.encoders ORDER BY last_run DESC LIMIT 1"
    ).fetchall()
    tbl = con.sql(
        f"""SELECT f.user_id, {cols}, e.vector
        FROM user_features f
        JOIN _segtool.texts__shopper_story t USING (user_id)
        JOIN _segtool."{vectors}" e ON e.text_hash = t.text_hash
        ORDER BY f.user_id"""
    ).to_arrow_table()
    keys = tbl.column("user_id").to_numpy()
    feats = np.column_stack([tbl.column(c).to_numpy().astype(np.float64) for c in RFM])
    vec = tbl.column("vector").combine_chunks()
    emb = vec.flatten().to_numpy().astype(np.float32).reshape(len(vec), -1)
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    for j, tr in enumerate(RFM.values()):
        if tr == "log1p":
            feats[:, j] = np.log1p(feats[:, j])
    f = StandardScaler().fit_transform(feats)
    # block weights as segtool: each block contributes `weight` to the squared distance
    wf = np.sqrt(0.5 / np.mean(np.sum(f**2, axis=1)))
    we = np.sqrt(1.0 / np.mean(np.sum(emb.astype(np.float64) ** 2, axis=1)))
    X = np.hstack([we * emb, (wf * f).astype(np.float32)])
    Z = PCA(n_components=16, random_state=7).fit_transform(X)
    labels = KMeans(n_clusters=6, random_state=7, n_init="auto").fit_predict(Z)
    t_fit = time.perf_counter() - t1

    t2 = time.perf_counter()
    import pyarrow as pa

    con.register("__hand", pa.table({"user_id": keys, "segment_id": labels.astype(np.int32)}))
    con.execute(f"CREATE OR REPLACE TABLE {out_table} AS SELECT * FROM __hand")
    con.close()
    t_write = time.perf_counter() - t2
    return {
        "load": t_load,
        "fit": t_fit,
        "write": t_write,
        "total": t_load + t_fit + t_write,
        "keys": keys,
        "labels": labels,
    }


def agreement(db: Path, keys, labels, truth: Path) -> dict:
    """ARI of segtool's `behaviour` vs the hand-written labels, and of each
    against the planted groups (data/_truth.csv): two k-means runs on weakly
    separated groups can disagree with each other while finding the groups
    equally well, so the truth says which one is better."""
    import csv

    import duckdb
    from sklearn.metrics import adjusted_rand_score

    con = duckdb.connect(str(db), read_only=True)
    seg = dict(con.execute("SELECT user_id, segment_id FROM segments.behaviour").fetchall())
    con.close()
    with open(truth, newline="") as fh:
        planted = {int(r["user_id"]): r["planted_group"] for r in csv.DictReader(fh)}
    rows = [
        (seg[k], int(lab), planted.get(k))
        for k, lab in zip(keys.tolist(), labels.tolist())
        if k in seg
    ]
    known = [r for r in rows if r[2] is not None]
    return {
        "vs_hand": float(adjusted_rand_score([r[0] for r in rows], [r[1] for r in rows])),
        "segtool_truth": float(adjusted_rand_score([r[2] for r in known], [r[0] for r in known])),
        "hand_truth": float(adjusted_rand_score([r[2] for r in known], [r[1] for r in known])),
    }


# ----------------------------------------------------------------------------- main


def bench_size(
    n: int, work: Path, repeat: int, repeat_full: int, max_load: float, max_wait: float
) -> dict:
    base = work / f"users_{n}"
    proj = base / "project"
    snap = base / "target_after_full"
    make_project(proj)
    data = proj / "data"
    print(f"\n== {n:,} users  (work dir {base})", flush=True)
    t = generate(data, n, 1)
    print(f"  generated period 1 in {t:.1f}s", flush=True)
    # distil a static encoder now (once per machine), so no timed run pays for it
    sh([*SEGTOOL, "run", "-q", "--project-dir", str(proj), "-s", "+lifecycle"])
    prep = (
        "import sys; from segtool import Project; "
        "p = Project.load(sys.argv[1]); e = p.encoders(); [e.prepare(n) for n in p.loaded.encoders]"
    )
    t = sh([sys.executable, "-c", prep, str(proj)])
    print(f"  encoders ready in {t:.1f}s", flush=True)

    # 1. full runs
    fulls = []
    for i in range(repeat_full):
        shutil.rmtree(proj / "target", ignore_errors=True)
        wait_quiet(max_load, max_wait)
        fulls.append(segtool_run(proj))
        print(f"  full run {i + 1}/{repeat_full}: {fulls[-1]['wall']:.1f}s", flush=True)
    if snap.exists():
        shutil.rmtree(snap)
    shutil.copytree(proj / "target", snap)

    # 2. period 2, incremental runs from the full run's state
    t = generate(data, n, 2)
    print(f"  generated period 2 in {t:.1f}s", flush=True)
    incs = []
    for i in range(repeat):
        shutil.rmtree(proj / "target")
        shutil.copytree(snap, proj / "target")
        # a real run starts from a database its last run wrote and synced; a
        # fresh copy's dirty pages would be flushed by this run's checkpoint
        # (measured: +0.45 s of 4.3 at 200k)
        os.sync()
        wait_quiet(max_load, max_wait)
        incs.append(segtool_run(proj))
        print(f"  incremental run {i + 1}/{repeat}: {incs[-1]['wall']:.1f}s", flush=True)

    # 3. --refit on period 2
    refits = []
    for i in range(repeat):
        wait_quiet(max_load, max_wait)
        refits.append(segtool_run(proj, "--refit"))
        print(f"  --refit run {i + 1}/{repeat}: {refits[-1]['wall']:.1f}s", flush=True)

    # no-op: nothing changed since the last run
    noops = []
    for _ in range(repeat):
        wait_quiet(max_load, max_wait)
        noops.append(segtool_run(proj))
    # 4. the hand-written script, on the same database (warm imports first)
    db = proj / "target" / "segtool.duckdb"
    hand_written(db)
    hands = []
    for _ in range(repeat):
        wait_quiet(max_load, max_wait)
        hands.append(hand_written(db))
    hand = min(hands, key=lambda h: h["total"])
    ari = agreement(db, hand["keys"], hand["labels"], proj / "data" / "_truth.csv")
    return {
        "n": n,
        "full": best(fulls),
        "inc": best(incs),
        "refit": best(refits),
        "noop": best(noops),
        "hand": hand,
        "ari_hand": ari,
        "repeat": repeat,
        "repeat_full": repeat_full,
    }


def fmt_table(results: list[dict]) -> str:
    stage_keys: list[str] = []
    for r in results:
        for run in ("full", "inc", "refit", "noop"):
            for k in r[run]["stages"]:
                if k not in stage_keys:
                    stage_keys.append(k)
    short = {k: k.replace("seg:", "") for k in stage_keys}
    head = (
        "| users | run | wall s | peak RSS MB | in-run s | "
        + " | ".join(short[k] for k in stage_keys)
        + " | behaviour action | assigned |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for run, label in (
            ("full", "full"),
            ("inc", "incremental (period 2)"),
            ("refit", "--refit (period 2)"),
            ("noop", "no-op rerun"),
        ):
            x = r[run]
            b = x["segs"].get("behaviour", {})
            cells = " | ".join(f"{x['stages'].get(k, 0):.2f}" for k in stage_keys)
            assigned = f"{b.get('assigned', 0):,} / {b.get('users', 0):,} ({b.get('assigned', 0) / max(1, b.get('users', 1)):.1%})"
            lines.append(
                f"| {r['n']:,} | {label} | {x['wall']:.1f} | {x['rss_mb']:.0f} | {x['elapsed']:.1f} | {cells} | {b.get('action', '')} | {assigned} |"
            )
    return "\n".join(lines)


def fmt_fractions(results: list[dict]) -> str:
    head = "| users | no-op / full (wall) | incremental / full: whole run (wall) | models | texts | embeddings | segmentations (all) | behaviour |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        f, i = r["full"], r["inc"]

        def seg_sum(x):
            return sum(v for k, v in x["stages"].items() if k.startswith("seg:"))

        def frac(a, b):
            return f"{a / b:.1%}" if b > 0 else "-"

        lines.append(
            f"| {r['n']:,} | {frac(r['noop']['wall'], f['wall'])} | {frac(i['wall'], f['wall'])} | {frac(i['stages']['models'], f['stages']['models'])} | "
            f"{frac(i['stages']['texts'], f['stages']['texts'])} | {frac(i['stages']['embeddings'], f['stages']['embeddings'])} | "
            f"{frac(seg_sum(i), seg_sum(f))} | {frac(i['stages'].get('seg:behaviour', 0), f['stages'].get('seg:behaviour', 0))} |"
        )
    return "\n".join(lines)


def fmt_hand(results: list[dict]) -> str:
    head = (
        "| users | segtool `behaviour` refit s | hand-written s (load + fit + write) | ratio segtool / hand | "
        "`segtool run --refit` wall s | ARI segtool vs hand | ARI vs planted groups: segtool / hand |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        h = r["hand"]
        s = r["refit"]["stages"].get("seg:behaviour", 0)
        lines.append(
            f"| {r['n']:,} | {s:.2f} | {h['total']:.2f} ({h['load']:.2f} + {h['fit']:.2f} + {h['write']:.2f}) | "
            f"{s / h['total']:.2f} | {r['refit']['wall']:.1f} | {r['ari_hand']['vs_hand']:.3f} | "
            f"{r['ari_hand']['segtool_truth']:.3f} / {r['ari_hand']['hand_truth']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--users", default="100000,1000000", help="comma-separated sizes (default 100000,1000000)"
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where projects and data go (default: a temp dir)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs per incremental/refit/no-op/hand cell; best shown",
    )
    ap.add_argument(
        "--repeat-full",
        type=int,
        default=1,
        help="full runs per size (each re-renders and re-embeds everything)",
    )
    ap.add_argument(
        "--max-load",
        type=float,
        default=1.5,
        help="wait for the 1-minute load average to drop below this",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=900,
        help="seconds to wait for a quiet machine before timing anyway",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    ap.add_argument(
        "--encoder",
        default="fast",
        help="encoder of `behaviour`: fast (static, distilled from MiniLM), hashing or minilm",
    )
    ap.add_argument(
        "--memory-limit",
        default=None,
        help="DuckDB memory_limit of the target (profiles.yml), e.g. 2GB; default: DuckDB's own (80%% of RAM)",
    )
    args = ap.parse_args()
    global ENCODER, MEMORY_LIMIT
    ENCODER = args.encoder
    MEMORY_LIMIT = args.memory_limit

    sizes = [int(s.replace("_", "")) for s in args.users.split(",") if s.strip()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segtool-bench-seg-"))
    work.mkdir(parents=True, exist_ok=True)
    results = [
        bench_size(n, work, args.repeat, args.repeat_full, args.max_load, args.max_wait)
        for n in sizes
    ]

    print(
        f"\nexamples/ecommerce, behaviour on the `{ENCODER}` encoder; {os.cpu_count()} CPU(s); "
        f"DuckDB memory_limit {MEMORY_LIMIT or 'default'}; "
        f"best of {args.repeat} (full runs: best of {args.repeat_full}); "
        f"1-min load at the start of the timed steps: {min(LOADS):.2f}-{max(LOADS):.2f}\n"
    )
    print("Stage seconds (from target/run_results.json; wall = the `segtool run` process)\n")
    print(fmt_table(results))
    print("\nIncremental run as a fraction of the full run\n")
    print(fmt_fractions(results))
    print(
        "\n`behaviour` clustering: segtool vs a hand-written DuckDB + scikit-learn script (period-2 data)\n"
    )
    print(fmt_hand(results))
    if args.json:
        for r in results:
            r["hand"] = {k: v for k, v in r["hand"].items() if k not in ("keys", "labels")}
        args.json.write_text(
            json.dumps(
                {"results": results, "loads": LOADS, "cpus": os.cpu_count()}, indent=1, default=str
            )
        )


if __name__ == "__main__":
    main()
