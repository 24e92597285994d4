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

A daily run reads new data in the same shape: the files' times change, their
schema does not. So the file keeps a second key, with a single-file Parquet
source's schema (from its footer) in place of its size and time; when the
first key misses and the second matches, the check's answer still stands
(a 200,000-user period-2 run skipped a 0.15 s bind), and the first key is
brought up to date. An unchanged project never reads a footer.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path

CACHE_FILE = "bind_check.json"


def bind_key(loaded, built, *, schemas: bool = False) -> str | None:
    """What a clean bind of this project depended on, hashed; None when that
    cannot be known. `schemas`: a single-file Parquet source counts by its
    schema instead of its size and time."""
    import duckdb

    from segtool import __version__
    from segtool.plan.build import source_fingerprint

    graph = built.graph
    nodes, sources = [], {}
    footers = _Footers() if schemas else None
    try:
        for uid in graph.order():
            n = graph[uid]
            nodes.append([uid, n.own_hash, n.data_hash, n.metadata_hash])
            if n.kind == "source":
                fp = (footers and footers.schema(n.spec, loaded)) or source_fingerprint(
                    n.spec, loaded.root
                )
                if fp is None:
                    return None
                sources[uid] = fp
    finally:
        if footers is not None:
            footers.close()
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


class _Footers:
    """Parquet schemas read through one in-memory DuckDB (a connection costs
    ~30 ms; a footer ~1.5 ms), opened at the first Parquet source."""

    def __init__(self):
        self.con = None

    def schema(self, st, loaded) -> str | None:
        """The schema of a source that is one Parquet file within reach (None:
        another kind of source, which counts by size and time)."""
        import glob

        import duckdb

        from segtool.compile.sql import infer_format, source_files
        from segtool.project import reach

        files = source_files(st, loaded.root)
        path = st.table.path
        if (
            files is None
            or glob.has_magic(path)
            or (st.table.format or infer_format(path)) != "parquet"
        ):
            return None
        file = Path(files[0])
        if not file.is_file():
            return None
        if not reach.within_reach(loaded.roots, file.resolve(), reach.data_dirs()):
            return None  # the bind refuses it; nothing of it is read here
        if self.con is None:
            self.con = duckdb.connect(":memory:")
        try:
            rows = self.con.execute(
                "SELECT name, type, converted_type, logical_type, repetition_type, num_children "
                "FROM parquet_schema(?)",
                [str(file)],
            ).fetchall()
        except duckdb.Error:
            return None
        return hashlib.sha256(json.dumps(rows, default=str).encode("utf-8")).hexdigest()

    def close(self) -> None:
        if self.con is not None:
            self.con.close()


class BindKeys:
    """The two keys of a project's bind check: by files' size and time, and
    (computed only when that one misses) by Parquet schemas."""

    def __init__(self, loaded, built):
        self.loaded, self.built = loaded, built
        self.key = bind_key(loaded, built)
        self._schema_key: str | None = None
        self.refreshed = False  # matched by schema: the stored first key is stale

    @property
    def schema_key(self) -> str | None:
        if self._schema_key is None and self.key is not None:
            self._schema_key = bind_key(self.loaded, self.built, schemas=True)
        return self._schema_key

    def already_bound(self, target_dir: Path) -> bool:
        if self.key is None:
            return False
        try:
            stored = json.loads((target_dir / CACHE_FILE).read_text())
            if stored.get("key") == self.key:
                return True
            if stored.get("schema_key") and stored["schema_key"] == self.schema_key:
                self.refreshed = True
                return True
        except (OSError, ValueError, AttributeError):
            pass
        return False

    def remember(self, target_dir: Path) -> None:
        if self.key is not None:
            remember(target_dir, {"key": self.key, "schema_key": self.schema_key})


def remember(target_dir: Path, keys: dict) -> None:
    """Keep `keys` (written whole or not at all; a read-only folder keeps nothing)."""
    path = target_dir / CACHE_FILE
    tmp = path.with_name(f".{CACHE_FILE}.{os.getpid()}")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(keys))
        os.replace(tmp, path)
    except OSError:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
