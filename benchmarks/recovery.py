#!/usr/bin/env python3
"""Planted-group recovery: do the example's segments find the six groups that
examples/ecommerce/generate.py plants (data/_truth.csv, planted_group), and
are they about what users buy rather than where they come from?

Generates --users users (default 5,000 and 20,000), copies examples/ecommerce
and runs it with these segmentations side by side (one `segtool run`; each
text is embedded once per encoder):

  behaviour          the example's `behaviour` as shipped (static encoder `fast`,
                     distilled from all-MiniLM-L6-v2, + rfm features, PCA 16, k=6)
  behaviour_hashing  the same inputs with the weight-free hashing encoder
  static_only        the static embedding alone, k-means k=6, no PCA (a plain baseline)
  rfm_only           the rfm features alone, k=6
  behaviour_minilm   (--minilm) the same with the MiniLM transformer: slow on a CPU

Per segmentation: adjusted Rand index (ARI) against the planted groups over
all users, over the three "RFM twins" (outdoor_enthusiasts, gamers,
home_cooks: same order/spend/recency laws, they differ only in *what* they
buy) and over the other three; and the strongest nuisance association: the
bias-corrected Cramér's V between the segments and `channel` / `country`
(generated independently of the groups, so any association is the
segmentation's doing).

The scores are computed here from the database (not by segtool), so the
same script measures an older checkout: --segtool-root points the runs at
another copy of the package (e.g. a `git worktree` of an earlier commit),
--template at another shopper_story.j2, --encoders at the encoders to compare.

    python benchmarks/recovery.py --users 5000,20000
    python benchmarks/recovery.py --users 20000 --template /tmp/old_story.j2   # an ablation
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

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ecommerce"
TWINS = ("outdoor_enthusiasts", "gamers", "home_cooks")
NUISANCE = ("channel", "country")


def variants(encoders: list[str], example: dict) -> list[dict]:
    shipped = next(s for s in example["segmentations"] if s["name"] == "behaviour")
    out = []
    for enc in encoders:
        seg = json.loads(json.dumps(shipped))
        seg["name"] = "behaviour" if enc == "fast" else f"behaviour_{enc}"
        for inp in seg["inputs"]:
            if "embedding" in inp:
                inp["embedding"]["encoder"] = enc
        seg.pop("tests", None)
        seg.pop("update", None)
        out.append(seg)
    if "fast" in encoders:
        out.append(
            {
                "name": "static_only",
                "inputs": [
                    {"embedding": {"text": "shopper_story", "encoder": "fast"}, "weight": 1.0}
                ],
                "reduce": {"method": "none"},
                "cluster": {"method": "kmeans", "k": 6, "seed": 7},
            }
        )
    out.append(
        {
            "name": "rfm_only",
            "inputs": [{"features": "rfm", "weight": 1.0}],
            "reduce": {"method": "none"},
            "cluster": {"method": "kmeans", "k": 6, "seed": 7},
        }
    )
    return out


def make_project(dest: Path, encoders: list[str], template: Path | None) -> list[str]:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("data", "target", "__pycache__"))
    if template is not None:
        shutil.copy(template, dest / "templates" / "shopper_story.j2")
    path = dest / "segments" / "segments.yml"
    doc = yaml.safe_load(path.read_text())
    known = {e["name"] for e in doc["encoders"]}
    encoders = [e for e in encoders if e in known]
    doc["segmentations"] = variants(encoders, doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [s["name"] for s in doc["segmentations"]]


def sh(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def cramers_v(labels: np.ndarray, values: np.ndarray) -> float:
    """Bias-corrected Cramér's V (Bergsma 2013), computed here so that an
    older segtool is measured the same way."""
    _, ri = np.unique(labels, return_inverse=True)
    _, ci = np.unique(values.astype(str), return_inverse=True)
    t = np.zeros((ri.max() + 1, ci.max() + 1))
    np.add.at(t, (ri, ci), 1)
    n = t.sum()
    r, c = t.shape
    if r < 2 or c < 2:
        return 0.0
    e = np.outer(t.sum(1), t.sum(0)) / n
    phi2 = ((t - e) ** 2 / e).sum() / n
    phi2c = max(0.0, phi2 - (r - 1) * (c - 1) / (n - 1))
    rc, cc = r - (r - 1) ** 2 / (n - 1), c - (c - 1) ** 2 / (n - 1)
    return float(np.sqrt(phi2c / max(min(rc - 1, cc - 1), 1e-12)))


def score(db: Path, truth: Path, name: str) -> dict:
    import duckdb
    from sklearn.metrics import adjusted_rand_score

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        f"""SELECT s.segment_id, t.planted_group, f.channel, f.country
        FROM segments."{name}" s JOIN read_csv_auto('{truth}') t USING (user_id)
        JOIN main.user_features f USING (user_id)"""
    ).fetchall()
    con.close()
    seg = np.array([r[0] for r in rows])
    grp = np.array([r[1] for r in rows])
    twin = np.isin(grp, TWINS)
    nuisance = {
        c: cramers_v(seg, np.array([r[2 + i] for r in rows])) for i, c in enumerate(NUISANCE)
    }
    return {
        "users": len(rows),
        "ari": adjusted_rand_score(grp, seg),
        "ari_twins": adjusted_rand_score(grp[twin], seg[twin]),
        "ari_others": adjusted_rand_score(grp[~twin], seg[~twin]),
        "nuisance": nuisance,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", default="5000,20000", help="comma-separated sizes")
    ap.add_argument("--seed", type=int, default=42, help="generator seed")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    ap.add_argument("--minilm", action="store_true", help="also the MiniLM transformer (slow)")
    ap.add_argument(
        "--encoders",
        default=None,
        help="comma list of the example's encoders (default: fast,hashing)",
    )
    ap.add_argument("--template", type=Path, default=None, help="another shopper_story.j2")
    ap.add_argument(
        "--segtool-root", type=Path, default=None, help="run another checkout's segtool"
    )
    ap.add_argument("--label", default="", help="a name for this configuration in the output")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    encoders = (args.encoders or "fast,hashing").split(",") + (["minilm"] if args.minilm else [])
    env = dict(os.environ)
    if args.segtool_root:
        env["PYTHONPATH"] = (
            str(args.segtool_root.resolve()) + os.pathsep + env.get("PYTHONPATH", "")
        )
    segtool = [sys.executable, "-m", "segtool"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segtool-recovery-"))
    results = []
    for n in [int(x) for x in args.users.split(",")]:
        base = work / f"users_{n}"
        proj = base / "project"
        names = make_project(proj, encoders, args.template)
        data = proj / "data"
        sh([sys.executable, str(EXAMPLE / "generate.py"), "--users", str(n), "--out", str(data),
            "--seed", str(args.seed)], env)  # fmt: skip
        t = sh([*segtool, "run", "-q", "--project-dir", str(proj)], env)
        print(f"{n:,} users: segtool run {t:.0f}s", file=sys.stderr)
        for name in names:
            r = score(proj / "target" / "segtool.duckdb", data / "_truth.csv", name)
            results.append({"n": n, "segmentation": name, **r})

    title = f" ({args.label})" if args.label else ""
    print(f"\nplanted-group recovery{title}: ARI vs data/_truth.csv; nuisance = Cramér's V with")
    print("channel / country (independent of the groups: 0 is right)\n")
    print("| users | segmentation | ARI all | ARI RFM twins | ARI others | V channel | V country |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['n']:,} | {r['segmentation']} | {r['ari']:.3f} | {r['ari_twins']:.3f} | "
            f"{r['ari_others']:.3f} | {r['nuisance']['channel']:.3f} | {r['nuisance']['country']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
