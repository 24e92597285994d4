"""dbt selection syntax: `name`, `+name`, `name+`, `2+name`, `tag:x`,
`path:segments/x.yml`, `kind:model`, `state:modified` / `state:new`, globs
(`stg_*`). Space-separated selectors are a union; comma-joined ones an
intersection. `--exclude` removes what it matches."""

from __future__ import annotations

import fnmatch
import re

from segtool.errors import SelectionError, did_you_mean
from segtool.graph.dag import KINDS, Graph

_ATOM = re.compile(r"^(?P<up>\d*\+)?(?P<body>[^+]+?)(?P<down>\+\d*)?$")


def _depth(tok: str | None, leading: bool) -> int | None:
    if not tok:
        return 0
    digits = tok[:-1] if leading else tok[1:]
    return int(digits) if digits else None  # None = unlimited


def _within(graph: Graph, start: str, up: bool, depth: int | None) -> set[str]:
    out: set[str] = set()
    frontier = {start}
    level = 0
    while frontier and (depth is None or level < depth):
        nxt: set[str] = set()
        for u in frontier:
            nbrs = graph.nodes[u].depends_on if up else graph.children.get(u, [])
            nxt.update(n for n in nbrs if n in graph.nodes and n not in out)
        out |= nxt
        frontier = nxt
        level += 1
    return out


def _match_body(graph: Graph, body: str, state: dict | None) -> set[str]:
    method, _, value = body.partition(":") if ":" in body else ("", "", body)
    nodes = graph.nodes
    if method == "tag":
        return {u for u, n in nodes.items() if value in n.tags}
    if method == "path":
        v = value.rstrip("/")
        return {
            u
            for u, n in nodes.items()
            if n.path and (n.path == v or n.path.startswith(v + "/") or fnmatch.fnmatch(n.path, v))
        }
    if method in ("kind", "resource_type"):
        if value not in KINDS:
            raise SelectionError(f"unknown kind '{value}'", hint=did_you_mean(value, KINDS))
        return {u for u, n in nodes.items() if n.kind == value}
    if method == "source":
        return {
            u
            for u, n in nodes.items()
            if n.kind == "source"
            and fnmatch.fnmatch(n.name, value if "." in value else value + ".*")
        }
    if method == "state":
        if state is None:
            raise SelectionError(
                f"'{body}' needs --state DIR: the target/ folder of an earlier run (its manifest.json)"
            )
        old = state.get("nodes", {})
        if value == "new":
            return {u for u in nodes if u not in old}
        if value == "modified":  # the node's own definition or metadata, as dbt does
            return {
                u
                for u, n in nodes.items()
                if u not in old
                or old[u].get("own_hash") != n.own_hash
                or old[u].get("metadata_hash") != n.metadata_hash
            }
        raise SelectionError(
            f"unknown state selector '{value}'", hint="use state:modified or state:new"
        )
    if method:
        raise SelectionError(
            f"unknown selector method '{method}:'",
            hint="valid: tag:, path:, kind:, source:, state:",
        )
    out = {u for u, n in nodes.items() if fnmatch.fnmatchcase(n.name, value) or u == value}
    return out


def _atom(graph: Graph, atom: str, state: dict | None) -> set[str]:
    m = _ATOM.match(atom)
    if not m:
        raise SelectionError(
            f"cannot parse selector '{atom}'",
            hint="examples: name, +name, name+, tag:daily, path:models/",
        )
    body = m.group("body")
    found = _match_body(graph, body, state)
    if not found and body.startswith("tag:"):
        tags = sorted({t for n in graph.nodes.values() for t in n.tags})
        raise SelectionError(
            f"selector '{atom}' matched no node",
            hint=did_you_mean(body[4:], tags) if tags else "no node has a tag",
        )
    if not found and not body.startswith("state:"):  # nothing modified is a valid answer
        names = [n.name for n in graph.nodes.values()]
        raise SelectionError(f"selector '{atom}' matched no node", hint=did_you_mean(body, names))
    result = set(found)
    up, down = _depth(m.group("up"), True), _depth(m.group("down"), False)
    for u in found:
        if m.group("up"):
            result |= _within(graph, u, True, up)
        if m.group("down"):
            result |= _within(graph, u, False, down)
    return result


def _expr(graph: Graph, expr: str, state: dict | None) -> set[str]:
    result: set[str] = set()
    for part in expr.split():
        inter: set[str] | None = None
        for atom in part.split(","):
            got = _atom(graph, atom, state)
            inter = got if inter is None else inter & got
        result |= inter or set()
    return result


def select(
    graph: Graph,
    select: list[str] | tuple[str, ...] | None = None,
    exclude: list[str] | tuple[str, ...] | None = None,
    state: dict | None = None,
) -> list[str]:
    """Selected unique ids in topological order."""
    for s in (*(select or ()), *(exclude or ())):
        if not s.strip():
            raise SelectionError(
                "empty selector: -s '' selects nothing",
                hint="name a node (segtool ls lists them), or leave out -s to select everything",
            )
    chosen = set(graph.nodes)
    if select:
        chosen = set()
        for s in select:
            chosen |= _expr(graph, s, state)
    for e in exclude or ():
        chosen -= _expr(graph, e, state)
    return [u for u in graph.order() if u in chosen]
