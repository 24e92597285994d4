"""SegmentModel: combine input blocks, reduce, cluster, and assign new users.

Fitting (format version 2, ALGORITHM_VERSION 2)
-----------------------------------------------
1. Each input block (an embedding matrix, or a feature matrix already made by
   FeatureTransformer) is checked for NaN/inf and its mean and centred spread
   `m` (mean squared distance to its mean) are measured on the fit population.
2. Without `reduce`, each block is multiplied by `sqrt(weight / m)`, so every
   block contributes `weight` to the expected squared distance, whatever its
   dimension or units, and the blocks are concatenated.
   With `reduce: pca`, each block is reduced on its own, so that PCA cannot
   trade one block's variance for another's: `n_components` is the budget of
   the whole clustered space, shared by water-filling over the blocks taken
   from the smallest: a block gets `max(1, remaining // blocks_left)`
   dimensions, and a block with no more columns than that is kept as it is
   (no rotation; it gives its unused dimensions back to the larger blocks).
   (384-d embedding + 6 rfm features, n_components 16: rfm kept whole, the
   embedding reduced to 10.) A reduced block is centred and projected on its
   own top principal components (capped by n_samples), then multiplied by
   `sqrt(weight / r)`, `r` being the spread the kept components retain, so it
   again contributes exactly `weight` to the expected squared distance.
   The effective share of each block in the clustered space, measured on the
   fit population, is `block_shares_` (weight / sum of weights, up to
   sampling). PCA is fitted by streaming: the mean over all rows, the
   covariance in chunks over at most 250,000 seeded sampled rows (randomized
   SVD on 50,000 rows for blocks wider than 4,096); component signs are fixed
   (largest loading positive) so refits are reproducible.
   Format version 1 (older stored models) ran one PCA over the concatenation
   of the weighted blocks, which lets high-variance directions of one block
   crowd out another; such models still load and predict exactly as before.
3. The clusterer runs in that final space:
   - kmeans: KMEANS_STARTS (16) k-means++ starts on a seeded sample of at most
     KMEANS_SAMPLE (20,000) rows, the start with the lowest inertia refined
     on all rows (Lloyd, one run). With a previous assignment (`init_labels`)
     a warm start from its segments' centroids is refined on all rows too, and
     kept unless the fresh optimum's inertia is lower by more than
     WARM_START_TOLERANCE (0.5%), so a refit keeps its partition when the two
     are equally good and leaves a clearly worse optimum when it is not.
   - minibatch_kmeans: sklearn MiniBatchKMeans on all rows (batch 4096, best
     of 3 initialisations).
   - gmm: sklearn GaussianMixture (diagonal covariances) on at most 200,000
     sampled rows; confidence = the largest posterior probability.
   - agglomerative: Ward linkage on at most `sample_size` sampled rows;
     centroids = the sample's cluster means; every user is then assigned to the
     nearest centroid.
   - hdbscan: sklearn HDBSCAN(min_cluster_size) on at most `sample_size`
     sampled rows. The sample (float32, final space) and its HDBSCAN labels are
     stored, and users are assigned by a k-nearest-neighbour vote against it
     (see Predicting); centroids = cluster means (for distance and drift).
   `k: auto` fits each k in `k_range` on the sample (<= sample_size rows,
   seeded; kmeans with KMEANS_AUTO_STARTS (3) starts per k, the chosen k is
   then fitted as above) and keeps the best mean silhouette (computed on at most 5,000 of the
   sampled rows); ties go to the smaller k.
4. Every fit row is then assigned exactly as `predict` would, and the fit-time
   baseline for drift is recorded: per cluster the size, mean and 95th
   percentile of the distance, the global mean distance, and the assigned
   counts per cluster and of outliers (the segment shares PSI compares with).

Predicting
----------
`predict(blocks)` returns (labels int64, distance float32, confidence
float32). distance is the euclidean distance to the assigned cluster's
centroid (for hdbscan outliers: to the nearest centroid) in the final space.
confidence is in [0, 1]: the gmm posterior; for hdbscan the share of the k
neighbours that voted for the label (0 for outliers); else 1 - d1/d2 (nearest
and second-nearest centroid distances; 1 when there is a single cluster).

hdbscan (format 2): the k = min(HDBSCAN_KNN (10), min_cluster_size) nearest
stored sample points vote (no more voters than the smallest cluster can
have); noise points vote for -1. The label with most votes wins (ties: the
label of the nearer neighbour). A cluster label is then kept only if the
user's nearest member of that cluster is within the cluster's threshold
`knn_threshold_`: the HDBSCAN_THRESHOLD_QUANTILE (95th) percentile, over the
cluster's sampled members, of the distance to their own k-th nearest other
sample point (their core distance, the density scale HDBSCAN's hierarchy is
built on). A user farther from the cluster than its members usually are from
their k-th neighbour is outside its dense region: -1. The 95th percentile
keeps the members' own spread without letting the sparsest fringe set the
bar (on two moons with 5% uniform noise: 85% of HDBSCAN's noise stays -1 and
0.1% of its members become -1, against 67% and 0% with the maximum). The
neighbour search is a k-d tree (scipy cKDTree, float64) queried row by row,
in chunks of at most 16,384 users, so memory stays O(chunk x k).
Format-1 hdbscan models keep their old rule (nearest centroid within radius).

Prediction works row by row in the final space, without reductions across
rows, so a user alone gets the same answer as in any batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np

from segtool.errors import DataError
from segtool.project.specs import ClusterSpec, ReduceSpec
from segtool.words import counted

from ._util import CHUNK_ROWS, chunks, example_keys, sample_indices, sq_distances

SILHOUETTE_MAX = 5000  # rows used to score each candidate k
GMM_FIT_MAX = 200_000  # rows used to fit a Gaussian mixture
PCA_COVARIANCE_MAX_DIM = 4096  # above this, PCA is fitted by randomized SVD on a sample
PCA_SAMPLE = 50_000
PCA_FIT_MAX = 250_000  # rows used for the PCA covariance
PROJECT_ROWS = 2048  # rows per float64 projection step (stays in cache)
KMEANS_SAMPLE = 20_000  # rows the k-means++ starts run on
KMEANS_STARTS = 16  # k-means++ starts on that sample; the best is refined on all rows
KMEANS_AUTO_STARTS = 3  # starts per candidate k when `k: auto` scores them
WARM_START_TOLERANCE = 0.005  # a warm start is kept unless a fresh fit is >0.5% better
HDBSCAN_KNN = 10  # neighbours that vote for a user's hdbscan label
HDBSCAN_THRESHOLD_QUANTILE = 95.0  # percentile of members' k-th neighbour distance
_FORMAT_VERSION = 2  # stored state; version 1 (one PCA over all blocks) still loads
_FORMATS = (1, 2)


class SegmentModel:
    """Weighted block combination + optional PCA + clustering (see module docstring).

    Parameters
    ----------
    weights : one positive weight per input block.
    reduce : ReduceSpec (None -> no reduction).
    cluster : ClusterSpec (None -> defaults: kmeans, k=8).
    input_names : optional names of the inputs, used in error messages.

    Fitted attributes: `n_features_in_` (per block), `format_version_`,
    `block_factors_` (per block: the factor on its columns, or on its
    principal-component coordinates when reduced), `block_means_`,
    `block_components_` (per block: None when the block is kept as it is),
    `block_explained_variance_` (per block: the share of its variance kept),
    `block_shares_` (per block: its share of the mean squared distance to the
    mean in the clustered space, measured on the fit population; sums to 1
    and equals weight / sum(weights) up to sampling; None for format-1 models,
    see `block_shares()`), `pca_mean_`, `pca_components_`,
    `explained_variance_ratio_` (format 1 only: one PCA over all blocks),
    `centers_`, `n_clusters_`, `k_`, `k_scores_` (k: auto), `knn_points_`,
    `knn_labels_`, `knn_threshold_`, `knn_k_` (hdbscan), `radius_` (hdbscan, format 1),
    `gmm_weights_`, `gmm_covariances_` (gmm), `labels_`, `distance_`
    (fit population), `cluster_size_`, `cluster_mean_distance_`,
    `cluster_p95_distance_`, `mean_distance_`, `assigned_size_`,
    `n_outliers_`, `n_samples_fit_`.
    """

    def __init__(
        self,
        weights: Sequence[float],
        reduce: ReduceSpec | None = None,
        cluster: ClusterSpec | None = None,
        input_names: Sequence[str] | None = None,
    ):
        self.weights = weights
        self.reduce = reduce
        self.cluster = cluster
        self.input_names = input_names

    # ------------------------------------------------------------------ specs

    @property
    def _reduce(self) -> ReduceSpec:
        return self.reduce if self.reduce is not None else ReduceSpec()

    @property
    def _cluster(self) -> ClusterSpec:
        return self.cluster if self.cluster is not None else ClusterSpec()

    def _name(self, i: int) -> str:
        if self.input_names is not None and i < len(self.input_names):
            return f"input '{self.input_names[i]}'"
        return f"input block {i}"

    # ------------------------------------------------------------------ validation

    def _check_blocks(self, blocks, keys, fitted: bool) -> tuple[list[np.ndarray], int]:
        """Shapes and dtypes only; finiteness is checked on the way through
        (fit: the scale pass, predict: the final space) to avoid an extra pass."""
        if isinstance(blocks, np.ndarray):
            blocks = [blocks]
        blocks = [np.asarray(b) for b in blocks]
        if len(blocks) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} input blocks, got {len(blocks)}")
        out = []
        for i, b in enumerate(blocks):
            if b.ndim == 1:
                b = b.reshape(-1, 1)
            if b.ndim != 2:
                raise ValueError(f"{self._name(i)} must be a 2-D matrix, got shape {b.shape}")
            if not np.issubdtype(b.dtype, np.floating):
                b = b.astype(np.float64)
            out.append(b)
        n = out[0].shape[0]
        if any(b.shape[0] != n for b in out):
            raise ValueError(
                "input blocks have different row counts: " + ", ".join(str(b.shape[0]) for b in out)
            )
        if keys is not None and len(keys) != n:
            raise ValueError(f"keys has {len(keys)} entries but the blocks have {n} rows")
        if fitted:
            dims = [b.shape[1] for b in out]
            if dims != list(self.n_features_in_):
                raise DataError(
                    f"input dimensions {dims} differ from the fitted model's {self.n_features_in_}",
                    hint="the encoder or feature set changed since the fit: refit the segmentation",
                )
        return out, n

    def _raise_nonfinite(
        self, blocks: list[np.ndarray], rows: np.ndarray, keys, only: int | None = None
    ) -> None:
        """Name the block and example keys for rows whose values are NaN/inf.
        Returns quietly when those rows are finite after all (float32 overflow
        in a sum of squares), so the caller can recompute them in float64."""
        n = blocks[0].shape[0]
        for i, b in enumerate(blocks):
            if only is not None and i != only:
                continue
            bad = np.zeros(n, dtype=bool)
            bad[rows] = ~np.isfinite(b[rows]).all(axis=1)
            if bad.any():
                raise DataError(
                    f"{self._name(i)} has NaN/inf values for {counted(int(bad.sum()), 'user')} "
                    f"({example_keys(keys, bad)})",
                    hint="impute the feature (`impute:` on the column) or fix the upstream model",
                )

    # ------------------------------------------------------------------ combine / reduce

    def _offsets(self) -> list[tuple[int, int]]:
        o = np.concatenate([[0], np.cumsum(self.n_features_in_)]).astype(int)
        return [(int(o[i]), int(o[i + 1])) for i in range(len(self.n_features_in_))]

    def _out_dims(self) -> list[int]:
        """Columns of each block in the final space (format 2)."""
        return [
            d if c is None else int(c.shape[0])
            for d, c in zip(self.n_features_in_, self.block_components_, strict=True)
        ]

    def _prepare(self) -> None:
        """Derived, unsaved projection terms.

        Format 1 with PCA: the final space is sum_i block_i @ P_i - offset,
        where P_i = (factor_i * W[:, cols_i]).T and offset = pca_mean @ W.T,
        which is (concat(factor_i * block_i) - pca_mean) @ W.T without building
        the concatenation. Format 2: block i fills its own columns, either
        factor_i * block_i (kept as is) or block_i @ P_i - offset_i with
        P_i = (factor_i * W_i).T and offset_i = mean_i @ P_i."""
        self._proj = self._offset = None
        self._block_proj = None
        self._tree = None
        if self.format_version_ == 1:
            if self.pca_components_ is not None:
                W = self.pca_components_
                self._proj = [
                    np.ascontiguousarray((W[:, a:b] * f).T)
                    for (a, b), f in zip(self._offsets(), self.block_factors_, strict=True)
                ]
                self._offset = self.pca_mean_ @ W.T
                self._out_dim = int(W.shape[0])
            else:
                self._out_dim = self._dim
        else:
            dims = self._out_dims()
            o = np.concatenate([[0], np.cumsum(dims)]).astype(int)
            self._out_offsets = [(int(o[i]), int(o[i + 1])) for i in range(len(dims))]
            self._out_dim = int(o[-1])
            self._block_proj = []
            for W, mu, f in zip(
                self.block_components_, self.block_means_, self.block_factors_, strict=True
            ):
                if W is None:
                    self._block_proj.append(None)
                else:
                    P = np.ascontiguousarray((W * f).T)
                    self._block_proj.append((P, mu @ P))
        if getattr(self, "knn_points_", None) is not None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.knn_points_.astype(np.float64))

    def _project(self, blocks: list[np.ndarray], s: int, e: int) -> np.ndarray:
        """Rows s:e of the final space, float32. PCA products are computed in
        float64 and rounded to float32, so BLAS rounding that depends on the
        batch size (~1e-16) almost never changes a bit of the result; kept
        blocks are scaled element-wise, exactly batch invariant."""
        if self._proj is not None:  # format 1, PCA over the concatenation
            acc = None
            for b, P in zip(blocks, self._proj, strict=True):
                t = np.asarray(b[s:e], dtype=np.float64) @ P
                acc = t if acc is None else acc + t
            return (acc - self._offset).astype(np.float32)
        out = np.empty((e - s, self._out_dim), dtype=np.float32)
        if self._block_proj is None:  # format 1 without PCA
            for b, (a, c), f in zip(blocks, self._offsets(), self.block_factors_, strict=True):
                np.multiply(b[s:e], b.dtype.type(f), out=out[:, a:c], casting="same_kind")
            return out
        for b, (a, c), f, pr in zip(
            blocks, self._out_offsets, self.block_factors_, self._block_proj, strict=True
        ):
            if pr is None:
                np.multiply(b[s:e], b.dtype.type(f), out=out[:, a:c], casting="same_kind")
            else:
                P, off = pr
                out[:, a:c] = np.asarray(b[s:e], dtype=np.float64) @ P - off
        return out

    def _final(self, blocks: list[np.ndarray], n: int, keys=None) -> np.ndarray:
        Z = np.empty((n, self._out_dim), dtype=np.float32)
        products = self._proj is not None or (
            self._block_proj is not None and any(p is not None for p in self._block_proj)
        )
        if n > 4 * PROJECT_ROWS and products:
            # these thin products are memory bound: one BLAS thread is as fast on
            # an idle machine and several times faster on a busy one
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1, user_api="blas"):
                for s, e in chunks(n, PROJECT_ROWS):
                    Z[s:e] = self._project(blocks, s, e)
        else:
            for s, e in chunks(n, PROJECT_ROWS):
                Z[s:e] = self._project(blocks, s, e)
        bad = ~np.isfinite(Z).all(axis=1)
        if bad.any():
            self._raise_nonfinite(blocks, np.flatnonzero(bad), keys)
            raise DataError(
                f"{counted(int(bad.sum()), 'user', verb=('has', 'have'))} values too large to combine "
                f"({example_keys(keys, bad)})",
                hint="scale or clip the feature (e.g. `transform: log1p` or `clip`)",
            )
        return Z

    def _block_stats(
        self, blocks: list[np.ndarray], n: int, keys
    ) -> tuple[list[np.ndarray], list[float]]:
        """Per block: the column means and the centred spread (mean squared
        distance to the mean); also the NaN/inf check. Centred spread, not raw
        norm: unit-length embeddings have norm 1 but spread far less around
        their mean, so scaling by the raw norm would let feature blocks swamp
        them."""
        means, spreads = [], []
        for bi, b in enumerate(blocks):
            total = 0.0
            colsum = np.zeros(b.shape[1], dtype=np.float64)
            for s, e in chunks(n):
                c = b[s:e]
                rows = np.einsum("ij,ij->i", c, c)
                bad = ~np.isfinite(rows)
                if bad.any():
                    self._raise_nonfinite(blocks, s + np.flatnonzero(bad), keys, only=bi)
                    c64 = c[bad].astype(np.float64)  # finite but overflowed in float32
                    rows = rows.astype(np.float64)
                    rows[bad] = np.einsum("ij,ij->i", c64, c64)
                total += float(rows.sum(dtype=np.float64))
                colsum += c.sum(axis=0, dtype=np.float64)
            mean = colsum / n
            means.append(mean)
            spreads.append(total / n - float(mean @ mean))  # E||x||^2 - ||E x||^2
        return means, spreads

    def _fit_combine(
        self, blocks: list[np.ndarray], n: int, weights: list[float], keys, seed: int
    ) -> None:
        """Format 2: per block, keep it (scaled) or reduce it with its own PCA
        (scaled after the projection); see the module docstring."""
        means, spreads = self._block_stats(blocks, n, keys)
        if self._reduce.method == "pca":
            budgets = component_budgets(self.n_features_in_, self._reduce.n_components)
        else:
            budgets = list(self.n_features_in_)
        self.block_factors_ = np.zeros(len(blocks), dtype=np.float64)
        self.block_means_ = []
        self.block_components_ = []
        self.block_explained_variance_ = []
        for i, (b, w, mean, spread, budget) in enumerate(
            zip(blocks, weights, means, spreads, budgets, strict=True)
        ):
            d = b.shape[1]
            if budget >= d:  # kept as it is
                self.block_factors_[i] = np.sqrt(w / spread) if spread > 1e-12 else np.sqrt(w)
                self.block_means_.append(None)
                self.block_components_.append(None)
                self.block_explained_variance_.append(1.0)
                continue
            nc = int(min(budget, n, d))
            comps, evals = _block_pca(b, n, mean, nc, seed)
            kept = float(np.clip(evals[:nc], 0, None).sum())
            self.block_factors_[i] = np.sqrt(w / kept) if kept > 1e-12 else np.sqrt(w)
            self.block_means_.append(mean)
            self.block_components_.append(comps)
            self.block_explained_variance_.append(
                min(1.0, kept / spread) if spread > 1e-12 else 1.0
            )

    def _fit_factors_v1(self, blocks: list[np.ndarray], n: int, weights, keys) -> None:
        """Format 1: sqrt(weight / centred spread) per block, before one PCA
        over the concatenation. Kept for reference and tests of the old
        behaviour; new fits use `_fit_combine`."""
        _, spreads = self._block_stats(blocks, n, keys)
        self.block_factors_ = np.asarray(
            [
                np.sqrt(w / s) if s > 1e-12 else np.sqrt(w)
                for w, s in zip(weights, spreads, strict=True)
            ],
            dtype=np.float64,
        )

    def block_shares(
        self, blocks: Sequence[np.ndarray], keys: np.ndarray | None = None
    ) -> list[float]:
        """Each block's share of the mean squared distance to the mean in the
        clustered space, measured on the users of `blocks` (sums to 1). For a
        format-2 model these are weight / sum(weights) on the fit population
        (`block_shares_` holds the fit-time values). For a format-1 model with
        PCA, each block's share is the spread of its own projected part
        (cross terms between blocks left out), normalised to sum to 1."""
        self._check_fitted()
        if self._proj is None:
            return self._shares_of(self.transform(blocks, keys))
        blocks, n = self._check_blocks(blocks, keys, fitted=True)
        parts = []
        for b, P in zip(blocks, self._proj, strict=True):
            colsum = np.zeros(P.shape[1])
            sq = np.zeros(P.shape[1])
            for s, e in chunks(n):
                t = np.asarray(b[s:e], dtype=np.float64) @ P
                colsum += t.sum(axis=0)
                sq += (t * t).sum(axis=0)
            parts.append(float((sq / n - (colsum / n) ** 2).sum()))
        total = sum(parts)
        return [p / total for p in parts] if total > 0 else [1.0 / len(parts)] * len(parts)

    def _shares_of(self, Z: np.ndarray) -> list[float] | None:
        """Shares of the blocks' columns of Z (kept or separately reduced blocks)."""
        n = Z.shape[0]
        if n == 0:
            return None
        offsets = self._offsets() if self._block_proj is None else self._out_offsets
        colsum = np.zeros(Z.shape[1])
        sq = np.zeros(Z.shape[1])
        for s, e in chunks(n):
            c = Z[s:e].astype(np.float64)
            colsum += c.sum(axis=0)
            sq += (c * c).sum(axis=0)
        var = np.clip(sq / n - (colsum / n) ** 2, 0, None)
        parts = [float(var[a:c].sum()) for a, c in offsets]
        total = sum(parts)
        return [p / total for p in parts] if total > 0 else [1.0 / len(parts)] * len(parts)

    def _fit_pca(self, blocks: list[np.ndarray], n: int, seed: int) -> None:
        """Format 1: one PCA over the concatenation of the weighted blocks."""
        D = self._dim
        nc = int(min(self._reduce.n_components, n, D))
        offsets = self._offsets()
        if D > PCA_COVARIANCE_MAX_DIM:
            from sklearn.decomposition import PCA

            idx = sample_indices(n, PCA_SAMPLE, seed)
            Xs = np.concatenate(
                [
                    b[idx].astype(np.float64) * f
                    for b, f in zip(blocks, self.block_factors_, strict=True)
                ],
                axis=1,
            )
            pca = PCA(n_components=nc, svd_solver="randomized", random_state=seed).fit(Xs)
            mean, comps = pca.mean_, pca.components_
            ratio = pca.explained_variance_ratio_
        else:
            # two streaming passes: the mean (all rows), then the centred covariance
            # (float32 products of chunks, accumulated in float64) on at most
            # PCA_FIT_MAX sampled rows, plenty for the top components
            mean = np.concatenate(
                [
                    b.sum(axis=0, dtype=np.float64) / n * f
                    for b, f in zip(blocks, self.block_factors_, strict=True)
                ]
            )
            mean32 = mean.astype(np.float32)
            f32 = self.block_factors_.astype(np.float32)
            idx = sample_indices(n, PCA_FIT_MAX, seed) if n > PCA_FIT_MAX else None
            m = n if idx is None else idx.size
            cov = np.zeros((D, D))
            Xc = np.empty((min(m, CHUNK_ROWS), D), dtype=np.float32)
            for s, e in chunks(m):
                x = Xc[: e - s]
                rows = slice(s, e) if idx is None else idx[s:e]
                for b, (a, c), f in zip(blocks, offsets, f32, strict=True):
                    np.multiply(b[rows], f, out=x[:, a:c], casting="same_kind")
                x -= mean32
                cov += x.T @ x
            cov /= max(m - 1, 1)
            evals, evecs = np.linalg.eigh(cov)
            order = np.argsort(evals)[::-1][:nc]
            comps = evecs[:, order].T
            total = float(np.clip(evals, 0, None).sum())
            ratio = np.clip(evals[order], 0, None) / total if total > 0 else np.zeros(nc)
        comps = _fix_signs(np.asarray(comps, dtype=np.float64))
        self.pca_mean_ = np.asarray(mean, dtype=np.float64)
        self.pca_components_ = comps
        self.explained_variance_ratio_ = np.asarray(ratio, dtype=np.float64)

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        blocks: Sequence[np.ndarray],
        keys: np.ndarray | None = None,
        init_labels: np.ndarray | None = None,
    ) -> SegmentModel:
        """Fit on the rows of `blocks`. `init_labels` (one per row, negative =
        unknown) is a previous assignment: k-means then also refines a warm
        start from its segments' centroids in the new space, and keeps it
        unless a fresh fit is clearly better, so a refit on slightly different
        data keeps most users where they were."""
        return self._fit(blocks, keys, init_labels, _FORMAT_VERSION)

    def _fit(self, blocks, keys, init_labels, version: int) -> SegmentModel:
        cl = self._cluster
        weights = [float(w) for w in self.weights]
        if not weights or any(not np.isfinite(w) or w <= 0 for w in weights):
            raise ValueError("weights must be positive numbers, one per input block")
        blocks, n = self._check_blocks(blocks, keys, fitted=False)
        if n == 0:
            raise DataError(
                "the population is empty: no users to cluster",
                hint="check the segmentation's `population` predicate and its input models",
            )
        method = cl.method
        if method != "hdbscan":
            if cl.k is None:
                raise DataError(f"cluster method '{method}' needs `k` (a number or auto)")
            if cl.k != "auto" and cl.k > n:
                raise DataError(
                    f"k={cl.k} is larger than the population ({n} users)",
                    hint="lower `cluster.k`, use `k: auto`, or widen the population",
                )
        self.format_version_ = version
        self.n_features_in_ = [int(b.shape[1]) for b in blocks]
        self._dim = sum(self.n_features_in_)
        self.pca_mean_ = self.pca_components_ = self.explained_variance_ratio_ = None
        self.block_means_ = self.block_components_ = self.block_explained_variance_ = None
        self.knn_points_ = self.knn_labels_ = self.knn_threshold_ = None
        if version == 1:
            self._fit_factors_v1(blocks, n, weights, keys)
            if self._reduce.method == "pca":
                self._fit_pca(blocks, n, cl.seed)
        else:
            self._fit_combine(blocks, n, weights, keys, cl.seed)
        self._prepare()
        Z = self._final(blocks, n, keys)
        self.block_shares_ = self._shares_of(Z) if version >= 2 else None

        self.k_scores_ = None
        self.radius_ = self.gmm_weights_ = self.gmm_covariances_ = None
        if method == "hdbscan":
            self._fit_hdbscan(Z, cl, version)  # builds the k-NN tree predict uses
        else:
            k = self._choose_k(Z, cl) if cl.k == "auto" else int(cl.k)
            self.k_ = k
            if method == "gmm":
                self._fit_gmm(Z, k, cl)
            elif method == "agglomerative":
                idx = sample_indices(n, cl.sample_size, cl.seed)
                Zs = Z[idx]
                labels = _ward_labels(_ward_tree(Zs), k)
                self.centers_ = _means(Zs, labels)
            else:
                init = _warm_start(Z, init_labels, k, cl.seed) if init_labels is not None else None
                if version == 1:
                    self.centers_ = _fit_kmeans_v1(Z, k, method, cl.seed, init=init)
                else:
                    self.centers_ = _fit_kmeans(Z, k, method, cl.seed, init=init)
        self.n_clusters_ = int(self.centers_.shape[0])
        if method == "hdbscan":
            self.k_ = self.n_clusters_
        self.n_samples_fit_ = n

        labels, dist, _, ref = self._assign_all(Z)
        self.labels_, self.distance_ = labels, dist
        self._baseline(labels, dist, ref)
        return self

    def _fit_hdbscan(self, Z: np.ndarray, cl: ClusterSpec, version: int) -> None:
        from sklearn.cluster import HDBSCAN

        idx = sample_indices(Z.shape[0], cl.sample_size, cl.seed)
        Zs = Z[idx]
        if Zs.shape[0] < 2:
            raise DataError(
                "hdbscan needs at least 2 users", hint="use kmeans for tiny populations"
            )
        mcs = min(cl.min_cluster_size, Zs.shape[0])
        labels = HDBSCAN(min_cluster_size=max(mcs, 2), copy=True).fit(Zs).labels_
        if (labels < 0).all():
            if not np.ptp(Zs, axis=0).any():
                # 'lower min_cluster_size (now 2)' was the hint here too
                raise DataError(
                    f"hdbscan found no clusters: all {Zs.shape[0]} users have identical inputs",
                    hint="check the features and texts the segmentation reads: they do not "
                    "tell these users apart",
                )
            lower = (
                f"lower `cluster.min_cluster_size` (now {cl.min_cluster_size}) or use kmeans"
                if cl.min_cluster_size > 2
                else "use kmeans or gmm: hdbscan finds no denser group here at any size"
            )
            raise DataError(
                f"hdbscan found no clusters among {Zs.shape[0]} users (all were noise)",
                hint=lower,
            )
        keep = labels >= 0
        self.centers_ = _means(Zs[keep], labels[keep])
        if version == 1:
            d = np.sqrt(sq_distances(Zs[keep], self.centers_)[np.arange(keep.sum()), labels[keep]])
            self.radius_ = np.zeros(self.centers_.shape[0], dtype=np.float32)
            np.maximum.at(self.radius_, labels[keep], d.astype(np.float32))
            return
        from scipy.spatial import cKDTree

        self.knn_points_ = np.ascontiguousarray(Zs, dtype=np.float32)
        self.knn_labels_ = labels.astype(np.int32)
        # per cluster: a high percentile of its members' distance to their
        # k-th nearest other sample point (their core distance at k)
        # no more voters than the smallest cluster HDBSCAN may find
        m = Zs.shape[0]
        kk = max(1, min(HDBSCAN_KNN, max(mcs, 2), m - 1))
        self.knn_k_ = kk
        core = np.empty(m)
        tree = self._tree = cKDTree(self.knn_points_.astype(np.float64))
        for s, e in chunks(m):
            d, _ = tree.query(self.knn_points_[s:e].astype(np.float64), k=kk + 1, workers=-1)
            core[s:e] = d[:, kk]  # column 0 is the point itself (or a duplicate)
        k = self.centers_.shape[0]
        thr = np.zeros(k)
        for c in range(k):
            thr[c] = np.percentile(core[labels == c], HDBSCAN_THRESHOLD_QUANTILE)
        self.knn_threshold_ = thr

    def _fit_gmm(self, Z: np.ndarray, k: int, cl: ClusterSpec) -> None:
        from sklearn.mixture import GaussianMixture

        idx = sample_indices(Z.shape[0], GMM_FIT_MAX, cl.seed)
        gm = GaussianMixture(n_components=k, covariance_type="diag", random_state=cl.seed)
        with _quiet_convergence():  # fewer segments than k is said by the run, in words
            gm.fit(Z[idx].astype(np.float64))
        self.centers_ = gm.means_.astype(np.float32)
        self.gmm_weights_ = gm.weights_.astype(np.float64)
        self.gmm_covariances_ = gm.covariances_.astype(np.float64)

    def _choose_k(self, Z: np.ndarray, cl: ClusterSpec) -> int:
        from sklearn.metrics import silhouette_score

        idx = sample_indices(Z.shape[0], cl.sample_size, cl.seed)
        Zs = Z[idx]
        m = Zs.shape[0]
        lo, hi = max(2, int(cl.k_range[0])), min(int(cl.k_range[1]), m - 1)
        if lo > hi:
            raise DataError(
                f"k: auto needs more users than the smallest k tried ({m} users, "
                f"k_range {list(cl.k_range)})",
                hint="set a fixed `k`, or lower `k_range`",
            )
        ev = sample_indices(m, SILHOUETTE_MAX, cl.seed + 1)
        tree = _ward_tree(Zs) if cl.method == "agglomerative" else None
        scores: dict[int, float] = {}
        for k in range(lo, hi + 1):
            if cl.method == "agglomerative":
                labels = _ward_labels(tree, k)
            elif cl.method == "gmm":
                from sklearn.mixture import GaussianMixture

                gm = GaussianMixture(n_components=k, covariance_type="diag", random_state=cl.seed)
                with _quiet_convergence():
                    labels = gm.fit(Zs.astype(np.float64)).predict(Zs.astype(np.float64))
            else:
                if self.format_version_ == 1:
                    C = _fit_kmeans_v1(Zs, k, cl.method, cl.seed)
                else:  # scoring candidates: 3 starts each, as format 1 (16 cost 5x)
                    C = _fit_kmeans(Zs, k, cl.method, cl.seed, starts=KMEANS_AUTO_STARTS)
                labels = np.argmin(sq_distances(Zs, C), axis=1)
            le = labels[ev]
            if 2 <= len(np.unique(le)) <= len(ev) - 1:
                scores[k] = float(silhouette_score(Zs[ev], le))
            else:
                scores[k] = -1.0
        self.k_scores_ = scores
        best = max(scores.values())
        return min(k for k, s in scores.items() if s == best)

    # ------------------------------------------------------------------ assign

    def _assign(self, Z: np.ndarray) -> tuple[np.ndarray, ...]:
        """labels, distance, confidence, ref (the cluster the distance refers to)."""
        n, k = Z.shape[0], self.centers_.shape[0]
        if self.gmm_weights_ is not None:
            Z64 = Z.astype(np.float64)
            C = self.centers_.astype(np.float64)
            diff = Z64[:, None, :] - C[None, :, :]
            prec = 1.0 / self.gmm_covariances_
            maha = np.einsum("ijk,ijk->ij", diff * prec[None], diff)
            logdet = np.log(self.gmm_covariances_).sum(axis=1)
            d = Z.shape[1]
            logp = np.log(self.gmm_weights_) - 0.5 * (d * np.log(2 * np.pi) + logdet + maha)
            labels = np.argmax(logp, axis=1)
            top = logp[np.arange(n), labels]
            post = 1.0 / np.exp(logp - top[:, None]).sum(axis=1)
            sq = np.einsum("ijk,ijk->ij", diff, diff)
            dist = np.sqrt(sq[np.arange(n), labels])
            return labels.astype(np.int64), dist.astype(np.float32), post.astype(np.float32), labels
        sq = sq_distances(Z, self.centers_)
        nearest = np.argmin(sq, axis=1)
        if self._tree is not None:
            return self._assign_knn(Z, sq, nearest)
        d1 = np.sqrt(sq[np.arange(n), nearest]).astype(np.float32)
        if k >= 2:
            d2 = np.sqrt(np.partition(sq, 1, axis=1)[:, 1]).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                conf = np.where(d2 > 0, 1.0 - d1 / d2, 0.0).astype(np.float32)
        else:
            conf = np.ones(n, dtype=np.float32)
        labels = nearest.astype(np.int64)
        if self.radius_ is not None:  # hdbscan, format 1
            outlier = d1 > self.radius_[nearest]
            labels[outlier] = -1
            conf[outlier] = 0.0
        return labels, d1, np.clip(conf, 0.0, 1.0), nearest

    def _assign_knn(self, Z: np.ndarray, sq: np.ndarray, nearest: np.ndarray):
        """hdbscan (format 2): vote of the HDBSCAN_KNN nearest stored sample
        points; -1 when the vote is noise or the nearest member of the winning
        cluster is beyond that cluster's threshold. Each row is queried on its
        own (k-d tree, float64), so the answer does not depend on the batch."""
        n, k = Z.shape[0], self.centers_.shape[0]
        kk = self.knn_k_
        # each row is searched on its own (threads split the rows): batch invariant
        d, idx = self._tree.query(Z.astype(np.float64), k=kk, workers=-1)
        d = d.reshape(n, kk)
        lab = self.knn_labels_[idx.reshape(n, kk)].astype(np.int64) + 1  # 0 = noise
        rows = np.arange(n)
        votes = np.zeros((n, k + 1), dtype=np.int64)
        first = np.full((n, k + 1), kk, dtype=np.int64)  # rank of the nearest voter
        for j in range(kk - 1, -1, -1):
            votes[rows, lab[:, j]] += 1
            first[rows, lab[:, j]] = j
        win = np.argmax(votes * (kk + 1) + (kk - first), axis=1)  # most votes, then nearest
        conf = (votes[rows, win] / kk).astype(np.float32)
        labels = win - 1
        member = labels >= 0
        near = d[rows, np.minimum(first[rows, win], kk - 1)]
        far = member & (near > self.knn_threshold_[np.maximum(labels, 0)])
        labels[far] = -1
        outlier = labels < 0
        conf[outlier] = 0.0
        ref = np.where(outlier, nearest, labels)
        dist = np.sqrt(sq[rows, ref]).astype(np.float32)
        return labels.astype(np.int64), dist, conf, ref.astype(np.int64)

    def _assign_all(self, Z: np.ndarray) -> tuple[np.ndarray, ...]:
        n = Z.shape[0]
        labels = np.empty(n, dtype=np.int64)
        dist = np.empty(n, dtype=np.float32)
        conf = np.empty(n, dtype=np.float32)
        ref = np.empty(n, dtype=np.int64)
        step = max(1, (1 << 22) // max(1, self.centers_.size))
        if self._tree is not None:
            step = min(step, CHUNK_ROWS)  # bounds the k-NN arrays
        for s in range(0, n, step):
            e = min(s + step, n)
            labels[s:e], dist[s:e], conf[s:e], ref[s:e] = self._assign(Z[s:e])
        return labels, dist, conf, ref

    def _baseline(self, labels: np.ndarray, dist: np.ndarray, ref: np.ndarray) -> None:
        k = self.n_clusters_
        size = np.bincount(ref, minlength=k)
        mean = np.zeros(k)
        p95 = np.zeros(k)
        global_p95 = float(np.percentile(dist, 95)) if dist.size else 0.0
        order = np.argsort(ref, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(size)])
        for c in range(k):
            d = dist[order[bounds[c] : bounds[c + 1]]]
            if d.size:
                mean[c] = float(d.mean())
                p95[c] = float(np.percentile(d, 95))
            else:
                mean[c], p95[c] = float(dist.mean()), global_p95
        self.cluster_size_ = size.astype(np.int64)
        self.cluster_mean_distance_ = mean
        self.cluster_p95_distance_ = p95
        self.mean_distance_ = float(dist.astype(np.float64).mean())
        member = labels >= 0
        self.assigned_size_ = np.bincount(labels[member], minlength=k).astype(np.int64)
        self.n_outliers_ = int((~member).sum())

    def transform(self, blocks: Sequence[np.ndarray], keys: np.ndarray | None = None) -> np.ndarray:
        """The users in the final (combined, reduced) space, float32 (n, d)."""
        self._check_fitted()
        blocks, n = self._check_blocks(blocks, keys, fitted=True)
        return self._final(blocks, n, keys)

    def predict_detail(
        self, blocks: Sequence[np.ndarray], keys: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Like predict, plus `ref`: the cluster index each distance refers to
        (the label, or the nearest cluster for hdbscan outliers). Used by drift."""
        self._check_fitted()
        blocks, n = self._check_blocks(blocks, keys, fitted=True)
        if n == 0:
            e = np.empty(0, dtype=np.float32)
            return np.empty(0, dtype=np.int64), e, e.copy(), np.empty(0, dtype=np.int64)
        return self._assign_all(self._final(blocks, n, keys))

    def predict(
        self, blocks: Sequence[np.ndarray], keys: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels int64, distance float32, confidence float32) for each row."""
        labels, dist, conf, _ = self.predict_detail(blocks, keys)
        return labels, dist, conf

    def fit_predict(self, blocks, keys=None):
        self.fit(blocks, keys)
        return self.predict(blocks, keys)

    def _check_fitted(self) -> None:
        if not hasattr(self, "centers_"):
            raise RuntimeError("SegmentModel is not fitted; call fit() first")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able params, arrays). See `from_state_dict` for the inverse."""
        self._check_fitted()
        fmt = self.format_version_
        arrays: dict[str, np.ndarray] = {
            "block_factors": self.block_factors_,
            "centers": self.centers_,
            "cluster_size": self.cluster_size_,
            "cluster_mean_distance": self.cluster_mean_distance_,
            "cluster_p95_distance": self.cluster_p95_distance_,
        }
        if self.pca_components_ is not None:
            arrays["pca_mean"] = self.pca_mean_
            arrays["pca_components"] = self.pca_components_
            arrays["explained_variance_ratio"] = self.explained_variance_ratio_
        if self.radius_ is not None:
            arrays["radius"] = self.radius_
        if self.gmm_weights_ is not None:
            arrays["gmm_weights"] = self.gmm_weights_
            arrays["gmm_covariances"] = self.gmm_covariances_
        if fmt >= 2:
            arrays["assigned_size"] = self.assigned_size_
            for i, (W, mu) in enumerate(
                zip(self.block_components_, self.block_means_, strict=True)
            ):
                if W is not None:
                    arrays[f"block_components_{i}"] = W
                    arrays[f"block_mean_{i}"] = mu
            if self.knn_points_ is not None:
                arrays["knn_points"] = self.knn_points_
                arrays["knn_labels"] = self.knn_labels_
                arrays["knn_threshold"] = self.knn_threshold_
                arrays["knn_k"] = np.asarray([self.knn_k_], dtype=np.int64)
        params = {
            "type": "SegmentModel",
            "version": fmt,
            "weights": [float(w) for w in self.weights],
            "reduce": self._reduce.model_dump(mode="json"),
            "cluster": self._cluster.model_dump(mode="json"),
            "input_names": list(self.input_names) if self.input_names is not None else None,
            "n_features_in": list(self.n_features_in_),
            "n_samples_fit": int(self.n_samples_fit_),
            "k": int(self.k_),
            "n_clusters": int(self.n_clusters_),
            "k_scores": {str(k): v for k, v in self.k_scores_.items()} if self.k_scores_ else None,
            "mean_distance": float(self.mean_distance_),
        }
        if fmt >= 2:
            params["block_shares"] = self.block_shares_
            params["block_explained_variance"] = self.block_explained_variance_
            params["n_outliers"] = int(self.n_outliers_)
        return params, arrays

    @classmethod
    def from_state_dict(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> SegmentModel:
        if params.get("type") != "SegmentModel" or params.get("version") not in _FORMATS:
            raise ValueError("not a SegmentModel state (or an unsupported version)")
        fmt = int(params["version"])
        self = cls(
            params["weights"],
            ReduceSpec(**params["reduce"]),
            ClusterSpec(**params["cluster"]),
            params.get("input_names"),
        )
        self.format_version_ = fmt
        self.n_features_in_ = [int(d) for d in params["n_features_in"]]
        self._dim = sum(self.n_features_in_)
        self.n_samples_fit_ = int(params["n_samples_fit"])
        self.k_ = int(params["k"])
        self.n_clusters_ = int(params["n_clusters"])
        ks = params.get("k_scores")
        self.k_scores_ = {int(k): float(v) for k, v in ks.items()} if ks else None
        self.mean_distance_ = float(params["mean_distance"])
        self.block_factors_ = np.asarray(arrays["block_factors"], dtype=np.float64)
        self.centers_ = np.asarray(arrays["centers"], dtype=np.float32)
        self.cluster_size_ = np.asarray(arrays["cluster_size"], dtype=np.int64)
        self.cluster_mean_distance_ = np.asarray(arrays["cluster_mean_distance"], dtype=np.float64)
        self.cluster_p95_distance_ = np.asarray(arrays["cluster_p95_distance"], dtype=np.float64)
        self.pca_mean_ = self.pca_components_ = self.explained_variance_ratio_ = None
        if "pca_components" in arrays:
            self.pca_mean_ = np.asarray(arrays["pca_mean"], dtype=np.float64)
            self.pca_components_ = np.asarray(arrays["pca_components"], dtype=np.float64)
            self.explained_variance_ratio_ = np.asarray(
                arrays["explained_variance_ratio"], dtype=np.float64
            )
        self.radius_ = (
            np.asarray(arrays["radius"], dtype=np.float32) if "radius" in arrays else None
        )
        self.gmm_weights_ = self.gmm_covariances_ = None
        if "gmm_weights" in arrays:
            self.gmm_weights_ = np.asarray(arrays["gmm_weights"], dtype=np.float64)
            self.gmm_covariances_ = np.asarray(arrays["gmm_covariances"], dtype=np.float64)
        self.block_means_ = self.block_components_ = self.block_explained_variance_ = None
        self.knn_points_ = self.knn_labels_ = self.knn_threshold_ = None
        self.block_shares_ = None
        if fmt >= 2:
            nb = len(self.n_features_in_)
            self.block_components_ = [
                np.asarray(arrays[f"block_components_{i}"], dtype=np.float64)
                if f"block_components_{i}" in arrays
                else None
                for i in range(nb)
            ]
            self.block_means_ = [
                np.asarray(arrays[f"block_mean_{i}"], dtype=np.float64)
                if f"block_mean_{i}" in arrays
                else None
                for i in range(nb)
            ]
            self.block_explained_variance_ = [
                float(x) for x in params.get("block_explained_variance") or [1.0] * nb
            ]
            shares = params.get("block_shares")
            self.block_shares_ = [float(x) for x in shares] if shares is not None else None
            self.assigned_size_ = np.asarray(arrays["assigned_size"], dtype=np.int64)
            self.n_outliers_ = int(params.get("n_outliers", 0))
            if "knn_points" in arrays:
                self.knn_points_ = np.ascontiguousarray(arrays["knn_points"], dtype=np.float32)
                self.knn_labels_ = np.asarray(arrays["knn_labels"], dtype=np.int32)
                self.knn_threshold_ = np.asarray(arrays["knn_threshold"], dtype=np.float64)
                self.knn_k_ = int(arrays["knn_k"][0])
        else:
            # format 1 stored no assigned counts: the per-cluster sizes (by the
            # cluster each distance refers to) are the same except that hdbscan
            # outliers were counted in their nearest cluster
            self.assigned_size_ = self.cluster_size_.copy()
            self.n_outliers_ = 0
        self._prepare()
        return self


# ---------------------------------------------------------------------- combine helpers


def component_budgets(dims: Sequence[int], n_components: int) -> list[int]:
    """Columns each block keeps in the clustered space: `n_components` shared
    by water-filling from the smallest block up; a block gets
    max(1, remaining // blocks_left), and a block with no more columns than
    that keeps them all (and leaves the rest to the larger blocks).
    [384, 6] with 16 -> [10, 6]; [384, 384] -> [8, 8]; [6, 4] -> [6, 4]."""
    out = [0] * len(dims)
    remaining = int(n_components)
    order = sorted(range(len(dims)), key=lambda i: (dims[i], i))
    for j, i in enumerate(order):
        share = max(1, remaining // (len(dims) - j))
        out[i] = min(int(dims[i]), share)
        remaining = max(0, remaining - out[i])
    return out


def _fix_signs(comps: np.ndarray) -> np.ndarray:
    """Largest loading of each component positive (reproducible refits)."""
    signs = np.sign(comps[np.arange(comps.shape[0]), np.argmax(np.abs(comps), axis=1)])
    signs[signs == 0] = 1.0
    return comps * signs[:, None]


def _block_pca(
    b: np.ndarray, n: int, mean: np.ndarray, nc: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(components (nc, d), eigenvalues as spreads, descending) of one block:
    the centred covariance over at most PCA_FIT_MAX sampled rows (float32
    chunk products accumulated in float64), or randomized SVD on PCA_SAMPLE
    rows for blocks wider than PCA_COVARIANCE_MAX_DIM. Eigenvalues are
    divided by the row count (not count - 1): mean squared distances, like
    the spreads of `_block_stats`."""
    d = b.shape[1]
    if d > PCA_COVARIANCE_MAX_DIM:
        from sklearn.decomposition import PCA

        idx = sample_indices(n, PCA_SAMPLE, seed)
        pca = PCA(n_components=nc, svd_solver="randomized", random_state=seed)
        pca.fit(b[idx].astype(np.float64))
        m = idx.size
        comps = pca.components_
        evals = pca.explained_variance_ * (m - 1) / max(m, 1)
    else:
        idx = sample_indices(n, PCA_FIT_MAX, seed) if n > PCA_FIT_MAX else None
        m = n if idx is None else idx.size
        mean32 = mean.astype(np.float32)
        cov = np.zeros((d, d))
        for s, e in chunks(m):
            rows = slice(s, e) if idx is None else idx[s:e]
            x = np.asarray(b[rows], dtype=np.float32) - mean32
            cov += x.T @ x
        cov /= max(m, 1)
        w, v = np.linalg.eigh(cov)
        order = np.argsort(w)[::-1][:nc]
        comps = v[:, order].T
        evals = w[order]
    return _fix_signs(np.asarray(comps, dtype=np.float64)), np.asarray(evals, dtype=np.float64)


# ---------------------------------------------------------------------- clusterer helpers


def _warm_start(Z: np.ndarray, prev: np.ndarray, k: int, seed: int) -> np.ndarray | None:
    """k starting centres: the centroids (in Z's space) of the k largest previous
    segments; when there were fewer than k, the remaining centres are the
    sample points farthest from those (a k-means++-like completion)."""
    prev = np.asarray(prev).ravel()
    if prev.shape[0] != Z.shape[0]:
        return None
    ids, counts = np.unique(prev[prev >= 0], return_counts=True)
    if ids.size == 0:
        return None
    order = np.argsort(-counts, kind="stable")[:k]
    centres = [Z[prev == ids[i]].mean(axis=0, dtype=np.float64) for i in order]
    if len(centres) < k:
        idx = sample_indices(Z.shape[0], 20000, seed)
        S = Z[idx].astype(np.float64)
        while len(centres) < k:
            C = np.asarray(centres)
            d = ((S[:, None, :] - C[None, :, :]) ** 2).sum(-1).min(axis=1)
            centres.append(S[int(np.argmax(d))])
    return np.asarray(centres, dtype=np.float64)


def _fit_kmeans(
    Z: np.ndarray,
    k: int,
    method: str,
    seed: int,
    init: np.ndarray | None = None,
    starts: int = KMEANS_STARTS,
) -> np.ndarray:
    """kmeans: the best (lowest inertia) of KMEANS_STARTS k-means++ starts on
    a seeded sample of at most KMEANS_SAMPLE rows, refined on all rows; with a
    warm start `init`, that is refined on all rows too and kept unless the
    fresh fit's inertia is lower by more than WARM_START_TOLERANCE.
    minibatch_kmeans: as in format 1."""
    from sklearn.cluster import KMeans

    if method == "minibatch_kmeans":
        return _fit_kmeans_v1(Z, k, method, seed, init=init)
    n = Z.shape[0]
    # fewer distinct points than k: sklearn warns and duplicates centres; harmless here
    with _quiet_convergence():
        idx = sample_indices(n, KMEANS_SAMPLE, seed)
        S = Z[idx] if idx.size < n else Z
        est = KMeans(n_clusters=k, n_init=starts, random_state=seed).fit(S)
        if idx.size < n:
            est = KMeans(n_clusters=k, init=est.cluster_centers_, n_init=1, random_state=seed).fit(
                Z
            )
        if init is not None:
            warm = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed).fit(Z)
            if est.inertia_ >= warm.inertia_ * (1.0 - WARM_START_TOLERANCE):
                est = warm
    return np.asarray(est.cluster_centers_, dtype=np.float32)


