"""Comparison and quality metrics for assignments (thin wrappers over sklearn)."""

from __future__ import annotations

import numpy as np


def transition_matrix(
    a_ids: np.ndarray, b_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_ids, col_ids, counts): counts[i, j] = users with a == row_ids[i] and
    b == col_ids[j]; ids are the sorted distinct values of a and of b."""
    a = np.asarray(a_ids).ravel()
    b = np.asarray(b_ids).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a has {a.size} entries but b has {b.size}")
    rows, ri = np.unique(a, return_inverse=True)
    cols, ci = np.unique(b, return_inverse=True)
    counts = np.zeros((rows.size, cols.size), dtype=np.int64)
    np.add.at(counts, (ri.ravel(), ci.ravel()), 1)
    return rows, cols, counts


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(a).ravel(), np.asarray(b).ravel()))


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(a).ravel(), np.asarray(b).ravel()))


def silhouette(X: np.ndarray, labels: np.ndarray, sample_size: int = 10000, seed: int = 0) -> float:
    """Mean silhouette (euclidean) on a seeded sample of at most `sample_size`
    rows. Noise (labels < 0) is left out. NaN when fewer than 2 clusters or
    too few rows to score."""
    from sklearn.metrics import silhouette_score

    from ._util import sample_indices

    X = np.asarray(X)
    labels = np.asarray(labels).ravel()
    keep = np.flatnonzero(labels >= 0)
    idx = keep[sample_indices(keep.size, sample_size, seed)]
    lab = labels[idx]
    n_labels = np.unique(lab).size
    if n_labels < 2 or n_labels > idx.size - 1:
        return float("nan")
    return float(silhouette_score(X[idx], lab))
