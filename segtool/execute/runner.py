"""`segtool run` and `run --dry-run`: walk the plan, stage by stage.

    stage 1 (one transaction)  declarations, models, texts; the embedding and
                               segmentation steps are planned (work sets, data
                               checks) before it commits
    stage 2                    embeddings, committed chunk by chunk
    stage 3                    segmentations, one transaction each

A dry run walks the same code over a read-only connection (or an in-memory
one before the first run): the workspace turns models and texts into
temporary tables, and nothing after stage 1's planning runs. So the plan a dry
run prints is, step for step and count for count, what the run then does; the
one thing a step may still change while it executes is the data-dependent
policy it states (`refit if drift > 0.25`).
"""

from __future__ import annotations

import errno
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import duckdb

from segtool.compile.sql import quote_ident
from segtool.encoders.builder import Encoders
from segtool.errors import DataError, DiskFullError, ExecutionError, SegtoolError, is_interrupt
from segtool.execute.context import RunContext, RunOptions, StepResult
from segtool.graph.selection import select as select_nodes
from segtool.plan.build import DECLARATIONS, Planner, PlanOptions
from segtool.plan.model import Plan, Step
from segtool.report.console import Reporter
from segtool.state import db as state
from segtool.state import tables
from segtool.state.db import rollback
from segtool.state.lock import RunLock


def translate_error(exc: BaseException) -> BaseException:
    """The error a user should see for an exception that ended a run."""
    if isinstance(exc, (SegtoolError, BrokenPipeError)) or not isinstance(exc, Exception):
        return exc  # a closed output pipe is the CLI's to report (exit 141), not a disk's
    if is_interrupt(exc):  # DuckDB's word for Ctrl-C during a query: the CLI's exit 130
        return KeyboardInterrupt()
    msg = str(exc)
    if "No space left" in msg or getattr(exc, "errno", None) == errno.ENOSPC:
        first = next((ln for ln in msg.splitlines() if "No space left" in ln), msg.splitlines()[0])
        return DiskFullError(
            f"disk full: {first.strip()}",
            hint="free disk space and run again; work committed before this stage is kept",
        )
    if isinstance(exc, duckdb.Error):
        return ExecutionError(f"database error: {msg.splitlines()[0] if msg else exc!r}")
    if isinstance(exc, OSError):
        return ExecutionError(
            f"{exc.strerror or exc}: {exc.filename or ''}".strip(),
            hint="check disk space and permissions",
        )
    return exc


@dataclass
class RunResult:
    run_id: int | None
    status: str
    seconds: float
    results: list[StepResult]
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "elapsed_seconds": round(self.seconds, 3),
            "summary": self.summary,
            "results": [r.to_dict() for r in self.results],
        }


def summarize(results: list[StepResult]) -> dict:
    """run_results.json `summary` (and `_segtool.runs.summary`): actions, and
    per text, embedding and segmentation its action and counts."""
    out: dict[str, Any] = {"actions": {}}
    for r in results:
        if r.kind not in DECLARATIONS:
            out["actions"][r.action] = out["actions"].get(r.action, 0) + 1
        group = {"text": "texts", "embedding": "embeddings", "segmentation": "segmentations"}.get(
            r.kind
        )
        if group:
            name = r.unique_id.split(".", 1)[1]
            out.setdefault(group, {})[name] = {"action": r.action, "reason": r.reason, **r.detail}
    out["models_built"] = sum(1 for r in results if r.kind == "model" and r.action != "skip")
    return out


def key_models(loaded) -> dict[str, str]:
    """Models that feed features/texts/segments (their key must be unique)."""
    out: dict[str, str] = {}
    for fs in loaded.features.values():
        out.setdefault(fs.model, f"features '{fs.name}'")
    for tx in loaded.texts.values():
        out.setdefault(tx.model, f"text '{tx.name}'")
    for sg in loaded.segmentations.values():
        if sg.model:
            out.setdefault(sg.model, f"segmentation '{sg.name}'")
    return out


