"""`segtool docs`: one self-contained HTML file, readable offline and free of
scripts: the lineage graph and, per segmentation, its segments (labels, rules,
traits, keywords), a heatmap of each segment's feature profile (z-scores),
the columns that drive it, a 2-D map of its users, sizes over runs, a Sankey
of the users' moves between the last two runs and example users; then the
runs with their durations.

Charts are Vega-Lite specs drawn to SVG in-process by vl-convert (svg.py);
the page is a Jinja template with autoescape, so every string from the
project or its data (labels, texts, column names) reaches the page escaped.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup

from segtool.report.html import charts, data
from segtool.report.html.svg import render
from segtool.report.profile import cut, segmentation_profile, trait_str
from segtool.state.db import RESULTS, has_state, table_exists
from segtool.words import counted

TEMPLATE = Path(__file__).resolve().parent.parent / "report.html"
EXAMPLES = 2  # example users per segment
TEXT_CHARS = 300  # of an example text
TIP_CHARS = 160  # of the sample text in a map tooltip
MOVES = 8  # the biggest moves listed under a Sankey
EVENT_IDS = 8  # segment ids listed in one line of events (then "... and N more")


def build_report(project) -> str:
    """The report page (Project.report writes it)."""
    proj = project.loaded
    ctx: dict[str, Any] = {
        "project": proj.name,
        "target": proj.target_name,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "segmentations": [],
        "runs": [],
        "has_state": False,
    }
    ctx["lineage"], ctx["lineage_error"] = _draw(charts.lineage, project.graph().graph)
    con = project.connect(read_only=True) if proj.database_path.exists() else None
    try:
        if con is not None and has_state(con):
            ctx["has_state"] = True
            ctx["runs"] = _runs(data.runs(con))
            when = {r["run_id"]: r["started"] for r in ctx["runs"]}
            for i, (name, seg) in enumerate(proj.segmentations.items()):
                if table_exists(con, RESULTS, name):
                    ctx["segmentations"].append(_segmentation(project, con, seg, i, when))
                else:  # said, not left out: a section of its own, and a link
                    ctx["segmentations"].append(_not_run(seg, i))
    finally:
        if con is not None:
            con.close()
    return _environment().from_string(TEMPLATE.read_text(encoding="utf-8")).render(**ctx)


def _environment():
    import jinja2

    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["pct"] = lambda v: "" if v is None else f"{v:.1%}"
    env.filters["num"] = lambda v: "" if v is None else f"{v:,}"
    return env


def _draw(make, *args) -> tuple[Markup | None, str | None]:
    """(svg, None), or (None, why) when a chart cannot be drawn: the rest of
    the report is still written."""
    try:
        spec = make(*args)
        return (Markup(render(spec)), None) if spec else (None, None)
    except Exception as exc:  # noqa: BLE001 - one chart must not cost the report
        return None, f"{type(exc).__name__}: {exc}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _runs(rows: list[dict]) -> list[dict]:
    longest = max((r["seconds"] or 0 for r in rows), default=0) or 1
    return [
        {
            **r,
            "started": r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else "",
            "duration": _duration(r["seconds"]),
            "bar": 0 if r["seconds"] is None else max(1, round(120 * r["seconds"] / longest)),
            "what": ", ".join(f"{k} {v}" for k, v in r["segmentations"].items()),
        }
        for r in rows
    ]


def _segmentation(project, con, seg, index: int, when: dict) -> dict:
    name, key = seg.name, project.loaded.key
    prof = segmentation_profile(project, name, examples=EXAMPLES, con=con)
    live = [s["segment_id"] for s in prof["segments"]]  # biggest first
    names, colors = _identities(prof, data.catalog(con, name))
    out: dict[str, Any] = {
        "anchor": f"seg-{index}",
        "not_run": False,
        "name": name,
        "kind": prof["kind"],
        "users": prof["users"],
        "last_run": prof["last_run"],
        "description": seg.description or "",
        "changed": _changed_since(project, con, seg, prof["last_run"]),
        "rows": _rows(project, prof, seg, colors),
        "show_rules": seg.is_rules,
        "drivers_run": prof["drivers_run"],
        "input_shares": prof.get("input_shares") or [],
        "events": _events(data.events(con, name)),
        "examples": [
            {
                "color": colors[s["segment_id"]],
                "segment": names[s["segment_id"]],
                "key": e["key"],
                "text": cut(e["text"], TEXT_CHARS),
            }
            for s in prof["segments"]
            for e in s["examples"]
            if e["text"]
        ],
        "errors": [],
        **dict.fromkeys(("heatmap", "drivers", "map", "over_runs", "flows", "flow_runs")),
        "map_points": 0,
        "map_note": "",
        "moved": 0,
        "moves": [],
    }
    out["show_keywords"] = any(r["keywords"] for r in out["rows"])

    def draw(part, make, *args):
        out[part], err = _draw(make, *args)
        if err:
            out["errors"].append(f"the {part.replace('_', ' ')}: {err}")

    profile = data.z_profile(con, key, name, prof["drivers"])
    if profile["cells"]:
        draw("heatmap", charts.heatmap, profile, names, live)
    if prof["drivers"]:
        draw("drivers", charts.drivers, prof["drivers"])
    if not seg.is_rules:
        try:
            points = data.map_points(project, con, seg)
        except Exception as exc:  # noqa: BLE001 - e.g. an encoder that is gone
            points = None
            out["errors"].append(f"the map: {type(exc).__name__}: {exc}")
        if points is not None:
            draw("map", charts.segment_map, points, names, colors, _tips(prof, names))
            out["map_points"] = len(points["ids"])
            out["map_note"] = _left_out(points, name, prof["last_run"])
    marks = data.history_runs(con, name)
    sizes = data.sizes_over_runs(con, name, data.segment_runs(con, marks))
    if len({r["run"] for r in sizes}) >= 2:
        draw("over_runs", charts.sizes_over_runs, sizes, names, colors, when)
    flow = data.flows(con, key, name, marks)
    if flow is not None:
        out["flow_runs"] = (flow["from_run"], flow["to_run"])
        moves = [
            f for f in flow["flows"] if f["from"] != f["to"] and None not in (f["from"], f["to"])
        ]
        out["moved"] = sum(f["users"] for f in moves)
        out["moves"] = [
            {
                "from": names.get(f["from"], f"{f['from']}: {f['from_label']}"),
                "to": names.get(f["to"], f"{f['to']}: {f['to_label']}"),
                "from_color": colors.get(f["from"], charts.OUTLIER),
                "to_color": colors.get(f["to"], charts.OUTLIER),
                "users": f["users"],
            }
            for f in moves[:MOVES]
        ]
        draw("flows", charts.sankey, flow, names, colors)
    return out


def _not_run(seg, index: int) -> dict:
    """A segmentation the database has no segments of (added since the last
    run, or never selected by one)."""
    return {
        "anchor": f"seg-{index}",
        "name": seg.name,
        "kind": "rules" if seg.is_rules else "clusters",
        "description": seg.description or "",
        "not_run": True,
    }


def _identities(prof: dict, catalog: dict) -> tuple[dict[int, str], dict[int, str]]:
    """Each segment's display name ("3: label") and colour, the same in every
    table and chart: live segments first (biggest first), then the ones that
    ended (they may still be in history); outliers grey."""
    live = [s["segment_id"] for s in prof["segments"]]
    everyone = live + [s for s in catalog if s not in live]
    names = {s: f"{s}: {catalog[s]['label'] if s in catalog else ''}" for s in everyone}
    for s in prof["segments"]:
        names[s["segment_id"]] = f"{s['segment_id']}: {s['segment']}"
    # past the palette's 20, colours of their own (not the palette again);
    # outliers do not take one
    segs = [s for s in everyone if s >= 0]
    colors = dict(zip(segs, charts.segment_colors(len(segs))))
    colors.update({s: charts.OUTLIER for s in everyone if s < 0})
    return names, colors


def _changed_since(project, con, seg, last_run) -> str:
    """Why the YAML a reader compares with this section is not what made it:
    the segmentation's definition changed after its last run (a rule shown
    beside the sizes of the rule it replaced)."""
    from segtool.plan.state import DbState

    stored = DbState(con).node(f"segmentation.{seg.name}")
    node = project.graph().graph.nodes.get(f"segmentation.{seg.name}")
    if stored is None or node is None or stored.own_hash == node.own_hash:
        return ""
    return (
        f"The definition of {seg.name} changed after run {last_run}: the segments below are "
        f"that run's, the rules shown are the project's now (segtool run -s {seg.name} updates them)."
    )


def _rule_sql(project, seg) -> list[tuple[str, str]]:
    """(segment, predicate) as the run evaluates it (vars filled in, secret
    values masked); as written where it does not compile."""
    from segtool.compile.predicates import segmentation_predicates
    from segtool.errors import ProjectError

    try:
        compiled = segmentation_predicates(project.loaded, seg).rules
    except ProjectError:
        return [(r.segment, r.when) for r in seg.rules or []]
    mask = project.loaded.secrets.mask
    return [(segment, mask(pred.sql.strip())) for segment, pred in compiled]


def _rows(project, prof: dict, seg, colors: dict[int, str]) -> list[dict]:
    rules: dict[str, list[str]] = {}
    for segment, when in _rule_sql(project, seg):
        rules.setdefault(segment, []).append(when)
    if seg.is_rules and seg.default:
        rules.setdefault(seg.default, []).append("otherwise")
    return [
        {
            "id": s["segment_id"],
            "label": s["segment"],
            "color": colors[s["segment_id"]],
            "users": s["users"],
            "share": s["share"],
            "bar": max(1, round(120 * s["share"])),
            "rule": " or ".join(rules.get(s["segment"], [])),
            "traits": [trait_str(t) for t in s.get("traits", [])[:3]],  # as `show` says it
            "keywords": ", ".join(s["keywords"]),
            "born_run": s["born_run"],
        }
        for s in prof["segments"]
    ]


def _left_out(points: dict, name: str, last_run) -> str:
    """Why users of the segments are not on the map: an input rebuilt by a
    later run (`run -s +model`) no longer has them."""
    if not points.get("left_out"):
        return ""
    why = ", ".join(f"{n:,} {what}" for what, n in points["missing"])
    return (
        f"{counted(points['left_out'], 'user')} of the segments are left out: the inputs "
        f"changed after run {last_run} and no longer have them ({why}); "
        f"segtool run -s {name} brings the segments up to date."
    )


def _tips(prof: dict, names: dict[int, str]) -> dict[int, str]:
    """A map's hover text per segment: label, size, keywords, a sample text
    (the example nearest the segment's centre)."""
    tips = dict(names)
    for s in prof["segments"]:
        tip = f"{names[s['segment_id']]}\n{counted(s['users'], 'user')} ({s['share']:.1%})"
        if s["keywords"]:
            tip += "\nkeywords: " + ", ".join(s["keywords"])
        text = next((e["text"] for e in s["examples"] if e["text"]), None)
        if text:
            tip += f"\n“{cut(text, TIP_CHARS)}”"
        tips[s["segment_id"]] = tip
    return tips


def _events(rows: list[dict]) -> list[str]:
    """Births, deaths, splits and merges of segments, by id, newest first;
    the births (deaths) of one run on one line; a long list of ids ends in
    "... and N more"."""
    out: list[str] = []
    same: dict[tuple, list] = {}
    for e in rows:
        d, ev, run = e["detail"], e["event"], f"run {e['run_id']}"
        if ev in ("birth", "death") and isinstance(d, int):
            key = (run, ev)
            if key not in same:
                same[key] = []
                out.append(key)  # filled in below
            same[key].append(d)
        elif ev == "split" and isinstance(d, dict):
            out.append(f"{run}: segment {d.get('segment_id')} split into {_ids(d.get('into', []))}")
        elif ev == "merge" and isinstance(d, dict):
            out.append(
                f"{run}: segments {_ids(d.get('from', []))} merged into {d.get('segment_id')}"
            )
        else:
            out.append(f"{run}: {ev} {d}")
    for i, line in enumerate(out):
        if isinstance(line, tuple):
            run, ev = line
            ids = sorted(same[line])
            noun = "segment" if len(ids) == 1 else "segments"
            out[i] = f"{run}: {noun} {_ids(ids)} {'appeared' if ev == 'birth' else 'ended'}"
    return out


def _ids(xs, most: int = EVENT_IDS) -> str:
    """`4, 5, 6` or, past `most`, `4, 5, ... and 10 more`."""
    xs = list(xs)
    head = ", ".join(str(x) for x in xs[:most])
    return head if len(xs) <= most else f"{head} ... and {len(xs) - most} more"
