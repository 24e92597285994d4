"""Keep a fitted clustering up to date: assign the new and changed users the
plan found with the stored model, drop users who left, and measure drift over
the whole population (the `on_drift` policy the plan states)."""

from __future__ import annotations

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.execute.segment import store
from segtool.state import tables
from segtool.state.result import one


def assign_changed(ctx, seg, users: str, changed: str, fit_row) -> dict:
    """Assign the users of `changed` (key, __ord 1..n) with the stored fit,
    through the target's executor as a sampled fit's other users are (Ray
    above `assign_min_users`); remove users not in `users`."""
    from segtool.execute.executors import assign_users

    con = ctx.con
    name = seg.name
    k = quote_ident(ctx.loaded.key)
    removed = one(
        con.execute(
            f"DELETE FROM {tables.segments(name)} WHERE {k} NOT IN (SELECT {k} FROM {users})"
        )
    )[0]
    n = one(con.execute(f"SELECT count(*) FROM {changed}"))[0]
    out = {"assigned": int(n), "removed": int(removed)}
    if n:
        out.update(assign_users(ctx, seg, changed, n, fit_row))
    if seg.update.refit == "on_drift":
        _, model, params = store.restore(fit_row)
        out["drift"] = population_drift(con, name, model, params)
    return out


def population_drift(con, name: str, model, params: dict) -> dict:
    """Drift of the whole current population against the fit-time baseline,
    from the stored assignments (no model evaluation; ml/drift.py defines the
    score): the distance part over users in a segment, and the PSI of the
    segment shares (outliers, -1, in their own bucket) against the fit-time
    shares. Measured over everyone, not just this run's changed users, so a
    stream of small updates adds up and a handful of odd users cannot force a
    refit."""
    from segtool.ml.drift import combine, drift_from_distances, fit_counts, label_counts, psi

    seg_ids, dist = (
        np.asarray(a)
        for a in con.execute(
            f"SELECT segment_id, distance FROM {tables.segments(name)} WHERE segment_id >= 0 AND distance IS NOT NULL"
        )
        .fetchnumpy()
        .values()
    )
    id_to_label = {
        int(sid): int(lab) for lab, sid in params["label_to_id"].items() if int(lab) >= 0
    }
    # segment id -> cluster label, vectorised (a Python loop costs ~0.5 s at 1M users)
    lut = np.full(max(id_to_label, default=0) + 1, -1, dtype=np.int64)
    for sid, lab in id_to_label.items():
        lut[sid] = lab

    def to_labels(ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        known = (ids >= 0) & (ids < len(lut))
        out = np.full(len(ids), -1, dtype=np.int64)
        out[known] = lut[ids[known]]
        return out

    part = drift_from_distances(
        to_labels(seg_ids), dist, model.cluster_p95_distance_, model.mean_distance_
    )
    # the segment shares of everyone: users per cluster, then outliers (-1)
    rows = con.execute(
        f"SELECT segment_id, count(*) FROM {tables.segments(name)} GROUP BY segment_id"
    ).fetchall()
    now = label_counts(
        to_labels([r[0] for r in rows]), int(model.n_clusters_), [r[1] for r in rows]
    )
    d = combine(part, psi(fit_counts(model), now))
    return {k_: (round(v, 4) if isinstance(v, float) else v) for k_, v in d.items()}
