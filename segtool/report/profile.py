"""`segtool show`: what a segmentation looks like now."""

from __future__ import annotations

import json
from typing import Any

from segtool.compile.sql import quote_ident
from segtool.errors import ProjectError, did_you_mean
from segtool.report.console import format_table, markdown_table
from segtool.state import tables
from segtool.state.db import RESULTS, STATE, table_exists
from segtool.state.result import one


def segmentation_profile(project, name: str, examples: int = 3) -> dict[str, Any]:

    proj = project.loaded
    if name not in proj.segmentations:
        raise ProjectError(
            f"no segmentation named '{name}'", hint=did_you_mean(name, proj.segmentations)
        )
    seg = proj.segmentations[name]
    k = quote_ident(proj.key)
    con = project.connect(read_only=True)
    try:
        if not table_exists(con, RESULTS, name):
            raise ProjectError(
                f"segmentation '{name}' has not been run yet", hint=f"segtool run -s +{name}"
            )
        total = one(con.execute(f"SELECT count(*) FROM {tables.segments(name)}"))[0]
        rows = con.execute(
            f"""SELECT s.segment_id, any_value(s.segment), count(*), c.keywords, c.features, c.born_run
            FROM {tables.segments(name)} s LEFT JOIN {tables.CATALOG} c ON c.segmentation = ? AND c.segment_id = s.segment_id
            GROUP BY s.segment_id, c.keywords, c.features, c.born_run ORDER BY count(*) DESC""",
            [name],
        ).fetchall()
        text = next((i.embedding.text for i in seg.inputs if i.embedding), None)
        segments = []
        for sid, label, n, kws, feats, born in rows:
            ex_sql = (
                f"SELECT s.{k}, t.text FROM {tables.segments(name)} s JOIN {tables.texts(text)} t ON t.{k} = s.{k} "
                f"WHERE s.segment_id = ? ORDER BY s.distance NULLS LAST, s.{k} LIMIT {int(examples)}"
                if text and table_exists(con, STATE, "texts__" + text)
                else f"SELECT s.{k}, NULL FROM {tables.segments(name)} s WHERE s.segment_id = ? ORDER BY s.{k} LIMIT {int(examples)}"
            )
            ex = con.execute(ex_sql, [sid]).fetchall() if examples else []
            segments.append(
                {
                    "segment_id": sid,
                    "segment": label,
                    "users": n,
                    "share": n / total if total else 0.0,
                    "keywords": json.loads(kws) if kws else [],
                    "features": json.loads(feats) if feats else [],
                    "born_run": born,
                    "examples": [{"key": e[0], "text": e[1]} for e in ex],
                }
            )
        last_run = one(con.execute(f"SELECT max(run_id) FROM {tables.segments(name)}"))[0]
        return {
            "segmentation": name,
            "kind": "rules" if seg.is_rules else "clusters",
            "users": total,
            "last_run": last_run,
            "segments": segments,
        }
    finally:
        con.close()


def _features_str(feats: list[dict]) -> str:
    return ", ".join(f"{f['name']} {'+' if f['z'] >= 0 else ''}{f['z']:.1f}σ" for f in feats)


def format_profile(prof: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(prof, indent=2, default=str)
    headers = ["id", "segment", "users", "share", "keywords", "distinguishing features"]
    rows = [
        [
            s["segment_id"],
            s["segment"],
            s["users"],
            f"{s['share']:.1%}",
            ", ".join(s["keywords"]),
            _features_str(s["features"]),
        ]
        for s in prof["segments"]
    ]
    title = f"{prof['segmentation']} ({prof['kind']}): {prof['users']:,} users, last run {prof['last_run']}"
    if fmt == "markdown":
        out = [f"### {title}", "", markdown_table(headers, rows)]
    else:
        out = [format_table(headers, rows, title)]
    for s in prof["segments"]:
        if s["examples"]:
            out.append("")
            out.append(
                f"{'#### ' if fmt == 'markdown' else ''}segment {s['segment_id']} · {s['segment']}: examples"
            )
            for e in s["examples"]:
                txt = (e["text"] or "")[:240]
                out.append(f"  - {e['key']}: {txt}")
    return "\n".join(out)
