"""`segtool show`: what a segmentation looks like now."""

from __future__ import annotations

import json
from typing import Any

from segtool.compile.sql import quote_ident
from segtool.errors import ProjectError, did_you_mean
from segtool.execute.segment import drivers
from segtool.execute.segment.store import require_results
from segtool.ml.association import MEASURES
from segtool.report.console import format_table, markdown_table, one_line
from segtool.state import tables
from segtool.state.db import RESULTS, STATE, column_types, table_exists
from segtool.state.result import one
from segtool.words import duration_str, number_str  # noqa: F401 - read from here before they moved
from segtool.words import interval_seconds as _interval_seconds
from segtool.words import value_str as _fmt_num


def segmentation_profile(project, name: str, examples: int = 3, con=None) -> dict[str, Any]:
    """What a segmentation looks like now. `con`: an open connection to read
    with (left open); without it one is opened read-only and closed."""
    proj = project.loaded
    seg = proj.segmentation(name)
    k = quote_ident(proj.key)
    own = con is None
    if own:
        con = project.connect(read_only=True)
    try:
        require_results(con, name)
        total = one(con.execute(f"SELECT count(*) FROM {tables.segments(name)}"))[0]
        rows = con.execute(
            f"""SELECT s.segment_id, any_value(s.segment), count(*), c.keywords, c.features, c.born_run
            FROM {tables.segments(name)} s LEFT JOIN {tables.CATALOG} c ON c.segmentation = ? AND c.segment_id = s.segment_id
            GROUP BY s.segment_id, c.keywords, c.features, c.born_run ORDER BY count(*) DESC, s.segment_id""",
            [name],
        ).fetchall()
        # a live segment no user is in (a rule that matches nobody) is listed
        # too, with 0 users: left out, nothing said that the rule matched nobody
        rows += con.execute(
            f"""SELECT c.segment_id, c.label, 0, c.keywords, c.features, c.born_run
            FROM {tables.CATALOG} c WHERE {tables.empty_in_catalog(name)} ORDER BY c.segment_id""",
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
            ex = con.execute(ex_sql, [sid]).fetchall() if examples and n else []
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
        last_run = _last_run(con, name)
        found, drivers_run = drivers.load(con, name)
        traits = _traits(con, name)
        # a column marked PII since the drivers were computed is left out now,
        # not at the next refit (its values are in the stored traits)
        from segtool.compile.segments import hidden_pii

        hidden = set(hidden_pii(proj, seg, project.pii_columns()))
        found = [d for d in found if f"{d['model']}.{d['column']}" not in hidden]
        for s in segments:
            s["traits"] = _without(traits.get(s["segment_id"], []), hidden)
        return {
            "segmentation": name,
            "kind": "rules" if seg.is_rules else "clusters",
            "users": total,
            "last_run": last_run,
            "drivers": found,
            "drivers_run": drivers_run,
            "measures": MEASURES,
            "input_shares": _input_shares(con, seg),
            "segments": segments,
        }
    finally:
        if own:
            con.close()


def _without(traits: list[dict], hidden: set[str]) -> list[dict]:
    """`traits` without those of the `model.column`s in `hidden`, also where
    one was folded under another (`same_users`): a hidden head gives its
    place to the first of its folded traits that is not hidden."""
    out = []
    for t in traits:
        same = [
            o
            for o in t.get("same_users", [])
            if f"{o.get('model')}.{o.get('column')}" not in hidden
        ]
        if f"{t.get('model')}.{t.get('column')}" in hidden:
            if not same:
                continue
            t, same = same[0], same[1:]
        t = {k: v for k, v in t.items() if k != "same_users"}
        out.append({**t, "same_users": same} if same else t)
    return out


def _traits(con, name: str) -> dict[int, list[dict]]:
    from segtool.state.db import column_type

    if column_type(con, STATE, "segment_catalog", "traits") is None:
        return {}
    rows = con.execute(
        f"SELECT segment_id, traits FROM {tables.CATALOG} WHERE segmentation = ? AND traits IS NOT NULL",
        [name],
    ).fetchall()
    return {sid: json.loads(t) for sid, t in rows}


def _input_shares(con, seg) -> list[dict]:
    """Each input's declared weight share and its share of the squared
    distances in the clustered space (after reduction), from the fitted model."""
    if seg.is_rules:
        return []
    from segtool.execute.segment.store import active_fit

    row = active_fit(con, seg.name)
    if row is None:
        return []
    # stored with the fit's params (format 2): no need to restore the model
    effective = json.loads(row[2])["model"].get("block_shares")
    total = sum(i.weight for i in seg.inputs) or 1.0
    out = []
    for j, inp in enumerate(seg.inputs):
        name = inp.features or f"{inp.embedding.text}/{inp.embedding.encoder}"
        out.append(
            {
                "input": name,
                "weight": inp.weight,
                "declared_share": inp.weight / total,
                "effective_share": float(effective[j]) if effective is not None else None,
            }
        )
    return out


def list_segmentations(project) -> dict[str, Any]:
    """`segtool show` without NAME: every segmentation, run or not."""
    proj = project.loaded
    con = project.connect(read_only=True) if proj.database_path.exists() else None
    try:
        rows = []
        for name, seg in proj.segmentations.items():
            item = {
                "segmentation": name,
                "kind": "rules" if seg.is_rules else "clusters",
                "users": None,
                "segments": None,
                "last_run": None,
                "description": seg.description,
            }
            if con is not None and table_exists(con, RESULTS, name):
                users, n = one(
                    con.execute(
                        f"SELECT count(*), count(DISTINCT segment_id) FROM {tables.segments(name)}"
                    )
                )
                last = _last_run(con, name)
                # and live segments no user is in, as `show NAME` lists them
                n += one(
                    con.execute(
                        f"SELECT count(*) FROM {tables.CATALOG} c WHERE {tables.empty_in_catalog(name)}",
                        [name],
                    )
                )[0]
                item.update(users=users, segments=n, last_run=last)
            rows.append(item)
        return {"segmentations": rows}
    finally:
        if con is not None:
            con.close()


def _last_run(con, name: str) -> int | None:
    """The last run that changed the segment table: one that wrote a row, or
    one that only removed users (their spells end at it; the table's own
    run_id could not say so)."""
    last = one(con.execute(f"SELECT max(run_id) FROM {tables.segments(name)}"))[0]
    if table_exists(con, RESULTS, tables.history_name(name)):
        ended = one(con.execute(f"SELECT max(valid_to_run) FROM {tables.history(name)}"))[0]
        last = max((r for r in (last, ended) if r is not None), default=None)
    return last


def format_list(listing: dict, fmt: str, width: int | None = None) -> str:
    if fmt == "json":
        return json.dumps(listing, indent=2, default=str)
    headers = ["segmentation", "kind", "users", "segments", "last run", "description"]
    rows = [
        [
            r["segmentation"],
            r["kind"],
            "not run" if r["users"] is None else f"{r['users']:,}",
            "" if r["segments"] is None else r["segments"],
            "" if r["last_run"] is None else r["last_run"],
            r["description"],
        ]
        for r in listing["segmentations"]
    ]
    if fmt == "markdown":
        return markdown_table(headers, rows)
    hint = "\nsegtool show NAME: one segmentation's segments, drivers and examples"
    return format_table(headers, rows, "segmentations", width) + hint


# ----------------------------------------------------------------------------- --vs COLUMN


def base_column(
    project, con, seg, model: str, column: str, what: str, missing: str = ""
) -> dict[str, str]:
    """The columns of `model` (name -> DuckDB type) after checking that
    `column` is one of them and not PII the segmentation may not show (as
    --vs and score --truth read a column's values)."""
    from segtool.compile.checks import pii_columns

    types = column_types(con, tables.MODELS, model)
    if column not in types:
        raise ProjectError(
            f"{missing}model '{model}' (the base of {what}) has no column '{column}'",
            hint=did_you_mean(column, types) or f"columns: {', '.join(sorted(types))}",
        )
    pii = pii_columns(project.loaded, project.graph()).get(model, {})
    if column in pii and column not in seg.allow_pii:
        raise ProjectError(
            f"column '{column}' of model '{model}' is PII (pii: true at {pii[column]}); "
            "its values are not shown",
            hint=f"declare `allow_pii: [{column}]` on segmentation '{seg.name}' to show them",
        )
    return types


def segment_crosstab(project, name: str, column: str, *, top: int = 10, bins: int = 5) -> dict:
    """Segments against one column of the base model: counts per segment and
    value (a categorical column's `top` commonest values, the rest pooled as
    "(other)"; a numeric column in `bins` quantile bins), with the column's
    association measured as the profile's drivers and `max_association`
    tests measure it (drivers.compute: the same sample, pooling and NULL
    handling), so the three never print two values for one column."""
    from segtool.compile.segments import base_model
    from segtool.ml.association import CRAMERS_V, RANK_ETA2

    proj = project.loaded
    seg = proj.segmentation(name)
    model = base_model(proj, seg)
    con = project.connect(read_only=True)
    try:
        require_results(con, name)
        types = base_column(project, con, seg, model, column, f"segmentation '{name}'")
        kind = drivers.column_kind(types[column])
        if kind not in ("numeric", "categorical"):
            raise ProjectError(
                f"column '{column}' has type {types[column]}: --vs takes a numeric, date or categorical column"
            )
        k = quote_ident(proj.key)
        c = f"m.{quote_ident(column)}"
        joined = f"{tables.segments(name)} s JOIN {tables.model(model)} m ON m.{k} = s.{k}"
        distinct = one(con.execute(f"SELECT count(DISTINCT {c}) FROM {joined}"))[0]
        if kind == "numeric" and distinct > top:
            qs = [i / bins for i in range(1, bins)]
            cuts = one(con.execute(f"SELECT quantile_disc({c}, {qs}) FROM {joined}"))[0] or []
            cuts = sorted(set(cuts))
            case = " ".join(f"WHEN {c} <= ? THEN {i}" for i in range(len(cuts)))
            values = [f"≤ {_fmt_num(cuts[0])}"] + [
                f"{_fmt_num(a)} – {_fmt_num(b)}" for a, b in zip(cuts, cuts[1:])
            ]
            values.append(f"> {_fmt_num(cuts[-1])}")
            rows = con.execute(
                f"""SELECT s.segment_id, any_value(s.segment),
                    CASE WHEN {c} IS NULL THEN -1 {case} ELSE {len(cuts)} END AS b, count(*)
                    FROM {joined} GROUP BY s.segment_id, b""",
                list(cuts),
            ).fetchall()
            index = {i: i for i in range(len(values))}
            binned = True
        else:
            top_values = [
                r[0]
                for r in con.execute(
                    f"SELECT CAST({c} AS VARCHAR) v FROM {joined} WHERE {c} IS NOT NULL "
                    f"GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {int(top)}"
                ).fetchall()
            ]
            # buckets by number, not by name: a real value '(null)' or
            # '(other)' was counted as the NULLs or the pooled rest
            rows = con.execute(
                f"""SELECT s.segment_id, any_value(s.segment),
                    CASE WHEN {c} IS NULL THEN -1
                         ELSE coalesce(list_position(?, CAST({c} AS VARCHAR)) - 1, -2) END AS v,
                    count(*)
                    FROM {joined} GROUP BY s.segment_id, v""",
                [top_values],
            ).fetchall()
            values = list(top_values)
            index = {i: i for i in range(len(values))}
            if any(r[2] == -2 for r in rows):
                index[-2] = len(values)
                values.append("(other)" if "(other)" not in values else "(other values)")
            binned = False
        if any(r[2] == -1 for r in rows):
            index[-1] = len(values)
            values.append("(null)" if "(null)" not in values else "(no value)")
        labels: dict[int, str] = {}
        counts: dict[int, list[int]] = {}
        for sid, label, v, n in rows:
            labels[sid] = label
            counts.setdefault(sid, [0] * len(values))[index[v]] += int(n)
        order = sorted(counts, key=lambda s: (-sum(counts[s]), s))
        measured = drivers.compute(
            con, proj, seg, tables.segments(name), project.pii_columns(), only={f"{model}.{column}"}
        ).drivers
        found = next((d for d in measured if (d["model"], d["column"]) == (model, column)), None)
        association = {
            "measure": found["measure"]
            if found
            else (RANK_ETA2 if kind == "numeric" else CRAMERS_V),
            # None where drivers skip the column: the key, all NULL, or a
            # categorical column with one value or nearly one per user
            "value": found["value"] if found else None,
            "users": found["n"] if found else 0,
        }
        return {
            "segmentation": name,
            "model": model,
            "column": column,
            # drivers count dates as numeric (ranks); a person reads a date
            "kind": (
                ("date" if types[column].upper().startswith(("DATE", "TIMESTAMP")) else kind)
                + (" (quantile bins)" if binned else "")
            ),
            "values": values,
            "association": association,
            "rows": [
                {
                    "segment_id": sid,
                    "segment": labels[sid],
                    "users": int(sum(counts[sid])),
                    "counts": counts[sid],
                    "shares": [n / max(sum(counts[sid]), 1) for n in counts[sid]],
                }
                for sid in order
            ],
        }
    finally:
        con.close()


def format_crosstab(ct: dict, fmt: str, width: int | None = None) -> str:
    if fmt == "json":
        return json.dumps(ct, indent=2, default=str)
    headers = ["id", "segment", "users", *ct["values"]]
    rows = [
        [r["segment_id"], r["segment"], f"{r['users']:,}"]
        + [f"{n:,} ({sh:.0%})" if n else "·" for n, sh in zip(r["counts"], r["shares"])]
        for r in ct["rows"]
    ]
    a = ct["association"]
    strength = (
        f"{a['value']:.2f}"
        if a["value"] is not None
        else "not measured (the key, all NULL, or one value or about one per user)"
    )
    title = (
        f"{ct['segmentation']} vs {ct['model']}.{ct['column']} ({ct['kind']}): "
        f"{MEASURES[a['measure']]} {strength}; each cell: users (share of the segment)"
    )
    if fmt == "markdown":
        return f"### {title}\n\n" + markdown_table(headers, rows)
    return format_table(headers, rows, title, width)


def _features_str(feats: list[dict]) -> str:
    return ", ".join(f"{f['name']} {'+' if f['z'] >= 0 else ''}{f['z']:.1f}σ" for f in feats)


def trait_str(t: dict) -> str:
    """`top category: Books (82% vs 14%)`, `high revenue (median 420 vs 95)`,
    `orders: 0 (100% vs 12%; same users: revenue 0)`."""
    col = t["column"].replace("_", " ")
    if "share" in t:
        value = _fmt_num(t["value"])
        rel = " incl." if t.get("kind") == "contains" else ":"
        same = [_value_str(o) for o in t.get("same_users", [])]
        also = f"; same users: {', '.join(same)}" if same else ""
        return f"{col}{rel} {value} ({t['share']:.0%} vs {t['base_share']:.0%}{also})"
    said = t.get("text") or f"{t['kind']} {col}"  # "high revenue", "recent signup at"
    pair = (t["median"], t["base_median"])
    interval = any(isinstance(v, str) and _interval_seconds(v) is not None for v in pair)
    median, base = (_fmt_num(v, interval) for v in pair)
    return f"{said} (median {median} vs {base})"


def _value_str(t: dict) -> str:
    """A folded trait as a label says it (`revenue 0`, `not subscribed`,
    `recent products incl. Kindle`), with its column when the words lack it
    (`top viewed category Video Games`)."""
    from segtool.ml.labels import trait_text

    said, col = trait_text(t), t["column"].replace("_", " ")
    return said if col.lower() in said.lower() else f"{col} {said}"


TOP_DRIVERS = 6
SHORT = {"cramers_v": "Cramér's V", "rank_eta2": "rank η²"}  # MEASURES says more (json, docs)


def format_profile(prof: dict, fmt: str, width: int | None = None) -> str:
    if fmt == "json":
        return json.dumps(prof, indent=2, default=str)
    headers = ["id", "segment", "users", "share", "what sets it apart", "keywords"]
    rows = [
        [
            s["segment_id"],
            s["segment"],
            f"{s['users']:,}",
            f"{s['share']:.1%}",
            "; ".join(trait_str(t) for t in s.get("traits", [])[:3])
            or _features_str(s["features"]),
            ", ".join(s["keywords"]),
        ]
        for s in prof["segments"]
    ]
    title = f"{prof['segmentation']} ({prof['kind']}): {prof['users']:,} users, last run {prof['last_run']}"
    if prof.get("drivers_run") is not None and prof["drivers_run"] != prof["last_run"]:
        # traits and drivers are computed at a fit or a change of the rules:
        # later runs assign users without them (a model edit since then is
        # not in them, so they say from when they are)
        title += f"; what sets each apart and the drivers are of run {prof['drivers_run']}"
    md = fmt == "markdown"
    if md:
        out = [f"### {title}", "", markdown_table(headers, rows)]
    else:
        out = [format_table(headers, rows, title, width)]
    if prof.get("drivers"):
        out += [
            "",
            f"{'#### ' if md else ''}drivers (run {prof['drivers_run']}; 0 = unrelated, 1 = the column decides the segment)",
        ]
        for d in prof["drivers"][:TOP_DRIVERS]:
            col = f"{d['model']}.{d['column']}"
            out.append(f"  {'- ' if md else ''}{col:<36} {d['value']:.2f}  {SHORT[d['measure']]}")
    if prof.get("input_shares"):
        out += [
            "",
            f"{'#### ' if md else ''}inputs (declared weight share → share of the clustered space)",
        ]
        for i in prof["input_shares"]:
            eff = (
                "n/a (fitted before segtool measured it; refit)"
                if i["effective_share"] is None
                else f"{i['effective_share']:.0%}"
            )
            out.append(f"  {'- ' if md else ''}{i['input']:<32} {i['declared_share']:.0%} → {eff}")
    room = max(60, (width or 250) - 12)
    with_text = [s for s in prof["segments"] if any(e["text"] for e in s["examples"])]
    for s in with_text:
        out.append("")
        out.append(
            f"{'#### ' if md else ''}segment {s['segment_id']} · {one_line(s['segment'])}: examples"
        )
        for e in s["examples"]:
            out.append(f"  - {e['key']}: {cut(e['text'] or '', min(240, room))}")
    if not with_text and any(s["examples"] for s in prof["segments"]):
        # no text to show (rule segments): the example users' keys, one line each
        out += ["", f"{'#### ' if md else ''}example users"]
        for s in prof["segments"]:
            keys = ", ".join(one_line(e["key"]) for e in s["examples"]) or "no user"
            out.append(
                f"  {'- ' if md else ''}{s['segment_id']} · {one_line(s['segment'])}: {keys}"
            )
    return "\n".join(out)


def cut(text: str, n: int) -> str:
    """At most n characters on one line (no control characters), ending on a
    word boundary."""
    text = " ".join(one_line(text).split())
    if len(text) <= n:
        return text
    head = text[: n - 1]
    space = head.rfind(" ")
    return (head[:space] if space > n * 0.6 else head).rstrip(" ,;.") + "…"
