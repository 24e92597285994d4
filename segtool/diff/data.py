"""`segtool diff --data`: how segment assignments moved, between two runs of
one database (reconstructed from the history tables) or two databases:
sizes, transition matrix, users entering and leaving, share moved, ARI/NMI,
and example users who moved, with their texts. Read-only."""

from __future__ import annotations

from pathlib import Path

import duckdb

from segtool.compile.sql import quote_ident, sql_literal
from segtool.errors import DataError, ProjectError, SegtoolError, did_you_mean
from segtool.plan.model import SCHEMA_VERSION
from segtool.project import reach
from segtool.state import tables
from segtool.state.db import is_locked, lock
from segtool.state.history import changed_runs, open_at


def _connect_db(path: Path, what: str) -> duckdb.DuckDBPyConnection:
    from segtool.state.db import has_state, open_database

    if not path.exists():
        raise ProjectError(
            f"{what} database {path} does not exist",
            hint="run `segtool run` first, or check the path",
        )
    try:
        con = open_database(path, read_only=True)
    except SegtoolError as exc:
        if what != "the":  # which of two ("the database: database ..." said it twice)
            exc.message = f"{what} database: {exc.message}"
        raise
    if not has_state(con):
        con.close()
        raise DataError(
            f"{path} is not a segtool database (no _segtool state)",
            hint="point at a database written by `segtool run`",
        )
    return con


