"""Connections to the project database and the `_segtool` state schema.

State has a version number and forward-only migrations; every table segtool
owns lives in `_segtool` (state) or `segments` (results). Arrays are stored as
DuckDB lists or npz blobs: no pickle."""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from segtool.compile.sql import attach_alias, quote_ident, sql_literal
from segtool.errors import ExecutionError, LockError, ProjectError
from segtool.project import reach
from segtool.project.loader import LoadedProject
from segtool.project.secrets import Secrets
from segtool.state import vectors
from segtool.state.lock import RunLock, describe_holder
from segtool.state.result import one, table_exists  # noqa: F401 - table_exists re-exported
from segtool.state.tables import RESULTS, STATE  # noqa: E402 - re-exported

STATE_VERSION = 7

MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"CREATE SCHEMA IF NOT EXISTS {STATE}",
        f"CREATE SCHEMA IF NOT EXISTS {RESULTS}",
        f"CREATE TABLE IF NOT EXISTS {STATE}.meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        f"""CREATE TABLE IF NOT EXISTS {STATE}.runs (
            run_id INTEGER PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP,
            status VARCHAR, command VARCHAR, target VARCHAR, args JSON, summary JSON)""",
        f"""CREATE TABLE IF NOT EXISTS {STATE}.nodes (
            unique_id VARCHAR PRIMARY KEY, kind VARCHAR, data_hash VARCHAR, own_hash VARCHAR,
            metadata_hash VARCHAR, run_id INTEGER, updated_at TIMESTAMP)""",
        f"""CREATE TABLE IF NOT EXISTS {STATE}.embeddings (
            encoder_fp VARCHAR, text_hash VARCHAR, vector FLOAT[], run_id INTEGER)""",
        f"""CREATE TABLE IF NOT EXISTS {STATE}.fitted (
            segmentation VARCHAR, fit_id INTEGER, fit_hash VARCHAR, run_id INTEGER,
            fitted_at TIMESTAMP, params JSON, arrays BLOB, active BOOLEAN)""",
        f"""CREATE TABLE IF NOT EXISTS {STATE}.segment_catalog (
            segmentation VARCHAR, segment_id INTEGER, label VARCHAR, keywords JSON,
            features JSON, size BIGINT, born_run INTEGER, died_run INTEGER)""",
        f"""CREATE TABLE IF NOT EXISTS {STATE}.segment_events (
            segmentation VARCHAR, run_id INTEGER, event VARCHAR, detail JSON)""",
    ],
    # v2: one fixed-size vector table per encoder fingerprint (state/vectors.py);
    # nodes remember what their output was computed from (plan/decide.py)
    2: [
        vectors.migrate_lists,
        f"ALTER TABLE {STATE}.nodes ADD COLUMN input_hash VARCHAR",
        f"ALTER TABLE {STATE}.nodes ADD COLUMN exec_hash VARCHAR",
    ],
    # v3: what drives each segmentation, and what sets each segment apart
    # (execute/segment/drivers.py)
    3: [
        f"""CREATE TABLE IF NOT EXISTS {STATE}.drivers (
            segmentation VARCHAR, run_id INTEGER, model VARCHAR, column_name VARCHAR,
            measure VARCHAR, value DOUBLE, n_rows BIGINT)""",
        f"ALTER TABLE {STATE}.segment_catalog ADD COLUMN traits JSON",
    ],
    # v4: a hash per part of each node's definition, so a plan can say which
    # part changed (population, labels, ...), not only that one did
    4: [f"ALTER TABLE {STATE}.nodes ADD COLUMN parts JSON"],
    # v5: the token of an incremental model's last build from scratch, part
    # of its input hash: what it holds came from its merges, so a rebuild
    # changes it though its inputs did not (plan/build.py)
    5: [f"ALTER TABLE {STATE}.nodes ADD COLUMN built VARCHAR"],
    # v6: encoder fingerprints cover tokenizer.json; the run that migrates
    # moves vectors and fits to them (state/rekey.py), no table changes
    6: [],
    # a static encoder's fingerprint leaves out the source path model2vec
    # writes into config.json: state/rekey.py moves vectors and fits
    7: [],
}


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _lock_error(exc: Exception, db: Path) -> LockError:
    import os

    lock = RunLock(db, "segtool")
    holder = lock.read()
    if holder and holder.get("pid") == os.getpid():
        holder = None  # our own run lock: the holder is some other DuckDB client
    who = describe_holder(holder) if holder else None
    m = re.search(r"PID (\d+)", str(exc))
    if who is None and m:
        who = f"another process (pid {m.group(1)})"
    return LockError(
        f"database {db} is locked by {who or 'another process'}",
        hint="wait for that run to finish, or point --target at another database",
    )


_NO_EXTENSIONS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def _check_duckdb_file(db: Path) -> None:
    """An existing file is a DuckDB database (its header says DUCK at byte
    8): DuckDB opens a SQLite file through an extension instead."""
    try:
        with open(db, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return  # missing (created now) or unreadable (connect says why)
    if head and head[8:12] != b"DUCK":
        raise ExecutionError(
            f"{db} is not a DuckDB database file",
            hint="point the target at a database `segtool run` wrote, or remove the file",
        )
    wal = Path(f"{db}.wal")
    if wal.is_symlink():  # a committed one: a run would write its log where it leads
        raise ExecutionError(
            f"{wal} is a symbolic link: DuckDB would write the database's log where it leads",
            hint="remove the link (segtool writes only inside the project's target)",
        )


def open_database(db: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """The one place a database file is opened: a lock or a file that is not
    a database becomes a clear error. Setup and fence are the caller's."""
    if not read_only:
        db.parent.mkdir(parents=True, exist_ok=True)
    _check_duckdb_file(db)
    try:
        # no extension is installed or loaded to open a file: a committed
        # SQLite file as the database made DuckDB download sqlite_scanner
        con = duckdb.connect(str(db), read_only=read_only, config=_NO_EXTENSIONS)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise _lock_error(exc, db) from None
        raise ExecutionError(f"cannot open database {db}: {first_line(exc)}") from exc
    except duckdb.Error as exc:
        raise ExecutionError(f"cannot open database {db}: {first_line(exc)}") from exc
    try:
        refuse_stored_macros(con, db)
    except BaseException:
        con.close()
        raise
    return con


