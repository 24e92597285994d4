"""The report's charts as Vega-Lite specs (inline data), drawn by
svg.render. Geometry that Vega-Lite has no layout for (the lineage graph,
Sankey bands) comes from layout.py in pixels (`scale: null`); Vega-Lite
draws the marks, axes, legends and tooltips (`description`)."""

from __future__ import annotations

import numpy as np

from segtool.ml.association import MEASURES
from segtool.report.html import layout
from segtool.words import counted

KIND_COLORS = {
    "source": "#8d99ae",
    "model": "#4361ee",
    "features": "#2a9d8f",
    "text": "#f77f00",
    "encoder": "#9d4edd",
    "embedding": "#e76f51",
    "segmentation": "#d62828",
}
# Vega's tableau20, darker shade first: the swatches in the page's tables use
# the same colours as the charts
PALETTE = [
    "#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2",
    "#ff9da6", "#9d755d", "#bab0ac", "#9ecae9", "#ffbf79", "#ff9d98", "#88d27a",
    "#83bcb6", "#f2cf5b", "#d6a5c9", "#fcbfd2", "#d8b5a5", "#79706e",
]  # fmt: skip
OUTLIER = "#c8c8c8"
MEASURE_COLORS = {"cramers_v": "#3d5a80", "rank_eta2": "#98c1d9"}
ABSENT = "#d9d9d9"


def segment_colors(n: int) -> list[str]:
    """`n` colours for segments: the palette, then (past its 20) hues a
    golden angle apart at a few saturations and lightnesses, each kept at a
    visible distance (CIELAB) from every colour before it and from the greys
    of outliers and absent values; the same list on every call."""
    while len(_MORE) < n - len(PALETTE):
        _more()
    return (PALETTE + _MORE)[:n]


_MORE: list[str] = []
_LEVELS = ((0.65, 0.42), (0.55, 0.62), (0.75, 0.30), (0.50, 0.75))  # (saturation, lightness)
_GOLDEN = 137.508  # degrees
_next = {"i": 0, "need": 18.0}  # the next candidate; the ΔE (CIE76) a colour keeps from the rest


def _more() -> None:
    import colorsys

    taken = [_lab(c) for c in (*PALETTE, *_MORE, OUTLIER, ABSENT)]
    while True:
        for _ in range(200):
            i = _next["i"]
            _next["i"] += 1
            sat, light = _LEVELS[i % len(_LEVELS)]
            r, g, b = colorsys.hls_to_rgb((i * _GOLDEN % 360) / 360, light, sat)
            c = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
            lab = _lab(c)
            if all(sum((p - q) ** 2 for p, q in zip(lab, t)) >= _next["need"] ** 2 for t in taken):
                _MORE.append(c)
                return
        _next["need"] *= 0.85  # the room runs out: closer colours from here on


