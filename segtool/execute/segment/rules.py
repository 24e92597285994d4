"""Rule segments: the plan evaluated every user's rule (first match wins)
into a work table; this writes it, with stable ids per segment name."""

from __future__ import annotations

import json

from segtool.compile.segments import rules_changes_sql
from segtool.compile.sql import quote_ident, sql_literal
from segtool.state import tables
from segtool.state.db import fitted_segment_ids, now, table_exists
from segtool.state.tables import work_table


def write_rules(ctx, seg, work: str, *, refresh: bool = True) -> str:
    """Write the rule segments the plan left in `work`; returns a query of
    the users whose history can change (new, moved, left)."""
    con = ctx.con
    name = seg.name
    k = quote_ident(ctx.loaded.key)
    # stable ids per segment name; not a cluster's id, should a rule be named
    # like a cluster the segmentation had (clusters are looked up by no name)
    fitted = fitted_segment_ids(con, name)
    rows = con.execute(
        f"SELECT label, segment_id FROM {tables.CATALOG} WHERE segmentation = ?", [name]
    ).fetchall()
    known = {label: sid for label, sid in rows if sid not in fitted}
    # the live segments before this run: what it adds and ends are events
    # (the report's "sizes over runs" notes them, as a refit's)
    was_live = {
        sid
        for (sid,) in con.execute(
            f"SELECT segment_id FROM {tables.CATALOG} WHERE segmentation = ? AND died_run IS NULL",
            [name],
        ).fetchall()
    }
    next_id = max((sid for _, sid in rows), default=-1) + 1
    order = [r.segment for r in seg.rules] + ([seg.default] if seg.default else [])
    for s in dict.fromkeys(order):
        if s not in known:
            known[s] = next_id
            next_id += 1
            con.execute(
                f"INSERT INTO {tables.CATALOG} (segmentation, segment_id, label, keywords, features, size, born_run) "
                "VALUES (?, ?, ?, '[]', '[]', 0, ?)",
                [name, known[s], s, ctx.run_id],
            )
    id_case = " ".join(f"WHEN {sql_literal(s)} THEN {i}" for s, i in known.items())
    # the users whose spell can change: a new segment, new users, users who left
    touched = work_table("rules", name, "touched")
    exists = table_exists(con, tables.RESULTS, name)
    if exists:
        changed, left = rules_changes_sql(k, work, tables.segments(name), fitted)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {touched} AS {changed} UNION ALL {left}")
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {touched} AS SELECT {k} FROM {work}")
    rows = f"""SELECT r.{k}, CAST(CASE r.segment {id_case} END AS INTEGER) AS segment_id, r.segment,
        CAST(NULL AS DOUBLE) AS distance, CAST(1.0 AS DOUBLE) AS confidence, {int(ctx.run_id)} AS run_id, {sql_literal(now())}::TIMESTAMP AS updated_at
        FROM {work} r"""
    if exists and not refresh:
        # the same rules: only the users who moved, arrived or left change
        # (rewriting every row was most of a small run's rule step)
        con.execute(f"DELETE FROM {tables.segments(name)} WHERE {k} IN (SELECT {k} FROM {touched})")
        con.execute(
            f"INSERT INTO {tables.segments(name)} {rows} WHERE r.{k} IN (SELECT {k} FROM {touched})"
        )
    else:
        con.execute(f"CREATE OR REPLACE TABLE {tables.segments(name)} AS {rows} ORDER BY 1")
    live = [known[s] for s in dict.fromkeys(order)]
    _retire(ctx, name, live)
    if was_live:  # not at the first run: every segment is new then
        from segtool.execute.segment.store import record_events

        record_events(
            con,
            name,
            ctx.run_id,
            {
                "births": sorted(set(live) - was_live),
                "deaths": sorted(was_live - set(live)),
            },
        )
    # what goes with each rule segment (the predicates' columns, and others):
    # when the rules are new or changed, like a fit; an assignment of the
    # week's new users keeps them (as a clustering's assignments do)
    from segtool.execute.segment import drivers

    if not refresh and drivers.load(con, name)[1] is not None:
        return f"SELECT {k} FROM {touched}"
    profile = drivers.compute(
        con, ctx.loaded, seg, tables.segments(name), ctx.project.pii_columns()
    )
    drivers.save(con, name, ctx.run_id, profile.drivers)
    for sid in known.values():
        con.execute(
            f"UPDATE {tables.CATALOG} SET traits = ? WHERE segmentation = ? AND segment_id = ?",
            [json.dumps(profile.traits.get(sid, []), default=str), name, sid],
        )
    return f"SELECT {k} FROM {touched}"


def _retire(ctx, name: str, live: list[int]) -> None:
    """The catalog and state as the rules leave them: a segment no rule names
    any more is retired (died_run), one named again lives again from this
    run (its id is its name's), sizes are the table's. A clustering the segmentation was
    before is no longer what the table holds: its fitted model is set
    inactive and its stored inputs dropped, so switching back refits (the
    plan said 'inputs unchanged: skip' over the rule assignment)."""
    from segtool.execute.segment.store import retire

    con = ctx.con
    # a segment named again begins a new life at this run (the report's
    # "since" said the run it was first born, across the runs it was gone)
    con.execute(
        f"UPDATE {tables.CATALOG} SET died_run = NULL, born_run = ? WHERE segmentation = ? "
        "AND died_run IS NOT NULL AND list_contains(?, segment_id)",
        [ctx.run_id, name, live],
    )
    retire(con, name, live, ctx.run_id)  # sizes: the caller refreshes them
    if table_exists(con, tables.STATE, "fitted"):
        con.execute(
            f"UPDATE {tables.FITTED} SET active = false WHERE segmentation = ? AND active", [name]
        )
    con.execute(f"DROP TABLE IF EXISTS {tables.inputs(name)}")
