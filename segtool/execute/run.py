"""`segtool run`: execute the selected graph in stages.

Stage 1 (one transaction): SQL models, key checks, data checks, rendered texts.
  Any failure rolls all of it back: the database stays as it was.
Stage 2: embeddings, committed in chunks to the cache (a killed run keeps them).
Stage 3: each segmentation in its own transaction (table, history, fitted model).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from segtool.errors import ExecutionError, SegtoolError
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
        try:
            con = state.connect(self.proj, threads=self.opts.threads)
            try:
                target_dir = self.project.target_dir
                con.execute("BEGIN")
                try:
                    state.migrate(con, self.proj, in_transaction=True)
                    run_id = state.start_run(con, "run", self.proj.target_name, self._args())
                    self.run_id = run_id
                    self._stage_models(con, by_kind.get("model", []), target_dir)
                    segment.check_inputs(self, con, by_kind.get("segmentation", []))
                    render.run_texts(self, con, by_kind.get("text", []))
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    run_id = None
                    raise
                embed.run_embeddings(self, con, by_kind.get("embedding", []))
                segment.run_segmentations(self, con, by_kind.get("segmentation", []))
                others = [
                    graph[u] for u in uids if graph[u].kind in ("source", "encoder", "features")
                ]
                state.record_nodes(con, others, run_id)
                state.finish_run(con, run_id, "success", self.summary)
            except BaseException as exc:
                status = "error"
                if run_id is not None:
                    try:
                        state.finish_run(con, run_id, "error", {**self.summary, "error": str(exc)})
                    except duckdb.Error:
                        pass
                raise
            finally:
                con.close()
        except SegtoolError:
            raise
        except duckdb.Error as exc:
            msg = str(exc)
            if "No space left" in msg:
                raise ExecutionError(
                    f"disk full: {msg.splitlines()[0]}", hint="free disk space and run again"
                ) from exc
            raise ExecutionError(f"database error: {msg.splitlines()[0]}") from exc
        except OSError as exc:
            raise ExecutionError(
                f"{exc.strerror or exc}: {exc.filename or ''}".strip(),
                hint="check disk space and permissions",
            ) from exc
        finally:
            lock.release()
            result = RunResult(run_id, status, time.perf_counter() - t0, self.results, self.summary)
            self.project.write_run_results(result)
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
