"""What is stored: the state a plan is computed against.

    DbState    the `_segtool` schema of a database (run, run --dry-run; an
               in-memory one before the first run)
    BaseState  what a BASE version of the project would have left, had it been
               run (segtool diff): every node of BASE built, with BASE's hashes

Both answer the questions of StoredState, so one planner serves run, dry run
and diff.
"""

from __future__ import annotations

import json
from typing import Protocol

from segtool.plan.decide import Stored
from segtool.state import tables
from segtool.state.db import column_type, has_state, relation_exists, table_exists
from segtool.state.result import one


class StoredState(Protocol):
    last_run: int | None

    def node(self, uid: str) -> Stored | None: ...

    def model_kind(self, name: str) -> str | None:
        """'table', 'view' or None: how model NAME is stored."""

    def has_texts(self, text: str) -> bool: ...

    def has_segments(self, seg: str) -> bool:
        """The segment table and the stored input hashes of segmentation SEG."""

    def fit_hash(self, seg: str) -> str | None:
        """The fit hash of SEG's active fitted model, or None."""

    def fit_labels(self, seg: str) -> str | None:
        """The hash of the `labels` settings SEG's active fit labelled with
        (None: no fit, or one that did not record it)."""

    def fit_pii(self, seg: str) -> list[str] | None:
        """The PII columns (`model.column`) SEG's active fit left out of its
        labels (None: no fit, or one that did not record them)."""

    def has_vectors(self, encoder_fp: str) -> bool: ...


class DbState:
    def __init__(self, con):
        self.con = con
        self._nodes: dict[str, Stored] = {}
        self.last_run = None
        if not has_state(con):
            return
        # parts: state v4, built: v5 (a dry run may read an older database it cannot migrate)
        parts = "parts" if column_type(con, tables.STATE, "nodes", "parts") else "NULL"
        built = "built" if column_type(con, tables.STATE, "nodes", "built") else "NULL"
        for uid, own, inp, exe, run_id, p, b in con.execute(
            f"SELECT unique_id, own_hash, input_hash, exec_hash, run_id, {parts}, {built} FROM {tables.NODES}"
        ).fetchall():
            self._nodes[uid] = Stored(own, inp, exe, run_id, json.loads(p) if p else None, b)
        row = one(con.execute(f"SELECT max(run_id) FROM {tables.RUNS} WHERE status = 'success'"))
        self.last_run = int(row[0]) if row and row[0] is not None else None

    def node(self, uid):
        return self._nodes.get(uid)

    def model_kind(self, name):
        return relation_exists(self.con, tables.MODELS, name)

    def has_texts(self, text):
        return table_exists(self.con, tables.STATE, tables.texts_name(text))

    def has_segments(self, seg):
        return table_exists(self.con, tables.RESULTS, seg) and table_exists(
            self.con, tables.STATE, tables.inputs_name(seg)
        )

    def fit_hash(self, seg):
        return self._active_fit(seg, "fit_hash")

    def fit_labels(self, seg):
        return self._active_fit(seg, "params->>'labels'")

    def fit_pii(self, seg):
        found = self._active_fit(seg, "params->'pii'")
        return None if found is None else json.loads(found)

    def _active_fit(self, seg: str, column: str) -> str | None:
        if not table_exists(self.con, tables.STATE, "fitted"):
            return None
        row = one(
            self.con.execute(
                f"SELECT {column} FROM {tables.FITTED} WHERE segmentation = ? AND active ORDER BY fit_id DESC LIMIT 1",
                [seg],
            )
        )
        return row[0] if row else None

    def has_vectors(self, encoder_fp):
        from segtool.state import vectors

        return vectors.lookup(self.con, encoder_fp) is not None


class BaseState:
    """The state a BASE version would have left: each of its nodes built, with
    its hashes, fits and vectors. Hashes are definitions only (see
    Planner(data_aware=False)): a diff is about project files."""

    def __init__(self, base_project, base_fit_hashes: dict[str, str], base_encoder_fps: set[str]):
        graph = base_project.graph().graph
        self.last_run = None
        self._nodes = {
            # a diff compares definitions: input = data_hash, exec = own_hash
            uid: Stored(n.own_hash, n.data_hash, n.own_hash, None, n.part_hashes())
            for uid, n in graph.nodes.items()
        }
        self._models = {
            n.name: ("view" if n.data.get("materialized") == "view" else "table")
            for n in graph.nodes.values()
            if n.kind == "model"
        }
        self._texts = {n.name for n in graph.nodes.values() if n.kind == "text"}
        self._segs = {n.name for n in graph.nodes.values() if n.kind == "segmentation"}
        self._fits = base_fit_hashes
        self._fps = base_encoder_fps

    def node(self, uid):
        return self._nodes.get(uid)

    def model_kind(self, name):
        return self._models.get(name)

    def has_texts(self, text):
        return text in self._texts

    def has_segments(self, seg):
        return seg in self._segs

    def fit_hash(self, seg):
        return self._fits.get(seg)

    def fit_labels(self, seg):
        return None  # BASE, had it been run, labelled with its own settings

    def fit_pii(self, seg):
        return None

    def has_vectors(self, encoder_fp):
        return encoder_fp in self._fps
