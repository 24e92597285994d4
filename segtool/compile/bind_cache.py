"""Skip re-binding a project nothing of which changed (dbt's partial parsing).

`validate` binds every model, predicate and test against schema-only copies
of the sources (compile/checks.py: bind_models). That is a fresh DuckDB, the
sources' files read for their schemas and every model compiled again: 0.15 s
of a 1.0 s no-op run at 200,000 users. `run`, `plan` and `compile` check the
project the same way before they touch data; when the definitions, the
compiled SQL, the target's settings and every source file (size and
modification time, as the planner fingerprints them) are exactly those of
the last check that found no problem, that check's answer stands, and the
key of it is kept in target/bind_check.json.

`segtool validate` itself always binds and writes nothing (it is what CI runs
on a pull request).
A stale answer could only come from an input outside the key (an environment
variable read in a model's `is_incremental()` branch alone); the model then
fails where it runs, inside the run's transaction, and nothing is written.
A source whose files cannot be listed (a remote path) is never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path

CACHE_FILE = "bind_check.json"


def bind_key(loaded, built) -> str | None:
    """What a clean bind of this project depended on, hashed; None when that
    cannot be known."""
    import duckdb

    from segtool import __version__
    from segtool.plan.build import source_fingerprint

    graph = built.graph
    nodes, sources = [], {}
    for uid in graph.order():
        n = graph[uid]
        nodes.append([uid, n.own_hash, n.data_hash, n.metadata_hash])
        if n.kind == "source":
            fp = source_fingerprint(n.spec, loaded.root)
            if fp is None:
                return None
            sources[uid] = fp
    # node hashes already cover each model's SQL as written (portable_sql) and
    # the specs; the compiled SQL (absolute source paths, env_var values) and
    # vars are what the bind itself reads, so they are in the key as they are
    payload = {
        "segtool": __version__,
        "duckdb": duckdb.__version__,
        "root": str(loaded.root),
        "nodes": nodes,
        "sql": {name: cm.sql for name, cm in sorted(built.compiled.items())},
        "sources": sources,
        "target": [loaded.target_name, loaded.target.model_dump(mode="json")],
        "vars": loaded.vars,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def already_bound(target_dir: Path, key: str) -> bool:
    try:
        return json.loads((target_dir / CACHE_FILE).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def remember(target_dir: Path, key: str) -> None:
    """Keep `key` (written whole or not at all; a read-only folder keeps nothing)."""
    path = target_dir / CACHE_FILE
    tmp = path.with_name(f".{CACHE_FILE}.{os.getpid()}")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key}))
        os.replace(tmp, path)
    except OSError:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
