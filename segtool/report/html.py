"""`segtool docs`: one self-contained HTML file (inline CSS and SVG, no
scripts, no network) with the lineage graph and, per segmentation, sizes,
labels, a 2-D map, feature profiles, sizes over runs and flows since the
previous run."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segtool.compile.sql import quote_ident
from segtool.state import tables
from segtool.state.db import RESULTS, has_state, table_exists
from segtool.state.result import one

KIND_COLORS = {
    "source": "#8d99ae",
    "model": "#4361ee",
    "text": "#f77f00",
    "encoder": "#9d4edd",
    "features": "#2a9d8f",
    "embedding": "#e76f51",
    "segmentation": "#d62828",
}
PALETTE = [
    "#4361ee",
    "#f77f00",
    "#2a9d8f",
    "#d62828",
    "#9d4edd",
    "#e9c46a",
    "#06d6a0",
    "#ef476f",
    "#118ab2",
    "#8d99ae",
    "#6a994e",
    "#bc6c25",
]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1d3557;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;opacity:.8}
main{padding:8px 28px 40px;max-width:1200px}section{background:#fff;border:1px solid #e5e5e5;border-radius:8px;padding:16px 20px;margin:18px 0}
h2{font-size:18px;margin:0 0 10px}h3{font-size:15px;margin:16px 0 6px}table{border-collapse:collapse;font-size:13px}
td,th{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}th{background:#f5f5f7}
.num{text-align:right;font-variant-numeric:tabular-nums}.bar{height:10px;background:#4361ee;border-radius:2px;display:inline-block}
.kw{color:#555}.muted{color:#888}.grid{display:flex;flex-wrap:wrap;gap:24px}.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def build_report(project, out: Path | None = None) -> Path:
    built = project.graph()
    proj = project.loaded
    out = out or project.target_dir / "report" / "index.html"
    parts = [_lineage(built.graph)]
    con = project.connect(read_only=True) if proj.database_path.exists() else None
    try:
        if con is not None and has_state(con):
            runs = con.execute(
                f"SELECT run_id, started_at, status FROM {tables.RUNS} ORDER BY run_id"
            ).fetchall()
            for name, seg in proj.segmentations.items():
                if table_exists(con, RESULTS, name):
                    parts.append(_segmentation(project, con, seg))
            parts.append(_runs(runs))
        else:
            parts.append(
                "<section><h2>Segments</h2><p class=muted>No runs yet: <code>segtool run</code> first.</p></section>"
            )
    finally:
        if con is not None:
            con.close()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{esc(proj.name)} · segtool</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(proj.name)}</h1><p>segtool report · target {esc(proj.target_name)} · {when}</p></header><main>"
        + "".join(parts)
        + "</main></body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# ----------------------------------------------------------------------------- lineage


def _lineage(graph) -> str:
    """Nodes in columns by depth, edges as curves."""
    depth: dict[str, int] = {}
    for u in graph.order():
        depth[u] = 1 + max((depth[d] for d in graph[u].depends_on if d in depth), default=-1)
    cols: dict[int, list[str]] = {}
    for u, d in depth.items():
        cols.setdefault(d, []).append(u)
    w, h, gx, gy = 170, 26, 60, 12
    pos = {}
    for d, us in cols.items():
        for i, u in enumerate(us):
            pos[u] = (20 + d * (w + gx), 20 + i * (h + gy))
    width = 40 + (max(cols) + 1) * (w + gx) if cols else 200
    height = 40 + max((len(v) for v in cols.values()), default=1) * (h + gy)
    svg = [
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="system-ui">'
    ]
    for u in graph.order():
        for d in graph[u].depends_on:
            if d in pos:
                (x1, y1), (x2, y2) = pos[d], pos[u]
                x1, y1, y2 = x1 + w, y1 + h / 2, y2 + h / 2
                mx = (x1 + x2) / 2
                svg.append(
                    f'<path d="M{x1},{y1} C{mx},{y1} {mx},{y2} {x2},{y2}" stroke="#bbb" fill="none"/>'
                )
    for u, (x, y) in pos.items():
        n = graph[u]
        c = KIND_COLORS.get(n.kind, "#999")
        label = n.name if len(n.name) <= 24 else n.name[:23] + "…"
        svg.append(
            f"<g><title>{esc(u)}{' — ' + esc(n.description) if n.description else ''}</title>"
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="5" fill="#fff" stroke="{c}" stroke-width="1.5"/>'
            f'<rect x="{x}" y="{y}" width="5" height="{h}" rx="2" fill="{c}"/>'
            f'<text x="{x + 11}" y="{y + 17}">{esc(label)}</text></g>'
        )
    svg.append("</svg>")
    legend = " ".join(
        f'<span><span class=swatch style="background:{c}"></span>{k}</span>'
        for k, c in KIND_COLORS.items()
    )
    return f"<section><h2>Lineage</h2><p>{legend}</p><div style='overflow-x:auto'>{''.join(svg)}</div></section>"


# ----------------------------------------------------------------------------- segmentations


def _segmentation(project, con, seg) -> str:
    from segtool.report.profile import segmentation_profile

    name = seg.name
    prof = segmentation_profile(project, name, examples=2)
    colors = {
        s["segment_id"]: PALETTE[i % len(PALETTE)]
        for i, s in enumerate(sorted(prof["segments"], key=lambda s: s["segment_id"]))
    }
    rows = []
    for s in prof["segments"]:
        feats = ", ".join(f"{esc(f['name'])} {f['z']:+.1f}σ" for f in s["features"])
        rows.append(
            f"<tr><td><span class=swatch style='background:{colors[s['segment_id']]}'></span>{s['segment_id']}</td>"
            f"<td>{esc(s['segment'])}</td><td class=num>{s['users']:,}</td>"
            f"<td><span class=bar style='width:{max(2, int(160 * s['share']))}px'></span> {s['share']:.1%}</td>"
            f"<td class=kw>{esc(', '.join(s['keywords']))}</td><td>{feats}</td></tr>"
        )
    table = (
        "<table><tr><th>id</th><th>segment</th><th>users</th><th>share</th><th>keywords</th><th>distinguishing features</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    blocks = [
        f"<section><h2>{esc(name)} <span class=muted>({prof['kind']}, {prof['users']:,} users)</span></h2>{esc(seg.description)}{table}"
    ]
    grid = []
    if not seg.is_rules:
        m = _map(project, con, seg, colors)
        if m:
            grid.append(f"<div><h3>2-D map</h3>{m}</div>")
    ot = _over_time(con, project, name, colors)
    if ot:
        grid.append(f"<div><h3>Sizes over runs</h3>{ot}</div>")
    if grid:
        blocks.append(f"<div class=grid>{''.join(grid)}</div>")
    blocks.append(_flows(con, project, name))
    ex = []
    for s in prof["segments"]:
        for e in s["examples"]:
            if e["text"]:
                ex.append(
                    f"<tr><td>{s['segment_id']}</td><td>{esc(e['key'])}</td><td>{esc(e['text'][:300])}</td></tr>"
                )
    if ex:
        blocks.append(
            "<h3>Example users</h3><table><tr><th>segment</th><th>user</th><th>text</th></tr>"
            + "".join(ex)
            + "</table>"
        )
    blocks.append("</section>")
    return "".join(blocks)


def _map(project, con, seg, colors, n: int = 1500) -> str:
    """A sample of users in the fitted space, projected to 2-D with PCA."""
    from segtool.execute.segment.inputs import apply_transformers, load_inputs
    from segtool.execute.segment.store import active_fit, restore

    active = active_fit(con, seg.name)
    if active is None:
        return ""
    k = quote_ident(project.loaded.key)
    sample = f"SELECT * FROM (SELECT s.{k}, row_number() OVER (ORDER BY hash(s.{k})) AS __ord FROM {tables.segments(seg.name)} s) WHERE __ord <= {n}"
    try:
        transformers, model, _ = restore(active)
        loaded = load_inputs(project.loaded, project.encoders().fingerprint, con, seg, sample)
        X = model.transform(apply_transformers(transformers, loaded), loaded.keys)
    except Exception:  # noqa: BLE001 - the map is optional decoration
        return ""
    ids = next(
        iter(
            con.sql(
                f"SELECT s.segment_id FROM ({sample}) u JOIN {tables.segments(seg.name)} s ON s.{k} = u.{k} ORDER BY u.__ord"
            )
            .fetchnumpy()
            .values()
        )
    )
    if len(X) < 3:
        return ""
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    P = Xc @ vt[:2].T
    lo, hi = P.min(axis=0), P.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1)
    P = 10 + (P - lo) / span * 380
    pts = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colors.get(int(i), "#999")}" fill-opacity=".7"/>'
        for (x, y), i in zip(P, ids)
    )
    return f'<svg width="400" height="400" style="background:#fcfcfc;border:1px solid #eee">{pts}</svg>'


def _over_time(con, project, name: str, colors) -> str:

    if not table_exists(con, RESULTS, name + "_history"):
        return ""
    runs = [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT valid_from_run FROM {tables.history(name)} UNION SELECT DISTINCT valid_to_run FROM {tables.history(name)} WHERE valid_to_run IS NOT NULL ORDER BY 1"
        ).fetchall()
    ]
    if len(runs) < 2:
        return ""
    sizes: dict[int, list[int]] = {}
    for r in runs:
        for sid, n in con.execute(
            f"SELECT segment_id, count(*) FROM {tables.history(name)} WHERE valid_from_run <= ? AND (valid_to_run IS NULL OR valid_to_run > ?) GROUP BY 1",
            [r, r],
        ).fetchall():
            sizes.setdefault(sid, [0] * len(runs))[runs.index(r)] = n
    top = max(max(v) for v in sizes.values()) or 1
    W, H = 400, 220
    lines = []
    for sid, v in sizes.items():
        pts = " ".join(
            f"{20 + i * (W - 40) / (len(runs) - 1):.1f},{H - 20 - n / top * (H - 40):.1f}"
            for i, n in enumerate(v)
        )
        lines.append(
            f'<polyline points="{pts}" fill="none" stroke="{colors.get(sid, "#999")}" stroke-width="2"><title>segment {sid}</title></polyline>'
        )
    labels = "".join(
        f'<text x="{20 + i * (W - 40) / (len(runs) - 1):.1f}" y="{H - 4}" font-size="10" text-anchor="middle">run {r}</text>'
        for i, r in enumerate(runs)
    )
    return f'<svg width="{W}" height="{H}" style="background:#fcfcfc;border:1px solid #eee">{"".join(lines)}{labels}</svg>'


def _flows(con, project, name: str) -> str:

    if not table_exists(con, RESULTS, name + "_history"):
        return ""
    last = one(con.execute(f"SELECT max(valid_to_run) FROM {tables.history(name)}"))[0]
    if last is None:
        return "<h3>Flows since the previous run</h3><p class=muted>No user has changed segment yet.</p>"
    k = quote_ident(project.loaded.key)
    rows = con.execute(
        f"""SELECT o.segment_id, n.segment_id, count(*) FROM {tables.history(name)} o JOIN {tables.history(name)} n
        ON n.{k} = o.{k} AND n.valid_from_run = o.valid_to_run WHERE o.valid_to_run = ? GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 20""",
        [last],
    ).fetchall()
    body = "".join(
        f"<tr><td>{a}</td><td>→ {b}</td><td class=num>{n:,}</td></tr>" for a, b, n in rows
    )
    return f"<h3>Flows in run {last}</h3><table><tr><th>from</th><th>to</th><th>users</th></tr>{body}</table>"


def _runs(runs) -> str:
    rows = "".join(
        f"<tr><td>{r}</td><td>{esc(t)}</td><td>{esc(s)}</td></tr>" for r, t, s in runs[-20:]
    )
    return f"<section><h2>Runs</h2><table><tr><th>run</th><th>started</th><th>status</th></tr>{rows}</table></section>"
