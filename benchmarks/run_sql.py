#!/usr/bin/env python3
"""SQL stage overhead: segtool vs the same SQL run directly in DuckDB.

Generates examples/ecommerce data at --users (default 1,000,000 users,
~10M events), copies the example project next to it, and times:

  validate   `segtool validate` as a subprocess (interpreter start included)
  compile    `segtool compile --samples 0`
  run SQL    `segtool run -s kind:model` (models only, one transaction, key checks)
  plain      the very SQL segtool ran (target/run/*.sql) executed in topological
             order with duckdb.connect() in a fresh database file

The figure is run SQL / plain (goal: under 1.10).

    python benchmarks/run_sql.py --users 1000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ecommerce"


def sh(*args: str, cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return time.perf_counter() - t0


def plain_duckdb(project: Path, db: Path) -> float:
    import duckdb

    manifest = json.loads((project / "target/manifest.json").read_text())
    models = [n for n in manifest["nodes"].values() if n["kind"] == "model"]
    t0 = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute(f"SET file_search_path = '{project}'")
    con.execute("SET threads = 2")
    for n in models:  # manifest order is topological
        sql = (project / "target/run" / n["path"]).read_text()
        mat = "VIEW" if n["materialized"] == "view" else "TABLE"
        con.execute(f'CREATE OR REPLACE {mat} "main"."{n["name"]}" AS {sql}')
    con.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep data here (default: a temp dir)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segtool-bench-"))
    project = work / "project"
    if project.exists():
        shutil.rmtree(project / "target", ignore_errors=True)
    else:
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "target"))
    data = project / "data"
    if not (data / "users.parquet").exists():
        t = sh(
            sys.executable,
            str(EXAMPLE / "generate.py"),
            "--users",
            str(args.users),
            "--out",
            str(data),
            "--seed",
            "42",
        )
        print(f"generated {args.users:,} users in {t:.1f}s")

    segtool = [sys.executable, "-m", "segtool"]
    val = min(sh(*segtool, "validate", "--project-dir", str(project)) for _ in range(args.repeat))
    comp = min(
        sh(*segtool, "compile", "--samples", "0", "--project-dir", str(project))
        for _ in range(args.repeat)
    )
    runs, plains = [], []
    for i in range(args.repeat):
        shutil.rmtree(project / "target", ignore_errors=True)
        runs.append(sh(*segtool, "run", "-s", "kind:model", "-q", "--project-dir", str(project)))
        db = work / f"plain{i}.duckdb"
        db.unlink(missing_ok=True)
        plains.append(plain_duckdb(project, db))
        db.unlink(missing_ok=True)
    run, plain = min(runs), min(plains)
    import duckdb

    con = duckdb.connect(str(project / "target/segtool.duckdb"), read_only=True)
    con.execute(f"SET file_search_path = '{project}'")  # views read data/ relative to the project
    users = con.execute("select count(*) from user_features").fetchall()[0][0]
    events = con.execute("select count(*) from stg_events").fetchall()[0][0]
    con.close()
    print(f"\nexamples/ecommerce: {users:,} users, {events:,} events, best of {args.repeat}\n")
    print(f"{'step':<34}{'seconds':>10}")
    print(f"{'segtool validate (process)':<34}{val:>10.2f}")
    print(f"{'segtool compile (process)':<34}{comp:>10.2f}")
    print(f"{'segtool run -s kind:model':<34}{run:>10.2f}")
    print(f"{'same SQL, plain DuckDB':<34}{plain:>10.2f}")
    print(f"{'ratio run / plain':<34}{run / plain:>10.3f}")
    print(
        "\n(segtool run includes interpreter start, state, one transaction, key checks; plain is in-process)"
    )


if __name__ == "__main__":
    main()
