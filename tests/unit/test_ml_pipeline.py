from __future__ import annotations

import json

import numpy as np
import pytest

from segtool.errors import DataError
from segtool.ml.drift import drift_score
from segtool.ml.metrics import adjusted_rand
from segtool.ml.pipeline import SegmentModel
from segtool.ml.serialize import from_npz_bytes, roundtrip, to_npz_bytes
from segtool.project.specs import ClusterSpec, ReduceSpec

METHODS = ["kmeans", "minibatch_kmeans", "gmm", "agglomerative", "hdbscan"]


def blobs(n=1200, k=4, dim_emb=24, dim_feat=3, seed=0, spread=0.05):
    """Embedding block (unit vectors around k directions) + a feature block that
    agrees with the clusters; returns blocks and true labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, dim_emb))
    emb = centers[y] + spread * np.linalg.norm(centers, axis=1).mean() * rng.normal(
        size=(n, dim_emb)
    )
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    fc = rng.normal(scale=4, size=(k, dim_feat))
    feat = fc[y] + rng.normal(size=(n, dim_feat))
    return [emb.astype(np.float32), feat.astype(np.float32)], y


@pytest.fixture(scope="module")
def data():
    return blobs()


def model(method="kmeans", k=4, reduce="pca", **kw):
    return SegmentModel(
        [1.0, 0.5],
        ReduceSpec(method=reduce, n_components=6),
        ClusterSpec(method=method, k=k, seed=3, **kw),
    )


def test_kmeans_recovers_blobs(data):
    blocks, y = data
    m = model().fit(blocks)
    labels, dist, conf = m.predict(blocks)
    assert labels.dtype == np.int64 and dist.dtype == np.float32 and conf.dtype == np.float32
    assert adjusted_rand(y, labels) > 0.95
    assert np.array_equal(labels, m.labels_)
    assert ((conf >= 0) & (conf <= 1)).all() and (dist >= 0).all()
    assert m.n_clusters_ == 4 and m.pca_components_.shape == (6, 27)


@pytest.mark.parametrize("method", METHODS)
def test_every_clusterer_separates_blobs(data, method):
    blocks, y = data
    m = model(method, min_cluster_size=20, sample_size=600).fit(blocks)
    labels, _, conf = m.predict(blocks)
    keep = labels >= 0
    assert keep.mean() > 0.9
    assert adjusted_rand(y[keep], labels[keep]) > 0.95
    assert ((conf >= 0) & (conf <= 1)).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reduce", ["pca", "none"])
def test_state_dict_roundtrip_npz_identical_predict(data, method, reduce):
    blocks, _ = data
    m = model(method, reduce=reduce, min_cluster_size=20, sample_size=600).fit(blocks)
    params, arrays = m.state_dict()
    params2 = json.loads(json.dumps(params))  # JSON-able
    blob = to_npz_bytes(arrays)
    m2 = SegmentModel.from_state_dict(params2, from_npz_bytes(blob))
    for a, b in zip(m.predict(blocks), m2.predict(blocks), strict=True):
        np.testing.assert_array_equal(a, b)
    d1, d2 = drift_score(m, blocks), drift_score(m2, blocks)
    assert d1 == d2


@pytest.mark.parametrize("method", METHODS)
def test_single_user_predict_equals_batch(data, method):
    blocks, _ = data
    m = model(method, min_cluster_size=20, sample_size=600).fit(blocks)
    full = m.predict(blocks)
    for i in [0, 1, 17, 599, 1199]:
        one = m.predict([b[i : i + 1] for b in blocks])
        for a, b in zip(full, one, strict=True):
            assert a[i] == b[0]
    sub = m.predict([b[100:357] for b in blocks])
    for a, b in zip(full, sub, strict=True):
        np.testing.assert_array_equal(a[100:357], b)


def test_predict_is_deterministic_and_fit_is_seeded(data):
    blocks, _ = data
    a = model("kmeans").fit(blocks)
    b = model("kmeans").fit(blocks)
    np.testing.assert_array_equal(a.centers_, b.centers_)
    np.testing.assert_array_equal(a.predict(blocks)[0], a.predict(blocks)[0])


def test_k_auto_picks_4_on_4_blobs(data):
    blocks, y = data
    m = model(k="auto", k_range=(2, 8)).fit(blocks)
    assert m.k_ == 4 and set(m.k_scores_) == set(range(2, 9))
    assert adjusted_rand(y, m.labels_) > 0.95
    m2 = roundtrip(m)
    assert m2.k_ == 4 and m2.k_scores_ == m.k_scores_


def test_k_auto_agglomerative_and_gmm(data):
    blocks, _ = data
    for method in ("agglomerative", "gmm"):
        assert model(method, k="auto", k_range=(2, 6), sample_size=400).fit(blocks).k_ == 4


def test_k_larger_than_population():
    blocks = [np.random.default_rng(0).normal(size=(5, 3))]
    with pytest.raises(DataError) as ei:
        SegmentModel([1.0], None, ClusterSpec(k=8)).fit(blocks)
    assert ei.value.message == "k=8 is larger than the population (5 users)"
    assert ei.value.hint


def test_empty_input_and_nan_blocks():
    with pytest.raises(DataError, match="empty"):
        SegmentModel([1.0], None, ClusterSpec(k=2)).fit([np.zeros((0, 3))])
    x = np.ones((10, 3))
    x[[2, 7], 1] = np.nan
    with pytest.raises(DataError, match=r"'emb'.*2 user.*keys k2, k7"):
        SegmentModel([1.0], None, ClusterSpec(k=2), input_names=["emb"]).fit(
            [x], keys=np.array([f"k{i}" for i in range(10)])
        )


def test_nan_in_second_block_named_at_fit_and_predict(data):
    blocks, _ = data
    names = ["story", "rfm"]
    feat = blocks[1].copy()
    feat[5, 2] = np.inf
    m = SegmentModel([1.0, 0.5], ReduceSpec(method="pca"), ClusterSpec(k=4), input_names=names)
    with pytest.raises(DataError, match=r"input 'rfm' has NaN/inf values for 1 user.*rows 5"):
        m.fit([blocks[0], feat])
    m.fit(blocks)
    with pytest.raises(DataError, match=r"input 'rfm'.*keys u5"):
        m.predict([blocks[0], feat], keys=np.array([f"u{i}" for i in range(len(feat))]))


def test_predict_rejects_wrong_dimensions(data):
    blocks, _ = data
    m = model().fit(blocks)
    with pytest.raises(DataError, match="dimensions"):
        m.predict([blocks[0][:, :10], blocks[1]])


def test_block_weights_balance_dimensions():
    """A 2-D feature block is not drowned by a 300-D block of the same scale:
    each block's mean squared distance to its mean becomes its weight."""
    rng = np.random.default_rng(1)
    big = rng.normal(size=(200, 300))
    small = rng.normal(size=(200, 2))
    m = SegmentModel([1.0, 0.5], None, ClusterSpec(k=2)).fit([big, small])
    Z = m.transform([big, small]).astype(np.float64)
    spread = lambda X: ((X - X.mean(0)) ** 2).sum(1).mean()  # noqa: E731
    np.testing.assert_allclose(spread(Z[:, :300]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(spread(Z[:, 300:]), 0.5, rtol=1e-5)


def test_block_weights_use_centred_spread():
    """Unit-length vectors clustered around one direction have norm 1 but a
    small spread; they must still count as much as a standardised feature block."""
    rng = np.random.default_rng(2)
    direction = np.ones(50) / np.sqrt(50)
    emb = direction + 0.05 * rng.normal(size=(300, 50))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    feats = rng.normal(size=(300, 3))
    m = SegmentModel([1.0, 1.0], None, ClusterSpec(k=2)).fit([emb, feats])
    Z = m.transform([emb, feats]).astype(np.float64)
    spread = lambda X: ((X - X.mean(0)) ** 2).sum(1).mean()  # noqa: E731
    np.testing.assert_allclose(spread(Z[:, :50]), spread(Z[:, 50:]), rtol=1e-4)


def test_pca_components_capped_by_samples():
    x = np.random.default_rng(0).normal(size=(5, 40))
    m = SegmentModel([1.0], ReduceSpec(method="pca", n_components=16), ClusterSpec(k=2)).fit([x])
    assert m.pca_components_.shape == (5, 40)


def test_pca_matches_sklearn_subspace(data):
    from sklearn.decomposition import PCA

    blocks, _ = data
    m = model().fit(blocks)
    X = np.concatenate(
        [b.astype(np.float64) * f for b, f in zip(blocks, m.block_factors_, strict=True)], 1
    )
    ref = PCA(n_components=6).fit(X)
    # same components up to sign
    dots = np.abs(np.sum(ref.components_ * m.pca_components_, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-4)


def test_hdbscan_marks_outliers(data):
    blocks, y = data
    rng = np.random.default_rng(5)
    far_emb = rng.normal(size=(15, 24)).astype(np.float32)
    far_emb /= np.linalg.norm(far_emb, axis=1, keepdims=True)
    far_feat = rng.uniform(-60, 60, size=(15, 3)).astype(np.float32)
    both = [np.concatenate([blocks[0], far_emb]), np.concatenate([blocks[1], far_feat])]
    m = model("hdbscan", k=None, min_cluster_size=30).fit(both)
    labels, dist, conf = m.predict(both)
    assert m.n_clusters_ == 4
    assert (labels[-15:] == -1).mean() > 0.8
    assert (conf[labels == -1] == 0).all()
    assert adjusted_rand(y, labels[:-15]) > 0.95
    # a brand-new faraway user is an outlier too
    new = [np.ones((1, 24), np.float32) / np.sqrt(24), np.full((1, 3), 500.0, np.float32)]
    assert m.predict(new)[0][0] == -1


def test_drift_score_low_on_same_data_high_on_shifted(data):
    blocks, _ = data
    m = model().fit(blocks)
    same = drift_score(m, blocks)
    assert same["n"] == len(blocks[0])
    assert abs(same["far_share"] - 0.05) < 0.02
    assert same["distance_ratio"] == pytest.approx(1.0, rel=1e-4)
    assert same["score"] < 0.05
    fresh, _ = blobs(n=400, seed=9)  # different cluster centres: a new world
    moved = drift_score(m, fresh)
    assert moved["score"] > 0.25 and moved["far_share"] > 0.3
    empty = drift_score(m, [b[:0] for b in blocks])
    assert empty == {"score": 0.0, "far_share": 0.0, "distance_ratio": 1.0, "n": 0}


def test_pca_sampled_covariance_and_randomized_paths(data, monkeypatch):
    import segtool.ml.pipeline as pipeline

    blocks, y = data
    full = model().fit(blocks)
    monkeypatch.setattr(pipeline, "PCA_FIT_MAX", 400)
    sampled = model().fit(blocks)
    monkeypatch.setattr(pipeline, "PCA_COVARIANCE_MAX_DIM", 10)
    monkeypatch.setattr(pipeline, "PCA_SAMPLE", 500)
    randomized = model().fit(blocks)
    for m in (sampled, randomized):
        # the top components span (nearly) the same subspace as the full fit
        overlap = np.linalg.svd(full.pca_components_[:3] @ m.pca_components_[:3].T)[1]
        assert overlap.min() > 0.99
        assert adjusted_rand(y, m.labels_) > 0.95
        np.testing.assert_array_equal(roundtrip(m).predict(blocks)[0], m.labels_)


def test_large_batch_path_matches_single_users():
    """Above 4 x PROJECT_ROWS rows the projection runs with one BLAS thread;
    answers must still equal one-user-at-a-time predictions."""
    blocks, _ = blobs(n=9000, seed=4)
    m = model().fit(blocks)
    full = m.predict(blocks)
    for i in range(0, 9000, 450):
        one = m.predict([b[i : i + 1] for b in blocks])
        for a, b in zip(full, one, strict=True):
            assert a[i] == b[0]


def test_warm_start_keeps_a_previous_partition():
    """Refit from a previous assignment: on the same data the partition is kept."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(5)
    X = np.concatenate(
        [rng.normal(loc=c, size=(100, 4)) for c in (0.0, 0.7, 1.4)]
    )  # overlapping blobs
    first = SegmentModel([1.0], None, ClusterSpec(k=3, seed=1)).fit([X])
    prev, _, _ = first.predict([X])
    again = SegmentModel([1.0], None, ClusterSpec(k=3, seed=99)).fit([X], init_labels=prev)
    labels, _, _ = again.predict([X])
    assert adjusted_rand_score(prev, labels) > 0.95
    # more clusters than before: the extra centre is completed, not an error
    more = SegmentModel([1.0], None, ClusterSpec(k=4, seed=1)).fit([X], init_labels=prev)
    assert more.centers_.shape[0] == 4
