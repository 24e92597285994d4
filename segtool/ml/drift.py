"""Drift of new / changed users against a fitted SegmentModel.

Definition (what `update.drift_threshold` is compared with)::

    far_share      = share of the scored users whose distance to their cluster's
                     centroid is above that cluster's fit-time 95th percentile
                     distance. On data like the fit population this is ~0.05.
    far_excess     = max(0, far_share - 0.05) / 0.95
                     (0 when as expected, 1 when every user is "far")
    distance_ratio = mean distance of the scored users / fit-time mean distance
                     (~1.0 when nothing changed)
    score          = max(far_excess, distance_ratio - 1), floored at 0

So `score = 0.25` means either a quarter more of the users sit outside their
cluster's usual radius than at fit time, or users are on average 25% farther
from their centroids than at fit time. The caller refits when
`score > drift_threshold`. With no users to score, the score is 0.

hdbscan outliers (-1) count against the nearest cluster, as at fit time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .pipeline import SegmentModel

EXPECTED_FAR_SHARE = 0.05


def drift_from_distances(
    labels: np.ndarray, dist: np.ndarray, p95: np.ndarray, mean_distance: float
) -> dict:
    """{"score", "far_share", "distance_ratio", "n"} for users in clusters
    `labels` (-1: none) at distances `dist` from their centroids, against the
    fit-time per-cluster 95th percentiles `p95` and mean distance."""
    dist = np.asarray(dist, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = int(dist.shape[0])
    if n == 0:
        return {"score": 0.0, "far_share": 0.0, "distance_ratio": 1.0, "n": 0}
    ok = labels >= 0
    far_share = float((dist[ok] > np.asarray(p95)[labels[ok]]).mean()) if ok.any() else 0.0
    base = float(mean_distance)
    mean = float(dist.mean())
    if base > 0:
        ratio = mean / base
    else:
        ratio = 1.0 if mean == 0 else float("inf")
    far_excess = max(0.0, far_share - EXPECTED_FAR_SHARE) / (1.0 - EXPECTED_FAR_SHARE)
    score = max(0.0, far_excess, ratio - 1.0)
    return {"score": float(score), "far_share": far_share, "distance_ratio": ratio, "n": n}


def drift_score(
    model: SegmentModel, blocks: Sequence[np.ndarray], keys: np.ndarray | None = None
) -> dict:
    """Drift of the users in `blocks`, scored with the model."""
    _, dist, _, ref = model.predict_detail(blocks, keys)
    return drift_from_distances(ref, dist, model.cluster_p95_distance_, model.mean_distance_)
