"""What the report reads from the project database: plain lists and dicts,
no markup. Every reader takes an open read-only connection."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.errors import DataError
from segtool.ml.association import RANK_ETA2
from segtool.state import tables
from segtool.state.db import RESULTS, STATE, column_types, table_exists
from segtool.state.history import changed_runs, open_at

MAP_POINTS = 3000  # users drawn on a 2-D map (a seeded sample by key hash)
PROFILE_COLUMNS = 12  # numeric columns in a feature-profile heatmap
OVER_RUNS = 30  # runs on the sizes-over-runs chart
RUNS_SHOWN = 30


def runs(con) -> list[dict]:
    rows = con.execute(
        f"SELECT run_id, started_at, finished_at, status, command, summary FROM {tables.RUNS} "
        f"ORDER BY run_id DESC LIMIT {RUNS_SHOWN}"
    ).fetchall()
    out = []
    for run_id, started, finished, status, command, summary in rows:
        try:
            s = json.loads(summary) if summary else {}
        except ValueError:
            s = {}
        segs = s.get("segmentations") if isinstance(s, dict) else None
        out.append(
            {
                "run_id": run_id,
                "started_at": started,
                "seconds": (finished - started).total_seconds() if started and finished else None,
                "status": status,
                "command": command,
                "segmentations": {
                    k: v.get("action", "") for k, v in (segs or {}).items() if isinstance(v, dict)
                },
            }
        )
    return out


def catalog(con, name: str) -> dict[int, dict]:
    """Every segment a segmentation ever had: id -> label, size, born, died."""
    rows = con.execute(
        f"SELECT segment_id, label, size, born_run, died_run FROM {tables.CATALOG} "
        "WHERE segmentation = ? ORDER BY segment_id",
        [name],
    ).fetchall()
    return {r[0]: {"label": r[1], "size": r[2], "born_run": r[3], "died_run": r[4]} for r in rows}


def history_runs(con, name: str) -> list[int]:
    """The runs at which some user's spell began or ended."""
    if not table_exists(con, RESULTS, tables.history_name(name)):
        return []
    return changed_runs(con, tables.history(name))


def flows(con, key: str, name: str, marks: list[int]) -> dict | None:
    """Users by (segment in the previous run, segment in the last run): the
    last two runs at which the segmentation changed (`marks`: history_runs).
    None segment: not there (a new user on the left, a user who left on the
    right)."""
    if len(marks) < 2:
        return None
    prev, last = marks[-2], marks[-1]
    k = quote_ident(key)
    h = tables.history(name)
    rows = con.execute(
        f"""WITH a AS (SELECT {k}, segment_id, segment FROM {h} WHERE {open_at("?")}),
        b AS (SELECT {k}, segment_id, segment FROM {h} WHERE {open_at("?")})
        SELECT a.segment_id, any_value(a.segment), b.segment_id, any_value(b.segment), count(*)
        FROM a FULL OUTER JOIN b ON a.{k} = b.{k} GROUP BY a.segment_id, b.segment_id
        ORDER BY 5 DESC, 1 NULLS LAST, 3 NULLS LAST""",
        [prev, prev, last, last],
    ).fetchall()
    return {
        "from_run": prev,
        "to_run": last,
        "flows": [
            {"from": a, "from_label": la, "to": b, "to_label": lb, "users": int(n)}
            for a, la, b, lb, n in rows
        ],
    }


def sizes_over_runs(con, name: str, run_ids: list[int]) -> list[dict]:
    """Users per segment at each of `run_ids` (segment_runs: none without a
    history table), from the spells of history."""
    if not run_ids:
        return []
    rows = con.execute(
        f"""SELECT r.run_id, h.segment_id, count(*) FROM (SELECT unnest(?::INTEGER[]) AS run_id) r
        JOIN {tables.history(name)} h ON {open_at("r.run_id")}
        GROUP BY 1, 2 ORDER BY 1, 2""",
        [list(run_ids)],
    ).fetchall()
    return [{"run": r, "segment_id": s, "users": int(n)} for r, s, n in rows]


def segment_runs(con, marks: list[int]) -> list[int]:
    """The runs to draw sizes for: the successful runs since the first that
    wrote this segmentation (the last OVER_RUNS), plus the history's own
    (`marks`: history_runs)."""
    if not marks:
        return []
    done = [
        r[0]
        for r in con.execute(
            f"SELECT run_id FROM {tables.RUNS} WHERE run_id >= ? AND status = 'success'",
            [marks[0]],
        ).fetchall()
    ]
    return sorted(set(done) | set(marks))[-OVER_RUNS:]


def events(con, name: str, limit: int = 8) -> list[dict]:
    if not table_exists(con, STATE, "segment_events"):
        return []
    rows = con.execute(
        f"SELECT run_id, event, detail FROM {tables.STATE}.segment_events "
        f"WHERE segmentation = ? ORDER BY run_id DESC LIMIT {int(limit)}",
        [name],
    ).fetchall()
    out = []
    for run_id, event, detail in rows:
        try:
            d = json.loads(detail) if detail else None
        except ValueError:
            d = detail
        out.append({"run_id": run_id, "event": event, "detail": d})
    return out


