"""Small shared helpers for segtool.ml: example keys for error messages,
seeded sampling, chunked row iteration and batch-invariant distances."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Rows per chunk when streaming through large matrices. Bounds temporary memory
# (chunk x dims x 8 bytes) and keeps every stage O(chunk) in extra memory.
CHUNK_ROWS = 16384


def example_keys(keys: np.ndarray | None, mask: np.ndarray, n: int = 5) -> str:
    """A short, human list of the first `n` offending keys (or row numbers)."""
    idx = np.flatnonzero(mask)[:n]
    if keys is None:
        return "rows " + ", ".join(str(int(i)) for i in idx)
    keys = np.asarray(keys)
    return "keys " + ", ".join(str(keys[i]) for i in idx)


def sample_indices(n: int, m: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of at most `m` of `n` rows (all rows if n <= m)."""
    if n <= m:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=m, replace=False))


def chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def sq_distances(Z: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared euclidean distances (n, k) between rows of Z and rows of C.

    Computed element-wise (difference, then a reduction along the contiguous
    last axis) instead of with the ||z||^2 - 2 z.c + ||c||^2 matrix product:
    BLAS gives slightly different bits for a row depending on how many rows
    are in the batch, and we promise that one user alone gets exactly the
    same answer as in a batch.
    """
    k, d = C.shape
    out = np.empty((Z.shape[0], k), dtype=np.result_type(Z.dtype, C.dtype))
    step = max(1, (1 << 22) // max(1, k * d))  # ~4M elements of temporary per step
    for s in range(0, Z.shape[0], step):
        diff = Z[s : s + step, None, :] - C[None, :, :]
        np.einsum("ijk,ijk->ij", diff, diff, out=out[s : s + step])
    return out