@contextlib.contextmanager
def _quiet_convergence():
    """sklearn's ConvergenceWarning (duplicate points, fewer distinct
    clusters than asked) printed a library source line into the run's output."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _fit_kmeans_v1(
    Z: np.ndarray, k: int, method: str, seed: int, init: np.ndarray | None = None
) -> np.ndarray:
    """Format 1 k-means (sklearn KMeans, best of 3 on all rows), and
    minibatch_kmeans in both formats."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    with _quiet_convergence():
        if init is not None:  # warm start from the previous assignment: one run from there
            if method == "minibatch_kmeans":
                est = MiniBatchKMeans(
                    n_clusters=k,
                    init=init,
                    n_init=1,
                    random_state=seed,
                    batch_size=min(4096, Z.shape[0]),
                )
            else:
                est = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed)
        elif method == "minibatch_kmeans":
            # n_init=3: only the cheap initialisation is repeated (on init_size
            # rows); the minibatch run itself happens once
            est = MiniBatchKMeans(
                n_clusters=k, random_state=seed, n_init=3, batch_size=min(4096, Z.shape[0])
            )
        else:
            est = KMeans(n_clusters=k, n_init=3, random_state=seed)
        est.fit(Z)
    return np.asarray(est.cluster_centers_, dtype=np.float32)


def _ward_tree(Zs: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage

    if Zs.shape[0] < 2:
        return np.empty((0, 4))
    return linkage(Zs.astype(np.float64), method="ward")


def _ward_labels(tree: np.ndarray, k: int) -> np.ndarray:
    """Cut a Ward tree into (at most) k clusters, relabelled 0..k'-1 in order of first row."""
    from scipy.cluster.hierarchy import fcluster

    if tree.shape[0] == 0:
        return np.zeros(1, dtype=np.int64)
    raw = fcluster(tree, t=k, criterion="maxclust")
    _, first, inv = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inv].astype(np.int64)


def _means(Z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = int(labels.max()) + 1
    sums = np.zeros((k, Z.shape[1]))
    np.add.at(sums, labels, Z.astype(np.float64))
    counts = np.bincount(labels, minlength=k)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)
