"""Apply a stored fit to a chunk of users: the one code path of local and
distributed assignment (a worker runs exactly this)."""

from __future__ import annotations

import numpy as np

# the fit a process restored last: a worker restores it once, not per chunk
_restored: dict[str, tuple] = {}


def restore(fitted) -> tuple:
    """(feature transformers, SegmentModel, params) of a `Fitted`, from its
    JSON params and npz arrays (never unpickled)."""
    hit = _restored.get(fitted.key)
    if hit is None:
        from segtool.execute.segment.store import restore as restore_row

        hit = restore_row((None, None, fitted.params, fitted.arrays))
        _restored.clear()
        _restored[fitted.key] = hit
    return hit


def predict_chunk(fitted, blocks: list, keys: np.ndarray):
    """(labels, distance, confidence) of these users: their raw input blocks
    (feature frames, vector matrices) through the fit's feature transformers
    and model, as update.assign_changed does."""
    from segtool.execute.segment.inputs import Loaded, apply_transformers

    transformers, model, _ = restore(fitted)
    return model.predict(apply_transformers(transformers, Loaded(keys, blocks, None)), keys)