def _q(con, sql: str, params=None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


class _Db:
    """A database seen through the (shared) connection: its catalog and runs.
    The database is read-only for the whole diff, so its table lists are cached."""

    def __init__(self, con, catalog: str, path: Path):
        self.con = con
        self.catalog = catalog
        self.path = path
        self.cat = quote_ident(catalog)
        self._tables: dict[str, frozenset[str]] = {}

    def tables(self, schema: str) -> frozenset[str]:
        if schema not in self._tables:
            self._tables[schema] = frozenset(
                r[0]
                for r in _q(
                    self.con,
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?",
                    [self.catalog, schema],
                )
            )
        return self._tables[schema]

    def meta(self, key: str) -> str | None:
        rows = _q(
            self.con, f"SELECT value FROM {self.cat}.{tables.STATE}.meta WHERE key = ?", [key]
        )
        return rows[0][0] if rows else None

    def run_ids(self) -> list[int]:
        if "runs" not in self.tables(tables.STATE):
            return []
        return [
            int(r[0])
            for r in _q(self.con, f"SELECT run_id FROM {self.cat}.{tables.RUNS} ORDER BY 1")
        ]

    def segmentations(self) -> list[str]:
        t = self.tables(tables.RESULTS)
        return sorted(t - {tables.history_name(n) for n in t})

    def has_history(self, name: str) -> bool:
        return tables.history_name(name) in self.tables(tables.RESULTS)

    def seg(self, name: str) -> str:
        return f"{self.cat}.{tables.segments(name)}"

    def is_rules(self, name: str) -> bool:
        """Whether NAME holds rule segments here (no fitted model: its segment
        ids are the order in which this database first saw each rule)."""
        if "fitted" not in self.tables(tables.STATE):
            return True
        rows = _q(
            self.con,
            f"SELECT count(*) FROM {self.cat}.{tables.FITTED} WHERE segmentation = ?",
            [name],
        )
        return rows[0][0] == 0

    def hist(self, name: str) -> str:
        return f"{self.cat}.{tables.history(name)}"


def _check_run(db: _Db, run: int | None, which: str) -> None:
    if run is None:
        return
    ids = db.run_ids()
    if run not in ids:
        have = f"runs {ids[0]}..{ids[-1]}" if ids else "no runs"
        raise DataError(
            f"{which} run {run} does not exist in {db.path} ({have})",
            hint='list them with: duckdb DB "select run_id, status, started_at from _segtool.runs"',
        )


def _changed_runs(db: _Db, name: str) -> list[int]:
    """Runs in which segmentation NAME's assignment changed: some user entered,
    left or moved (from its history table). A run that left it as it was is not
    one of them, whatever its summary says."""
    if not db.has_history(name):
        return []
    return changed_runs(db.con, db.hist(name))


def _assignment_sql(db: _Db, name: str, key: str, run: int | None) -> str:
    k = quote_ident(key)
    # __from: when the row's label was written (a refit may relabel an id;
    # a segment is shown with its latest label, not any spell's)
    if run is None:
        # the table holds each id's current label on every row
        return f"SELECT {k} AS k, segment_id, segment, 0 AS __from FROM {db.seg(name)}"
    return (
        f"SELECT {k} AS k, segment_id, segment, valid_from_run AS __from FROM {db.hist(name)} "
        f"WHERE {open_at(int(run))} "
        f"QUALIFY row_number() OVER (PARTITION BY {k} ORDER BY valid_from_run DESC) = 1"
    )


def _ids_by_label(before_sql: str, after_sql: str) -> str:
    """`before_sql` with the segment ids of `after_sql`, matched by label.
    Rule segments are their rules: two databases number them in the order
    each first saw them, so the same users in the same rules looked moved
    (87.5% 'moved', ARI 1.0). A rule only before gets an id of its own."""
    return (
        f"SELECT a.k, coalesce(m.segment_id, 1000000 + dense_rank() OVER (ORDER BY a.segment)) "
        f"AS segment_id, a.segment, a.__from FROM ({before_sql}) a "
        f"LEFT JOIN (SELECT DISTINCT segment, segment_id FROM ({after_sql})) m USING (segment)"
    )


def _py(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def _text_table_for(project, db: _Db, name: str) -> str | None:
    """The texts table whose texts describe segmentation NAME's users."""
    prefix = tables.texts_name("")
    texts = {t[len(prefix) :] for t in db.tables(tables.STATE) if t.startswith(prefix)}
    if project is not None and name in project.loaded.segmentations:
        seg = project.loaded.segmentations[name]
        cands = [i.embedding.text for i in seg.inputs if i.embedding is not None]
        model = seg.model or next(
            (project.loaded.features[i.features].model for i in seg.inputs if i.features), None
        )
        cands += [t for t, spec in project.loaded.texts.items() if spec.model == model]
        for t in cands:
            if t in texts:
                return f"{db.cat}.{tables.texts(t)}"
        return None
    if len(texts) == 1:
        return f"{db.cat}.{tables.texts(texts.pop())}"
    return None


def _compare_one(
    con,
    name: str,
    key: str,
    before_sql: str,
    after_sql: str,
    examples: int,
    texts_before: str | None,
    texts_after: str | None,
) -> dict:
    import numpy as np

    from segtool.ml.metrics import adjusted_rand, nmi, transition_matrix

    k = quote_ident(key)
    joined = (
        f"SELECT coalesce(a.k, b.k) AS k, a.segment_id AS a_id, a.segment AS a_seg, b.segment_id AS b_id, b.segment AS b_seg "
        f"FROM ({before_sql}) a FULL OUTER JOIN ({after_sql}) b ON a.k = b.k"
    )
    before, after, both, entered, left, moved = _q(
        con,
        f"""SELECT count(a_id), count(b_id), count(*) FILTER (WHERE a_id IS NOT NULL AND b_id IS NOT NULL),
        count(*) FILTER (WHERE a_id IS NULL), count(*) FILTER (WHERE b_id IS NULL),
        count(*) FILTER (WHERE a_id IS NOT NULL AND b_id IS NOT NULL AND a_id <> b_id) FROM ({joined})""",
    )[0]
    pairs = con.sql(
        f"SELECT a_id, b_id FROM ({joined}) WHERE a_id IS NOT NULL AND b_id IS NOT NULL ORDER BY k"
    ).fetchnumpy()
    a = np.asarray(pairs["a_id"], dtype=np.int64)
    b = np.asarray(pairs["b_id"], dtype=np.int64)
    if a.size:
        rows, cols, counts = transition_matrix(a, b)
        transitions = {
            "from": [int(x) for x in rows],
            "to": [int(x) for x in cols],
            "counts": counts.tolist(),
        }
        ari, nm = adjusted_rand(a, b), nmi(a, b)
    else:
        transitions = {"from": [], "to": [], "counts": []}
        ari = nm = None
    sizes_b = {
        int(r[0]): (r[1], int(r[2]))
        for r in _q(
            con,
            f"SELECT segment_id, arg_max(segment, __from), count(*) FROM ({before_sql}) GROUP BY 1",
        )
    }
    sizes_a = {
        int(r[0]): (r[1], int(r[2]))
        for r in _q(
            con,
            f"SELECT segment_id, arg_max(segment, __from), count(*) FROM ({after_sql}) GROUP BY 1",
        )
    }
    sizes = []
    for sid in sorted(set(sizes_b) | set(sizes_a)):
        lb, nb = sizes_b.get(sid, (None, 0))
        la, na = sizes_a.get(sid, (None, 0))
        sizes.append(
            {
                "segment_id": sid,
                "label": la if la is not None else lb,
                # a refit can relabel an id its users stay in: say so
                "label_before": lb,
                "before": nb,
                "after": na,
                "delta": na - nb,
            }
        )
    ex = []
    if examples > 0:
        rows = _q(
            con,
            f"SELECT k, a_id, a_seg, b_id, b_seg FROM ({joined}) WHERE a_id <> b_id ORDER BY k LIMIT {int(examples)}",
        )
        for kv, aid, aseg, bid, bseg in rows:
            item = {
                "key": _py(kv),
                "from": {"segment_id": int(aid), "segment": aseg},
                "to": {"segment_id": int(bid), "segment": bseg},
                "text": None,
                "text_before": None,
            }
            if texts_after:
                t = _q(con, f"SELECT text FROM {texts_after} WHERE {k} = ?", [kv])
                item["text"] = t[0][0] if t else None
            if texts_before and texts_before != texts_after:
                t = _q(con, f"SELECT text FROM {texts_before} WHERE {k} = ?", [kv])
                item["text_before"] = t[0][0] if t else None
            ex.append(item)
    return {
        "name": name,
        "status": "compared",
        "users": {
            "before": int(before),
            "after": int(after),
            "both": int(both),
            "entered": int(entered),
            "left": int(left),
            "moved": int(moved),
        },
        "moved_share": (moved / both) if both else None,
        "ari": ari,
        "nmi": nm,
        "sizes": sizes,
        "transitions": transitions,
        "examples": ex,
    }


def _sizes_only(con, name: str, sql: str, side: str) -> list[dict]:
    rows = _q(
        con,
        f"SELECT segment_id, arg_max(segment, __from), count(*) FROM ({sql}) GROUP BY 1 ORDER BY 1",
    )
    return [
        {
            "segment_id": int(r[0]),
            "label": r[1],
            "before": int(r[2]) if side == "before" else 0,
            "after": int(r[2]) if side == "after" else 0,
            "delta": int(r[2]) if side == "after" else -int(r[2]),
        }
        for r in rows
    ]


def data_diff(
    project=None,
    *,
    from_run: int | None = None,
    to_run: int | None = None,
    base_db: str | Path | None = None,
    head_db: str | Path | None = None,
    segmentations: tuple[str, ...] = (),
    examples: int = 3,
) -> dict:
    """Compare segment assignments: two runs of one database (default: the last
    two runs that touched each segmentation), or two databases (`base_db` and
    `head_db`; default head: the project's). Read-only."""
    if head_db is None:
        if project is None:
            raise ProjectError(
                "no database to compare",
                hint="run inside a project, or pass --head-db (and --base-db)",
            )
        head_path = project.loaded.database_path
        # profiles.yml is a project file (a pull request's): not any database on the machine
        reach.check_reach(project.loaded.roots, head_path, "the database", keep="the database")
    else:
        head_path = Path(head_db)
    head_path = head_path.resolve() if head_path.exists() else head_path
    con = _connect_db(head_path, "head" if base_db else "the")
    try:
        head_cat = _q(con, "SELECT current_database()")[0][0]
        head = _Db(con, head_cat, head_path)
        mode = "runs"
        base = head
        if base_db is not None:
            mode = "databases"
            base_path = Path(base_db)
            base_path = base_path.resolve() if base_path.exists() else base_path
            if base_path != head_path:
                bcon = _connect_db(base_path, "base")  # checks it exists and has state
                bcon.close()
                con.execute(
                    f"ATTACH {sql_literal(str(base_path))} AS __segtool_base (TYPE duckdb, READ_ONLY)"
                )
                base = _Db(con, "__segtool_base", base_path)
            else:
                base = _Db(con, head_cat, base_path)
        # only segtool's own tables are read: a view stored in either
        # database reads no file (locked after the ATTACH, which it refuses)
        if not is_locked(con):
            lock(con)
        if base_db is not None:
            bp, hp = base.meta("project"), head.meta("project")
            if bp and hp and bp != hp:
                raise DataError(
                    f"the databases belong to different projects: {base_path} is '{bp}', {head_path} is '{hp}'",
                    hint="compare two databases of the same project (e.g. prod and a PR build)",
                )
        proj_name = head.meta("project")
        if project is not None and proj_name and project.name != proj_name:
            project = None  # another project's database: do not use this project's texts or key
        _check_run(base, from_run, "--from-run" if mode == "runs" else "--from-run (base)")
        _check_run(head, to_run, "--to-run" if mode == "runs" else "--to-run (head)")

        names = sorted(set(head.segmentations()) | set(base.segmentations()))
        if segmentations:
            for s in segmentations:
                if s not in names:
                    raise ProjectError(
                        f"no segment table for segmentation '{s}' in {head_path}",
                        hint=did_you_mean(s, names) or "run `segtool run` first",
                    )
            names = [n for n in names if n in segmentations]
        key_default = project.loaded.key if project is not None else None
        out_segs = []
        for name in names:
            out_segs.append(
                _diff_seg(
                    con, project, base, head, name, mode, from_run, to_run, examples, key_default
                )
            )
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "data_diff",
            "mode": mode,
            "project": proj_name,
            "base": {"database": str(base.path), "run": from_run},
            "head": {"database": str(head.path), "run": to_run},
            "segmentations": out_segs,
        }
    finally:
        con.close()


def _key_of(db: _Db, name: str, default: str | None) -> str:
    if default:
        return default
    return _q(db.con, f"SELECT column_name FROM (DESCRIBE {db.seg(name)}) LIMIT 1")[0][0]


def _diff_seg(
    con,
    project,
    base: _Db,
    head: _Db,
    name: str,
    mode: str,
    from_run,
    to_run,
    examples: int,
    key: str | None,
) -> dict:
    in_b = name in base.segmentations()
    in_h = name in head.segmentations()
    empty = {
        "users": None,
        "moved_share": None,
        "ari": None,
        "nmi": None,
        "sizes": [],
        "transitions": {"from": [], "to": [], "counts": []},
        "examples": [],
    }
    if mode == "databases":
        if not in_b or not in_h:
            db = head if in_h else base
            k = _key_of(db, name, key)
            side = "after" if in_h else "before"
            run = to_run if in_h else from_run
            if run is not None and not db.has_history(name):
                run = None
            sql = _assignment_sql(db, name, k, run)
            n = _q(con, f"SELECT count(*) FROM ({sql})")[0][0]
            users = {
                "before": 0 if in_h else int(n),
                "after": int(n) if in_h else 0,
                "both": 0,
                "entered": int(n) if in_h else 0,
                "left": 0 if in_h else int(n),
                "moved": 0,
            }
            return {
                **empty,
                "name": name,
                "status": "added" if in_h else "removed",
                "base_run": from_run,
                "head_run": to_run,
                "note": f"only in the {'head' if in_h else 'base'} database",
                "users": users,
                "sizes": _sizes_only(con, name, sql, side),
            }
        k = _key_of(head, name, key)
        for db, run in ((base, from_run), (head, to_run)):
            if run is not None and not db.has_history(name):
                raise DataError(
                    f"segmentation '{name}' has no history table in {db.path}",
                    hint="compare the current tables (drop --from-run/--to-run)",
                )
        before = _assignment_sql(base, name, k, from_run)
        after = _assignment_sql(head, name, k, to_run)
        if base.is_rules(name) and head.is_rules(name):
            before = _ids_by_label(before, after)
        res = _compare_one(
            con,
            name,
            k,
            before,
            after,
            examples,
            _text_table_for(project, base, name),
            _text_table_for(project, head, name),
        )
        res.update(base_run=from_run, head_run=to_run, note=None)
        return res
    # runs of one database
    k = _key_of(head, name, key)
    if not head.has_history(name):
        return {
            **empty,
            "name": name,
            "status": "no_history",
            "base_run": from_run,
            "head_run": to_run,
            "note": f"{tables.RESULTS}.{tables.history_name(name)} does not exist",
        }
    changed = _changed_runs(head, name)
    if to_run is not None:
        h_run = to_run
    elif from_run is not None:  # from that run to now (its last change may lie before it)
        h_run = head.run_ids()[-1]
    else:
        h_run = changed[-1] if changed else None
    b_run = from_run
    if changed and h_run is not None and h_run < changed[0]:
        return {
            **empty,
            "name": name,
            "status": "not_yet",
            "base_run": b_run,
            "head_run": h_run,
            "note": f"'{name}' had no assignment at run {h_run} (its first is run {changed[0]})",
        }
    if b_run is None and h_run is not None and changed and h_run > changed[0]:
        # the assignment just before the run that changed it
        b_run = h_run - 1
    if b_run is None or h_run is None:
        only = h_run if h_run is not None else (changed[-1] if changed else None)
        sql = (
            _assignment_sql(head, name, k, only)
            if only is not None
            else _assignment_sql(head, name, k, None)
        )
        n = _q(con, f"SELECT count(*) FROM ({sql})")[0][0]
        return {
            **empty,
            "name": name,
            "status": "single_run",
            "base_run": None,
            "head_run": only,
            "note": f"'{name}' has only the assignment of run {only}: nothing to compare yet",
            "users": {
                "before": 0,
                "after": int(n),
                "both": 0,
                "entered": int(n),
                "left": 0,
                "moved": 0,
            },
            "sizes": _sizes_only(con, name, sql, "after"),
        }
    before = _assignment_sql(head, name, k, b_run)
    after = _assignment_sql(head, name, k, h_run)
    tt = _text_table_for(project, head, name)
    res = _compare_one(con, name, k, before, after, examples, None, tt)
    if to_run is None and from_run is not None:
        why = "the latest run"
    elif to_run is None and changed and h_run == changed[-1]:
        why = f"the last run that changed '{name}'"
    else:
        why = "as asked"
    notes = [f"compared run {b_run} with run {h_run} ({why})"]
    if tt and res["examples"]:
        notes.append("example texts are the current ones")
    res.update(base_run=b_run, head_run=h_run, note="; ".join(notes))
    return res