# ----------------------------------------------------------------------------- profile


_EPOCH = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS")
_EPOCH += ("TIMESTAMP_S", "INTERVAL")


def z_profile(con, key: str, name: str, drivers: list[dict]) -> dict:
    """Each segment's mean of the numeric columns that drive the segmentation
    most (drivers leave out PII the segmentation may not show), in
    population standard deviations: z = (segment mean - mean) / sd."""
    numeric = [d for d in drivers if d["measure"] == RANK_ETA2][:PROFILE_COLUMNS]
    if not numeric:
        return {"columns": [], "cells": []}
    types: dict[tuple[str, str], str] = {}
    models = list(dict.fromkeys(d["model"] for d in numeric))
    for m in models:
        for c, t in column_types(con, tables.MODELS, m).items():
            types[(m, c)] = t.upper()
    cols, exprs = [], []
    alias = {m: f"m{i}" for i, m in enumerate(models)}
    for d in numeric:
        t = types.get((d["model"], d["column"]))
        if t is None:
            continue
        c = f"{alias[d['model']]}.{quote_ident(d['column'])}"
        e = f"epoch({c})" if t in _EPOCH else f"TRY_CAST({c} AS DOUBLE)"
        exprs.append(e)
        cols.append({**d, "is_time": t in _EPOCH and t != "INTERVAL"})
    if not cols:
        return {"columns": [], "cells": []}
    k = quote_ident(key)
    joins = " ".join(
        f"LEFT JOIN {tables.model(m)} {alias[m]} ON {alias[m]}.{k} = s.{k}" for m in models
    )
    inner = ", ".join(f"{e} AS x{i}" for i, e in enumerate(exprs))
    aggs = ", ".join(f"avg(x{i}), stddev_pop(x{i})" for i in range(len(exprs)))
    rows = con.execute(
        f"""SELECT grouping(segment_id), segment_id, count(*), {aggs}
        FROM (SELECT s.segment_id, {inner} FROM {tables.segments(name)} s {joins})
        GROUP BY GROUPING SETS ((segment_id), ())"""
    ).fetchall()
    pop = next(r for r in rows if r[0] == 1)
    cells = []
    for r in rows:
        if r[0] == 1:
            continue
        for i, c in enumerate(cols):
            mean, mu, sd = r[3 + 2 * i], pop[3 + 2 * i], pop[4 + 2 * i]
            z = (mean - mu) / sd if mean is not None and mu is not None and sd else 0.0
            cells.append(
                {
                    "segment_id": r[1],
                    "column": c,
                    "mean": _show(mean, c["is_time"]),
                    "overall": _show(mu, c["is_time"]),
                    "z": float(z),
                }
            )
    return {"columns": cols, "cells": cells}


def _show(v: Any, is_time: bool) -> str:
    if v is None:
        return "n/a"
    if is_time:
        return datetime.fromtimestamp(float(v), timezone.utc).strftime("%Y-%m-%d")
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


# ----------------------------------------------------------------------------- map


def map_points(project, con, seg, n: int = MAP_POINTS) -> dict | None:
    """A seeded sample of users (by key hash) in the fitted space, projected
    to its first two principal components. None when there is no fit or the
    inputs cannot be read back (the map is then left out)."""
    from segtool.execute.segment.inputs import apply_transformers, load_inputs
    from segtool.execute.segment.store import active_fit, restore

    active = active_fit(con, seg.name)
    if active is None:
        return None
    from segtool.compile.segments import fit_is_current

    if not fit_is_current(project, seg, active[1], con):
        # an encoder changed since the fit: new vectors through the old
        # model would draw a map of segments mixed up (the run refits)
        raise DataError(
            "the stored model was fitted with other inputs than the project's now; "
            f"`segtool run -s +{seg.name}` refits it"
        )
    k = quote_ident(project.loaded.key)
    segs = tables.segments(seg.name)
    sample = (
        f"SELECT * FROM (SELECT s.{k}, row_number() OVER (ORDER BY hash(s.{k}), s.{k}) AS __ord "
        f"FROM {segs} s) WHERE __ord <= {int(n)}"
    )
    transformers, model, _ = restore(active)
    loaded = load_inputs(project.loaded, project.encoders(con=con).fingerprint, con, seg, sample)
    X = np.asarray(model.transform(apply_transformers(transformers, loaded), loaded.keys))
    ids = (
        con.sql(
            f"SELECT s.segment_id FROM ({sample}) u JOIN {segs} s ON s.{k} = u.{k} ORDER BY u.__ord"
        )
        .fetchnumpy()["segment_id"]
        .astype(np.int64)
    )
    if len(X) < 3 or len(ids) != len(X):
        return None
    X = X.astype(np.float64)
    Xc = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    var = s**2
    share = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    P = Xc @ vt[:2].T
    if P.shape[1] < 2:
        P = np.column_stack([P, np.zeros(len(P))])
        share = np.append(share, 0.0)
    return {"xy": P, "ids": ids, "explained": (float(share[0]), float(share[1]))}
