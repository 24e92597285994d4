"""Node by node: what was added, removed, changed (which fields, before ->
after) or renamed between two versions of a project."""

from __future__ import annotations

import json
from typing import Any

from segtool.graph.dag import sha
from segtool.project.loader import dumps


def _field_changes(old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if old.get(k) == new.get(k):
                continue
            if k == "templates" and isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
                o, n = old[k], new[k]
                names = sorted(t for t in set(o) | set(n) if o.get(t) != n.get(t))
                out.append("template " + ", ".join(names))
            else:
                out.append({"sql": "SQL"}.get(k, k))
        return out
    return [] if old == new else ["definition"]


def _short(v: Any, limit: int = 60) -> str:
    text = json.dumps(v, default=str, sort_keys=True) if not isinstance(v, str) else repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_delta(a: str, b: str) -> str:
    """`+2 -1 lines`: the lines added and removed from text A to text B."""
    import difflib

    lines = list(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0))
    plus = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    minus = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return f"+{plus} -{minus} lines"


def _field_details(old: Any, new: Any) -> list[str]:
    """Readable before -> after lines for a reviewer: `cluster.k: 6 -> 5`,
    `template story.j2: +2 -1 lines`."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return []
    out = []
    for k in sorted(set(old) | set(new)):
        o, n = old.get(k), new.get(k)
        if o == n:
            continue
        if k == "templates" and isinstance(o, dict) and isinstance(n, dict):
            for t in sorted(set(o) | set(n)):
                if o.get(t) == n.get(t):
                    continue
                if t not in o or t not in n:
                    out.append(f"template {t}: {'added' if t in n else 'removed'}")
                    continue
                out.append(f"template {t}: {_line_delta(o[t], n[t])}")
        elif k == "sql" and isinstance(o, str) and isinstance(n, str):
            out.append(f"SQL: {_line_delta(o, n)}")
        elif isinstance(o, dict) and isinstance(n, dict):
            for sk in sorted(set(o) | set(n)):
                if o.get(sk) != n.get(sk):
                    out.append(f"{k}.{sk}: {_short(o.get(sk))} -> {_short(n.get(sk))}")
        else:
            out.append(f"{k}: {_short(o)} -> {_short(n)}")
    return out


def _meta_changes(b, h) -> list[str]:
    out = []
    if b.description != h.description:
        out.append("description")
    if sorted(b.tags) != sorted(h.tags):
        out.append("tags")
    bm, hm = b.meta, h.meta
    if bm != hm:
        if isinstance(bm, dict) and isinstance(hm, dict):
            out += [k for k in sorted(set(bm) | set(hm)) if bm.get(k) != hm.get(k)]
        else:
            out.append("properties")
    return out


def _rename_key(node, renames: dict[str, str]) -> str:
    data = node.data
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "name"}
        if node.kind == "embedding":
            data = {
                "text": renames.get(f"text.{data['text']}", f"text.{data['text']}"),
                "encoder": renames.get(f"encoder.{data['encoder']}", f"encoder.{data['encoder']}"),
            }
    return sha(dumps({"kind": node.kind, "data": data}))


def _detect_renames(bg, hg, removed: list[str], added: list[str]) -> dict[str, str]:
    """added uid -> removed uid, for nodes whose definition is the same but for the name.
    Embeddings are matched after texts and encoders, so a renamed text carries its
    embedding along."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for phase in (
        ("source", "model", "text", "encoder", "features", "segmentation"),
        ("embedding",),
    ):
        back = {r: a for a, r in out.items()}  # removed uid -> added uid
        pool: dict[str, list[str]] = {}
        for r in removed:
            if bg[r].kind in phase and r not in taken:
                pool.setdefault(_rename_key(bg[r], back), []).append(r)
        for a in added:
            if hg[a].kind in phase and a not in out:
                cands = [
                    c
                    for c in pool.get(_rename_key(hg[a], {}), [])
                    if c not in taken and bg[c].kind == hg[a].kind
                ]
                if cands:
                    out[a] = cands[0]
                    taken.add(cands[0])
    return out


def compare_projects(base, head) -> list[dict]:
    """Node by node: added (with likely renames), removed, changed (which
    fields, before -> after), metadata only. HEAD's order."""
    bg = base.graph().graph
    hg = head.graph().graph
    b_ids, h_ids = set(bg.nodes), set(hg.nodes)
    removed = sorted(b_ids - h_ids)
    added = [u for u in hg.order() if u not in b_ids]
    renames = _detect_renames(bg, hg, removed, added)
    renamed_to = {r: a for a, r in renames.items()}
    changes: list[dict] = []

    def entry(uid, node, change, fields=(), **kw) -> dict:
        d = {
            "unique_id": uid,
            "kind": node.kind,
            "name": node.name,
            "change": change,
            "path": node.path,
            "fields": list(fields),
            "details": [],
            "renamed_from": None,
            "renamed_to": None,
            "forces": [],
            "note": None,
        }
        d.update(kw)
        return d

    for uid in hg.order():
        h = hg[uid]
        if uid not in b_ids:
            e = entry(uid, h, "added", renamed_from=renames.get(uid))
            if e["renamed_from"]:
                e["note"] = f"renamed from {e['renamed_from']}"
            changes.append(e)
            continue
        b = bg[uid]
        if b.own_hash != h.own_hash:
            e = entry(
                uid,
                h,
                "changed",
                _field_changes(b.data, h.data),
                details=_field_details(b.data, h.data),
            )
            meta = _meta_changes(b, h)
            if meta:
                e["note"] = "also changed: " + ", ".join(meta)
            changes.append(e)
        elif b.metadata_hash != h.metadata_hash:
            fields = _meta_changes(b, h)
            e = entry(uid, h, "metadata only", fields)
            e["note"] = "only " + ", ".join(fields) + " changed: nothing reruns"
            if "update" in fields:
                e["note"] += " (the update policy decides when it refits)"
            changes.append(e)
    for uid in removed:
        b = bg[uid]
        e = entry(uid, b, "removed", renamed_to=renamed_to.get(uid))
        left = {
            "segmentation": f"its tables segments.{b.name} and segments.{b.name}_history stay in the database until dropped",
            "text": f"its texts (_segtool.texts__{b.name}) stay in the database until dropped",
            "model": f"the relation main.{b.name} stays in the database until dropped",
        }.get(b.kind)
        e["note"] = (
            "; ".join(
                x for x in (f"renamed to {e['renamed_to']}" if e["renamed_to"] else None, left) if x
            )
            or None
        )
        changes.append(e)
    return changes