class Runner:
    def __init__(self, project, options: RunOptions, reporter: Reporter | None = None):
        self.project = project
        self.loaded = project.loaded
        self.options = options
        self.reporter = reporter or Reporter(quiet=True)
        self.encoders = Encoders(self.loaded, device=options.device, threads=options.threads)

    def selected(self) -> list[str]:
        built = self.project.graph()
        st = self.project.state_manifest(self.options.state_dir) if self.options.state_dir else None
        return select_nodes(built.graph, self.options.select, self.options.exclude, st)

    def _plan_options(self) -> PlanOptions:
        return PlanOptions(full_refresh=self.options.full_refresh, refit=self.options.refit)

    def _planner(self, con, st, ws, *, data_aware: bool = True, uids=None) -> Planner:
        """con and ws are None for a plan of decisions only (segtool diff
        without a database). `uids`: the selected nodes (None: all)."""
        return Planner(
            self.project,
            state=st,
            encoders=self.encoders,
            options=self._plan_options(),
            con=con,
            relations=ws,
            data_aware=data_aware,
            # a volatile source's stand-in data hash: fresh per run; a plan
            # of decisions only compares definitions and needs none
            nonce=uuid.uuid4().hex if con is not None else "",
            selected=None if uids is None else set(uids),
        )

    # ------------------------------------------------------------------ dry run
    def plan(self) -> Plan:
        """What `run` with these options would do; writes nothing."""
        from segtool.plan.state import DbState

        db = self.loaded.database_path
        notes: list[str] = []
        con = None
        if db.exists():
            con = state.connect(self.loaded, read_only=True)
            try:  # a dry run refuses another project's database, as the run does
                state.check_owner(con, self.loaded)
            except BaseException:
                con.close()
                raise
            if not state.has_state(con):
                notes.append(
                    f"database {self.loaded.relpath(db)} has no segtool state yet: everything is created"
                )
                con.close()
                con = None
        else:
            notes.append(f"no database at {self.loaded.relpath(db)}: everything is created")
        if con is None:  # counts still come from the project's own SQL, in memory
            con = duckdb.connect(":memory:")
            state.setup_connection(con, self.loaded, threads=self.options.threads)
        try:
            return self.plan_against(DbState(con), con=con, notes=notes)
        finally:
            con.close()

    def plan_against(self, st, *, con=None, data_aware: bool = True, notes=()) -> Plan:
        """The plan against a stored state. With `con`, models and texts are
        carried out into temporary tables of it and every step is counted;
        without, steps carry decisions only (segtool diff without a database)."""
        from segtool.execute.workspace import Workspace
        from segtool.plan.build import plan_steps

        uids = self.selected()
        if con is not None:  # a database no run has migrated: its fingerprints (state/rekey.py)
            self.encoders.follow(con)
        if con is None:
            planner = self._planner(None, st, None, data_aware=data_aware, uids=uids)
            steps = plan_steps(planner, uids)
        else:
            ws = Workspace(con, self.project, dry=True, snapshot=self._fed_views())
            planner = self._planner(con, st, ws, data_aware=data_aware, uids=uids)
            steps, done = self._stage_one(self._context(con, None, ws, planner), uids)
            # what carrying out models and texts measured (rows, texts that differ)
            # is part of the plan a dry run shows
            measured = {r.unique_id: r.detail for r in done}
            steps = [
                Step(s.unique_id, s.kind, s.action, s.reason, measured.get(s.unique_id, s.detail))
                for s in steps
            ]
        return Plan(
            project=self.project.name,
            target=self.loaded.target_name,
            database=self.loaded.relpath(self.loaded.database_path),
            last_run=st.last_run,
            options=self._args(),
            steps=tuple(steps),
            notes=tuple(dict.fromkeys([*notes, *planner.notes])),
            warnings=(*planner.selection_notes, *self._orphan_notes(con)),
        )

    def _orphan_notes(self, con) -> list[str]:
        """Tables of models, texts and segmentations the project no longer
        defines: no run updates them, and nothing said so."""
        from segtool.state.orphans import find_orphans

        if con is None:
            return []
        return [o.warning() for o in find_orphans(con, set(self.project.graph().graph.nodes))]

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        from segtool.execute.embed import execute_embedding, preflight
        from segtool.execute.segment import execute_segmentation
        from segtool.execute.workspace import Workspace
        from segtool.plan.state import DbState
        from segtool.state.rekey import legacy_version, rekey

        t0 = time.perf_counter()
        graph = self.project.graph().graph
        uids = self.selected()
        # missing models and devices fail before any write
        preflight(
            self.project,
            self.encoders,
            [graph[u] for u in uids if graph[u].kind == "embedding"],
            # a first distillation takes minutes: say so (quiet runs stay quiet)
            say=self.reporter.line,
        )
        lock = RunLock(self.loaded.database_path, "segtool run").acquire()
        run_id = None
        status = "success"
        con = None
        results: list[StepResult] = []
        try:
            con = state.connect(self.loaded, threads=self.options.threads)
            con.execute("BEGIN")
            try:
                legacy = legacy_version(con)
                for note in state.migrate(con, self.loaded, in_transaction=True):
                    self.reporter.warn(note)
                if legacy:  # once: vectors and fits to today's fingerprints
                    for note in rekey(con, self.loaded, self.encoders, legacy):
                        self.reporter.info(note)
                # we hold the run lock: a run still marked running died without a word
                state.mark_interrupted(con)
                run_id = state.start_run(
                    con, "run", self.loaded.target_name, self._args(), self.loaded.secrets
                )
                ws = Workspace(con, self.project, dry=False, snapshot=self._fed_views())
                planner = self._planner(con, DbState(con), ws, uids=uids)
                for note in (*planner.selection_notes, *self._orphan_notes(con)):
                    self.reporter.warn(note)
                ctx = self._context(con, run_id, ws, planner)
                steps, results = self._stage_one(ctx, uids)
                con.execute("COMMIT")
            except BaseException:
                rollback(con)
                run_id = None
                raise
            # every completed step records the hashes it was computed from
            for step in steps:
                if step.kind == "embedding":
                    result = execute_embedding(ctx, step)
                    state.record_nodes(con, [graph[step.unique_id]], run_id, planner.hashes)
                    self._done(results, result)
            for step in steps:
                if step.kind == "segmentation":
                    result = execute_segmentation(ctx, step)
                    if step.action == "skip":  # executed steps record in their transaction
                        state.record_nodes(con, [graph[step.unique_id]], run_id, planner.hashes)
                    self._done(results, result)
            state.finish_run(con, run_id, "success", summarize(results), self.loaded.secrets)
        except BaseException as exc:
            status = "interrupted" if is_interrupt(exc) else "error"
            if run_id is not None and con is not None:
                try:
                    rollback(con)
                    state.finish_run(
                        con,
                        run_id,
                        status,
                        {**summarize(results), "error": str(exc) or type(exc).__name__},
                        self.loaded.secrets,
                    )
                except duckdb.Error:
                    pass  # the original error is the one to report
            raise translate_error(exc) from exc
        finally:
            if con is not None:
                try:
                    con.close()
                except duckdb.Error:
                    pass
            lock.release()
            result = RunResult(
                run_id, status, time.perf_counter() - t0, results, summarize(results)
            )
            try:
                self.project.write_run_results(result)
            except OSError as exc:  # a full disk must not hide the run's own error
                self.reporter.warn(
                    f"could not write target/run_results.json: {exc.strerror or exc}"
                )
        return result

    # ------------------------------------------------------------------ stages
    def _fed_views(self) -> frozenset[str]:
        """View models that feed texts, features or segmentations."""
        compiled = self.project.graph().compiled
        return frozenset(
            m
            for m in key_models(self.loaded)
            if m in compiled and compiled[m].config.materialized == "view"
        )

    def _context(self, con, run_id, ws, planner) -> RunContext:
        return RunContext(
            project=self.project,
            con=con,
            run_id=run_id,
            options=self.options,
            reporter=self.reporter,
            encoders=self.encoders,
            workspace=ws,
            planner=planner,
        )

    def _stage_one(self, ctx: RunContext, uids: list[str]) -> tuple[list[Step], list[StepResult]]:
        """Plan every step; carry out declarations, models and texts (into the
        workspace). Returns the steps and the results of what was carried out."""
        from segtool.execute.render import execute_text

        planner, ws, con = ctx.planner, ctx.workspace, ctx.con
        graph = ctx.graph
        by_kind: dict[str, list[str]] = {}
        for u in uids:
            by_kind.setdefault(graph[u].kind, []).append(u)
        steps: list[Step] = []
        results: list[StepResult] = []
        dry = ws.dry

        done: list = []  # nodes to record: stage one commits as one transaction,
        # so they are written together at its end (one statement, not one per node)

        def record(uid: str) -> None:
            if not dry:
                done.append(graph[uid])

        for kind in DECLARATIONS:
            for uid in by_kind.get(kind, []):
                step = planner.declaration_step(uid)
                steps.append(step)
                record(uid)
                results.append(StepResult.of(step))
        keyed = key_models(ctx.loaded)
        for uid in by_kind.get("model", []):
            step = planner.model_step(uid)
            steps.append(step)
            t0 = time.perf_counter()
            wrote = ws.build_model(step)
            if step.name in keyed and step.action != "skip":
                from segtool.execute.sql import check_key

                check_key(con, ctx.loaded, step.name, keyed[step.name], ws.model(step.name))
            record(uid)
            self._done(results, StepResult.of(step, time.perf_counter() - t0, **wrote), dry)
        self._check_key_types(ctx)
        for uid in by_kind.get("text", []):
            step = planner.text_step(uid)
            steps.append(step)
            result = execute_text(ctx, step)
            record(uid)
            self._done(results, result, dry)
        state.record_nodes(con, done, ctx.run_id, planner.hashes)
        for kind in ("embedding", "segmentation"):
            for uid in by_kind.get(kind, []):
                steps.append(getattr(planner, f"{kind}_step")(uid))
        return steps, results

    def _done(self, results: list[StepResult], result: StepResult, quiet: bool = False) -> None:
        from segtool.report.plan import step_line

        results.append(result)
        if not quiet:
            self.reporter.line(step_line(result))

    def _check_key_types(self, ctx: RunContext) -> None:
        """The entity key's type must match the state segtool keeps (texts,
        inputs, segments, history). After a model changed it (BIGINT ->
        VARCHAR), `--full-refresh` converts that state, keeping history."""
        from segtool.compile.segments import base_model

        loaded, con, ws = ctx.loaded, ctx.con, ctx.workspace
        k = quote_ident(loaded.key)
        stored_tables: list[tuple[str, str, str, str]] = []
        for name, tx in loaded.texts.items():
            stored_tables.append(
                (tables.STATE, tables.texts_name(name), tables.texts(name), tx.model)
            )
        for name, seg in loaded.segmentations.items():
            model = base_model(loaded, seg)
            stored_tables += [
                (tables.RESULTS, name, tables.segments(name), model),
                (tables.RESULTS, tables.history_name(name), tables.history(name), model),
                (tables.STATE, tables.inputs_name(name), tables.inputs(name), model),
            ]
        now_types: dict[str, str | None] = {}
        conflicts = []
        for schema, table, rel, model in stored_tables:
            stored = state.column_type(con, schema, table, loaded.key)
            if stored is None or not ws.model_exists(model):
                continue
            if model not in now_types:
                rows = con.execute(f"DESCRIBE SELECT {k} FROM {ws.model(model)}").fetchall()
                now_types[model] = rows[0][1] if rows else None
            now = now_types[model]
            if now and stored != now:
                conflicts.append((rel, stored, now, model))
        if not conflicts:
            return
        if not self.options.full_refresh or ws.dry:
            rel, stored, now, model = conflicts[0]
            names = ", ".join(c[0] for c in conflicts)
            hint = f"run with --full-refresh to convert the stored state to {now} (segment history is kept)"
            if self.options.full_refresh:  # a dry run: it writes nothing, so it cannot convert
                hint = (
                    f"`segtool run --full-refresh` converts the stored state to {now} first (segment "
                    "history is kept); a dry run writes nothing, so it cannot plan past that"
                )
            raise DataError(
                f"the key column '{loaded.key}' of model '{model}' is now {now}, but segtool's stored "
                f"state holds it as {stored} ({names})",
                hint=hint,
            )
        for rel, stored, now, _ in conflicts:
            try:
                con.execute(f"ALTER TABLE {rel} ALTER COLUMN {k} TYPE {now}")
            except duckdb.Error as exc:
                raise DataError(
                    f"cannot convert {rel}.{loaded.key} from {stored} to {now}: {state.first_line(exc)}",
                    hint="the old keys do not fit the new type; point --target at a new database",
                ) from exc
            self.reporter.warn(f"converted {rel}.{loaded.key} from {stored} to {now}")

    def _args(self) -> dict:
        o = self.options
        return {
            "select": list(o.select),
            "exclude": list(o.exclude),
            "full_refresh": o.full_refresh,
            "refit": o.refit,
            "vars": self.loaded.vars,
        }
