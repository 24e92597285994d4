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


def _show(v: Any) -> str:
    return json.dumps(v, default=str, sort_keys=True) if not isinstance(v, str) else repr(v)


def _short(v: Any, limit: int = 60) -> str:
    text = _show(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _before_after(old: Any, new: Any, limit: int = 60) -> str:
    """`old -> new`, each cut to `limit` characters around where they first
    differ: cut at the same place, two long values that differ near their
    end read the same on both sides."""
    a, b = _show(old), _show(new)
    if len(a) <= limit and len(b) <= limit:
        return f"{a} -> {b}"
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, first - limit // 3)

    def cut(text: str) -> str:
        head = "..." if start else ""
        body = text[start:]
        return head + (body if len(body) <= limit else body[: limit - 3] + "...")

    return f"{cut(a)} -> {cut(b)}"


def _pairs(old: list, new: list, olds: range, news: range) -> list[tuple[int, int]]:
    """Items of a changed stretch of a list that are one item edited: the
    same `name`, `segment` or `label` (a rule, an input), else the same
    position when both stretches are as long."""

    def identity(x: Any) -> Any:
        if isinstance(x, dict):
            for key in ("name", "segment", "label"):
                if isinstance(x.get(key), str):
                    return (key, x[key])
        return None

    def once(items: list, where: range) -> dict:
        ids = [identity(items[k]) for k in where]
        return {x: k for x, k in zip(ids, where) if x is not None and ids.count(x) == 1}

    in_old, in_new = once(old, olds), once(new, news)
    pairs = [(i, in_new[x]) for x, i in in_old.items() if x in in_new]
    if not pairs and len(olds) == len(news):
        pairs = list(zip(olds, news))
    return pairs


def _value_changes(path: str, old: Any, new: Any) -> list[str]:
    """Where two values differ, as `path: before -> after` lines: into
    mappings by key and into lists item by item (`rules[3].when: ...`), so
    that one edited rule among five reads as that rule, not as two lists."""
    import difflib

    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if k not in old:
                out.append(f"{path}.{k}: added {_short(new[k])}")
            elif k not in new:
                out.append(f"{path}.{k}: removed (was {_short(old[k])})")
            else:
                out += _value_changes(f"{path}.{k}", old[k], new[k])
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        match = difflib.SequenceMatcher(
            a=[_show(x) for x in old], b=[_show(x) for x in new], autojunk=False
        )
        for op, i1, i2, j1, j2 in match.get_opcodes():
            if op == "equal":
                continue
            pairs = _pairs(old, new, range(i1, i2), range(j1, j2))
            paired_old = {i for i, _ in pairs}
            paired_new = {j: i for i, j in pairs}
            out += [
                f"{path}[{i}]: removed {_short(old[i])}"
                for i in range(i1, i2)
                if i not in paired_old
            ]
            for j in range(j1, j2):
                if j in paired_new:
                    out += _value_changes(f"{path}[{j}]", old[paired_new[j]], new[j])
                else:
                    out.append(f"{path}[{j}]: added {_short(new[j])}")
        return out
    return [f"{path}: {_before_after(old, new)}"]


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
        else:
            out += _value_changes(k, o, n)
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
