"""`segtool run`: execute the selected graph in stages.

Stage 1 (one transaction): SQL models, key checks, data checks, rendered texts.
  Any failure rolls all of it back: the database stays as it was.
Stage 2: embeddings, committed in chunks to the cache (a killed run keeps them).
Stage 3: each segmentation in its own transaction (table, history, fitted model).
"""

from __future__ import annotations

import errno
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from segtool.compile.sql import quote_ident
from segtool.errors import DataError, DiskFullError, ExecutionError, SegtoolError
from segtool.graph.selection import select as select_nodes
from segtool.report.console import Reporter
from segtool.state import db as state
from segtool.state.lock import RunLock


@dataclass
class RunOptions:
    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    full_refresh: bool = False
    refit: bool = False
    threads: int | None = None
    state_dir: str | None = None
    device: str | None = None


@dataclass
class NodeResult:
    unique_id: str
    kind: str
    status: str  # success | error | skipped
    action: str = ""
    rows: int | None = None
    seconds: float = 0.0
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_id: int | None
    status: str
    seconds: float
    nodes: list[NodeResult]
    summary: dict[str, Any]

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "elapsed_seconds": round(self.seconds, 3),
            "summary": self.summary,
            "results": [asdict(n) for n in self.nodes],
        }


def rollback(con) -> None:
    """ROLLBACK if a transaction is open. After a failed COMMIT (a full disk)
    DuckDB has already aborted it, and a second error would hide the first."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def translate_error(exc: BaseException) -> BaseException:
    """The error a user should see for an exception that ended a run."""
    if isinstance(exc, SegtoolError) or not isinstance(exc, Exception):
        return exc
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


class Runner:
    def __init__(self, project, opts: RunOptions, reporter: Reporter | None = None):
        self.project = project
        self.proj = project.loaded
        self.opts = opts
        self.rep = reporter or Reporter(quiet=True)
        self.results: list[NodeResult] = []
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    def _selected(self) -> list[str]:
        built = self.project.graph()
        st = self.project.state_manifest(self.opts.state_dir) if self.opts.state_dir else None
        return select_nodes(built.graph, self.opts.select, self.opts.exclude, st)

    def key_models(self) -> dict[str, str]:
        """Models that feed features/texts/segments (their key must be unique)."""
        proj = self.proj
        out: dict[str, str] = {}
        for fs in proj.features.values():
            out.setdefault(fs.model, f"features '{fs.name}'")
        for tx in proj.texts.values():
            out.setdefault(tx.model, f"text '{tx.name}'")
        for sg in proj.segmentations.values():
            if sg.model:
                out.setdefault(sg.model, f"segmentation '{sg.name}'")
        return out

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        t0 = time.perf_counter()
        built = self.project.graph()
        graph = built.graph
        uids = self._selected()
        by_kind: dict[str, list[str]] = {}
        for u in uids:
            by_kind.setdefault(graph[u].kind, []).append(u)

        from segtool.execute import embed, render, segment

        embed.preflight(self, by_kind.get("embedding", []))  # missing models fail before any write

        lock = RunLock(self.proj.database_path, "segtool run").acquire()
        run_id = None
        status = "success"
        con = None
        try:
            con = state.connect(self.proj, threads=self.opts.threads)
            target_dir = self.project.target_dir
            con.execute("BEGIN")
            try:
                for note in state.migrate(con, self.proj, in_transaction=True):
                    self.rep.warn(note)
                # we hold the run lock: a run still marked running died without a word
                self.interrupted = state.mark_interrupted(con)
                run_id = state.start_run(
                    con, "run", self.proj.target_name, self._args(), self.proj.secrets
                )
                self.run_id = run_id
                self._stage_models(con, by_kind.get("model", []), target_dir)
                self._check_key_types(con)
                segment.check_inputs(self, con, by_kind.get("segmentation", []))
                render.run_texts(self, con, by_kind.get("text", []))
                con.execute("COMMIT")
            except BaseException:
                rollback(con)
                run_id = None
                raise
            embed.run_embeddings(self, con, by_kind.get("embedding", []))
            segment.run_segmentations(self, con, by_kind.get("segmentation", []))
            others = [graph[u] for u in uids if graph[u].kind in ("source", "encoder", "features")]
            state.record_nodes(con, others, run_id)
            state.finish_run(con, run_id, "success", self.summary, self.proj.secrets)
        except BaseException as exc:
            status = "error"
            if run_id is not None and con is not None:
                try:
                    rollback(con)
                    state.finish_run(
                        con, run_id, "error", {**self.summary, "error": str(exc)}, self.proj.secrets
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
            result = RunResult(run_id, status, time.perf_counter() - t0, self.results, self.summary)
            try:
                self.project.write_run_results(result)
            except OSError as exc:  # a full disk must not hide the run's own error
                self.rep.warn(f"could not write target/run_results.json: {exc.strerror or exc}")
        return result

    def _args(self) -> dict:
        o = self.opts
        return {
            "select": list(o.select),
            "exclude": list(o.exclude),
            "full_refresh": o.full_refresh,
            "refit": o.refit,
            "vars": self.proj.vars,
        }

    def _check_key_types(self, con) -> None:
        """The entity key's type must match the state segtool keeps (texts,
        inputs, segments, history). After a model changed it (BIGINT ->
        VARCHAR), `--full-refresh` converts that state, keeping history."""
        from segtool.execute.render import text_table
        from segtool.execute.segment import base_model, hist_table, inputs_table, seg_table

        proj = self.proj
        tables: list[tuple[str, str, str, str]] = []  # (schema, table, relation, model)
        for name, tx in proj.texts.items():
            tables.append((state.STATE, f"texts__{name}", text_table(name), tx.model))
        for name, seg in proj.segmentations.items():
            model = base_model(proj, seg)
            tables += [
                (state.RESULTS, name, seg_table(name), model),
                (state.RESULTS, f"{name}_history", hist_table(name), model),
                (state.STATE, f"inputs__{name}", inputs_table(name), model),
            ]
        conflicts = []
        for schema, table, rel, model in tables:
            stored = state.column_type(con, schema, table, proj.key)
            now = state.column_type(con, "main", model, proj.key)
            if stored and now and stored != now:
                conflicts.append((rel, stored, now, model))
        if not conflicts:
            return
        if not self.opts.full_refresh:
            rel, stored, now, model = conflicts[0]
            names = ", ".join(c[0] for c in conflicts)
            raise DataError(
                f"the key column '{proj.key}' of model '{model}' is now {now}, but segtool's stored "
                f"state holds it as {stored} ({names})",
                hint=f"run with --full-refresh to convert the stored state to {now} (segment history is kept)",
            )
        for rel, stored, now, _ in conflicts:
            try:
                con.execute(f"ALTER TABLE {rel} ALTER COLUMN {quote_ident(proj.key)} TYPE {now}")
            except duckdb.Error as exc:
                raise DataError(
                    f"cannot convert {rel}.{proj.key} from {stored} to {now}: {state.first_line(exc)}",
                    hint="the old keys do not fit the new type; point --target at a new database",
                ) from exc
            self.rep.warn(f"converted {rel}.{proj.key} from {stored} to {now}")

    def _stage_models(self, con, uids: list[str], target_dir: Path) -> None:
        from segtool.execute.sql import build_model, check_key

        built = self.project.graph()
        keyed = self.key_models()
        done = []
        for u in uids:
            node = built.graph[u]
            cm = built.compiled[node.name]
            res = build_model(
                con, self.proj, cm, full_refresh=self.opts.full_refresh, target_dir=target_dir
            )
            if node.name in keyed:
                check_key(con, self.proj, node.name, keyed[node.name])
            self.results.append(
                NodeResult(u, "model", "success", res.action, res.rows, round(res.seconds, 3))
            )
            rows = f" ({res.rows:,} rows)" if res.rows is not None else ""
            self.rep.line(
                f"  model {node.name:<28} {res.materialized:<11} {res.action}{rows} in {res.seconds:.2f}s"
            )
            done.append(node)
        state.record_nodes(con, done, self.run_id)
        self.summary["models"] = len(done)