def _lab(c: str) -> tuple[float, float, float]:
    """sRGB hex to CIELAB (D65)."""
    rgb = [int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (((v + 0.055) / 1.055) ** 2.4 if v > 0.04045 else v / 12.92 for v in rgb)
    xyz = (
        (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047,
        0.2126 * r + 0.7152 * g + 0.0722 * b,
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883,
    )
    fx, fy, fz = (t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


# ----------------------------------------------------------------------------- lineage


def lineage(graph) -> dict:
    order = list(graph.order())
    parents = {u: [d for d in graph[u].depends_on if d in graph] for u in order}
    kinds = {u: graph[u].kind for u in order}
    lay = layout.lineage(order, parents, kinds)
    w = lay.node_w
    nodes = []
    for u, b in lay.boxes.items():
        n = graph[u]
        tip = f"{u} ({n.kind})" + (f"\n{n.description}" if n.description else "")
        nodes.append(
            {
                "x": b.x,
                "x2": b.x + w,
                "y": b.y - layout.NODE_H / 2,
                "y2": b.y + layout.NODE_H / 2,
                "cy": b.y,
                "tx": b.x + 10,
                "name": n.name,
                "kind": n.kind,
                "tip": tip,
            }
        )
    edges = [
        {"e": i, "i": j, "x": x, "y": y}
        for i, pts in enumerate(lay.edges)
        for j, (x, y) in enumerate(pts)
    ]
    kinds_used = [k for k in KIND_COLORS if k in set(kinds.values())]
    kinds_used += sorted(set(kinds.values()) - set(kinds_used))
    color = {
        "field": "kind",
        "type": "nominal",
        "scale": {"domain": kinds_used, "range": [KIND_COLORS.get(k, "#999") for k in kinds_used]},
    }
    px = {"type": "quantitative", "scale": None}
    return {
        "width": lay.width,
        "height": lay.height,
        "padding": {"left": 2, "right": 2, "top": 4, "bottom": 4},
        "layer": [
            {
                "data": {"values": edges},
                "mark": {
                    "type": "line",
                    "interpolate": "monotone",
                    "stroke": "#b5b5b5",
                    "strokeWidth": 1.2,
                    "aria": False,
                },
                "encoding": {
                    "x": {"field": "x", **px},
                    "y": {"field": "y", **px},
                    "detail": {"field": "e"},
                    "order": {"field": "i"},
                },
            },
            {
                "data": {"values": nodes},
                "layer": [
                    {
                        "mark": {
                            "type": "rect",
                            "fill": "white",
                            "cornerRadius": 5,
                            "strokeWidth": 1.5,
                        },
                        "encoding": {
                            "x": {"field": "x", **px},
                            "x2": {"field": "x2"},
                            "y": {"field": "y", **px},
                            "y2": {"field": "y2"},
                            "stroke": {**color, "legend": None},
                            "description": {"field": "tip"},
                        },
                    },
                    {
                        "mark": {"type": "rect", "width": 5, "cornerRadius": 2, "aria": False},
                        "encoding": {
                            "x": {"field": "x", **px},
                            "y": {"field": "y", **px},
                            "y2": {"field": "y2"},
                            "color": {
                                **color,
                                "legend": {
                                    "orient": "top",
                                    "title": None,
                                    "symbolType": "square",
                                    "direction": "horizontal",
                                },
                            },
                        },
                    },
                    {
                        "mark": {
                            "type": "text",
                            "align": "left",
                            "baseline": "middle",
                            "fontSize": 11,
                            "limit": w - 16,
                            "aria": False,
                        },
                        "encoding": {
                            "x": {"field": "tx", **px},
                            "y": {"field": "cy", **px},
                            "text": {"field": "name"},
                        },
                    },
                ],
            },
        ],
    }


# ----------------------------------------------------------------------------- segments


def color_scale(names: list[str], colors: list[str]) -> dict:
    return {"domain": names, "range": colors}


def segment_map(points: dict, names: dict[int, str], colors: dict[int, str], tips: dict) -> dict:
    """Users on the first two principal components of the clustered space,
    equal units on both axes, a legend, and per segment one tooltip: label,
    size, a sample text. The biggest segment is drawn first."""
    P, ids = points["xy"], points["ids"]
    counts = {int(s): int((ids == s).sum()) for s in np.unique(ids)}
    order = sorted(counts, key=lambda s: -counts[s])
    lo = np.percentile(P, 0.5, axis=0)
    hi = np.percentile(P, 99.5, axis=0)
    W, H = 520, 400
    span = np.maximum(hi - lo, 1e-9)
    unit = max(span[0] / W, span[1] / H) * 1.06
    cx, cy = (lo + hi) / 2
    xd = [cx - unit * W / 2, cx + unit * W / 2]
    yd = [cy - unit * H / 2, cy + unit * H / 2]
    values, centres = [], []
    for s in order:
        m = ids == s
        for x, y in P[m]:
            values.append(
                {"x": round(float(x), 4), "y": round(float(y), 4), "s": names[s], "t": tips[s]}
            )
        med = np.median(P[m], axis=0)
        centres.append({"x": float(med[0]), "y": float(med[1]), "id": str(s), "t": tips[s]})
    shown = [s for s in names if s in counts]  # the table's order
    scale = color_scale([names[s] for s in shown], [colors[s] for s in shown])
    e1, e2 = points["explained"]
    return {
        "width": W,
        "height": H,
        "layer": [
            {
                "data": {"values": values},
                "mark": {
                    "type": "circle",
                    "size": 14,
                    "opacity": 1,
                    "fillOpacity": 0.65,
                    "clip": True,
                },
                "encoding": {
                    "x": {
                        "field": "x",
                        "type": "quantitative",
                        "scale": {"domain": xd, "nice": False, "zero": False},
                        "title": f"PC1 ({e1:.0%} of variance)",
                    },
                    "y": {
                        "field": "y",
                        "type": "quantitative",
                        "scale": {"domain": yd, "nice": False, "zero": False},
                        "title": f"PC2 ({e2:.0%} of variance)",
                    },
                    "color": {
                        "field": "s",
                        "type": "nominal",
                        "scale": scale,
                        "legend": {"title": "segment", "orient": "right", "labelLimit": 260},
                    },
                    "description": {"field": "t"},
                },
            },
            {
                "data": {"values": centres},
                "mark": {
                    "type": "text",
                    "fontSize": 12,
                    "fontWeight": "bold",
                    "stroke": "white",
                    "strokeWidth": 3,
                    "strokeOpacity": 0.9,
                    "aria": False,
                    "clip": True,
                },
                "encoding": {
                    "x": {"field": "x", "type": "quantitative", "scale": {"domain": xd}},
                    "y": {"field": "y", "type": "quantitative", "scale": {"domain": yd}},
                    "text": {"field": "id"},
                },
            },
            {
                "data": {"values": centres},
                "mark": {"type": "text", "fontSize": 12, "fontWeight": "bold", "clip": True},
                "encoding": {
                    "x": {"field": "x", "type": "quantitative", "scale": {"domain": xd}},
                    "y": {"field": "y", "type": "quantitative", "scale": {"domain": yd}},
                    "text": {"field": "id"},
                    "description": {"field": "t"},
                },
            },
        ],
    }


def heatmap(profile: dict, names: dict[int, str], order: list[int]) -> dict:
    """Segments x columns, coloured by z (clamped to ±2), the z in the cell;
    a segment with no mean of a column (z None) in grey, "n/a"."""
    multi = len({c["model"] for c in profile["columns"]}) > 1
    label = {
        id(c): (f"{c['model']}.{c['column']}" if multi else c["column"]) for c in profile["columns"]
    }
    cols = [label[id(c)] for c in profile["columns"]]
    values = []
    for cell in profile["cells"]:
        s = cell["segment_id"]
        if s not in names:
            continue
        col = label[id(cell["column"])]
        z = cell["z"]
        if z is None:  # no member has a value: absent, not average
            zt, why = "n/a", "no member has a value"
        else:
            zt, why = (f"{z:+.1f}" if abs(z) >= 0.05 else "0"), f"z {z:+.2f}"
        values.append(
            {
                "seg": names[s],
                "col": col,
                "z": None if z is None else round(z, 3),
                "zt": zt,
                "t": f"{names[s]}\n{col}: mean {cell['mean']} vs {cell['overall']} overall ({why})",
            }
        )
    rows = [names[s] for s in order if s in names]
    return {
        "width": {"step": 54},
        "height": {"step": 24},
        "data": {"values": values},
        "encoding": {
            "x": {
                "field": "col",
                "type": "nominal",
                "sort": cols,
                "title": None,
                "axis": {"labelAngle": -35, "labelLimit": 150, "orient": "top"},
            },
            "y": {
                "field": "seg",
                "type": "nominal",
                "sort": rows,
                "title": None,
                "axis": {"labelLimit": 260},
            },
        },
        "layer": [
            {
                # invalid: null keeps a cell with z null (Vega-Lite leaves it out)
                "mark": {"type": "rect", "stroke": "white", "strokeWidth": 1, "invalid": None},
                "encoding": {
                    "color": {
                        # a cell with no mean (z null) is grey, as absent elsewhere
                        "condition": {"test": "datum.z === null", "value": ABSENT},
                        "field": "z",
                        "type": "quantitative",
                        "scale": {"scheme": "blueorange", "domain": [-2, 2], "clamp": True},
                        "legend": {"title": "z", "orient": "right", "gradientLength": 120},
                    },
                    "description": {"field": "t"},
                },
            },
            {
                "mark": {"type": "text", "fontSize": 10, "aria": False},
                "encoding": {
                    "text": {"field": "zt"},
                    "color": {
                        "condition": {"test": "abs(datum.z) > 1.4", "value": "white"},
                        "value": "#222",
                    },
                },
            },
        ],
    }


def drivers(found: list[dict], limit: int = 12) -> dict:
    """The columns that go with the segments most, 0 (unrelated) to 1
    (decides the segment), coloured by measure."""
    top = found[:limit]
    multi = len({d["model"] for d in top}) > 1
    values = []
    for d in top:
        col = f"{d['model']}.{d['column']}" if multi else d["column"]
        measure = MEASURES.get(d["measure"], d["measure"])
        values.append(
            {
                "col": col,
                "v": float(d["value"]),
                "m": measure,
                "mc": MEASURE_COLORS.get(d["measure"], "#999"),
                "t": f"{col}: {float(d['value']):.2f} ({measure}, {counted(int(d['n'] or 0), 'user')})",
            }
        )
    used = list(dict.fromkeys(v["m"] for v in values))
    colors = {v["m"]: v["mc"] for v in values}
    y = {
        "field": "col",
        "type": "nominal",
        "sort": [v["col"] for v in values],
        "title": None,
        "axis": {"labelLimit": 180},
    }
    return {
        "width": 260,
        "height": {"step": 20},
        "data": {"values": values},
        "encoding": {"y": y},
        "layer": [
            {
                "mark": {"type": "bar", "cornerRadiusEnd": 2},
                "encoding": {
                    "x": {
                        "field": "v",
                        "type": "quantitative",
                        "scale": {"domain": [0, 1]},
                        "title": "association (0 = unrelated, 1 = decides the segment)",
                    },
                    "color": {
                        "field": "m",
                        "type": "nominal",
                        "scale": {"domain": used, "range": [colors[m] for m in used]},
                        "legend": {"orient": "bottom", "title": None, "direction": "vertical"},
                    },
                    "description": {"field": "t"},
                },
            },
            {
                "mark": {"type": "text", "align": "left", "dx": 3, "fontSize": 10, "aria": False},
                "encoding": {
                    "x": {"field": "v", "type": "quantitative"},
                    "text": {"field": "v", "format": ".2f"},
                },
            },
        ],
    }


def sizes_over_runs(
    rows: list[dict], names: dict[int, str], colors: dict[int, str], when: dict
) -> dict:
    values = [
        {
            "run": r["run"],
            "s": names.get(r["segment_id"], str(r["segment_id"])),
            "n": r["users"],
            "t": f"{names.get(r['segment_id'], r['segment_id'])}\nrun {r['run']}"
            + (f" ({when[r['run']]})" if r["run"] in when else "")
            + f": {counted(r['users'], 'user')}",
        }
        for r in rows
    ]
    used = [s for s in names if any(r["segment_id"] == s for r in rows)]
    scale = color_scale([names[s] for s in used], [colors[s] for s in used])
    enc = {
        "x": {"field": "run", "type": "ordinal", "title": "run", "axis": {"labelAngle": 0}},
        "y": {"field": "n", "type": "quantitative", "title": "users"},
        "color": {
            "field": "s",
            "type": "nominal",
            "scale": scale,
            "legend": {"title": "segment", "orient": "right", "labelLimit": 260},
        },
    }
    return {
        "width": 420,
        "height": 230,
        "data": {"values": values},
        "encoding": enc,
        "layer": [
            {"mark": {"type": "line", "strokeWidth": 2, "aria": False}},
            {
                "mark": {"type": "point", "filled": True, "size": 40, "opacity": 1},
                "encoding": {"description": {"field": "t"}},
            },
        ],
    }


def sankey(flow: dict, names: dict[int, str], colors: dict[int, str]) -> dict:
    """Users' segment in the previous run (left) and the last run (right)."""
    prev, last = flow["from_run"], flow["to_run"]
    new, gone = f"(not in run {prev})", f"(not in run {last})"

    def node(sid, label, missing):
        if sid is None:
            return missing
        return names.get(sid) or f"{sid} · {label}"

    rows = [
        (node(f["from"], f["from_label"], new), node(f["to"], f["to_label"], gone), f["users"])
        for f in flow["flows"]
    ]
    color_of = {names[s]: colors[s] for s in names}
    id_order = list(names.values())

    def order(side):
        tot: dict[str, int] = {}
        for a, b, n in rows:
            key = a if side == 0 else b
            tot[key] = tot.get(key, 0) + n
        return sorted(
            tot,
            key=lambda k: (k in (new, gone), id_order.index(k) if k in id_order else 1e9, -tot[k]),
        )

    left, right = order(0), order(1)
    H = max(240, 40 * max(len(left), len(right)))
    sk = layout.sankey(rows, left, right, height=H)
    W, NW, LABEL = 960, 12, 300
    xl, xr = LABEL, W - LABEL - NW
    totals_l = {k: sum(n for a, _, n in rows if a == k) for k in left}
    totals_r = {k: sum(n for _, b, n in rows if b == k) for k in right}
    band_pts = []
    steps = 24
    for i, b in enumerate(sk.bands):
        share = b.users / max(totals_l[b.source], 1)
        tip = f"{b.source} → {b.target}\n{counted(b.users, 'user')} ({share:.0%} of {b.source})"
        for j in range(steps + 1):
            t = j / steps
            s = t * t * (3 - 2 * t)
            band_pts.append(
                {
                    "b": i,
                    "x": xl + NW + (xr - xl - NW) * t,
                    "y": b.y0[0] + (b.y1[0] - b.y0[0]) * s,
                    "y2": b.y0[1] + (b.y1[1] - b.y0[1]) * s,
                    "c": color_of.get(b.source, ABSENT),
                    "t": tip,
                }
            )
    nodes = []
    for side, nodes_pos, totals, x in ((0, sk.left, totals_l, xl), (1, sk.right, totals_r, xr)):
        run = prev if side == 0 else last
        for k, (y0, y1) in nodes_pos.items():
            nodes.append(
                {
                    "x": x,
                    "x2": x + NW,
                    "y": y0,
                    "y2": y1,
                    "ym": (y0 + y1) / 2,
                    "c": color_of.get(k, ABSENT),
                    "lx": x - 6 if side == 0 else x + NW + 6,
                    "al": "right" if side == 0 else "left",
                    "label": f"{k} · {totals[k]:,}",
                    "t": f"{k}\n{counted(totals[k], 'user')} in run {run}"
                    if k not in (new, gone)
                    else f"{k}: {counted(totals[k], 'user')}",
                }
            )
    px = {"type": "quantitative", "scale": None}
    return {
        "width": W,
        "height": sk.height,
        "padding": {"left": 4, "right": 4, "top": 22, "bottom": 4},
        "title": {"text": f"run {prev}  →  run {last}", "anchor": "middle", "offset": 8},
        "layer": [
            {
                "data": {"values": band_pts},
                "mark": {"type": "area", "fillOpacity": 0.45, "interpolate": "linear"},
                "encoding": {
                    "x": {"field": "x", **px},
                    "y": {"field": "y", **px},
                    "y2": {"field": "y2"},
                    "detail": {"field": "b"},
                    "color": {"field": "c", "type": "nominal", "scale": None},
                    "description": {"field": "t"},
                },
            },
            {
                "data": {"values": nodes},
                "layer": [
                    {
                        "mark": {"type": "rect"},
                        "encoding": {
                            "x": {"field": "x", **px},
                            "x2": {"field": "x2"},
                            "y": {"field": "y", **px},
                            "y2": {"field": "y2"},
                            "color": {"field": "c", "type": "nominal", "scale": None},
                            "description": {"field": "t"},
                        },
                    },
                    *(
                        {
                            "transform": [{"filter": {"field": "al", "equal": align}}],
                            "mark": {
                                "type": "text",
                                "align": align,
                                "baseline": "middle",
                                "fontSize": 11,
                                "limit": LABEL - 12,
                                "aria": False,
                            },
                            "encoding": {
                                "x": {"field": "lx", **px},
                                "y": {"field": "ym", **px},
                                "text": {"field": "label"},
                            },
                        }
                        for align in ("right", "left")
                    ),
                ],
            },
        ],
    }