def refuse_stored_macros(con: duckdb.DuckDBPyConnection, db: Path) -> None:
    """segtool never stores a macro, and project SQL cannot create one; a
    database that holds one was written by someone else, and its macros
    replace built-in functions in every query over it: a stored
    `current_setting(x) AS true` made segtool take the connection for fenced
    and skip the fence. (Every call here names the built-in's catalog.)"""
    rows = con.execute(
        """SELECT DISTINCT function_name FROM system.main.duckdb_functions()
        WHERE NOT internal AND function_type IN ('macro', 'table_macro')
        AND database_name = system.main.current_database() ORDER BY 1"""
    ).fetchall()
    if rows:
        names = ", ".join(r[0] for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        raise ProjectError(
            f"database {db} holds SQL macros segtool did not create ({names}): "
            "they would replace built-in functions in every query segtool runs on it",
            hint="point the target at a database `segtool run` wrote (segtool never stores macros)",
        )


def connect(
    proj: LoadedProject,
    *,
    read_only: bool = False,
    threads: int | None = None,
    database: Path | None = None,
    search_paths: tuple[Path, ...] = (),
    extra_paths: tuple[Path, ...] = (),
) -> duckdb.DuckDBPyConnection:
    """The project database (or `database`), set up and fenced for project SQL."""
    db = Path(database) if database is not None else proj.database_path
    if database is None:
        # profiles.yml is a project file: a pull request could point it at any
        # database on the machine and read it through `segtool test`'s failures
        reach.check_reach(proj.roots, db, "the database", keep="the database")
    if read_only and not db.exists():
        raise ProjectError(
            f"database {proj.relpath(db)} does not exist yet",
            hint="run `segtool run` first",
        )
    con = open_database(db, read_only=read_only)
    try:
        setup_connection(
            con,
            proj,
            threads=threads,
            search_paths=search_paths,
            extra_paths=extra_paths,
            # a read-only database cannot hold temporary files next to itself
            temp_directory=Path(tempfile.gettempdir()) / "segtool-duckdb" if read_only else None,
        )
    except BaseException:
        con.close()
        raise
    return con


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK if a transaction is open. After a failed COMMIT (a full disk)
    DuckDB has already aborted it, and a second error would hide the first."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def first_line(exc: BaseException) -> str:
    """The error's first line; for a CSV reader's error, with its reason (the
    first line only says where: "CSV Error on Line: 1"), never the line's
    text (data, megabytes of it)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = text.splitlines()
    if "CSV Error on Line" in lines[0]:
        reason = next(
            (x.strip() for x in lines[1:] if x.strip() and not x.startswith("Original Line")), ""
        )
        if reason:
            return f"{lines[0]}: {reason[:300]}"
    return lines[0]


CHECKPOINT_THRESHOLD = "1GB"


def setup_connection(
    con: duckdb.DuckDBPyConnection,
    proj: LoadedProject,
    *,
    threads: int | None = None,
    search_paths: tuple[Path, ...] = (),
    extra_paths: tuple[Path, ...] = (),
    temp_directory: Path | None = None,
) -> None:
    """Settings, attached source databases, then the fence (which locks the
    configuration, so every setting comes before it)."""
    if is_locked(con):
        # a second connection to a database this process has open shares its
        # instance, which is set up and fenced already
        return
    paths = [str(proj.root)] + [str(p) for p in search_paths if str(p) != str(proj.root)]
    con.execute(f"SET file_search_path = {sql_literal(','.join(paths))}")
    # at most the CPUs: `threads: 3000` in a pull request's profiles.yml
    # started 3,000 threads in every command
    con.execute(f"SET threads = {min(int(threads or proj.target.threads), os.cpu_count() or 1)}")
    # DuckDB checkpoints whenever its write-ahead log passes 16 MB: a run that
    # commits vectors 2,048 at a time checkpointed every few seconds, each one
    # rewriting the tables' last blocks (160,000 vectors: 5.7 s to insert with
    # those checkpoints, 3.1 s with one at the end). Commits stay durable in
    # the log; closing the database checkpoints once.
    con.execute(f"SET checkpoint_threshold = {sql_literal(CHECKPOINT_THRESHOLD)}")
    if proj.target.memory_limit:
        con.execute(f"SET memory_limit = {sql_literal(proj.target.memory_limit)}")
    if temp_directory is not None:
        con.execute(f"SET temp_directory = {sql_literal(str(temp_directory))}")
    attached = {
        r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
    for st in proj.sources.values():
        src = st.source
        if src.database and attach_alias(src.name) not in attached:
            path = Path(src.database)
            path = path if path.is_absolute() else proj.root / path
            reach.check_data(
                proj.roots, path, f"source '{src.name}': database", file=src.file, line=src.line
            )
            if not path.exists():
                raise ProjectError(
                    f"source '{src.name}': database file {src.database} does not exist",
                    path=src.file,
                    line=src.line,
                )
            con.execute(
                f"ATTACH {sql_literal(str(path))} AS {quote_ident(attach_alias(src.name))} (TYPE duckdb, READ_ONLY)"
            )
            attached.add(attach_alias(src.name))
    fence(con, proj, (*search_paths, *extra_paths))


def fence(
    con: duckdb.DuckDBPyConnection, proj: LoadedProject, extra: tuple[Path, ...] = ()
) -> None:
    """What project SQL may reach (docs/security.md): the project's folders,
    the declared sources' files and the target's `allow_paths`, within what
    the environment allows (project/reach.py), plus what a command names,
    like `assign --input`; no other file, no network, no extension install,
    and no change of these settings from SQL. The database itself and its
    temporary files are DuckDB's own and stay usable. `external_access: true`
    in the target turns the fence off where SEGTOOL_EXTERNAL_ACCESS=1."""
    if proj.target.external_access:
        reach.confirm_external_access(proj.target_name)
        return
    dirs, files = allowed_locations(proj, extra)
    con.execute(f"SET allowed_directories = {sql_literal(dirs)}")
    con.execute(f"SET allowed_paths = {sql_literal(files)}")
    lock(con)


def is_locked(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the connection's configuration is locked (fenced). The
    built-in is named by its catalog: a function of the database cannot answer."""
    return bool(one(con.execute("SELECT system.main.current_setting('lock_configuration')"))[0])


def lock(con: duckdb.DuckDBPyConnection) -> None:
    """No file beyond what is allowed so far, no network, no extension
    install, and no change of any of it from SQL."""
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


_GLOB = re.compile(r"[*?\[{]")


def allowed_locations(proj: LoadedProject, extra: tuple[Path, ...] = ()) -> tuple[list, list]:
    """(directories, files) the fence lets project SQL read: the project's
    folders but hidden ones, and what the project declares, each within
    reach (project/reach.py); `extra` (what a command names) as given."""
    dirs, files = set(reach.project_folders(proj.roots)), set()

    def add(path: str | Path, what: str | None = None, file=None, line=None) -> None:
        text = str(path)
        if "://" in text:
            return  # remote: needs external_access
        p = Path(text) if Path(text).is_absolute() else proj.root / text

        def checked(q: Path, of: str = "") -> Path:
            if what is None:
                return q.resolve()
            return reach.check_data(proj.roots, q, what + of, file=file, line=line)

        if _GLOB.search(str(p)):
            parts = []
            for part in p.parts:
                if _GLOB.search(part):
                    break
                parts.append(part)
            # the folder the glob opens is what is checked: say so
            dirs.add(str(checked(Path(*parts), f" the folder of {text},")).rstrip("/") + "/")
        elif p.is_dir() or text.endswith("/"):
            dirs.add(str(checked(p)).rstrip("/") + "/")
        else:
            files.add(str(checked(p)))
            files.add(str(p))

    for (s, t), st in proj.sources.items():
        if st.table.path:
            add(st.table.path, f"source '{s}.{t}':", st.table.file, st.table.line)
    for p in proj.target.allow_paths:
        add(p, f"allow_paths of target '{proj.target_name}':", "profiles.yml")
    for p in extra:
        add(p)
    return sorted(dirs), sorted(files)


def state_version(con: duckdb.DuckDBPyConnection) -> int:
    # probe the catalog instead of catching an error: inside a transaction a
    # failed statement would abort it
    if not table_exists(con, STATE, "meta"):
        return 0
    row = one(con.execute(f"SELECT value FROM {STATE}.meta WHERE key = 'state_version'"))
    return int(row[0]) if row else 0


def has_state(con: duckdb.DuckDBPyConnection) -> bool:
    return state_version(con) > 0


def check_owner(con: duckdb.DuckDBPyConnection, proj: LoadedProject) -> None:
    """The database belongs to this project (a renamed project, or a target
    pointing at another project's database, is refused)."""
    stored = get_meta(con, "project")
    if stored and stored != proj.name:
        raise ProjectError(
            f"database {proj.relpath(proj.database_path)} belongs to project '{stored}', not '{proj.name}'",
            hint="use another target/database for this project",
        )


def migrate(
    con: duckdb.DuckDBPyConnection, proj: LoadedProject, *, in_transaction: bool = False
) -> list[str]:
    """Bring `_segtool` to STATE_VERSION in one transaction (or inside the
    caller's, so a failed first run leaves no trace). Returns notes for the user."""
    notes: list[str] = []
    current = state_version(con)
    if current > STATE_VERSION:
        raise ExecutionError(
            f"this database was written by a newer segtool (state version {current} > {STATE_VERSION})",
            hint="upgrade segtool",
        )
    if current == STATE_VERSION:
        check_owner(con, proj)
        return notes
    if not in_transaction:
        con.execute("BEGIN")
    try:
        for v in range(current + 1, STATE_VERSION + 1):
            for step in MIGRATIONS[v]:
                if callable(step):
                    notes += step(con)
                else:
                    con.execute(step)
        set_meta(con, "state_version", str(STATE_VERSION))
        if not get_meta(con, "project"):
            set_meta(con, "project", proj.name)
        if not in_transaction:
            con.execute("COMMIT")
    except BaseException:
        if not in_transaction:
            con.execute("ROLLBACK")
        raise
    return notes


def get_meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    if not table_exists(con, STATE, "meta"):
        return None
    row = one(con.execute(f"SELECT value FROM {STATE}.meta WHERE key = ?", [key]))
    return row[0] if row else None


def set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute(f"INSERT OR REPLACE INTO {STATE}.meta VALUES (?, ?)", [key, value])


def relation_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> str | None:
    """'table', 'view' or None."""
    if table_exists(con, schema, name):
        return "table"
    row = one(
        con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE schema_name = ? AND view_name = ? AND database_name = current_database()",
            [schema, name],
        )
    )
    return "view" if row[0] else None


