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
from segtool.words import duration_str, number_str

MAP_POINTS = 3000  # users drawn on a 2-D map (a seeded sample by key hash)
PROFILE_COLUMNS = 12  # numeric columns in a feature-profile heatmap
OVER_RUNS = 30  # runs on the sizes-over-runs chart
RUNS_SHOWN = 30
EVENT_RUNS = 8  # runs whose segment events (births, deaths, splits, merges) are listed


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
    history table), from the spells of history; a segment alive at a run
    (the catalog: born by it, not dead at it) that no user was in has 0 (a
    rule that matched nobody after an edit: its line went on to 0, it did not
    stop at the run before)."""
    if not run_ids:
        return []
    rows = con.execute(
        f"""WITH r AS (SELECT unnest(?::INTEGER[]) AS run_id),
        n AS (SELECT r.run_id, h.segment_id, count(*) AS users FROM r
              JOIN {tables.history(name)} h ON {open_at("r.run_id")} GROUP BY 1, 2),
        a AS (SELECT r.run_id, c.segment_id FROM r JOIN {tables.CATALOG} c
              ON c.segmentation = ? AND c.born_run <= r.run_id
              AND (c.died_run IS NULL OR c.died_run > r.run_id))
        SELECT run_id, segment_id, coalesce(n.users, 0) FROM a
        FULL OUTER JOIN n USING (run_id, segment_id) ORDER BY 1, 2""",
        [list(run_ids), name],
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


def events(con, name: str, runs: int = EVENT_RUNS) -> list[dict]:
    """Every event of the last `runs` runs that had any, newest run first,
    then by event and detail (the same order on every call)."""
    if not table_exists(con, STATE, "segment_events"):
        return []
    rows = con.execute(
        f"""SELECT run_id, event, detail FROM {tables.EVENTS} WHERE segmentation = ?
        AND run_id IN (SELECT DISTINCT run_id FROM {tables.EVENTS} WHERE segmentation = ?
                       ORDER BY run_id DESC LIMIT {int(runs)})
        ORDER BY run_id DESC, event, CAST(detail AS VARCHAR)""",
        [name, name],
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


# columns read as seconds (epoch): dates and timestamps since 1970, times of
# day since midnight, intervals as their length; `_SHOWN`: how a mean of
# them reads again
_DATES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS")
_DATES += ("TIMESTAMP_S",)
_TIMES = ("TIME", "TIME WITH TIME ZONE", "TIME_NS")
_SHOWN = {**dict.fromkeys(_DATES, "date"), **dict.fromkeys(_TIMES, "time"), "INTERVAL": "interval"}


def z_profile(con, key: str, name: str, drivers: list[dict]) -> dict:
    """Each segment's mean of the numeric columns that drive the segmentation
    most (drivers leave out PII the segmentation may not show), in
    population standard deviations: z = (segment mean - mean) / sd. A
    segment none of whose members has a value has no mean and z None (the
    chart draws it as absent, not as average)."""
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
        shown = _SHOWN.get(t)
        e = f"epoch({c})" if shown else f"TRY_CAST({c} AS DOUBLE)"
        exprs.append(e)
        cols.append({**d, "shown": shown})
    if not cols:
        return {"columns": [], "cells": []}
    k = quote_ident(key)
    joins = " ".join(
        f"LEFT JOIN {tables.model(m)} {alias[m]} ON {alias[m]}.{k} = s.{k}" for m in models
    )
    # finite values only: one NaN in a DOUBLE column made its means 'nan'
    inner = ", ".join(f"CASE WHEN isfinite({e}) THEN {e} END AS x{i}" for i, e in enumerate(exprs))
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
            if mean is None or mu is None:
                z = None  # no member has a value: not "average"
            else:
                z = float((mean - mu) / sd) if sd else 0.0
            cells.append(
                {
                    "segment_id": r[1],
                    "column": c,
                    "mean": _show(mean, c["shown"]),
                    "overall": _show(mu, c["shown"]),
                    "z": z,
                }
            )
    return {"columns": cols, "cells": cells}


def _show(v: Any, shown: str | None) -> str:
    """A mean as a person reads it: a date, a time of day (HH:MM, HH:MM:SS
    where the seconds are not 0), a length of time (days; hours, minutes or
    seconds under a day), a number (1,382 from 1,000 on)."""
    if v is None:
        return "n/a"
    v = float(v)
    if shown == "date":
        return datetime.fromtimestamp(v, timezone.utc).strftime("%Y-%m-%d")
    if shown == "time":
        m, sec = divmod(int(round(v)) % 86400, 60)
        h, m = divmod(m, 60)
        return f"{h:02d}:{m:02d}" + (f":{sec:02d}" if sec else "")
    if shown == "interval":
        return duration_str(v)
    return number_str(v)


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
    fingerprint = project.encoders(con=con).fingerprint
    # the users every input still has a row (a vector) for: a partial run
    # (`run -s +model`) can rebuild an input without users the segments still
    # hold, and the fitted model takes a row of every input per user
    needs = _input_rows(project.loaded, con, seg, fingerprint, k)
    has_all = " AND ".join(cond for _, cond in needs) or "TRUE"
    missing: list[tuple[str, int]] = []
    left_out = 0
    if needs:
        counts = con.execute(
            "SELECT "
            + ", ".join(f"count(*) FILTER (WHERE NOT ({cond}))" for _, cond in needs)
            + f", count(*) FILTER (WHERE NOT ({has_all})) FROM {segs} s"
        ).fetchall()[0]
        missing = [(what, int(c)) for (what, _), c in zip(needs, counts) if c]
        left_out = int(counts[-1])
    sample = (
        f"SELECT * FROM (SELECT s.{k}, row_number() OVER (ORDER BY hash(s.{k}), s.{k}) AS __ord "
        f"FROM {segs} s WHERE {has_all}) WHERE __ord <= {int(n)}"
    )
    transformers, model, _ = restore(active)
    loaded = load_inputs(project.loaded, fingerprint, con, seg, sample)
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
    return {
        "xy": P,
        "ids": ids,
        "explained": (float(share[0]), float(share[1])),
        "left_out": left_out,  # users of the segments no input row (vector) is there for now
        "missing": missing,  # (what they lack: "not in user_features", users)
    }


def _input_rows(proj, con, seg, fingerprint, k: str) -> list[tuple[str, str]]:
    """(what a user lacks, SQL condition on the segments as `s`) per input: the
    user has a row in the features' model, or a vector of the embedding's text. An
    embedding with no vectors at all is left to load_inputs (it says so)."""
    from segtool.state.vectors import lookup

    out: dict[str, str] = {}
    for inp in seg.inputs:
        if inp.features:
            m = proj.features[inp.features].model
            out[f"not in {m}"] = f"EXISTS (SELECT 1 FROM {tables.model(m)} m WHERE m.{k} = s.{k})"
            continue
        e = inp.embedding
        found = lookup(con, fingerprint(e.encoder))
        if found is None or not table_exists(con, STATE, tables.texts_name(e.text)):
            continue
        out[f"with no vector of {e.text} / {e.encoder}"] = (
            f"EXISTS (SELECT 1 FROM {tables.texts(e.text)} t JOIN {found[0]} v "
            f"ON v.text_hash = t.text_hash WHERE t.{k} = s.{k})"
        )
    return list(out.items())
