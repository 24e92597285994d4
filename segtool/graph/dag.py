"""The node graph: topological order, cycle detection, ancestors/descendants."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from segtool.errors import ProjectError

KINDS = ("source", "model", "text", "encoder", "features", "embedding", "segmentation")


@dataclass
class Node:
    unique_id: str  # "<kind>.<name>", e.g. model.user_features, source.shop.users
    kind: str
    name: str
    path: str | None
    line: int | None = None
    tags: list[str] = field(default_factory=list)
    description: str = ""
    depends_on: list[str] = field(default_factory=list)
    spec: Any = None  # the spec or compiled model behind the node
    data: Any = None  # canonical content that changes results
    meta: Any = None  # content that changes nothing computed (descriptions, tags, tests)
    own_hash: str = ""
    data_hash: str = ""  # own data + parents' data hashes
    metadata_hash: str = ""

    def part_hashes(self) -> dict[str, str]:
        """A hash per top-level part of `data` (population, labels, ...)."""
        from segtool.project.loader import dumps

        if not isinstance(self.data, dict):
            return {}
        return {k: sha(dumps(v))[:16] for k, v in self.data.items()}

    def to_manifest(self) -> dict:
        return {
            "unique_id": self.unique_id,
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "line": self.line,
            "tags": self.tags,
            "description": self.description,
            "depends_on": self.depends_on,
            "data_hash": self.data_hash,
            "own_hash": self.own_hash,
            "metadata_hash": self.metadata_hash,
            **({"materialized": self.data.get("materialized")} if self.kind == "model" else {}),
        }


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Graph:
    def __init__(self, nodes: Iterable[Node]):
        self.nodes: dict[str, Node] = {n.unique_id: n for n in nodes}
        self.children: dict[str, list[str]] = {u: [] for u in self.nodes}
        for n in self.nodes.values():
            for d in n.depends_on:
                if d in self.children:
                    self.children[d].append(n.unique_id)
        self._order: list[str] | None = None

    def __contains__(self, uid: str) -> bool:
        return uid in self.nodes

    def __getitem__(self, uid: str) -> Node:
        return self.nodes[uid]

    def by_kind(self, kind: str) -> list[Node]:
        return [self.nodes[u] for u in self.order() if self.nodes[u].kind == kind]

    def get(self, kind: str, name: str) -> Node | None:
        return self.nodes.get(f"{kind}.{name}")

    def order(self) -> list[str]:
        """Topological order (stable: ties broken by id). Raises on a cycle, naming it."""
        if self._order is not None:
            return self._order
        indeg = {u: 0 for u in self.nodes}
        for n in self.nodes.values():
            for d in n.depends_on:
                if d in self.nodes:
                    indeg[n.unique_id] += 1
        ready = sorted(u for u, k in indeg.items() if k == 0)
        out: list[str] = []
        import heapq

        heapq.heapify(ready)
        while ready:
            u = heapq.heappop(ready)
            out.append(u)
            for c in self.children[u]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    heapq.heappush(ready, c)
        if len(out) != len(self.nodes):
            cycle = self.find_cycle({u for u in self.nodes if u not in set(out)})
            first = self.nodes[cycle[0]]
            raise ProjectError(
                "dependency cycle: " + " -> ".join(cycle + [cycle[0]]),
                path=first.path,
                line=first.line,
                hint="a model cannot depend on itself through ref(); break the loop",
            )
        self._order = out
        return out

    def find_cycle(self, candidates: set[str]) -> list[str]:
        color: dict[str, int] = {}
        stack: list[str] = []

        def dfs(u: str) -> list[str] | None:
            color[u] = 1
            stack.append(u)
            for d in sorted(self.nodes[u].depends_on):
                if d not in candidates:
                    continue
                if color.get(d) == 1:
                    return stack[stack.index(d) :]
                if d not in color:
                    found = dfs(d)
                    if found:
                        return found
            stack.pop()
            color[u] = 2
            return None

        for u in sorted(candidates):
            if u not in color:
                found = dfs(u)
                if found:
                    return list(reversed(found))
        return sorted(candidates)

    def ancestors(self, uid: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.nodes[uid].depends_on)
        while todo:
            u = todo.pop()
            if u in seen or u not in self.nodes:
                continue
            seen.add(u)
            todo.extend(self.nodes[u].depends_on)
        return seen

    def descendants(self, uid: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.children.get(uid, []))
        while todo:
            u = todo.pop()
            if u in seen:
                continue
            seen.add(u)
            todo.extend(self.children.get(u, []))
        return seen

    def fingerprint(self) -> None:
        """data_hash folds in parents' data hashes, so an upstream change marks
        everything below it; metadata_hash does not propagate."""
        from segtool.project.loader import dumps

        for u in self.order():
            n = self.nodes[u]
            n.own_hash = sha(dumps({"kind": n.kind, "data": n.data}))
            parents = sorted(self.nodes[d].data_hash for d in n.depends_on if d in self.nodes)
            n.data_hash = sha(dumps([n.own_hash, parents]))
            n.metadata_hash = sha(
                dumps({"meta": n.meta, "tags": n.tags, "description": n.description})
            )
