"""The blocks a fit or an assignment works on: each input's features (as
polars frames, transformed by the caller) or vectors (from the cache), for
a set of users in a stable order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.errors import DataError
from segtool.state import tables
from segtool.state.frames import key_column
from segtool.words import counted


@dataclass
class Loaded:
    keys: np.ndarray
    blocks: list  # polars frames (features, transformed by the caller) or float32 matrices
    raw: Any  # polars frame of the first feature set's raw columns (profiles), or None


def load_inputs(proj, fingerprint, con, seg, users_sql: str) -> Loaded:
    """Blocks for the users of `users_sql` (key + __ord), in __ord order.
    `fingerprint(encoder)` gives the cache key of each encoder."""
    from segtool.state.vectors import load_vectors

    k = quote_ident(proj.key)
    keys = key_column(con, f"SELECT {k} FROM ({users_sql}) ORDER BY __ord")
    blocks: list = []
    raw = None
    for inp in seg.inputs:
        if inp.features:
            fs = proj.features[inp.features]
            cols = ", ".join(f"m.{quote_ident(c)}" for c in fs.columns)
            df = con.sql(
                f"SELECT {cols} FROM ({users_sql}) u JOIN {tables.model(fs.model)} m ON m.{k} = u.{k} ORDER BY u.__ord"
            ).pl()
            blocks.append(df)
            if raw is None:
                raw = df
        else:
            e = inp.embedding
            mat, got = load_vectors(
                con, e.text, fingerprint(e.encoder), users_sql, proj.key, len(keys)
            )
            if got != len(keys):
                raise DataError(
                    f"segmentation '{seg.name}': {counted(len(keys) - got, 'user', verb=('has', 'have'))} no vector for text '{e.text}' / encoder '{e.encoder}'",
                    hint=f"run the embedding first: segtool run -s +{seg.name}",
                )
            blocks.append(mat)
    return Loaded(keys, blocks, raw)


def apply_transformers(transformers, loaded: Loaded) -> list:
    return [
        t.transform(b, loaded.keys) if t is not None else b
        for t, b in zip(transformers, loaded.blocks)
    ]
