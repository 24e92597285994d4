"""Where models and texts land while a run (or a dry run) is planned.

A plan counts the users its texts, embeddings and segmentations will touch,
and those counts need the models built and the texts rendered. So the planner
has the model and text steps carried out as it goes, in a workspace:

    run      the project database, inside stage 1's transaction: models are
             created in `main`, texts written to `_segtool.texts__NAME`
    dry run  a read-only connection (or an in-memory one before the first run):
             models become temporary tables/views and texts a temporary
             overlay of the stored ones; nothing persists

Both run the same SQL and the same renderer; the workspace only decides where
the result goes, and tells later steps where to read it (`Relations`).
"""

from __future__ import annotations

from segtool.compile.sql import compile_model, quote_ident
from segtool.execute.sql import build_model, merge_incremental, sql_error
from segtool.state import tables
from segtool.state.db import relation_exists, table_exists
from segtool.state.result import one


class Workspace:
    def __init__(self, con, project, *, dry: bool, snapshot: frozenset[str] = frozenset()):
        self.con = con
        self.project = project
        self.loaded = project.loaded
        self.dry = dry
        # views that feed texts, features or segmentations: read several times
        # while a run is planned, so the first read keeps a snapshot
        self.snapshot = snapshot
        self._models: dict[str, str] = {}
        self._texts: dict[str, str] = {}

    # ------------------------------------------------------------------ Relations
    def model(self, name: str) -> str:
        if self.dry and name not in self._models and self._reads_rebuilt(name):
            # a view this plan does not select reads, in the run, the tables
            # the plan rebuilds; the dry run's copy must read their stand-ins
            self._dry_model(self.project.graph().compiled[name], "rebuild")
        if name not in self._models and name in self.snapshot and self.model_exists(name):
            snap = quote_ident(f"__segtool_snapshot_{name}")
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE {snap} AS SELECT * FROM {tables.model(name)}"
            )
            self._models[name] = snap
        return self._models.get(name, tables.model(name))

    def texts(self, name: str) -> str | None:
        if name in self._texts:
            return self._texts[name]
        if table_exists(self.con, tables.STATE, tables.texts_name(name)):
            return tables.texts(name)
        return None

    # ------------------------------------------------------------------ models
    def build_model(self, step) -> dict[str, int | None]:
        """Carry out a model step; returns what it wrote (execute/sql.py build_model)."""
        cm = self.project.graph().compiled[step.name]
        if step.action == "skip":
            if self.dry and any(r in self._models for r in cm.refs):
                # a view the run leaves alone still reads what this plan rebuilds
                return self._dry_model(cm, "rebuild")
            return {"rows": None}
        if not self.dry:
            return build_model(
                self.con,
                self.loaded,
                cm,
                action=step.action,
                target_dir=self.project.target_dir,
            )
        return self._dry_model(cm, step.action)

    def _reads_rebuilt(self, name: str) -> bool:
        """Whether `name` is a view in the database that reads (directly or
        through other views) a model this dry run has rebuilt."""
        compiled = self.project.graph().compiled
        if name not in compiled or relation_exists(self.con, tables.MODELS, name) != "view":
            return False
        return any(r in self._models or self._reads_rebuilt(r) for r in compiled[name].refs)

    def _dry_model(self, cm, action: str) -> dict[str, int | None]:
        import duckdb

        model = self.loaded.models[cm.name]
        refs = {r: self.model(r) for r in cm.refs if r in self._models or self._reads_rebuilt(r)}
        temp = quote_ident(f"__segtool_model_{cm.name}")
        mat = cm.config.materialized
        try:
            if action == "incremental":
                inc = compile_model(self.loaded, model, incremental=True, ref_override=refs)
                new = quote_ident(f"__segtool_model_{cm.name}_new")
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {new} AS\n{inc.sql}")
                self.con.execute(
                    f"CREATE OR REPLACE TEMP TABLE {temp} AS SELECT * FROM {tables.model(cm.name)}"
                )
                keep = cm.config.delete_not_in
                out = merge_incremental(self.con, cm, new, temp, self.model(keep) if keep else None)
            else:
                sql = compile_model(self.loaded, model, ref_override=refs).sql if refs else cm.sql
                kind = "VIEW" if mat == "view" else "TABLE"
                self.con.execute(f"CREATE OR REPLACE TEMP {kind} {temp} AS\n{sql}")
                out = (
                    {"rows": None}
                    if mat == "view"
                    else {"rows": one(self.con.execute(f"SELECT count(*) FROM {temp}"))[0]}
                )
        except duckdb.Error as exc:
            raise sql_error(exc, f"target/compiled/{cm.path}", cm, cm.name) from exc
        self._models[cm.name] = temp
        return out

    def model_exists(self, name: str) -> bool:
        return name in self._models or relation_exists(self.con, tables.MODELS, name) is not None

    # ------------------------------------------------------------------ texts
    def write_texts(self, text: str, rendered: str, *, full: bool, run_id: int | None) -> None:
        """Make `rendered` (key, row_hash, text_hash, text, n_chars, truncated)
        the texts of these users; drop users gone from the model. `full`: the
        rendered rows are every user's text."""
        k = quote_ident(self.loaded.key)
        model = self.model(self.loaded.texts[text].model)
        stored = self.texts(text)
        cols = f"{k}, row_hash, text_hash, text, n_chars, truncated"
        if self.dry:
            view = quote_ident(f"__segtool_texts_{text}")
            if full or stored is None:
                body = f"SELECT {cols} FROM {rendered}"
            else:
                body = (
                    f"SELECT {cols} FROM {rendered} UNION ALL SELECT t.{k}, t.row_hash, t.text_hash, t.text, "
                    f"t.n_chars, t.truncated FROM {stored} t WHERE t.{k} IN (SELECT {k} FROM {model}) "
                    f"AND t.{k} NOT IN (SELECT {k} FROM {rendered})"
                )
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {body}")
            self._texts[text] = view
            return
        table = tables.texts(text)
        run = int(run_id) if run_id is not None else "NULL"
        if full or stored is None:
            self.con.execute(
                f"CREATE OR REPLACE TABLE {table} AS SELECT {cols}, {run} AS run_id FROM {rendered}"
            )
        else:
            self.con.execute(f"DELETE FROM {table} WHERE {k} NOT IN (SELECT {k} FROM {model})")
            self.con.execute(f"DELETE FROM {table} WHERE {k} IN (SELECT {k} FROM {rendered})")
            self.con.execute(f"INSERT INTO {table} SELECT {cols}, {run} FROM {rendered}")