def column_type(con: duckdb.DuckDBPyConnection, schema: str, table: str, column: str) -> str | None:
    """The type of a column of a table or view, or None when either is missing."""
    return column_types(con, schema, table).get(column)


def column_types(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    """Column name -> type of a table or view, in column order ({} when missing)."""
    return dict(
        con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = ? "
            "AND table_name = ? AND database_name = current_database() ORDER BY column_index",
            [schema, table],
        ).fetchall()
    )


# ----------------------------------------------------------------------------- runs


def start_run(
    con: duckdb.DuckDBPyConnection,
    command: str,
    target: str,
    args: dict[str, Any],
    secrets: Secrets | None = None,
) -> int:
    row = one(con.execute(f"SELECT coalesce(max(run_id), 0) + 1 FROM {STATE}.runs"))
    run_id = int(row[0])
    args = secrets.mask_obj(args) if secrets else args
    con.execute(
        f"INSERT INTO {STATE}.runs VALUES (?, ?, NULL, 'running', ?, ?, ?, NULL)",
        [run_id, now(), command, target, json.dumps(args, default=str)],
    )
    return run_id


def finish_run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    status: str,
    summary: dict[str, Any],
    secrets: Secrets | None = None,
) -> None:
    summary = secrets.mask_obj(summary) if secrets else summary
    con.execute(
        f"UPDATE {STATE}.runs SET finished_at = ?, status = ?, summary = ? WHERE run_id = ?",
        [now(), status, json.dumps(summary, default=str), run_id],
    )


