"""Pickle-free persistence of fitted objects.

Every fitted object in segtool.ml has `state_dict() -> (params, arrays)` where
`params` is JSON-able (str/int/float/bool/None/list/dict) and `arrays` maps
names to plain numeric numpy arrays, and a `from_state_dict(params, arrays)`
classmethod. The caller stores `params` as JSON and `arrays` as an npz blob
made by `to_npz_bytes`; loading uses `np.load(..., allow_pickle=False)`, so a
tampered blob can never execute code.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping

import numpy as np


def to_npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a dict of numeric arrays into npz bytes (no object arrays)."""
    clean: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise TypeError(f"array '{name}' has dtype object; only numeric/str arrays are stored")
        clean[name] = a
    buf = io.BytesIO()
    np.savez(buf, **clean)
    return buf.getvalue()


def from_npz_bytes(b: bytes) -> dict[str, np.ndarray]:
    """Inverse of `to_npz_bytes`. Never unpickles."""
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def check_params(params: dict) -> dict:
    """Raise TypeError if `params` does not survive a JSON round trip unchanged in kind."""
    json.dumps(params, allow_nan=True)
    return params


def roundtrip(obj):
    """state_dict -> JSON + npz -> from_state_dict. Handy in tests and for deep copies."""
    params, arrays = obj.state_dict()
    params2 = json.loads(json.dumps(params))
    arrays2 = from_npz_bytes(to_npz_bytes(arrays))
    return type(obj).from_state_dict(params2, arrays2)
