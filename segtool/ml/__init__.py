"""Machine learning for segmentations: feature transforms, the segment model
(block weighting, PCA, clustering), drift, stable ids, labels and metrics.

Every fitted object round-trips through `state_dict() -> (params, arrays)` and
`Cls.from_state_dict(params, arrays)`: params are JSON, arrays are stored as
npz (see serialize.py). No pickle.

Names are imported lazily so `import segtool.ml.serialize` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FeatureTransformer": "features",
    "SegmentModel": "pipeline",
    "drift_score": "drift",
    "MatchResult": "matching",
    "match_clusters": "matching",
    "keyword_labels": "labels",
    "feature_profile": "labels",
    "segment_name": "labels",
    "transition_matrix": "metrics",
    "adjusted_rand": "metrics",
    "nmi": "metrics",
    "silhouette": "metrics",
    "to_npz_bytes": "serialize",
    "from_npz_bytes": "serialize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
