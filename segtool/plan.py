"""`segtool run --dry-run`: what a run would do, and why, without writing anything.

The plan compares the working tree's graph with the state of the last run
(`_segtool.nodes`, the hashes of each node at its last successful build), read
through a read-only connection, and puts every selected node in one reviewer
category:

    new            never built in this database
    metadata only  only descriptions, tags or tests changed: nothing reruns
    rebuild        SQL models (they rebuild on every run)
    re-render      texts: every user when the template or text definition (or an
                   upstream model) changed, else the new and changed users
    re-embed       embeddings: every text when the encoder changed, else only texts
                   with no cached vector
    reassign       segmentations: new and changed users, with the stored model
                   (rule segments: users whose rule outcome changes)
    refit          segmentations: definition, feature set or encoder changed,
                   --refit, or the update policy
    unchanged      nothing to do

Counts come from the database where it allows: the new template is rendered for
the users of the model (the model as last built, or the new SQL of a model whose
definition changed) and compared with the stored texts, the new texts are looked
up in the embedding cache, and each segmentation's input hashes are compared with
those of its last assignment. Only temporary objects of the read-only connection
are created; the database and target/ are left untouched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from segtool.compile.sql import quote_ident, relation
from segtool.errors import ProjectError, SegtoolError
from segtool.state.db import STATE, get_meta, has_state, node_states, table_exists

SCHEMA_VERSION = 1

# Strongest first: when several causes apply to one node, the first one wins.
ACTIONS = (
    "new",
    "refit",
    "re-render",
    "re-embed",
    "reassign",
    "relabel",
    "rebuild",
    "metadata only",
    "unchanged",
)

_RENDER_BATCH = 20_000


@dataclass
class PlanItem:
    unique_id: str
    kind: str
    name: str
    action: str
    reason: str
    details: list[str] = field(default_factory=list)
    counts: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    project: str
    target: str
    database: str
    has_state: bool
    last_run: int | None
    options: dict[str, Any]
    items: list[PlanItem]
    notes: list[str] = field(default_factory=list)

    def item(self, unique_id: str) -> PlanItem | None:
        for it in self.items:
            if it.unique_id == unique_id:
                return it
        return None

    def summary(self) -> dict[str, int]:
        out = {a: 0 for a in ACTIONS}
        for it in self.items:
            out[it.action] = out.get(it.action, 0) + 1
        return {a: n for a, n in out.items() if n}

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "plan",
            "project": self.project,
            "target": self.target,
            "database": self.database,
            "has_state": self.has_state,
            "last_run": self.last_run,
            "options": self.options,
            "summary": self.summary(),
            "nodes": [it.to_dict() for it in self.items],
            "notes": self.notes,
        }


# ----------------------------------------------------------------------------- connection


def connect_read_only(
    project, database: Path, search_paths: tuple[Path, ...] = ()
) -> duckdb.DuckDBPyConnection:
    """A read-only connection to `database`, set up and fenced like a run's.
    Temporary objects live in memory and, if they spill, in the system temp
    folder, never next to the database."""
    from segtool.state.db import connect

    return connect(project.loaded, read_only=True, database=database, search_paths=search_paths)


def _one(con, sql: str, params=None):
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def _count(con, sql: str, params=None) -> int:
    row = _one(con, sql, params)
    return int(row[0]) if row and row[0] is not None else 0


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- planner


class _Planner:
    def __init__(self, project, uids: list[str], *, full_refresh: bool, refit: bool):
        self.project = project
        self.proj = project.loaded
        self.built = project.graph()
        self.graph = self.built.graph
        self.uids = uids
        self.selected = set(uids)
        self.full_refresh = full_refresh
        self.refit = refit
        self.con: duckdb.DuckDBPyConnection | None = None
        self.state: dict[str, dict] = {}
        self.notes: list[str] = []
        self._model_rel: dict[str, str | None] = {}
        self._text_rel: dict[str, str | None] = {}
        self._fingerprints: dict[str, str | None] = {}
        self._tmp = 0

    # -------------------------------------------------------------- helpers
    def _tmpname(self, what: str) -> str:
        self._tmp += 1
        return quote_ident(f"__segtool_plan_{self._tmp}_{what}")

    def status(self, node) -> str:
        """new | changed (own definition) | upstream (a parent's data) | metadata | same."""
        prev = self.state.get(node.unique_id)
        if prev is None:
            return "new"
        if prev["own_hash"] != node.own_hash:
            return "changed"
        if prev["data_hash"] != node.data_hash:
            return "upstream"
        if prev["metadata_hash"] != node.metadata_hash:
            return "metadata"
        return "same"

    def changed_upstream(self, node) -> list[str]:
        """Ancestors whose own definition changed (or that are new) since the last run."""
        out = []
        for a in sorted(self.graph.ancestors(node.unique_id)):
            st = self.status(self.graph[a])
            if st in ("new", "changed"):
                out.append(a)
        return out

    def fingerprint(self, enc_name: str) -> str | None:
        if enc_name not in self._fingerprints:
            from segtool.encoders import build_encoder

            spec = self.proj.encoders[enc_name]
            try:
                enc = build_encoder(
                    spec,
                    self.proj.root,
                    device_override=self.proj.target.device,
                    cache_dir=self.project.target_dir / "onnx",
                    allow_download=False,
                )
                fp = enc.fingerprint()
            except SegtoolError as exc:
                self.notes.append(
                    f"encoder '{enc_name}': cannot compute its fingerprint ({_first_line(exc)}); no embedding counts"
                )
                fp = None
            self._fingerprints[enc_name] = fp
        return self._fingerprints[enc_name]

    def model_rel(self, name: str) -> str | None:
        """What the run will read for model NAME: the built relation, or, when the
        model's definition (or an upstream one) changed, its new SQL evaluated into
        a temporary table. None when neither is available."""
        if name in self._model_rel:
            return self._model_rel[name]
        con = self.con
        node = self.graph.get("model", name)
        rel: str | None = relation(name)
        exists = _count(
            con,
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = ? AND database_name = current_database()",
            [name],
        ) or _count(
            con,
            "SELECT count(*) FROM duckdb_views() WHERE schema_name = 'main' AND view_name = ? AND database_name = current_database()",
            [name],
        )
        cm = self.built.compiled.get(name)
        stale = (
            node is not None
            and node.unique_id in self.selected
            and self.status(node) in ("new", "changed", "upstream")
        )
        incremental = (
            cm is not None
            and cm.config.materialized == "incremental"
            and exists
            and not self.full_refresh
        )
        # views are re-created (as temporary views) every time: a view stored by an
        # earlier run may point at files of a folder the project has moved from
        is_view = cm is not None and cm.config.materialized == "view"
        if cm is not None and (stale or not exists or is_view) and not incremental:
            sql = cm.sql
            for parent in node.depends_on if node else []:
                if parent.startswith("model."):
                    pname = parent.split(".", 1)[1]
                    prel = self.model_rel(pname)
                    if prel is not None and prel != relation(pname):
                        sql = sql.replace(relation(pname), prel)
            tmp = self._tmpname("model_" + name)
            try:
                kind = "VIEW" if is_view else "TABLE"
                con.execute(f"CREATE TEMP {kind} {tmp} AS SELECT * FROM (\n{sql}\n)")
                rel = tmp
            except duckdb.Error as exc:
                self.notes.append(
                    f"model '{name}': its new SQL could not be evaluated for the counts ({_first_line(exc)})"
                )
                rel = relation(name) if exists else None
        elif not exists:
            rel = None
        self._model_rel[name] = rel
        return rel

    # -------------------------------------------------------------- per kind
    def plan(self) -> list[PlanItem]:
        items = []
        for uid in self.uids:
            node = self.graph[uid]
            fn = getattr(self, f"_plan_{node.kind}")
            if self.con is None:
                item = PlanItem(
                    uid,
                    node.kind,
                    node.name,
                    "new",
                    "no database yet: everything is built for the first time",
                )
            else:
                item = fn(node)
            items.append(item)
        return items

    def _meta_note(self, node, item: PlanItem) -> PlanItem:
        prev = self.state.get(node.unique_id)
        if prev and prev["metadata_hash"] != node.metadata_hash and item.action != "metadata only":
            item.details.append("descriptions/tags/tests changed too")
        return item

    def _plan_source(self, node) -> PlanItem:
        st = self.status(node)
        if st == "new":
            return PlanItem(node.unique_id, "source", node.name, "new", "not read by a run before")
        if st == "changed":
            return PlanItem(
                node.unique_id,
                "source",
                node.name,
                "rebuild",
                "source definition changed (path, format or options): the models reading it rebuild",
            )
        if st == "metadata":
            return PlanItem(
                node.unique_id,
                "source",
                node.name,
                "metadata only",
                "only descriptions/tags/column tests changed",
            )
        return PlanItem(
            node.unique_id,
            "source",
            node.name,
            "unchanged",
            "definition unchanged (the data is read at run time)",
        )

    def _plan_encoder(self, node) -> PlanItem:
        st = self.status(node)
        fp = self.fingerprint(node.name)
        counts = {}
        details = [f"fingerprint {fp[:12]}"] if fp else []
        if st == "new":
            return PlanItem(
                node.unique_id,
                "encoder",
                node.name,
                "new",
                "not used by a run before",
                details,
                counts,
            )
        if st == "changed":
            users = sorted(c for c in self.graph.children[node.unique_id] if c in self.selected)
            return PlanItem(
                node.unique_id,
                "encoder",
                node.name,
                "re-embed",
                "encoder settings changed: every text it embeds is re-embedded"
                + (f" ({', '.join(users)})" if users else ""),
                details,
                counts,
            )
        if st == "metadata":
            return PlanItem(
                node.unique_id,
                "encoder",
                node.name,
                "metadata only",
                "only description/tags changed",
                details,
            )
        return PlanItem(
            node.unique_id, "encoder", node.name, "unchanged", "settings unchanged", details
        )

    def _plan_features(self, node) -> PlanItem:
        st = self.status(node)
        if st == "new":
            return PlanItem(
                node.unique_id, "features", node.name, "new", "not used by a run before"
            )
        if st == "changed":
            segs = sorted(c for c in self.graph.children[node.unique_id] if c in self.selected)
            return PlanItem(
                node.unique_id,
                "features",
                node.name,
                "refit",
                "feature set changed: the segmentations using it refit"
                + (f" ({', '.join(segs)})" if segs else ""),
            )
        if st == "metadata":
            return PlanItem(
                node.unique_id,
                "features",
                node.name,
                "metadata only",
                "only description/tags changed",
            )
        return PlanItem(node.unique_id, "features", node.name, "unchanged", "definition unchanged")

    def _plan_model(self, node) -> PlanItem:
        st = self.status(node)
        cm = self.built.compiled.get(node.name)
        mat = cm.config.materialized if cm else "view"
        item = PlanItem(node.unique_id, "model", node.name, "rebuild", "", [f"materialized: {mat}"])
        if st == "new":
            item.action, item.reason = "new", f"not built before ({mat})"
            return item
        if st == "changed":
            item.reason = "SQL or config changed"
        elif st == "metadata":
            item.action = "metadata only"
            item.reason = "only descriptions/column tests changed (SQL models rebuild on every run; the data does not change)"
            return item
        elif mat == "incremental" and not self.full_refresh:
            item.reason = "incremental: new rows are merged (SQL models rebuild on every run)"
        elif mat == "incremental":
            item.reason = "--full-refresh: rebuilt from scratch"
        else:
            item.reason = "SQL models rebuild on every run (definition unchanged)"
        up = self.changed_upstream(node)
        if up:
            item.details.append("upstream changed: " + ", ".join(up))
        if self.con is not None and mat != "view":
            rel = self.model_rel(node.name)
            if rel is not None:
                try:
                    item.counts["rows"] = _count(self.con, f"SELECT count(*) FROM {rel}")
                except duckdb.Error:
                    pass
        return self._meta_note(node, item)

    # -------------------------------------------------------------- texts
    def _plan_text(self, node) -> PlanItem:
        spec = node.spec
        st = self.status(node)
        con = self.con
        item = PlanItem(node.unique_id, "text", node.name, "unchanged", "")
        exists = table_exists(con, STATE, "texts__" + spec.name)
        full = st in ("new", "changed", "upstream") or not exists or self.full_refresh
        if st == "new" or not exists:
            item.action, item.reason = "new", "no rendered texts yet: every user is rendered"
        elif full:
            item.action = "re-render"
            if self.full_refresh:
                why = "--full-refresh"
            elif st == "changed":
                prev_fields = self._text_changes(node)
                why = (prev_fields or "text definition") + " changed"
            else:
                up = self.changed_upstream(node)
                why = "upstream changed (" + ", ".join(up) + ")" if up else "upstream changed"
            item.reason = f"{why}: every user is re-rendered"
        try:
            counts = self._render_counts(node, full=full, exists=exists)
        except duckdb.Error as exc:
            self.notes.append(f"text '{spec.name}': no counts ({_first_line(exc)})")
            self._text_rel[spec.name] = None
            counts = None
        if counts is not None:
            item.counts = counts
            if exists:
                item.details.append(
                    f"{counts['users']:,} users: {counts['texts_changed']:,} texts change, {counts['new_users']:,} new users, "
                    f"{counts['removed']:,} removed, {counts['texts_unchanged']:,} unchanged"
                )
            else:
                item.details.append(
                    f"{counts['users']:,} users, {counts['distinct_texts']:,} distinct texts"
                )
        if item.action == "unchanged":
            if counts is None:
                item.action, item.reason = (
                    "re-render",
                    "new and changed users are re-rendered (no counts)",
                )
            elif counts["rendered"] or counts["removed"]:
                item.action = "re-render"
                item.reason = f"{counts['rendered']:,} new/changed users re-rendered, {counts['removed']:,} removed"
            elif st == "metadata":
                item.action, item.reason = "metadata only", "only description/tags changed"
                return item
            else:
                item.reason = "template and data unchanged"
        return self._meta_note(node, item)

    def _text_changes(self, node) -> str:
        spec = node.spec
        from segtool.graph.build import template_dependencies

        tdeps = template_dependencies(self.proj, spec.template)
        return f"template ({', '.join(tdeps)}) or text settings" if tdeps else "text settings"

    def _render_counts(self, node, *, full: bool, exists: bool) -> dict | None:
        """Render the new/changed users with the working tree's template and
        compare their text hashes with the stored ones."""
        import pyarrow as pa

        from segtool.execute.render import render_rows, text_renderer, text_table

        con = self.con
        spec = node.spec
        proj = self.proj
        k = quote_ident(proj.key)
        rel = self.model_rel(spec.model) if node.unique_id in self.selected else None
        if rel is None:
            self._text_rel[spec.name] = text_table(spec.name) if exists else None
            return None
        stored = text_table(spec.name) if exists else None
        if full or stored is None:
            q = f"SELECT m.*, hash(m) AS __row_hash FROM {rel} m"
        else:
            q = (
                f"SELECT m.*, hash(m) AS __row_hash FROM {rel} m LEFT JOIN {stored} t ON m.{k} = t.{k} "
                f"WHERE t.{k} IS NULL OR t.row_hash <> hash(m)"
            )
        render = text_renderer(proj, spec)
        keys: list = []
        hashes: list[str] = []
        reader = con.sql(q).to_arrow_reader(_RENDER_BATCH)
        for batch in reader:
            out, _, _ = render_rows(proj, spec, batch.to_pylist(), render)
            keys.extend(r[0] for r in out)
            hashes.extend(r[2] for r in out)
        key_type = _one(con, f"SELECT typeof({k}) FROM {rel} LIMIT 1")
        key_type = key_type[0] if key_type else "VARCHAR"
        rendered = self._tmpname("rendered_" + spec.name)
        con.execute(f"CREATE TEMP TABLE {rendered} ({k} {key_type}, text_hash VARCHAR)")
        if keys:
            con.register("__segtool_plan_batch", pa.table({"k": keys, "h": hashes}))
            con.execute(f"INSERT INTO {rendered} SELECT k, h FROM __segtool_plan_batch")
            con.unregister("__segtool_plan_batch")
        planned = self._tmpname("texts_" + spec.name)
        if stored is not None:
            con.execute(
                f"""CREATE TEMP VIEW {planned} AS SELECT m.{k} AS {k}, coalesce(r.text_hash, t.text_hash) AS text_hash
                FROM {rel} m LEFT JOIN {rendered} r ON r.{k} = m.{k} LEFT JOIN {stored} t ON t.{k} = m.{k}"""
            )
        else:
            con.execute(f"CREATE TEMP VIEW {planned} AS SELECT {k}, text_hash FROM {rendered}")
        self._text_rel[spec.name] = planned
        users = _count(con, f"SELECT count(*) FROM {rel}")
        counts: dict[str, int | None] = {"users": users, "rendered": len(keys)}
        if stored is not None:
            counts["new_users"] = _count(
                con, f"SELECT count(*) FROM {rendered} r ANTI JOIN {stored} t ON t.{k} = r.{k}"
            )
            counts["texts_changed"] = _count(
                con,
                f"SELECT count(*) FROM {rendered} r JOIN {stored} t ON t.{k} = r.{k} WHERE t.text_hash <> r.text_hash",
            )
            counts["removed"] = _count(
                con, f"SELECT count(*) FROM {stored} t ANTI JOIN {rel} m ON m.{k} = t.{k}"
            )
        else:
            counts["new_users"], counts["texts_changed"], counts["removed"] = len(keys), 0, 0
        counts["texts_unchanged"] = users - counts["new_users"] - counts["texts_changed"]
        counts["distinct_texts"] = _count(con, f"SELECT count(DISTINCT text_hash) FROM {planned}")
        return counts

    def text_rel(self, name: str) -> str | None:
        """The texts of NAME as the run will see them: planned when the text is
        in the plan, else the stored table."""
        from segtool.execute.render import text_table

        if name in self._text_rel:
            return self._text_rel[name]
        if table_exists(self.con, STATE, "texts__" + name):
            return text_table(name)
        return None

    # -------------------------------------------------------------- embeddings
    def _plan_embedding(self, node) -> PlanItem:
        text_name, enc_name = node.data["text"], node.data["encoder"]
        st = self.status(node)
        enc_node = self.graph.get("encoder", enc_name)
        enc_changed = enc_node is not None and self.status(enc_node) in ("changed",)
        fp = self.fingerprint(enc_name)
        item = PlanItem(node.unique_id, "embedding", node.name, "unchanged", "")
        counts: dict[str, int | None] | None = None
        texts = self.text_rel(text_name)
        if fp is not None and texts is not None:
            try:
                from segtool.state import vectors

                found = None
                if table_exists(self.con, STATE, "encoders"):
                    found = vectors.lookup(self.con, fp)
                distinct = _count(self.con, f"SELECT count(DISTINCT text_hash) FROM {texts}")
                if found:
                    todo = _count(
                        self.con,
                        f"""SELECT count(DISTINCT t.text_hash) FROM {texts} t WHERE NOT EXISTS (
                        SELECT 1 FROM {found[0]} e WHERE e.text_hash = t.text_hash)""",
                    )
                else:
                    todo = distinct
                counts = {"distinct_texts": distinct, "to_embed": todo, "cached": distinct - todo}
            except duckdb.Error as exc:
                self.notes.append(f"embedding '{node.name}': no counts ({_first_line(exc)})")
        if counts is not None:
            item.counts = counts
            item.details.append(
                f"{counts['distinct_texts']:,} distinct texts: {counts['to_embed']:,} to embed, {counts['cached']:,} cached"
            )
        if st == "new":
            item.action, item.reason = (
                "new",
                "not embedded before: every text without a cached vector is embedded",
            )
        elif enc_changed:
            item.action = "re-embed"
            item.reason = f"encoder '{enc_name}' changed: every text is re-embedded (vectors cached under the new fingerprint are reused)"
        elif counts is None:
            item.action, item.reason = (
                "re-embed",
                "texts with no cached vector are embedded (no counts)",
            )
        elif counts["to_embed"]:
            item.action, item.reason = (
                "re-embed",
                f"{counts['to_embed']:,} new/changed texts have no cached vector",
            )
        else:
            item.reason = "every text has a cached vector"
        return item

    # -------------------------------------------------------------- segmentations
    def _plan_segmentation(self, node) -> PlanItem:
        seg = node.spec
        st = self.status(node)
        exists = table_exists(self.con, "segments", seg.name)
        item = PlanItem(node.unique_id, "segmentation", node.name, "unchanged", "")
        if seg.is_rules:
            self._rules(node, item, st, exists)
        else:
            self._clusters(node, item, st, exists)
        if item.action not in ("metadata only",):
            self._meta_note(node, item)
        return item

    def _population(self, seg) -> str | None:
        from segtool.execute.segment import base_model, population_sql

        bm = base_model(self.proj, seg)
        rel = self.model_rel(bm)
        if rel is None:
            return None
        pop = population_sql(self.proj, seg)
        return pop.replace(f"FROM {relation(bm)} m", f"FROM {rel} m", 1)

    def _rules(self, node, item: PlanItem, st: str, exists: bool) -> None:
        from segtool.execute.segment import rules_case, seg_table

        seg = node.spec
        con = self.con
        k = quote_ident(self.proj.key)
        counts = None
        try:
            rel = self.model_rel(seg.model)
            pop = self._population(seg)
            if rel is not None and pop is not None:
                new = (
                    f"SELECT * FROM (SELECT m.{k}, {rules_case(self.proj, seg)} AS segment FROM {rel} m "
                    f"WHERE m.{k} IN (SELECT {k} FROM ({pop}))) WHERE segment IS NOT NULL"
                )
                users = _count(con, f"SELECT count(*) FROM ({new})")
                counts = {"users": users}
                if exists:
                    counts["changed_users"] = _count(
                        con,
                        f"SELECT count(*) FROM ({new}) r LEFT JOIN {seg_table(seg.name)} s ON s.{k} = r.{k} "
                        f"WHERE s.{k} IS NULL OR s.segment <> r.segment",
                    )
                    counts["removed"] = _count(
                        con,
                        f"SELECT count(*) FROM {seg_table(seg.name)} s ANTI JOIN ({new}) r ON r.{k} = s.{k}",
                    )
        except (duckdb.Error, ProjectError) as exc:
            self.notes.append(f"segmentation '{seg.name}': no counts ({_first_line(exc)})")
            counts = None
        if counts:
            item.counts = counts
        if st == "new" or not exists:
            item.action, item.reason = "new", "rule segments evaluated for the first time"
            return
        if counts is not None:
            item.details.append(
                f"{counts['users']:,} users: {counts['changed_users']:,} change segment, {counts['removed']:,} leave"
            )
        moving = counts is None or counts["changed_users"] or counts["removed"]
        if st == "changed":
            item.action = "reassign"
            item.reason = "rules changed: every user is re-evaluated"
        elif moving:
            item.action = "reassign"
            item.reason = (
                "rules are re-evaluated every run; data changed"
                if counts
                else "rules are re-evaluated every run (no counts)"
            )
        elif st == "metadata":
            item.action, item.reason = "metadata only", "only description/tags/tests/update changed"
        else:
            item.reason = "rules re-evaluated every run: no user changes segment"

    def _clusters(self, node, item: PlanItem, st: str, exists: bool) -> None:
        from segtool.execute.segment import fit_hash

        seg = node.spec
        con = self.con
        active = None
        if table_exists(con, STATE, "fitted"):
            active = _one(
                con,
                f"SELECT fit_hash, run_id FROM {STATE}.fitted WHERE segmentation = ? AND active ORDER BY fit_id DESC LIMIT 1",
                [seg.name],
            )
        encoders = [inp.embedding.encoder for inp in seg.inputs if inp.embedding is not None]
        fh = None
        if all(self.fingerprint(e) for e in encoders):
            try:
                fh = fit_hash(self.proj, self.fingerprint, seg)
            except SegtoolError as exc:
                self.notes.append(
                    f"segmentation '{seg.name}': cannot compute its fit hash ({_first_line(exc)})"
                )
        counts = self._assign_counts(node, exists)
        if counts is not None:
            item.counts = counts
            if exists:
                item.details.append(
                    f"{counts['users']:,} users: {counts['changed_users']:,} new/changed, {counts['removed']:,} leave"
                )
            else:
                item.details.append(f"{counts['users']:,} users")
        if st == "new" or active is None:
            item.action, item.reason = "new", "first fit on every user of the population"
            return
        if not exists:
            item.action, item.reason = "refit", "the segment table is missing: refit on every user"
            return
        if fh is not None and fh != active[0]:
            item.action = "refit"
            item.reason = (
                "fitted model out of date: "
                + self._refit_why(node)
                + f" (fitted in run {active[1]})"
            )
            return
        if self.refit:
            item.action, item.reason = "refit", "--refit: refit on every user"
            return
        n_changed = None if counts is None else counts["changed_users"]
        if seg.update.refit == "always" and (n_changed is None or n_changed):
            item.action, item.reason = "refit", "policy update.refit: always, and users changed"
            return
        if fh is None:
            item.details.append(
                "refits instead if its definition or inputs changed (the fit hash could not be computed)"
            )
        if st == "changed" and fh is not None:
            item.details.append(
                "labels changed: they apply at the next refit (segtool run --refit -s "
                + seg.name
                + " to relabel now)"
            )
        if n_changed is None or n_changed or (counts and counts["removed"]):
            item.action = "reassign"
            item.reason = (
                "new and changed users are assigned with the stored model"
                if n_changed is None
                else f"{n_changed:,} new/changed users are assigned with the stored model"
            )
            if seg.update.refit == "on_drift":
                item.details.append(
                    f"refits instead if their drift exceeds {seg.update.drift_threshold}"
                )
        elif st == "metadata":
            item.action, item.reason = "metadata only", "only description/tags/tests/update changed"
        else:
            item.reason = "inputs unchanged for every user"

    def _refit_why(self, node) -> str:
        seg = node.spec
        why = []
        if self.status(node) == "changed":
            why.append("definition changed")
        for inp in seg.inputs:
            if inp.features is not None:
                fn = self.graph.get("features", inp.features)
                if fn is not None and self.status(fn) in ("changed", "new"):
                    why.append(f"feature set '{inp.features}' changed")
            else:
                en = self.graph.get("encoder", inp.embedding.encoder)
                if en is not None and self.status(en) in ("changed", "new"):
                    why.append(f"encoder '{inp.embedding.encoder}' changed")
        return ", ".join(dict.fromkeys(why)) or "definition or inputs changed"

    def _assign_counts(self, node, exists: bool) -> dict | None:
        """Users of the population and how many have new inputs since their last assignment."""
        from segtool.execute.segment import input_hash_sql, inputs_table, seg_table

        seg = node.spec
        con = self.con
        k = quote_ident(self.proj.key)
        try:
            pop = self._population(seg)
            if pop is None:
                return None
            for inp in seg.inputs:  # every input must be readable, built or planned
                if inp.features is not None:
                    if self.model_rel(self.proj.features[inp.features].model) is None:
                        return None
                elif self.text_rel(inp.embedding.text) is None:
                    return None
            # the run's own hash of each user's inputs, over what the run will read
            h = input_hash_sql(
                self.proj, seg, "u", model_rel=self.model_rel, text_rel=self.text_rel
            )
            cur = f"SELECT u.{k}, {h} AS input_hash FROM ({pop}) u"
            users = _count(con, f"SELECT count(*) FROM ({pop})")
            counts: dict[str, int | None] = {"users": users}
            if exists and table_exists(con, STATE, "inputs__" + seg.name):
                counts["changed_users"] = _count(
                    con,
                    f"SELECT count(*) FROM ({cur}) c LEFT JOIN {inputs_table(seg.name)} i ON i.{k} = c.{k} "
                    f"WHERE i.{k} IS NULL OR i.input_hash <> c.input_hash",
                )
            else:
                counts["changed_users"] = users
            if exists:
                counts["removed"] = _count(
                    con,
                    f"SELECT count(*) FROM {seg_table(seg.name)} s ANTI JOIN ({pop}) p ON p.{k} = s.{k}",
                )
            else:
                counts["removed"] = 0
            return counts
        except (duckdb.Error, ProjectError) as exc:
            self.notes.append(f"segmentation '{seg.name}': no counts ({_first_line(exc)})")
            return None


# ----------------------------------------------------------------------------- API


def make_plan(
    project,
    select=(),
    exclude=(),
    *,
    full_refresh: bool = False,
    refit: bool = False,
    database: str | Path | None = None,
    search_paths: tuple[Path, ...] = (),
    state_dir: str | None = None,
) -> Plan:
    """What `segtool run` with these options would do, per selected node, and why.

    `database` overrides the target's database (segtool diff estimates against a
    database elsewhere); `search_paths` are extra folders for relative data paths;
    `state_dir` is --state (for `state:modified` selectors). Writes nothing."""
    from segtool.graph.selection import select as select_nodes

    built = project.graph()
    st = project.state_manifest(state_dir) if state_dir else None
    uids = select_nodes(built.graph, tuple(select), tuple(exclude), st)
    db = Path(database) if database is not None else project.loaded.database_path
    planner = _Planner(project, uids, full_refresh=full_refresh, refit=refit)
    last_run = None
    state_ok = False
    if db.exists():
        con = connect_read_only(project, db, search_paths)
        try:
            if has_state(con):
                stored = get_meta(con, "project")
                if stored and stored != project.name:
                    raise ProjectError(
                        f"database {project.relpath(db)} belongs to project '{stored}', not '{project.name}'",
                        hint="point --target at this project's database",
                    )
                state_ok = True
                planner.con = con
                planner.state = node_states(con)
                row = _one(con, f"SELECT max(run_id) FROM {STATE}.runs WHERE status = 'success'")
                last_run = int(row[0]) if row and row[0] is not None else None
                items = planner.plan()
            else:
                planner.notes.append(
                    f"database {project.relpath(db)} has no segtool state yet: everything is new"
                )
                items = planner.plan()
        finally:
            con.close()
    else:
        planner.notes.append(f"no database at {project.relpath(db)}: everything is new")
        items = planner.plan()
    return Plan(
        project=project.name,
        target=project.loaded.target_name,
        database=project.relpath(db),
        has_state=state_ok,
        last_run=last_run,
        options={
            "select": list(select),
            "exclude": list(exclude),
            "full_refresh": full_refresh,
            "refit": refit,
        },
        items=items,
        notes=list(dict.fromkeys(planner.notes)),
    )


# ----------------------------------------------------------------------------- formats


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def format_plan(plan: Plan, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(plan.to_dict(), indent=2, default=str)
    summary = ", ".join(f"{n} {a}" for a, n in plan.summary().items()) or "nothing selected"
    where = f"{plan.database}" + (f", last run {plan.last_run}" if plan.last_run else "")
    if fmt == "markdown":
        lines = [
            f"### segtool plan: `{plan.project}` (target `{plan.target}`)",
            "",
            f"Compared with {_md(where)}. {summary}. Nothing was written.",
            "",
            "| action | node | why | details |",
            "|---|---|---|---|",
        ]
        for it in plan.items:
            lines.append(
                f"| {it.action} | `{it.unique_id}` | {_md(it.reason)} | {_md('; '.join(it.details))} |"
            )
        for n in plan.notes:
            lines.append(f"\n> note: {_md(n)}")
        return "\n".join(lines)
    if fmt != "text":
        raise ProjectError(f"unknown format '{fmt}'", hint="text, json or markdown")
    width = max([len(it.unique_id) for it in plan.items] + [10])
    lines = [
        f"plan for {plan.project} (target {plan.target}, {where}); dry run: nothing is written"
    ]
    for it in plan.items:
        lines.append(f"  {it.action:<14} {it.unique_id:<{width}}  {it.reason}")
        for d in it.details:
            lines.append(f"  {'':<14} {'':<{width}}    {d}")
    for n in plan.notes:
        lines.append(f"note: {n}")
    lines.append(f"summary: {summary}")
    return "\n".join(lines)
