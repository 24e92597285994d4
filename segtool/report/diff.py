"""How a diff reads: text, JSON or Markdown (for a pull-request comment)."""

from __future__ import annotations

import json
from typing import Any

from segtool.plan.model import Step
from segtool.report.console import markdown_table, one_line
from segtool.report.console import md_escape as _md
from segtool.report.plan import step_line, steps_markdown
from segtool.words import counted


def _fmt_num(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{v:.1%}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return f"{v:,}"


def _side(v: dict) -> str:
    if v["kind"] == "git":
        return f"{v['label']} ({(v['commit'] or '')[:8]})"
    if v["kind"] == "worktree" and v["label"] == "working tree":
        return "working tree"
    return f"folder {v['label']}"


def format_diff(result: dict, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(result, indent=2, default=str)
    if result["kind"] == "data_diff":
        return _format_data_md(result) if fmt == "markdown" else _format_data_text(result)
    return _format_project_md(result) if fmt == "markdown" else _format_project_text(result)


def _steps(r: dict) -> list[Step]:
    """The result's steps (Step.to_dict() dicts) as Steps again."""
    return [Step(**st) for st in r["steps"]]


def _forces_text(e: dict, *, md: bool = False) -> str:
    parts = []
    for f in e["forces"]:
        uid = f"`{f['unique_id']}`" if md else f["unique_id"]
        parts.append(f"{f['action']} {uid}")
    return ", ".join(dict.fromkeys(parts))


def _format_project_text(r: dict) -> str:
    s = r["summary"]
    lines = [f"segtool diff: {_side(r['base'])} -> {_side(r['head'])}  (project {r['project']})"]
    if not r["changes"]:
        lines.append("no changes")
        return "\n".join(lines + _threshold_lines(r))
    lines.append(
        f"{counted(s['nodes_changed'], 'node')} changed: {s['added']} added, {s['removed']} removed, {s['changed']} changed; "
        f"{s['metadata_only']} metadata only; refits: {s['refits']}"
    )
    width = max(len(e["unique_id"]) for e in r["changes"])
    lines.append("")
    for e in r["changes"]:
        what = ", ".join(e["fields"])
        note = f"({e['note']})" if e.get("note") else ""
        lines.append(f"  {e['change']:<13} {e['unique_id']:<{width}}  {what or note}".rstrip())
        if what and note:
            lines.append(f"  {'':<13} {'':<{width}}  {note}")
        for dline in e.get("details") or []:
            lines.append(f"  {'':<13} {'':<{width}}  {dline}")
        forces = _forces_text(e)
        if forces:
            lines.append(f"  {'':<13} {'':<{width}}  forces: {forces}")
    db = r["database"]
    lines.append("")
    if r["steps"]:
        est = (
            f" (counted against {db['path']}, last run {db['last_run']})" if db.get("used") else ""
        )
        # the sides by name: "HEAD" is git's last commit, the usual BASE
        lines.append(f"plan of {_side(r['head'])} against the state {_side(r['base'])} left{est}:")
        w = max(len(st["unique_id"]) for st in r["steps"])
        lines += [step_line(st, w, gap="  ") for st in _steps(r)]
    else:
        lines.append("plan: nothing reruns")
    if db.get("note"):
        lines.append(f"note: {db['note']}")
    return "\n".join(lines + _threshold_lines(r))


def _format_project_md(r: dict) -> str:
    s = r["summary"]
    lines = [f"### segtool diff: `{_side(r['base'])}` → `{_side(r['head'])}`", ""]
    if not r["changes"]:
        lines.append("No changes to the project.")
        return "\n".join(lines + _threshold_md(r))
    extras = []
    for key, label in (
        ("texts_to_embed", "texts to embed"),
        ("users_to_reassign", "users to reassign"),
    ):
        if s.get(key):
            extras.append(f"{s[key]:,} {label}")
    lines.append(
        f"**{counted(s['nodes_changed'], 'node')} changed** ({s['added']} added, {s['removed']} removed, {s['changed']} changed), "
        f"{s['metadata_only']} metadata only · **refits: {s['refits']}**"
        + (" · " + " · ".join(extras) if extras else "")
    )
    rows = []
    for e in r["changes"]:
        what = " ".join(
            x
            for x in (
                "; ".join(e.get("details") or []) or ", ".join(e["fields"]),
                f"({e['note']})" if e.get("note") else "",
            )
            if x
        )
        rows.append([e["change"], f"`{e['unique_id']}`", what, _forces_text(e, md=True)])
    lines += ["", markdown_table(["change", "node", "what changed", "forces"], rows)]
    db = r["database"]
    lines.append("")
    if r["steps"]:
        est = (
            f" (counted against `{db['path']}`, last run {db['last_run']})"
            if db.get("used")
            else ""
        )
        lines += [f"#### What the next run does{est}", "", steps_markdown(_steps(r))]
    else:
        lines.append("Nothing reruns: metadata only.")
    if db.get("note"):
        lines += ["", f"> {_md(db['note'])}"]
    return "\n".join(lines + _threshold_md(r))


def _threshold_lines(r: dict) -> list[str]:
    bad = [c for c in r.get("thresholds", []) if c["violated"]]
    if not r.get("thresholds"):
        return []
    if not bad:
        return ["thresholds: ok"]
    return ["thresholds violated:"] + [
        f"  {c['expr']}"
        + (
            f" ({c['where']}: {c['value']:.4g})"
            if isinstance(c["value"], float)
            else f" ({c['where'] or 'value'}: {c['value']})"
        )
        for c in bad
    ]


def _threshold_md(r: dict) -> list[str]:
    if not r.get("thresholds"):
        return []
    bad = [c for c in r["thresholds"] if c["violated"]]
    if not bad:
        return [
            "",
            "✅ thresholds ok: " + ", ".join(sorted({f"`{c['expr']}`" for c in r["thresholds"]})),
        ]
    return ["", "❌ **thresholds violated**", ""] + [
        f"- `{c['expr']}`"
        + (f" in `{c['where']}`" if c["where"] else "")
        + f": {_fmt_num(c['value'])}"
        for c in bad
    ]


def _runs_label(s: dict, mode: str) -> str:
    if mode == "runs":
        return f"run {s.get('base_run')} → run {s.get('head_run')}"
    b = f"base run {s['base_run']}" if s.get("base_run") is not None else "base"
    h = f"head run {s['head_run']}" if s.get("head_run") is not None else "head"
    return f"{b} → {h}"


def _matrix_lines(t: dict, indent: str = "    ") -> list[str]:
    if not t["from"]:
        return []
    cols = [str(c) for c in t["to"]]
    w = max([len(c) for c in cols] + [len(str(v)) for row in t["counts"] for v in row] + [3])
    rw = max(len(str(x)) for x in t["from"] + ["from\\to"])
    out = [indent + "from\\to".rjust(rw) + " " + " ".join(c.rjust(w) for c in cols)]
    for rid, row in zip(t["from"], t["counts"], strict=True):
        out.append(indent + str(rid).rjust(rw) + " " + " ".join(str(v).rjust(w) for v in row))
    return out


def _size_line(z: dict, *, delta: bool = True) -> str:
    """One segment's size before and after (and the delta, its label cut to 30)."""
    label = one_line(z["label"] or "")[:30]
    line = f"    {z['segment_id']:>4} {label:<30} {z['before']:>8,} {z['after']:>8,}"
    return line + (f" {z['delta']:>+7,}" if delta else "")


def _relabelled(s: dict) -> list[str]:
    """'3 "old" -> "new"' for each id whose label changed (a refit's)."""
    return [
        f"{z['segment_id']} {one_line(z['label_before'])!r} -> {one_line(z['label'])!r}"
        for z in s["sizes"]
        if z.get("label_before") is not None
        and z["label"] is not None
        and z["label_before"] != z["label"]
    ]


def _format_data_text(r: dict) -> str:
    where = (
        r["head"]["database"]
        if r["mode"] == "runs"
        else f"{r['base']['database']} -> {r['head']['database']}"
    )
    lines = [f"segtool diff --data: {r['mode']} ({where})"]
    if not r["segmentations"]:
        lines.append("no segment tables to compare")
    for s in r["segmentations"]:
        lines.append("")
        u = s["users"]
        if s["status"] != "compared":
            lines.append(
                f"{s['name']}: {s['status'].replace('_', ' ')}"
                + (f" ({s['note']})" if s.get("note") else "")
            )
            if s["sizes"]:
                lines.append(f"    {'id':>4} {'segment':<30} {'before':>8} {'after':>8}")
            lines += [_size_line(z, delta=False) for z in s["sizes"]]
            continue
        lines.append(
            f"{s['name']} ({_runs_label(s, r['mode'])}): {u['before']:,} -> {u['after']:,} users; {u['entered']:,} entered, {u['left']:,} left, "
            f"{u['moved']:,} moved ({_fmt_num(s['moved_share'], pct=True)} of {u['both']:,}); ARI {_fmt_num(s['ari'])}, NMI {_fmt_num(s['nmi'])}"
        )
        lines.append(f"    {'id':>4} {'segment':<30} {'before':>8} {'after':>8} {'delta':>7}")
        lines += [_size_line(z) for z in s["sizes"]]
        lines += [f"  relabelled: {line}" for line in _relabelled(s)]
        if s["transitions"]["from"]:
            lines.append("  transitions (users in both; rows: before, columns: after):")
            lines += _matrix_lines(s["transitions"])
        if s["examples"]:
            lines.append("  moved users (examples):")
            for e in s["examples"]:
                lines.append(
                    f"    {one_line(e['key'])}: {e['from']['segment_id']} {one_line(e['from']['segment'] or '')} -> {e['to']['segment_id']} {one_line(e['to']['segment'] or '')}"
                )
                if e.get("text_before") and e["text_before"] != e.get("text"):
                    lines.append(f"      text before: {e['text_before']}")
                    lines.append(f"      text after:  {e.get('text')}")
                elif e.get("text"):
                    lines.append(f"      text: {e['text']}")
        if s.get("note"):
            lines.append(f"  note: {s['note']}")
    return "\n".join(lines + _threshold_lines(r))


def _format_data_md(r: dict) -> str:
    title = "runs of one database" if r["mode"] == "runs" else "two databases"
    lines = [f"### segtool diff --data: {title}", ""]
    if r["mode"] == "databases":
        lines += [f"base `{r['base']['database']}` → head `{r['head']['database']}`", ""]
    if not r["segmentations"]:
        lines.append("No segment tables to compare.")
    else:
        rows = []
        for s in r["segmentations"]:
            u = s["users"] or {}
            row = [
                f"`{s['name']}`",
                s["status"].replace("_", " "),
                f"{u.get('before', 0):,} → {u.get('after', 0):,}",
                f"{u.get('entered', 0):,}",
                f"{u.get('left', 0):,}",
            ]
            if s["status"] == "compared":  # otherwise moved, ARI and NMI stay empty
                row[1] = _runs_label(s, r["mode"])
                row += [
                    f"{u['moved']:,} ({_fmt_num(s['moved_share'], pct=True)})",
                    _fmt_num(s["ari"]),
                    _fmt_num(s["nmi"]),
                ]
            rows.append(row)
        headers = ["segmentation", "compared", "users before → after", "entered", "left"]
        lines.append(markdown_table([*headers, "moved", "ARI", "NMI"], rows))
        for s in r["segmentations"]:
            relabelled = _relabelled(s) if s["status"] == "compared" else []
            if relabelled:
                lines += ["", f"`{_md(s['name'])}` relabelled: " + "; ".join(map(_md, relabelled))]
    for s in r["segmentations"]:
        u = s["users"] or {}
        if s["status"] != "compared" or not (u.get("moved") or u.get("entered") or u.get("left")):
            continue  # nothing moved: the summary row says it all
        lines += [
            "",
            f"<details><summary><b>{_md(s['name'])}</b>: sizes, transitions, examples</summary>",
            "",
            markdown_table(
                ["id", "segment", "before", "after", "delta"],
                [
                    [
                        str(z["segment_id"]),
                        str(z["label"] or ""),
                        f"{z['before']:,}",
                        f"{z['after']:,}",
                        f"{z['delta']:+,}",
                    ]
                    for z in s["sizes"]
                ],
            ),
        ]
        t = s["transitions"]
        if t["from"]:
            lines += [
                "",
                "Transitions (users in both; rows: before, columns: after)",
                "",
                markdown_table(
                    ["from \\ to", *t["to"]],
                    [
                        [f"**{rid}**", *(str(v) for v in row)]
                        for rid, row in zip(t["from"], t["counts"], strict=True)
                    ],
                ),
            ]
        if s["examples"]:
            lines += ["", "Users who moved (examples):", ""]
            for e in s["examples"]:
                lines.append(
                    f"- `{_md(e['key'])}`: {e['from']['segment_id']} {_md(e['from']['segment'] or '')} → "
                    f"{e['to']['segment_id']} {_md(e['to']['segment'] or '')}"
                    + (
                        f" — before: _{_md(e['text_before'])}_ — after: _{_md(e.get('text'))}_"
                        if e.get("text_before") and e["text_before"] != e.get("text")
                        else (f" — _{_md(e['text'])}_" if e.get("text") else "")
                    )
                )
        lines += ["", "</details>"]
    return "\n".join(lines + _threshold_md(r))
