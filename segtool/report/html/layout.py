"""Geometry the charts draw: a layered layout of the lineage graph and the
bands of a two-column Sankey. Pure Python, in pixels; the charts module hands
the results to Vega-Lite, which draws them.

Lineage: nodes in columns by depth (longest path from a root), an edge that
skips columns passes through a reserved lane in each column it crosses (a
"dummy" node), columns ordered by barycenter sweeps to cut crossings, and
each node placed as close to its neighbours as the column's order allows
(isotonic regression). So no edge runs through a box: between columns an edge
is a curve in the empty gap, inside a column it keeps to its own lane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NODE_H = 26
LANE_H = 4  # the height a passing edge reserves in a column
GAP = 12  # between boxes in a column
LANE_GAP = 6  # between a lane and its neighbours
COL_GAP = 40  # between columns (where edges curve)
NODE_W_MAX = 180
NODE_W_MIN = 112


@dataclass
class Box:
    id: str
    layer: int
    x: float = 0.0
    y: float = 0.0  # centre
    dummy: bool = False


@dataclass
class Lineage:
    width: float
    height: float
    node_w: float
    boxes: dict[str, Box]  # real nodes only
    edges: list[list[tuple[float, float]]] = field(default_factory=list)  # polylines, left to right


def layers(
    order: list[str], parents: dict[str, list[str]], kinds: dict[str, str]
) -> dict[str, int]:
    """Column per node: longest path from a root. A root that is not a
    source (an encoder) sits just left of its first user; an unused one with
    the used ones of its kind."""
    layer: dict[str, int] = {}
    for u in order:
        ps = [p for p in parents.get(u, []) if p in layer]
        layer[u] = 1 + max((layer[p] for p in ps), default=-1)
    children: dict[str, list[str]] = {}
    for u in order:
        for p in parents.get(u, []):
            children.setdefault(p, []).append(u)
    floating = [u for u in order if not parents.get(u) and kinds.get(u) != "source"]
    for u in floating:
        if children.get(u):
            layer[u] = max(0, min(layer[c] for c in children[u]) - 1)
    for u in floating:
        if not children.get(u):
            same = [layer[v] for v in floating if kinds.get(v) == kinds.get(u) and children.get(v)]
            layer[u] = min(same) if same else 0
    return layer


def _crossings(cols: list[list[str]], down: dict[str, list[str]]) -> int:
    total = 0
    for a, b in zip(cols, cols[1:]):
        pos = {v: i for i, v in enumerate(b)}
        ends = [(i, pos[w]) for i, v in enumerate(a) for w in down.get(v, []) if w in pos]
        for j, (i1, p1) in enumerate(ends):
            for i2, p2 in ends[j + 1 :]:
                if (i1 - i2) * (p1 - p2) < 0:
                    total += 1
    return total


def _isotonic(target: list[float], sep: list[float]) -> list[float]:
    """Positions closest (least squares) to `target` with y[i+1] - y[i] >=
    sep[i]: pool adjacent violators on the targets less the cumulative gaps."""
    offs = [0.0]
    for s in sep:
        offs.append(offs[-1] + s)
    z = [t - o for t, o in zip(target, offs)]
    blocks: list[list[float]] = []  # [sum, count]
    for v in z:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out += [s / c] * int(c)
    return [v + o for v, o in zip(out, offs)]


def lineage(
    order: list[str],
    parents: dict[str, list[str]],
    kinds: dict[str, str],
    *,
    max_width: float = 1120,
) -> Lineage:
    layer = layers(order, parents, kinds)
    n_layers = max(layer.values(), default=0) + 1
    boxes = {u: Box(u, layer[u]) for u in order}
    # edges, split into unit steps through dummy lanes
    down: dict[str, list[str]] = {}
    up: dict[str, list[str]] = {}
    chains: list[list[str]] = []
    for u in order:
        for p in parents.get(u, []):
            if p not in boxes:
                continue
            chain = [p]
            for k in range(layer[p] + 1, layer[u]):
                d = f"\0{p}\0{u}\0{k}"
                boxes[d] = Box(d, k, dummy=True)
                chain.append(d)
            chain.append(u)
            for a, b in zip(chain, chain[1:]):
                down.setdefault(a, []).append(b)
                up.setdefault(b, []).append(a)
            chains.append(chain)
    cols: list[list[str]] = [[] for _ in range(n_layers)]
    for b in boxes.values():
        cols[b.layer].append(b.id)
    rank = {u: i for i, u in enumerate(order)}
    kind_rank = {k: i for i, k in enumerate(dict.fromkeys(kinds[u] for u in order))}
    cols[0].sort(key=lambda v: (kind_rank.get(kinds.get(v, ""), 0), rank.get(v, 0)))

    def sweep(cols, neighbours, rng) -> None:
        for i in rng:
            ref = cols[i - 1] if neighbours is up else cols[i + 1]
            pos = {v: j for j, v in enumerate(ref)}
            here = {v: j for j, v in enumerate(cols[i])}

            def bary(v, pos=pos, here=here):
                ns = [pos[w] for w in neighbours.get(v, []) if w in pos]
                return sum(ns) / len(ns) if ns else here[v]

            cols[i].sort(key=lambda v: (bary(v), here[v]))

    sweep(cols, up, range(1, n_layers))
    best, best_x = [c[:] for c in cols], _crossings(cols, down)
    for _ in range(6):
        sweep(cols, down, range(n_layers - 2, -1, -1))
        sweep(cols, up, range(1, n_layers))
        x = _crossings(cols, down)
        if x < best_x:
            best, best_x = [c[:] for c in cols], x
    cols = best

    def height(v) -> float:
        return LANE_H if boxes[v].dummy else NODE_H

    def gap(a, b) -> float:
        return GAP if not (boxes[a].dummy or boxes[b].dummy) else LANE_GAP

    seps = [[(height(a) + height(b)) / 2 + gap(a, b) for a, b in zip(c, c[1:])] for c in cols]
    for c, sep in zip(cols, seps):
        y = height(c[0]) / 2 if c else 0
        for j, v in enumerate(c):
            boxes[v].y = y
            if j < len(sep):
                y += sep[j]
    # pull each node towards its neighbours, keeping the column's order
    for it in range(12):
        rng = range(1, n_layers) if it % 2 == 0 else range(n_layers - 2, -1, -1)
        for i in rng:
            c = cols[i]
            nb = up if it % 2 == 0 else down
            target = []
            for v in c:
                ys = [boxes[w].y for w in nb.get(v, [])]
                target.append(sum(ys) / len(ys) if ys else boxes[v].y)
            for v, y in zip(c, _isotonic(target, seps[i])):
                boxes[v].y = y
    # nodes with no edge (an unused encoder): below the rest of their column
    for c in cols:
        alone = [v for v in c if not up.get(v) and not down.get(v)]
        rest = [v for v in c if v not in alone]
        y = max((boxes[v].y + height(v) / 2 for v in rest), default=-GAP)
        for v in alone:
            boxes[v].y = y + GAP + height(v) / 2
            y = boxes[v].y + height(v) / 2
    top = min((b.y - height(b.id) / 2 for b in boxes.values()), default=0.0)
    for b in boxes.values():
        b.y -= top
    total_h = max((b.y + height(b.id) / 2 for b in boxes.values()), default=NODE_H)
    node_w = (max_width - COL_GAP * (n_layers - 1)) / n_layers
    node_w = max(NODE_W_MIN, min(NODE_W_MAX, node_w))
    for b in boxes.values():
        b.x = b.layer * (node_w + COL_GAP)
    width = n_layers * node_w + (n_layers - 1) * COL_GAP
    edges = []
    for chain in chains:
        a, *mid, z = chain
        pts = [(boxes[a].x + node_w, boxes[a].y)]
        for d in mid:
            pts += [(boxes[d].x, boxes[d].y), (boxes[d].x + node_w, boxes[d].y)]
        pts.append((boxes[z].x, boxes[z].y))
        edges.append(pts)
    real = {u: b for u, b in boxes.items() if not b.dummy}
    return Lineage(width, total_h, node_w, real, edges)


# ----------------------------------------------------------------------------- sankey


@dataclass
class Band:
    source: object
    target: object
    users: int
    y0: tuple[float, float]  # top, bottom at the left
    y1: tuple[float, float]  # top, bottom at the right


@dataclass
class Sankey:
    height: float
    left: dict[object, tuple[float, float]]  # node -> (top, bottom)
    right: dict[object, tuple[float, float]]
    bands: list[Band]


def sankey(
    flows: list[tuple[object, object, int]],
    left_order: list,
    right_order: list,
    *,
    height: float = 300,
    gap: float = 8,
) -> Sankey:
    """Two columns of nodes (heights proportional to users) and a band per
    flow, stacked inside each node in the other column's order so bands
    cross as little as they can."""
    total_l = {n: 0 for n in left_order}
    total_r = {n: 0 for n in right_order}
    for a, b, n in flows:
        total_l[a] += n
        total_r[b] += n
    total = max(sum(total_l.values()), sum(total_r.values()), 1)
    n_gaps = max(len(left_order), len(right_order)) - 1
    scale = max(height - gap * n_gaps, 10) / total

    def place(order, totals):
        out, y = {}, 0.0
        for n in order:
            h = max(totals[n] * scale, 1.0)
            out[n] = (y, y + h)
            y += h + gap
        return out

    left, right = place(left_order, total_l), place(right_order, total_r)
    li = {n: i for i, n in enumerate(left_order)}
    ri = {n: i for i, n in enumerate(right_order)}
    cursor_l = {n: v[0] for n, v in left.items()}
    cursor_r = {n: v[0] for n, v in right.items()}
    bands = []
    ys_r = {}
    for a, b, n in sorted(flows, key=lambda f: (ri[f[1]], li[f[0]])):
        h = max(n * scale, 0.5)
        ys_r[(a, b)] = (cursor_r[b], cursor_r[b] + h)
        cursor_r[b] += h
    for a, b, n in sorted(flows, key=lambda f: (li[f[0]], ri[f[1]])):
        h = max(n * scale, 0.5)
        y0 = (cursor_l[a], cursor_l[a] + h)
        cursor_l[a] += h
        bands.append(Band(a, b, n, y0, ys_r[(a, b)]))
    height_used = max([v[1] for v in left.values()] + [v[1] for v in right.values()] + [0])
    return Sankey(height_used, left, right, bands)
