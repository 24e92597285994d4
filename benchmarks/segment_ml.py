"""Fit / predict timings of segtool.ml against a plain scikit-learn script.

Workload: n users with a 384-d L2-normalised embedding block (8 latent
groups) and 10 numeric features; k=8 clusters after PCA to 16 dimensions.

    segtool : FeatureTransformer(standard) on a polars frame, then
              SegmentModel(weights [1, 0.5], pca 16, kmeans | minibatch_kmeans)
    sklearn : StandardScaler on the features (times sqrt(0.5 / 10), the same
              block weighting), hstack with the embeddings,
              PCA(16), KMeans (n_init="auto") / MiniBatchKMeans (n_init=3,
              batch 4096), the same settings SegmentModel uses

`predict` scores all n users again; `1 user` is the latency of scoring one
user alone. Each cell is the fastest of --repeat runs (the two pipelines
alternate, so background load hits both). ARI true: each pipeline's labels vs the planted groups; ARI vs skl:
the two pipelines' labels against each other (sanity check).

    python benchmarks/segment_ml.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

DIM, N_FEAT, K, SEED = 384, 10, 8, 7


def make_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    centers = rng.normal(size=(K, DIM)).astype(np.float32)
    emb = np.empty((n, DIM), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        e = min(n, s + step)
        block = centers[y[s:e]] + 1.5 * rng.standard_normal((e - s, DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        emb[s:e] = block
    fc = rng.normal(scale=2.0, size=(K, N_FEAT))
    feat = fc[y] + rng.lognormal(size=(n, N_FEAT))
    df = pl.DataFrame({f"f{i}": feat[:, i] for i in range(N_FEAT)})
    return emb, df, y


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run_segtool(method, emb, df):
    from segtool.ml.features import FeatureTransformer
    from segtool.ml.pipeline import SegmentModel
    from segtool.project.specs import ClusterSpec, FeatureColumnSpec, ReduceSpec

    cols = {c: FeatureColumnSpec() for c in df.columns}

    def fit():
        ft = FeatureTransformer(cols, "standard").fit(df)
        m = SegmentModel(
            [1.0, 0.5],
            ReduceSpec(method="pca", n_components=16),
            ClusterSpec(method=method, k=K, seed=SEED),
        ).fit([emb, ft.transform(df)])
        return ft, m

    (ft, m), t_fit = timed(fit)
    (labels, _, _), t_pred = timed(lambda: m.predict([emb, ft.transform(df)]))
    one = df.head(1)
    _, t_one = timed(lambda: m.predict([emb[:1], ft.transform(one)]))
    return labels, t_fit, t_pred, t_one


def run_sklearn(method, emb, df):
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    feat = df.to_numpy().astype(np.float32)
    # same block weighting as SegmentModel, by hand: unit-norm embeddings have
    # mean squared norm 1, N_FEAT standardised features have N_FEAT; weight 0.5
    w_feat = np.float32(np.sqrt(0.5 / N_FEAT))

    def fit():
        sc = StandardScaler().fit(feat)
        X = np.hstack([emb, w_feat * sc.transform(feat).astype(np.float32)])
        pca = PCA(n_components=16, random_state=SEED).fit(X)
        Z = pca.transform(X)
        if method == "minibatch_kmeans":
            km = MiniBatchKMeans(n_clusters=K, random_state=SEED, n_init=3, batch_size=4096)
        else:
            km = KMeans(n_clusters=K, random_state=SEED, n_init="auto")
        km.fit(Z)
        return sc, pca, km

    def predict(e, f):
        X = np.hstack([e, w_feat * sc.transform(f).astype(np.float32)])
        return km.predict(pca.transform(X))

    (sc, pca, km), t_fit = timed(fit)
    labels, t_pred = timed(lambda: predict(emb, feat))
    _, t_one = timed(lambda: predict(emb[:1], feat[:1]))
    return labels, t_fit, t_pred, t_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--methods", nargs="+", default=["kmeans", "minibatch_kmeans"])
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per cell, alternating; the fastest is shown"
    )
    args = ap.parse_args()
    from segtool.ml.metrics import adjusted_rand

    header = (
        f"{'rows':>9} {'method':<17} {'fit s':>7} {'skl fit':>8} {'ratio':>6} "
        f"{'pred s':>7} {'skl pred':>8} {'ratio':>6} {'1 user ms':>9} {'skl ms':>7} "
        f"{'ARI true':>8} {'skl':>5} {'ARI vs skl':>10}"
    )
    # warm up: imports and first-call overheads are not what we measure
    emb, df, _ = make_data(2000, seed=1)
    for method in args.methods:
        run_segtool(method, emb, df)
        run_sklearn(method, emb, df)
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        (emb, df, y), t_gen = timed(lambda n=n: make_data(n))
        for method in args.methods:
            seg, skl = [], []
            for _ in range(args.repeat):
                seg.append(run_segtool(method, emb, df))
                skl.append(run_sklearn(method, emb, df))
            ls = seg[0][0]
            lk = skl[0][0]
            fs, ps, os_ = (min(r[i] for r in seg) for i in (1, 2, 3))
            fk, pk, ok = (min(r[i] for r in skl) for i in (1, 2, 3))
            print(
                f"{n:>9} {method:<17} {fs:>7.2f} {fk:>8.2f} {fs / fk:>6.2f} "
                f"{ps:>7.2f} {pk:>8.2f} {ps / pk:>6.2f} {os_ * 1e3:>9.2f} {ok * 1e3:>7.2f} "
                f"{adjusted_rand(y, ls):>8.3f} {adjusted_rand(y, lk):>5.3f} {adjusted_rand(lk, ls):>10.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
