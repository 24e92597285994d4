"""The tables of a segmentation: current assignment, history, fitted model,
catalog and events (names in state/tables.py). No pickle: a fitted model is
params JSON plus one npz blob."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.errors import ProjectError
from segtool.state import tables
from segtool.state.db import column_type, now, table_exists
from segtool.state.result import one

# ----------------------------------------------------------------------------- fitted models


def active_fit(con, name: str) -> tuple | None:
    """(fit_id, fit_hash, params, arrays) of the active fit, or None."""
    if not table_exists(con, tables.STATE, "fitted"):
        return None
    return one(
        con.execute(
            f"SELECT fit_id, fit_hash, params, arrays FROM {tables.FITTED} WHERE segmentation = ? AND active ORDER BY fit_id DESC LIMIT 1",
            [name],
        )
    )


def has_active_fit(con, name: str) -> bool:
    """Whether NAME has an active fit (without reading its arrays)."""
    if not table_exists(con, tables.STATE, "fitted"):
        return False
    return bool(
        one(
            con.execute(
                f"SELECT count(*) FROM {tables.FITTED} WHERE segmentation = ? AND active", [name]
            )
        )[0]
    )


def restore(row) -> tuple[list, Any, dict]:
    """(feature transformers, SegmentModel, params) of a stored fit."""
    from segtool.ml.features import FeatureTransformer
    from segtool.ml.pipeline import SegmentModel
    from segtool.ml.serialize import from_npz_bytes

    params = json.loads(row[2])
    arrays = from_npz_bytes(bytes(row[3]))
    transformers = []
    for i, p in enumerate(params["features"]):
        if p is None:
            transformers.append(None)
            continue
        pre = f"ft{i}/"
        transformers.append(
            FeatureTransformer.from_state_dict(
                p, {a[len(pre) :]: v for a, v in arrays.items() if a.startswith(pre)}
            )
        )
    model = SegmentModel.from_state_dict(
        params["model"], {a[6:]: v for a, v in arrays.items() if a.startswith("model/")}
    )
    return transformers, model, params


def save_fit(con, name: str, fhash: str, run_id: int, transformers, model, params: dict) -> None:
    from segtool.ml.serialize import to_npz_bytes

    params = dict(params, features=[])
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(transformers):
        if t is None:
            params["features"].append(None)
            continue
        p, a = t.state_dict()
        params["features"].append(p)
        arrays.update({f"ft{i}/{n}": v for n, v in a.items()})
    p, a = model.state_dict()
    params["model"] = p
    arrays.update({f"model/{n}": v for n, v in a.items()})
    fit_id = one(
        con.execute(
            f"SELECT coalesce(max(fit_id), 0) + 1 FROM {tables.FITTED} WHERE segmentation = ?",
            [name],
        )
    )[0]
    con.execute(f"UPDATE {tables.FITTED} SET active = false WHERE segmentation = ?", [name])
    con.execute(
        f"INSERT INTO {tables.FITTED} VALUES (?, ?, ?, ?, ?, ?, ?, true)",
        [name, fit_id, fhash, run_id, now(), json.dumps(params), to_npz_bytes(arrays)],
    )


# ----------------------------------------------------------------------------- assignments


def previous_ids(con, proj, name: str, keys: np.ndarray) -> np.ndarray:
    """Each user's current segment id (-2: none)."""
    if not table_exists(con, tables.RESULTS, name):
        return np.full(len(keys), -2, dtype=np.int64)
    from segtool.state.frames import first_column, registered

    k = quote_ident(proj.key)
    with registered(con, "__segtool_keys", {"k": keys, "i": np.arange(len(keys))}):
        ids = first_column(
            con,
            f"SELECT coalesce(s.segment_id, -2) FROM __segtool_keys u LEFT JOIN {tables.segments(name)} s ON s.{k} = u.k ORDER BY u.i",
        )
    return ids.astype(np.int64)


