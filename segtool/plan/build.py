"""Build the steps of a plan: project + stored state + the data -> Step.

One `Planner` serves `run`, `run --dry-run` and `diff`. It decides each step
with the rules of plan/decide.py and counts what the step will touch with SQL
over `Relations` (what the run reads: the built models and texts, or their
dry-run stand-ins). Work sets are left in temporary tables named by
`work_table()`, which the executing stage reads: the SQL that counts is the
SQL that runs.

Hashes (stored per node by each completed step, compared here):

    own_hash    definition (graph/dag.py)
    input_hash  own_hash + parents' input_hash + data: source files (size,
                mtime), encoder weights, and for models that read the clock,
                random numbers or files by themselves a per-run nonce
    exec_hash   models: the SQL as run (absolute source paths)

A diff plans with `data_aware=False`: data is assumed unchanged and encoders
are known by their settings, since BASE may name model folders that are not
checked out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from segtool.compile.sql import quote_ident, source_files
from segtool.errors import ProjectError
from segtool.graph.dag import sha
from segtool.plan import decide
from segtool.plan.model import DECLARATIONS, Step
from segtool.plan.state import StoredState
from segtool.project.loader import dumps
from segtool.state import tables
from segtool.state.result import one
from segtool.state.tables import work_table
from segtool.words import counted


class Relations(Protocol):
    """Where the run reads each model and text from (execute/workspace.py)."""

    def model(self, name: str) -> str: ...

    def texts(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class PlanOptions:
    full_refresh: bool = False
    refit: bool = False


def source_fingerprint(st, root: Path) -> str | None:
    """Size and modification time of every file a source reads, or None when
    that cannot be known (remote paths): such a source counts as changed."""
    tbl, src = st.table, st.source
    if tbl.path is not None:
        files = source_files(st, root)
        if files is None:
            return None
    elif src.database:
        p = Path(src.database)
        p = p if p.is_absolute() else root / p
        # commits not yet checkpointed live in its write-ahead log, and the
        # file's size and mtime stay as they were
        files = [str(p), f"{p}.wal"]
    else:
        return None
    parts = []
    for f in files:
        try:
            s = os.stat(f)
            parts.append((os.path.relpath(f, root), s.st_size, s.st_mtime_ns))
        except OSError:
            parts.append((os.path.relpath(f, root), None, None))
    return sha(dumps(parts))


class Planner:
    def __init__(
        self,
        project,
        *,
        state: StoredState,
        encoders,
        options: PlanOptions,
        con=None,
        relations: Relations | None = None,
        data_aware: bool = True,
        nonce: str = "",
        selected: set[str] | None = None,
    ):
        self.project = project
        self.loaded = project.loaded
        self.built = project.graph()
        self.graph = self.built.graph
        self.state = state
        self.encoders = encoders
        self.options = options
        self.con = con
        self.relations = relations
        self.data_aware = data_aware
        self.nonce = nonce
        self.selected = selected  # None: every node
        self.notes: list[str] = []
        # unselected nodes out of date that selected ones read (_hash_inputs)
        self.selection_notes: list[str] = []
        self._input: dict[str, str] = {}
        self._exec: dict[str, str] = {}
        # incremental model -> the token of its last build from scratch
        self._built_tokens: dict[str, str] = {}
        self._fps: dict[str, str | None] = {}
        self._hash_inputs()

    # ------------------------------------------------------------------ hashes
    def fingerprint(self, encoder: str) -> str | None:
        """The encoder's cache key, from its files and settings (None: it cannot
        be built here)."""
        if encoder not in self._fps:
            fp, why = self.encoders.try_fingerprint(encoder)
            if fp is None and self.data_aware:
                self.notes.append(
                    why if why.startswith(f"encoder '{encoder}'") else f"encoder '{encoder}': {why}"
                )
            self._fps[encoder] = fp
        return self._fps[encoder]

    def encoder_key(self, encoder: str) -> str | None:
        """What identifies an encoder in the stored state: its fingerprint, or
        for a diff its settings (BASE may name model folders not checked out)."""
        if self.data_aware:
            return self.fingerprint(encoder)
        return self.graph[f"encoder.{encoder}"].own_hash

    def _hash_inputs(self) -> None:
        root = self.loaded.root
        stale: dict[str, str] = {}  # unselected node -> how what it holds is out of date
        # nodes whose hash is fresh every run (a volatile model, a remote
        # source, or what reads one): never "out of date" in a note
        every_run: set[str] = set()
        for uid in self.graph.order():
            n = self.graph[uid]
            if not self.data_aware:
                # definitions only: what a diff against BASE's definitions compares
                self._input[uid] = n.data_hash
                if n.kind == "model":
                    self._exec[uid] = n.own_hash
                continue
            parts: list[Any] = [
                self._definition(n),
                [self._input[p] for p in n.depends_on if p in self._input],
            ]
            if any(p in every_run for p in n.depends_on):
                every_run.add(uid)
            if n.kind == "source":
                fp = source_fingerprint(n.spec, root)
                if fp is None:
                    every_run.add(uid)
                parts.append(fp or self.nonce)
            elif n.kind == "encoder":
                parts.append(self.fingerprint(n.name) or "unavailable")
            elif n.kind == "model":
                cm = self.built.compiled[n.name]
                self._exec[uid] = sha(dumps([cm.sql, cm.config.materialized]))
                if self.volatile(n.name):
                    parts.append(self.nonce)
                    every_run.add(uid)
                elif cm.config.materialized == "incremental":
                    # what it holds came from its merges, not from its inputs:
                    # after a rebuild from scratch the same hash told the
                    # texts, vectors and segments downstream that nothing
                    # changed (3 changed texts kept no vector). The token of
                    # its last such build is part of its hash (none before one)
                    stored = self.state.node(uid)
                    built = self.nonce if self._rebuilds_history(n) else stored and stored.built
                    if built:
                        self._built_tokens[uid] = built
                        parts.append(["built", built])
            self._input[uid] = sha(dumps(parts))
            held = self._held(n)
            if held is not None:
                if held != self._input[uid] and uid not in every_run:
                    stale[uid] = "out of date"
                self._input[uid] = held
            elif self._unselected_view(n):
                stored = self.state.node(uid)
                if parts[0] != n.own_hash:
                    stale[uid] = "out of date"  # the database holds an older definition
                elif stored is not None and stored.exec_hash not in (None, self._exec[uid]):
                    # the same SQL compiled with other source paths: the
                    # view reads the files of the folder it was made in
                    stale[uid] = "still reads its sources at the project's old folder"
        self._check_built()
        for uid, why in stale.items():
            readers = sorted(self.graph.descendants(uid) & (self.selected or set()))
            if readers:
                shown = ", ".join(readers[:3]) + (
                    f" and {len(readers) - 3} more" if len(readers) > 3 else ""
                )
                name = self.graph[uid].name
                self.selection_notes.append(
                    f"{uid} is not selected and {why}: {shown} "
                    f"read{'s' if len(readers) == 1 else ''} what it holds "
                    f"(`-s {name}+` rebuilds it and what reads it)"
                )

    def _check_built(self) -> None:
        """A selection that reads a node never built (a fresh project, `run -s
        lifecycle`): the run failed with 'Catalog Error: Table with name
        user_features does not exist!', the dry run with an internal error."""
        if self.selected is None or not self.data_aware:
            return
        # walk up from the selection through what is read live: an unselected
        # node the database holds as a table stops the walk (the selection
        # reads what it holds), a view or a declaration (features, a source)
        # does not; a node never built is missing, and so is what it reads
        readers_of: dict[str, set[str]] = {}
        stack = [(p, r) for r in self.selected for p in self.graph[r].depends_on]
        while stack:
            uid, reader = stack.pop()
            if uid in self.selected or reader in readers_of.get(uid, set()):
                continue
            readers_of.setdefault(uid, set()).add(reader)
            n = self.graph[uid]
            stored = self.state.node(uid) if n.kind in ("model", "text", "embedding") else None
            built = n.kind not in ("model", "text", "embedding") or stored is not None
            live = (
                not built
                or n.kind not in ("model", "text", "embedding")
                or self._unselected_view(n)
            )
            if live:
                stack += [(p, reader) for p in n.depends_on]
        missing = {
            uid: sorted(readers_of[uid])
            for uid in self.graph.order()
            if uid in readers_of
            and self.graph[uid].kind in ("model", "text", "embedding")
            and self.state.node(uid) is None
        }
        if not missing:
            return
        # name the one nearest the selection (the last in dependency order),
        # and suggest the top of the selection with what it reads
        nearest, readers = list(missing.items())[-1]
        others = len(missing) - 1
        top = next(
            (r for r in readers if not (self.graph.ancestors(r) & self.selected)), readers[0]
        )
        raise ProjectError(
            f"{nearest} is not built yet"
            + (
                f" (nor {'is' if others == 1 else 'are'} {counted(others, 'more node')} the selection needs)"
                if others
                else ""
            )
            + f", and {', '.join(readers[:3])}{' ...' if len(readers) > 3 else ''} "
            + f"read{'s' if len(readers) == 1 else ''} it",
            hint=f"a `+` before a name selects what it reads too (segtool run -s +{self.graph[top].name}), "
            "or run the whole project once",
        )

    def _unselected_view(self, n) -> bool:
        """A model this run does not select that the database holds as a
        view (what it holds counts, not the config: a view whose config now
        says table still reads its upstream live until it is rebuilt)."""
        return (
            self.selected is not None
            and n.unique_id not in self.selected
            and n.kind == "model"
            and self.state.model_kind(n.name) == "view"
        )

    def _definition(self, n) -> str:
        """The node's own hash, but for a view this run does not select: the
        view the database holds is the one it last created, which is what
        the selected nodes downstream read."""
        if self._unselected_view(n):
            stored = self.state.node(n.unique_id)
            if stored is not None and stored.own_hash:
                return stored.own_hash
        return n.own_hash

    def _held(self, n) -> str | None:
        """For a node this run does not select, the input hash of what the
        database holds for it, which is what the selected nodes downstream
        read: a text or segmentation run with `-s` over a stale table must
        remember that it saw the stale table, or the next full run, which
        rebuilds the table, would find it up to date and skip it. None for
        a selected node, and for what is read live (a source, an encoder, a
        view: the definition it holds, _definition(), is hashed with its
        parents')."""
        if self.selected is None or n.unique_id in self.selected or self._unselected_view(n):
            return None
        if n.kind in ("model", "text", "embedding", "segmentation"):
            stored = self.state.node(n.unique_id)
            return stored.input_hash if stored is not None else None
        return None

    def _rebuilds_history(self, n) -> bool:
        """An incremental model this run builds from scratch though it was
        built before: --full-refresh, or its table gone."""
        cm = self.built.compiled[n.name]
        if self.state.node(n.unique_id) is None:
            return False
        if self.selected is not None and n.unique_id not in self.selected:
            return False
        refresh = self.options.full_refresh and cm.config.full_refresh is not False
        return refresh or self.state.model_kind(n.name) is None

    def volatile(self, model: str) -> bool:
        from segtool.graph.build import is_volatile

        # merge_volatile: only its `is_incremental()` branch reads files directly
        return model in self.built.merge_volatile or is_volatile(self.built.compiled[model])

    def hashes(self, node) -> tuple[str, str | None, str | None]:
        """What a completed step records: input and exec hashes, and for an
        incremental model the token of its last build from scratch."""
        uid = node.unique_id
        return self._input[uid], self._exec.get(uid), self._built_tokens.get(uid)

    # ------------------------------------------------------------------ helpers
    def _count(self, sql: str, params=None) -> int:
        row = one(self.con.execute(sql, params or []))
        return int(row[0]) if row and row[0] is not None else 0

    @property
    def counting(self) -> bool:
        return self.con is not None and self.relations is not None

    def _step(self, node, action: str, reason: str, detail: dict | None = None) -> Step:
        return Step(node.unique_id, node.kind, action, reason, detail or {})

    # ------------------------------------------------------------------ declarations
    def declaration_step(self, uid: str) -> Step:
        node = self.graph[uid]
        stored = self.state.node(uid)
        if stored is None:
            why = "declared"
        elif stored.own_hash != node.own_hash:
            why = "definition changed"
        elif node.kind == "source" and stored.input_hash != self._input[uid]:
            why = "files changed"
        elif node.kind == "encoder" and stored.input_hash != self._input[uid]:
            why = "model files changed"
        else:
            why = "unchanged"
        return self._step(node, "skip", f"{node.kind} {why}: nothing to run")

    # ------------------------------------------------------------------ models
    def model_step(self, uid: str) -> Step:
        node = self.graph[uid]
        cm = self.built.compiled[node.name]
        stored = self.state.node(uid)
        action, reason = decide.model_action(
            materialized=cm.config.materialized,
            exists_as=self.state.model_kind(node.name),
            stored=stored,
            own_hash=stored.own_hash if _only_the_branch_is_new(stored, node) else node.own_hash,
            input_hash=self._input[uid],
            exec_hash=self._exec[uid],
            volatile=self.data_aware and self.volatile(node.name),
            full_refresh=self.options.full_refresh,
            may_rebuild=cm.config.full_refresh is not False,
        )
        if action == "incremental" and reason.startswith("upstream data changed"):
            reason += self._edited_upstream(uid)
        return self._step(node, action, reason, {"materialized": cm.config.materialized})

    def _edited_upstream(self, uid: str) -> str:
        """A merge keeps the rows it merged before: when a model upstream has
        new SQL since, those rows still hold the old SQL's values (as in dbt),
        which the plan should say rather than leave to a surprise."""
        edited = sorted(
            self.graph[a].name
            for a in self.graph.ancestors(uid)
            if self.graph[a].kind == "model"
            # an unselected one keeps its old SQL in this run: the stale note says so
            and (self.selected is None or a in self.selected)
            and (st := self.state.node(a)) is not None
            and st.own_hash != self.graph[a].own_hash
        )
        if not edited:
            return ""
        verb = "has" if len(edited) == 1 else "have"
        return (
            f" ({', '.join(edited)} {verb} new SQL: rows merged before keep what the old SQL "
            "computed; --full-refresh rebuilds them)"
        )

    # ------------------------------------------------------------------ texts
    def text_step(self, uid: str) -> Step:
        """Decide; with data, leave the users to render in work_table('text', NAME)
        (model columns, __row_hash, __rn, __new) and count them."""
        node = self.graph[uid]
        spec = node.spec
        exists = self.state.has_texts(spec.name)
        action, reason = decide.text_action(
            exists=exists,
            stored=self.state.node(uid),
            own_hash=node.own_hash,
            input_hash=self._input[uid],
            full_refresh=self.options.full_refresh,
        )
        if action == "skip" or not self.counting:
            return self._step(node, action, reason)
        con = self.con
        k = quote_ident(self.loaded.key)
        model = self.relations.model(spec.model)
        stored = self.relations.texts(spec.name) if exists else None
        work = work_table("text", spec.name)
        if stored is None:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE {work} AS SELECT m.*, hash(m) AS __row_hash,
                row_number() OVER () AS __rn, true AS __new FROM {model} m"""
            )
        else:
            only_changed = (
                "WHERE t.{k} IS NULL OR t.row_hash <> hash(m)" if action == "incremental" else ""
            )
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE {work} AS SELECT m.*, hash(m) AS __row_hash,
                row_number() OVER () AS __rn, t.{k} IS NULL AS __new
                FROM {model} m LEFT JOIN {stored} t ON m.{k} = t.{k} {only_changed.format(k=k)}"""
            )
        users = self._count(f"SELECT count(*) FROM {model}")
        new, changed = one(
            con.execute(
                f"SELECT count(*) FILTER (WHERE __new), count(*) FILTER (WHERE NOT __new) FROM {work}"
            )
        )
        removed = 0
        if stored is not None:
            removed = self._count(
                f"SELECT count(*) FROM {stored} t ANTI JOIN {model} m ON m.{k} = t.{k}"
            )
        detail = {
            "users": users,
            "new": int(new),
            "changed": int(changed),
            "removed": removed,
            "unchanged": users - int(new) - int(changed),
        }
        if action == "incremental" and not new and not changed and not removed:
            action, reason = "skip", "no user's model row changed"
        return self._step(node, action, reason, detail)

    # ------------------------------------------------------------------ embeddings
    def embedding_step(self, uid: str) -> Step:
        """Decide; with data, leave the distinct texts to embed in
        work_table('embed', NAME) (text_hash, text, rn) and count them."""
        node = self.graph[uid]
        text, enc = node.data["text"], node.data["encoder"]
        key = self.encoder_key(enc)
        has_vectors = key is not None and self.state.has_vectors(key)
        if not decide.embedding_needs_check(
            stored=self.state.node(uid), input_hash=self._input[uid], has_vectors=has_vectors
        ):
            return self._step(node, "skip", "texts and encoder unchanged: every vector is cached")
        fp = self.fingerprint(enc)
        texts = self.relations.texts(text) if self.counting and fp is not None else None
        if texts is None:
            action = "create" if not has_vectors else "incremental"
            why = (
                ""
                if fp is not None or not self.data_aware
                else f" (encoder '{enc}' cannot be built here: no counts)"
            )
            return self._step(node, action, "texts without a cached vector are embedded" + why)
        from segtool.state import vectors

        cache = vectors.lookup(self.con, fp)
        missing = (
            f"WHERE NOT EXISTS (SELECT 1 FROM {cache[0]} e WHERE e.text_hash = t.text_hash)"
            if cache
            else ""
        )
        work = work_table("embed", node.name.replace(".", "__"))
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {work} AS
            SELECT text_hash, any_value(text) AS text,
            -- by length, across the whole work set: batches of similar lengths pad little
            row_number() OVER (ORDER BY length(any_value(text)) DESC, text_hash) AS rn
            FROM {texts} t {missing} GROUP BY text_hash"""
        )
        distinct = self._count(f"SELECT count(DISTINCT text_hash) FROM {texts}")
        todo = self._count(f"SELECT count(*) FROM {work}")
        action, reason = decide.embedding_action(has_vectors=cache is not None, to_embed=todo)
        return self._step(
            node,
            action,
            reason,
            {"texts": distinct, "embedded": todo, "cached": distinct - todo, "encoder_fp": fp[:12]},
        )

    # ------------------------------------------------------------------ segmentations
    def segmentation_step(self, uid: str) -> Step:
        node = self.graph[uid]
        if node.spec.is_rules:
            return self._rules_step(node)
        step = self._clustering_step(node)
        unknown = [
            i.embedding.encoder
            for i in node.spec.inputs
            if i.embedding and self.data_aware and self.encoder_key(i.embedding.encoder) is None
        ]
        if unknown and step.action != "refit":
            # a static encoder not distilled yet has no fingerprint: whether
            # the fit still matches is known once the run has distilled it
            # (a dry run said skip, and the run refitted)
            return Step(
                step.unique_id,
                step.kind,
                step.action,
                step.reason + f" (until encoder '{unknown[0]}' is ready the plan cannot tell "
                "whether its model changed: the run may refit)",
                step.detail,
            )
        return step

    def _fit_changes(self, node) -> list[str]:
        from segtool.compile.segments import fit_hash

        seg = node.spec
        stored = self.state.fit_hash(seg.name)
        if stored is None:
            return []
        if any(self.encoder_key(i.embedding.encoder) is None for i in seg.inputs if i.embedding):
            return []  # cannot tell: the run fails before this on a missing encoder
        if fit_hash(self.loaded, self.encoder_key, seg) == stored:
            return []
        why = []
        prev = self.state.node(node.unique_id)
        if prev is None or prev.own_hash != node.own_hash:
            why.append("definition")
        for inp in seg.inputs:
            dep = f"features.{inp.features}" if inp.features else f"encoder.{inp.embedding.encoder}"
            p = self.state.node(dep)
            if dep in self.graph and (p is None or p.input_hash != self._input[dep]):
                kind = "feature set" if inp.features else "encoder"
                why.append(f"{kind} '{dep.split('.', 1)[1]}'")
        return list(dict.fromkeys(why)) or ["definition or inputs"]

    def _pending_labels(self, node) -> str:
        """A note while the catalog's labels come from other `labels`
        settings than the project's: they change only with a refit, and a
        plan said so once, at the run after the edit, and never again."""
        from segtool.compile.segments import hidden_pii

        notes = []
        at_fit = self.state.fit_labels(node.name)
        if at_fit is not None and at_fit != node.part_hashes().get("labels"):
            notes.append("labels changed since the last fit: they apply at the next refit")
        # a column marked PII since the fit: the labels may name its values
        left_out = self.state.fit_pii(node.name)
        if left_out is not None:
            now = hidden_pii(self.loaded, node.spec, self.project.pii_columns())
            marked = [c for c in now if c not in left_out]
            if marked:
                notes.append(
                    f"{', '.join(marked)} {'is' if len(marked) == 1 else 'are'} PII since the "
                    "last fit: its labels may name their values until a refit"
                )
        if not notes:
            return ""
        return "; ".join(notes) + f" (segtool run --refit -s {node.name} relabels now)"

    def _clustering_step(self, node) -> Step:
        from segtool.compile import segments as seg_inputs
        from segtool.plan.checks import check_population

        seg = node.spec
        facts = decide.FitFacts(
            has_fit=self.state.fit_hash(seg.name) is not None,
            tables_present=self.state.has_segments(seg.name),
            fit_changed=self._fit_changes(node),
            refit_flag=self.options.refit,
            policy=seg.update.refit,
            drift_threshold=seg.update.drift_threshold,
        )
        full = decide.clustering_refit(facts)
        stored = self.state.node(node.unique_id)
        pending = self._pending_labels(node) if full is None else ""
        if full is None and stored is not None and stored.input_hash == self._input[node.unique_id]:
            return self._step(
                node,
                "skip",
                "inputs unchanged for every user" + (f"; {pending}" if pending else ""),
            )
        # a changed definition that leaves the fitted space alone: say which part
        prefix = (
            decide.kept_fit_note(seg.name, decide.changed_parts(stored, node.part_hashes()))
            if full is None and stored is not None and stored.own_hash != node.own_hash
            else ""
        )
        if pending and "labels" not in prefix:
            prefix += pending + "; "
        if not self.counting:
            if full is not None:
                return self._step(node, *full)
            return self._step(
                node, "assign", prefix + "new and changed users are assigned with the stored model"
            )
        con = self.con
        k = quote_ident(self.loaded.key)
        pop = seg_inputs.population_sql(self.loaded, seg, self.relations.model)
        cur = work_table("seg", seg.name, "users")
        h = seg_inputs.input_hash_sql(
            self.loaded, seg, "u", self.relations.model, self.relations.texts
        )
        try:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {cur} AS SELECT u.{k}, u.__ord, {h} AS input_hash FROM ({pop}) u"
            )
        except Exception as exc:  # noqa: BLE001 - a predicate that fails at run time
            raise ProjectError(
                f"segmentation '{seg.name}': population predicate failed: {str(exc).splitlines()[0]}",
                path=seg.file,
                line=seg.line,
            ) from exc
        users = self._count(f"SELECT count(*) FROM {cur}")
        check_population(
            self.loaded,
            seg,
            con,
            cur,
            users,
            self.relations.model,
            fits=full is not None or not facts.has_fit,
        )
        changed = work_table("seg", seg.name, "changed")
        # what is stored (a diff's BASE may name a segmentation this database never ran)
        has_table = self.state.has_segments(seg.name) and self._table_exists(
            tables.RESULTS, seg.name
        )
        n_removed = (
            self._count(
                f"SELECT count(*) FROM {tables.segments(seg.name)} s ANTI JOIN {cur} c ON c.{k} = s.{k}"
            )
            if has_table
            else 0
        )
        if (
            full is None
            and has_table
            and self._table_exists(tables.STATE, tables.inputs_name(seg.name))
        ):
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE {changed} AS
                SELECT c.{k}, row_number() OVER (ORDER BY c.__ord) AS __ord FROM {cur} c
                LEFT JOIN {tables.inputs(seg.name)} i ON i.{k} = c.{k}
                WHERE i.{k} IS NULL OR i.input_hash <> c.input_hash"""
            )
            n_changed = self._count(f"SELECT count(*) FROM {changed}")
            action, reason, extra = decide.clustering_update(
                facts, n_changed=n_changed, n_removed=n_removed
            )
            if action == "refit":
                n_changed = users
        else:
            action, reason = full if full is not None else ("refit", "refit on every user")
            extra, n_changed = {}, users
        detail = {"users": users, "assigned": n_changed, "removed": n_removed, **extra}
        return self._step(node, action, prefix + reason, detail)

    def _failed_predicate(self, seg, exc: Exception) -> ProjectError:
        """The error of a rule segmentation whose predicates failed on the
        data (a literal DuckDB cannot convert: binding accepts it), at the
        predicate that holds the value the error quotes (the CASE does not say
        which; the failed statement aborted the run's transaction, so none can
        be tried alone)."""
        import re

        from segtool.compile.predicates import segmentation_predicates
        from segtool.state.db import first_line

        said = first_line(exc)
        preds = segmentation_predicates(self.loaded, seg)
        quoted = re.findall(r'"([^"]+)"|\'([^\']+)\'', said)
        values = [a or b for a, b in quoted]
        for p in (preds.population, *(p for _, p in preds.rules)):
            if p is not None and any(v and v in p.sql for v in values):
                return ProjectError(
                    f"{p.what} failed on the data: {said}",
                    path=p.path,
                    line=p.line,
                    hint=f"{_FAILED_ON_DATA}: fix the predicate",
                )
        return ProjectError(
            f"segmentation '{seg.name}': its rules failed on the data: {said}",
            path=seg.file,
            line=seg.line,
            hint=f"{_FAILED_ON_DATA}, in one of its predicates",
        )

    def _table_exists(self, schema: str, name: str) -> bool:
        from segtool.state.db import table_exists

        return table_exists(self.con, schema, name)

    def _rules_step(self, node) -> Step:
        from segtool.compile import segments as seg_inputs

        seg = node.spec
        # a diff decides from BASE's state alone (counts only add numbers): the
        # database's own table would make an added rule segmentation 'assign'
        # with counts and 'create' without
        exists = self.state.has_segments(seg.name) or (
            self.counting and self.data_aware and self._table_exists(tables.RESULTS, seg.name)
        )
        action, reason = decide.rules_action(
            exists=exists,
            stored=self.state.node(node.unique_id),
            input_hash=self._input[node.unique_id],
        )
        if action == "skip" or not self.counting:
            return self._step(node, action, reason)
        con = self.con
        k = quote_ident(self.loaded.key)
        model = self.relations.model(seg.model)
        pop = seg_inputs.population_sql(self.loaded, seg, self.relations.model)
        work = work_table("rules", seg.name)
        import duckdb

        try:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE {work} AS SELECT * FROM (
                SELECT m.{k}, {seg_inputs.rules_case(self.loaded, seg)} AS segment FROM {model} m
                WHERE m.{k} IN (SELECT {k} FROM ({pop}))) WHERE segment IS NOT NULL"""
            )
        except duckdb.Error as exc:  # a value no binding can check: '2024-02-30'
            raise self._failed_predicate(seg, exc) from None
        users = self._count(f"SELECT count(*) FROM {work}")
        if users == 0:
            from segtool.plan.checks import check_nonempty

            check_nonempty(self.loaded, seg, self._count(f"SELECT count(*) FROM ({pop})"))
        assigned, removed = users, 0
        if exists and self._table_exists(tables.RESULTS, seg.name):
            from segtool.state.db import fitted_segment_ids

            changed, left = seg_inputs.rules_changes_sql(
                k, work, tables.segments(seg.name), fitted_segment_ids(con, seg.name)
            )
            assigned = self._count(f"SELECT count(*) FROM ({changed})")
            removed = self._count(f"SELECT count(*) FROM ({left})")
            stored = self.state.node(node.unique_id)
            if (assigned, removed) == (0, 0) and stored and stored.own_hash == node.own_hash:
                # the same rules over changed rows that move no user: nothing to
                # write (diff listed `assign [0 assigned, 0 removed]`)
                return self._step(node, "skip", "model data changed: no user's segment changes")
        return self._step(
            node, action, reason, {"users": users, "assigned": assigned, "removed": removed}
        )


# what makes a predicate that binds fail on the data
_FAILED_ON_DATA = (
    "a literal DuckDB cannot convert (a date like '2024-02-30') or a cast that fails on some row"
)


def plan_steps(planner: Planner, uids: list[str]) -> list[Step]:
    """Steps for `uids` in stage order, without carrying any out (segtool diff;
    a run and a dry run walk the stages themselves, see execute/runner.py)."""
    stage = ("source", "encoder", "features", "model", "text", "embedding", "segmentation")
    out = []
    for kind in stage:
        for uid in uids:
            if planner.graph[uid].kind != kind:
                continue
            if kind in DECLARATIONS:
                out.append(planner.declaration_step(uid))
            else:
                out.append(getattr(planner, f"{kind}_step")(uid))
    return out


def _only_the_branch_is_new(stored, node) -> bool:
    """State written before segtool fingerprinted an incremental model's
    is_incremental() branch: every other part of its definition is as
    stored, so its SQL did not change (a rebuild from scratch of every such
    model after the upgrade would be for nothing); the run records the
    branch, and an edit to it from then on rebuilds the model."""
    if stored is None or stored.parts is None or "incremental_sql" in stored.parts:
        return False
    now = node.part_hashes()
    return "incremental_sql" in now and decide.changed_parts(stored, now) == ["incremental_sql"]
