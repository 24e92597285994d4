"""Drift: the distance part and the PSI of segment shares (segtool.ml.drift),
in memory and from a stored segment table (execute/segment/update.py)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from segtool.execute.segment.update import population_drift
from segtool.ml.drift import PSI_EPSILON, drift_score, psi
from segtool.ml.pipeline import SegmentModel
from segtool.ml.serialize import roundtrip
from segtool.project.specs import ClusterSpec, ReduceSpec


def blobs(n=2000, k=4, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = rng.normal(scale=6, size=(k, dim))
    return [(centers[y] + rng.normal(size=(n, dim))).astype(np.float32)], y


@pytest.fixture(scope="module")
def fitted():
    blocks, y = blobs()
    m = SegmentModel([1.0], ReduceSpec(method="pca", n_components=4), ClusterSpec(k=4, seed=1))
    return m.fit(blocks), blocks, y


def crowd(blocks, labels, into: int, share: float, seed: int = 0):
    """A population of the same users' kind where `share` of everyone is in
    segment `into` (rows resampled with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    n_in = int(share * n)
    rows = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == into), n_in),
            rng.choice(np.flatnonzero(labels != into), n - n_in),
        ]
    )
    return [b[rows] for b in blocks]


def test_psi_basics():
    assert psi([25, 25, 25, 25], [250, 250, 250, 250]) == pytest.approx(0.0, abs=1e-12)
    assert psi([0, 10], [0, 0]) == 0.0  # nobody to compare
    # 80% of everyone into one of four equal segments: far above 0.25
    assert psi([25, 25, 25, 25], [80, 20 / 3, 20 / 3, 20 / 3]) > 1.0
    # a 10% segment that empties adds a finite ~0.1 * ln(0.1 / eps)
    emptied = psi([10, 90], [0, 100])
    assert np.isfinite(emptied)
    assert emptied == pytest.approx(
        (PSI_EPSILON - 0.1) * np.log(PSI_EPSILON / 0.1) + 0.1 * np.log(1 / 0.9), rel=1e-9
    )
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_share_shift_is_drift_even_when_distances_are_unchanged(fitted):
    """Moving 80% of users into one segment scored 0.000 by distances alone."""
    m, blocks, _ = fitted
    same = drift_score(m, blocks)
    assert same["psi"] == pytest.approx(0.0, abs=1e-9) and same["score"] < 0.05
    assert set(same) == {"score", "distance", "psi", "far_share", "distance_ratio", "n"}
    shifted = drift_score(m, crowd(blocks, m.labels_, into=2, share=0.8))
    assert shifted["distance"] < 0.1  # the users themselves look as usual
    assert shifted["psi"] > 1.0  # well above the 0.25 "significant shift" line
    assert shifted["score"] == shifted["psi"]
    # a mild reshuffle stays under the default threshold
    mild = drift_score(m, crowd(blocks, m.labels_, into=2, share=0.3))
    assert 0.0 < mild["psi"] < 0.1
    assert drift_score(roundtrip(m), blocks) == same


def _store(con, name, ids, dist):
    con.execute("CREATE SCHEMA IF NOT EXISTS segments")
    con.execute(f'CREATE OR REPLACE TABLE segments."{name}" (segment_id INTEGER, distance DOUBLE)')
    con.executemany(
        f'INSERT INTO segments."{name}" VALUES (?, ?)',
        [(int(i), None if d is None else float(d)) for i, d in zip(ids, dist, strict=True)],
    )


def test_population_drift_reports_both_parts(fitted):
    m, blocks, _ = fitted
    # stable ids differ from cluster labels: label c is segment id 10 + c
    params = {"label_to_id": {str(c): 10 + c for c in range(4)}}
    con = duckdb.connect()
    _store(con, "s", 10 + m.labels_, m.distance_)
    d = population_drift(con, "s", m, params)
    assert set(d) == {"score", "distance", "psi", "far_share", "distance_ratio", "n"}
    assert d["psi"] == 0.0 and d["score"] < 0.05 and d["n"] == len(m.labels_)

    labels, dist, _ = m.predict(crowd(blocks, m.labels_, into=1, share=0.8))
    _store(con, "s", 10 + labels, dist)
    d = population_drift(con, "s", m, params)
    assert d["psi"] > 1.0 and d["score"] == d["psi"] and d["distance"] < 0.1


def test_population_drift_counts_outliers_in_their_own_bucket():
    blocks, _ = blobs(n=1500, k=3, dim=2, seed=4)
    m = SegmentModel([1.0], None, ClusterSpec(method="hdbscan", k=None, min_cluster_size=30))
    m.fit(blocks)
    params = {"label_to_id": {"-1": -1, **{str(c): c for c in range(m.n_clusters_)}}}
    con = duckdb.connect()
    _store(con, "h", m.labels_, m.distance_)
    assert population_drift(con, "h", m, params)["psi"] == 0.0
    # half of everyone becomes an outlier
    ids = m.labels_.copy()
    ids[: len(ids) // 2] = -1
    _store(con, "h", ids, [None if i < 0 else d for i, d in zip(ids, m.distance_, strict=True)])
    assert population_drift(con, "h", m, params)["psi"] > 0.25


def test_a_fit_where_every_user_sat_on_a_centroid_gives_a_finite_drift():
    """No more distinct inputs than segments: the fit-time mean distance is 0.
    The ratio to it was infinite: any user off a centroid refit the
    segmentation ('drift inf > 0.25') and run_results.json held `Infinity`."""
    import json

    from segtool.ml.drift import drift_from_distances

    labels = np.arange(100) % 2
    dist = np.zeros(100)
    dist[:5] = 0.5  # 5%: the share expected past the fit-time p95
    few = drift_from_distances(labels, dist, np.zeros(2), 0.0)
    assert few["distance_ratio"] is None and few["score"] == 0.0
    json.dumps(few, allow_nan=False)
    dist[:50] = 0.5
    half = drift_from_distances(labels, dist, np.zeros(2), 0.0)
    assert half["score"] == pytest.approx((0.5 - 0.05) / 0.95)
    assert drift_from_distances(labels, np.zeros(100), np.zeros(2), 0.0)["distance_ratio"] == 1.0