def write_assignments(con, proj, name, keys, ids, dist, conf, run_id: int, *, full: bool) -> None:
    from segtool.compile.segments import base_model
    from segtool.state.frames import registered

    k = quote_ident(proj.key)
    # keys travel as text when Polars cannot type them (a UUID): the table
    # keeps the model's key type, as texts, inputs and history do
    key_type = column_type(con, tables.MODELS, base_model(proj, proj.segmentations[name]), proj.key)
    batch = {
        "k": keys,
        "segment_id": np.asarray(ids, dtype=np.int32),
        "distance": np.asarray(dist, dtype=np.float64),
        "confidence": np.asarray(conf, dtype=np.float64),
    }
    with registered(con, "__segtool_raw_assign", batch):
        assigned = f"""(SELECT CAST(k AS {key_type}) AS k, segment_id, distance, confidence
            FROM __segtool_raw_assign)"""
        select = f"""SELECT a.k AS {k}, a.segment_id, CASE WHEN a.segment_id = -1 THEN 'outlier' ELSE coalesce(c.label, 'segment ' || a.segment_id) END AS segment,
            a.distance, a.confidence, {int(run_id)} AS run_id, ?::TIMESTAMP AS updated_at
            FROM {assigned} a LEFT JOIN {tables.CATALOG} c ON c.segmentation = ? AND c.segment_id = a.segment_id"""
        # updated_at in UTC, as every other time segtool writes: DuckDB's
        # now()::TIMESTAMP is the session's local time (5 hours behind the
        # run's own start in New York)
        params = [now(), name]
        if full or not table_exists(con, tables.RESULTS, name):
            con.execute(
                f"CREATE OR REPLACE TABLE {tables.segments(name)} AS {select} ORDER BY 1", params
            )
        else:
            con.execute(
                f"DELETE FROM {tables.segments(name)} WHERE {k} IN (SELECT k FROM {assigned})"
            )
            con.execute(f"INSERT INTO {tables.segments(name)} {select}", params)


def update_history(con, proj, name: str, run_id: int, touched: str | None = None) -> int:
    """Close spells that ended, open new ones. Returns how many users moved
    (had an open spell in another segment). `touched`: a query of the only
    keys whose segment can have changed (an assignment of new and changed
    users); None after a fit, which may move anyone."""
    k = quote_ident(proj.key)
    hist = tables.history(name)
    seg = tables.segments(name)
    if not table_exists(con, tables.RESULTS, tables.history_name(name)):
        key_type = column_type(con, tables.RESULTS, name, proj.key) or "VARCHAR"
        con.execute(
            f"""CREATE TABLE {hist} ({k} {key_type}, segment_id INTEGER, segment VARCHAR,
            valid_from_run INTEGER, valid_to_run INTEGER, valid_from TIMESTAMP, valid_to TIMESTAMP)"""
        )
        touched = None  # a new history opens a spell for every user, not only the touched
    only = f" AND h.{k} IN ({touched})" if touched else ""
    only_s = f" AND s.{k} IN ({touched})" if touched else ""
    # after a fit a spell also ends where the refit relabelled its id: the
    # spell's `segment` is then the label for the whole spell, and as-of
    # queries (diff --data) give the label of that run, not the one the id
    # had when the user entered it. Assignments keep the labels (no fit)
    same_label = "" if touched else " AND s.segment IS NOT DISTINCT FROM h.segment"
    ts = now()
    moved = one(
        con.execute(
            f"""SELECT count(*) FROM {hist} h JOIN {seg} s ON s.{k} = h.{k}
        WHERE h.valid_to_run IS NULL AND h.segment_id <> s.segment_id{only}"""
        )
    )[0]
    con.execute(
        f"""UPDATE {hist} h SET valid_to_run = ?, valid_to = ?
        WHERE h.valid_to_run IS NULL{only} AND NOT EXISTS (
            SELECT 1 FROM {seg} s WHERE s.{k} = h.{k} AND s.segment_id = h.segment_id{same_label})""",
        [run_id, ts],
    )
    con.execute(
        f"""INSERT INTO {hist} SELECT s.{k}, s.segment_id, s.segment, ?, NULL, ?, NULL FROM {seg} s
        WHERE NOT EXISTS (SELECT 1 FROM {hist} h WHERE h.{k} = s.{k} AND h.valid_to_run IS NULL){only_s}""",
        [run_id, ts],
    )
    return int(moved)


