"""Rule segments: the plan evaluated every user's rule (first match wins)
into a work table; this writes it, with stable ids per segment name."""

from __future__ import annotations

from segtool.compile.sql import quote_ident, sql_literal
from segtool.state import tables


def write_rules(ctx, seg, work: str) -> dict:
    con = ctx.con
    name = seg.name
    k = quote_ident(ctx.loaded.key)
    # stable ids per segment name
    known = dict(
        con.execute(
            f"SELECT label, segment_id FROM {tables.CATALOG} WHERE segmentation = ?", [name]
        ).fetchall()
    )
    next_id = max(known.values(), default=-1) + 1
    order = [r.segment for r in seg.rules] + ([seg.default] if seg.default else [])
    for s in dict.fromkeys(order):
        if s not in known:
            known[s] = next_id
            next_id += 1
            con.execute(
                f"INSERT INTO {tables.CATALOG} VALUES (?, ?, ?, '[]', '[]', 0, ?, NULL)",
                [name, known[s], s, ctx.run_id],
            )
    id_case = " ".join(f"WHEN {sql_literal(s)} THEN {i}" for s, i in known.items())
    con.execute(
        f"""CREATE OR REPLACE TABLE {tables.segments(name)} AS
        SELECT r.{k}, CAST(CASE r.segment {id_case} END AS INTEGER) AS segment_id, r.segment,
        CAST(NULL AS DOUBLE) AS distance, CAST(1.0 AS DOUBLE) AS confidence, {int(ctx.run_id)} AS run_id, now()::TIMESTAMP AS updated_at
        FROM {work} r ORDER BY 1"""
    )
    return {}