def mark_interrupted(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Runs still marked `running` when a new run holds the lock were killed
    (SIGKILL, power loss): mark them `interrupted`. Returns their ids."""
    ids = [
        r[0]
        for r in con.execute(
            f"SELECT run_id FROM {STATE}.runs WHERE status = 'running' ORDER BY 1"
        ).fetchall()
    ]
    if ids:
        con.execute(f"UPDATE {STATE}.runs SET status = 'interrupted' WHERE status = 'running'")
    return ids


def record_nodes(con: duckdb.DuckDBPyConnection, nodes: list, run_id: int, hashes=None) -> None:
    """Remember each node's hashes at the end of its step. `hashes(node)`
    gives (input_hash, exec_hash, built) (plan/build.py)."""
    if not nodes:
        return
    rows = []
    for n in nodes:
        input_hash, exec_hash, built = hashes(n) if hashes else (None, None, None)
        rows.append(
            [
                n.unique_id,
                n.kind,
                n.data_hash,
                n.own_hash,
                n.metadata_hash,
                run_id,
                now(),
                input_hash,
                exec_hash,
                json.dumps(n.part_hashes()),
                built,
            ]
        )
    # one statement (executemany runs one per row), one row per node (the last)
    rows = list({r[0]: r for r in rows}.values())
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
    con.execute(
        f"""INSERT OR REPLACE INTO {STATE}.nodes (unique_id, kind, data_hash, own_hash, metadata_hash,
        run_id, updated_at, input_hash, exec_hash, parts, built) VALUES {values}""",
        [v for row in rows for v in row],
    )


def node_states(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    if not has_state(con):
        return {}
    rows = con.execute(
        f"SELECT unique_id, data_hash, own_hash, metadata_hash, run_id FROM {STATE}.nodes"
    ).fetchall()
    return {
        r[0]: {"data_hash": r[1], "own_hash": r[2], "metadata_hash": r[3], "run_id": r[4]}
        for r in rows
    }


def fitted_segment_ids(con: duckdb.DuckDBPyConnection, name: str) -> set[int]:
    """The ids any fit of segmentation NAME gave a cluster (its label_to_id)."""
    from segtool.state import tables

    if not table_exists(con, STATE, "fitted"):
        return set()
    out: set[int] = set()
    for (params,) in con.execute(
        f"SELECT params FROM {tables.FITTED} WHERE segmentation = ?", [name]
    ).fetchall():
        out |= {int(v) for v in json.loads(params or "{}").get("label_to_id", {}).values()}
    return out