# ----------------------------------------------------------------------------- catalog


def write_catalog(con, name: str, catalog: dict, run_id: int, ids: np.ndarray) -> None:
    """catalog: segment id -> (label, keywords, features, traits)."""
    sizes = dict(zip(*np.unique(ids, return_counts=True)))
    existing = {
        r[0]
        for r in con.execute(
            f"SELECT segment_id FROM {tables.CATALOG} WHERE segmentation = ?", [name]
        ).fetchall()
    }
    for sid, (label, kws, feats, traits) in catalog.items():
        size = int(sizes.get(sid, 0))
        values = [label, json.dumps(kws), json.dumps(feats), json.dumps(traits, default=str), size]
        if sid in existing:
            con.execute(
                f"UPDATE {tables.CATALOG} SET label = ?, keywords = ?, features = ?, traits = ?, "
                "size = ?, died_run = NULL WHERE segmentation = ? AND segment_id = ?",
                [*values, name, int(sid)],
            )
        else:
            con.execute(
                f"INSERT INTO {tables.CATALOG} (label, keywords, features, traits, size, "
                "segmentation, segment_id, born_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [*values, name, int(sid), run_id],
            )
    retire(con, name, [int(s) for s in catalog], run_id)


def retire(con, name: str, live: list[int], run_id: int) -> None:
    """Every id of NAME not in `live` is retired at `run_id` (size 0)."""
    con.execute(
        f"UPDATE {tables.CATALOG} SET died_run = ?, size = 0 WHERE segmentation = ? AND died_run IS NULL AND NOT list_contains(?, segment_id)",
        [run_id, name, live],
    )


def refresh_sizes(con, name: str) -> None:
    con.execute(
        f"""UPDATE {tables.CATALOG} c SET size = coalesce((SELECT count(*) FROM {tables.segments(name)} s WHERE s.segment_id = c.segment_id), 0)
        WHERE c.segmentation = ?""",
        [name],
    )


def record_events(con, name: str, run_id: int, events: dict) -> None:
    for ev, items in events.items():
        for item in items:
            con.execute(
                f"INSERT INTO {tables.EVENTS} VALUES (?, ?, ?, ?)",
                [name, run_id, ev.rstrip("s"), json.dumps(item)],
            )


def segment_count(con, name: str) -> int:
    return int(
        one(
            con.execute(
                f"SELECT count(DISTINCT segment_id) FROM {tables.segments(name)} WHERE segment_id >= 0"
            )
        )[0]
    )


# ----------------------------------------------------------------------------- reading


def require(project, name: str) -> None:
    project.loaded.segmentation(name)


def require_results(con, name: str) -> None:
    """The segment table of `name` exists, or a ProjectError that says to run it."""
    if not table_exists(con, tables.RESULTS, name):
        raise ProjectError(
            f"segmentation '{name}' has not been run yet", hint=f"segtool run -s +{name}"
        )


def read_segments(project, name: str):
    require(project, name)
    con = project.connect(read_only=True)
    try:
        require_results(con, name)
        return con.sql(f"SELECT * FROM {tables.segments(name)} ORDER BY 1").pl()
    finally:
        con.close()


def read_history(project, name: str):
    require(project, name)
    con = project.connect(read_only=True)
    try:
        if not table_exists(con, tables.RESULTS, tables.history_name(name)):
            raise ProjectError(
                f"segmentation '{name}' has no history yet", hint=f"segtool run -s +{name}"
            )
        return con.sql(f"SELECT * FROM {tables.history(name)} ORDER BY 1, valid_from_run").pl()
    finally:
        con.close()
