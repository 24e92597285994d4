"""Drift of a population against a fitted SegmentModel.

Definition (what `update.drift_threshold` is compared with)::

    far_share      = share of the scored users whose distance to their cluster's
                     centroid is above that cluster's fit-time 95th percentile
                     distance. On data like the fit population this is ~0.05.
    far_excess     = max(0, far_share - 0.05) / 0.95
                     (0 when as expected, 1 when every user is "far")
    distance_ratio = mean distance of the scored users / fit-time mean distance
                     (~1.0 when nothing changed; None when the fit-time mean
                     distance is 0 and now is not: the far share counts then)
    distance       = max(far_excess, distance_ratio - 1), floored at 0
    psi            = population stability index of the segment shares:
                     sum over segments (and the outlier bucket, -1) of
                     (now - fit) * ln(now / fit), each share raised to at
                     least PSI_EPSILON (1e-4) so an empty segment adds a
                     finite term (a segment of 10% that empties adds ~0.69)
    score          = max(distance, psi)

`distance` catches users who moved away from their centroids; `psi` catches
users who moved between segments (80% of everyone crowding into one segment
leaves distances unchanged but gives a PSI far above 0.25). PSI below 0.1 is
usually read as no shift, 0.1-0.25 as moderate, above 0.25 as significant: the
default `drift_threshold` (0.25) is that line for both parts. With no users to
score, the score is 0.

The fit-time shares are the model's `assigned_size_` and `n_outliers_` (for
format-1 models, `cluster_size_` and no outliers). hdbscan outliers (-1) count
against the nearest cluster in the distance part, as at fit time, and in their
own bucket in the PSI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .pipeline import SegmentModel

EXPECTED_FAR_SHARE = 0.05
PSI_EPSILON = 1e-4


def drift_from_distances(
    labels: np.ndarray, dist: np.ndarray, p95: np.ndarray, mean_distance: float
) -> dict:
    """The distance part: {"score", "far_share", "distance_ratio", "n"} for
    users in clusters `labels` (-1: none) at distances `dist` from their
    centroids, against the fit-time per-cluster 95th percentiles `p95` and
    mean distance."""
    dist = np.asarray(dist, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = int(dist.shape[0])
    if n == 0:
        return {"score": 0.0, "far_share": 0.0, "distance_ratio": 1.0, "n": 0}
    ok = labels >= 0
    far_share = float((dist[ok] > np.asarray(p95)[labels[ok]]).mean()) if ok.any() else 0.0
    base = float(mean_distance)
    mean = float(dist.mean())
    far_excess = max(0.0, far_share - EXPECTED_FAR_SHARE) / (1.0 - EXPECTED_FAR_SHARE)
    if base > 0:
        ratio: float | None = mean / base
    elif mean == 0:
        ratio = 1.0
    else:
        # every fit-time user sat on its centroid (no more distinct inputs than
        # segments): a ratio to 0 is infinite, which refit on any change and
        # wrote `Infinity` into run_results.json; the far share still counts
        # the users who moved off (p95 is 0 there)
        ratio = None
    score = max(0.0, far_excess, ratio - 1.0 if ratio is not None else 0.0)
    return {"score": float(score), "far_share": far_share, "distance_ratio": ratio, "n": n}


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Population stability index between two count (or share) vectors over
    the same buckets: sum (a - e) * ln(a / e) over the shares, each share
    raised to at least `eps`. 0 when either side is empty."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"expected has {e.size} buckets but actual has {a.size}")
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(max(0.0, ((a - e) * np.log(a / e)).sum()))


def fit_counts(model: SegmentModel) -> np.ndarray:
    """Fit-time users per cluster, then outliers (k + 1 buckets)."""
    return np.append(np.asarray(model.assigned_size_, dtype=np.int64), int(model.n_outliers_))


def label_counts(labels: np.ndarray, n_clusters: int, counts=None) -> np.ndarray:
    """Users per cluster 0..n_clusters-1, then outliers and unknown labels.
    `counts`: users per entry of `labels` (default one each)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    ok = (labels >= 0) & (labels < n_clusters)
    w = np.ones(len(labels), np.int64) if counts is None else np.asarray(counts, np.int64).ravel()
    per = np.bincount(labels[ok], weights=w[ok], minlength=n_clusters).astype(np.int64)
    return np.append(per, int(w[~ok].sum()))


def combine(distance_part: dict, psi_value: float) -> dict:
    """{"score", "distance", "psi", "far_share", "distance_ratio", "n"}:
    score = max(distance part's score, PSI)."""
    d = float(distance_part["score"])
    return {
        "score": max(d, float(psi_value)),
        "distance": d,
        "psi": float(psi_value),
        "far_share": distance_part["far_share"],
        "distance_ratio": distance_part["distance_ratio"],
        "n": distance_part["n"],
    }


def drift_score(
    model: SegmentModel, blocks: Sequence[np.ndarray], keys: np.ndarray | None = None
) -> dict:
    """Drift of the users in `blocks` (taken as the whole current population),
    scored with the model: distance part and PSI of their segment shares."""
    labels, dist, _, ref = model.predict_detail(blocks, keys)
    part = drift_from_distances(ref, dist, model.cluster_p95_distance_, model.mean_distance_)
    shift = psi(fit_counts(model), label_counts(labels, model.n_clusters_)) if len(labels) else 0.0
    return combine(part, shift)
