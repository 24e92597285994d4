"""State database: migrations, meta, runs, node fingerprints; the run lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from segtool.errors import ExecutionError, LockError, ProjectError
from segtool.graph.dag import Node
from segtool.project.loader import LoadedProject
from segtool.project.specs import ProjectSpec, TargetSpec
from segtool.state import db
from segtool.state.lock import RunLock, describe_holder


def make_proj(
    root: Path, name: str = "shop", database: str = "target/segtool.duckdb"
) -> LoadedProject:
    return LoadedProject(
        root=root,
        spec=ProjectSpec(name=name),
        target_name="dev",
        target=TargetSpec(database=database, threads=1),
        vars={},
    )


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


def schemas(c) -> set[str]:
    return {r[0] for r in c.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}


def state_tables(c) -> list[str]:
    return [
        r[0]
        for r in c.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_segtool' ORDER BY 1"
        ).fetchall()
    ]


# ----------------------------------------------------------------- migrations


def test_fresh_database_has_no_state(con):
    assert db.state_version(con) == 0
    assert not db.has_state(con)
    assert db.get_meta(con, "project") is None
    assert db.node_states(con) == {}


def test_migrate_creates_schemas_tables_and_version(con, tmp_path):
    db.migrate(con, make_proj(tmp_path))
    assert {"_segtool", "segments"} <= schemas(con)
    assert state_tables(con) == [
        "drivers",
        "encoders",
        "fitted",
        "meta",
        "nodes",
        "runs",
        "segment_catalog",
        "segment_events",
    ]
    assert db.state_version(con) == db.STATE_VERSION == 7
    assert db.has_state(con)
    assert con.execute("SELECT * FROM _segtool.meta ORDER BY key").fetchall() == [
        ("project", "shop"),
        ("state_version", "7"),
    ]


def test_v1_vector_lists_move_to_fixed_size_tables(con, tmp_path):
    """State v1 kept vectors as FLOAT[] lists that a wrong length slipped
    through (and was reshaped silently); v2 moves each encoder's vectors into a
    FLOAT[dim] table and drops, with a note, vectors of another length."""
    proj = make_proj(tmp_path)
    v1 = dict(db.MIGRATIONS)
    con.execute("BEGIN")
    for stmt in v1[1]:
        con.execute(stmt)
    db.set_meta(con, "state_version", "1")
    db.set_meta(con, "project", "shop")
    con.execute("COMMIT")
    rows = [
        ("fpA", "h1", [1.0, 2.0, 3.0]),
        ("fpA", "h2", [4.0, 5.0, 6.0]),
        ("fpA", "bad", [1.0, 2.0]),
    ]
    rows += [("fpB", "h1", [0.5, 0.5])]
    for fp, h, v in rows:
        con.execute("INSERT INTO _segtool.embeddings VALUES (?, ?, ?, 1)", [fp, h, v])
    notes = db.migrate(con, proj)
    assert len(notes) == 1 and "dropped 1 cached vector of length 2" in notes[0]
    assert "embeddings" not in state_tables(con)
    from segtool.state import vectors

    table, dim = vectors.lookup(con, "fpA")
    assert dim == 3
    assert con.execute(f"SELECT text_hash, vector FROM {table} ORDER BY 1").fetchall() == [
        ("h1", (1.0, 2.0, 3.0)),
        ("h2", (4.0, 5.0, 6.0)),
    ]
    assert vectors.lookup(con, "fpB")[1] == 2
    with pytest.raises(duckdb.Error):  # a fixed-size column refuses another length
        con.execute(f"INSERT INTO {table} VALUES ('x', [1.0, 2.0], 2)")


def test_v3_nodes_gain_parts_and_are_read_before_and_after(con, tmp_path):
    """v4 records a hash per part of each node's definition; a v3 database
    (a dry run cannot migrate it) is read with no parts."""
    from segtool.plan.state import DbState

    con.execute("BEGIN")
    for v in (1, 2, 3):
        for stmt in db.MIGRATIONS[v]:
            stmt(con) if callable(stmt) else con.execute(stmt)
    db.set_meta(con, "state_version", "3")
    db.set_meta(con, "project", "shop")
    con.execute("COMMIT")
    con.execute(
        "INSERT INTO _segtool.nodes (unique_id, kind, own_hash, input_hash) VALUES ('segmentation.s', 'segmentation', 'o', 'i')"
    )
    assert DbState(con).node("segmentation.s").parts is None
    db.migrate(con, make_proj(tmp_path, "shop"))
    assert DbState(con).node("segmentation.s").parts is None  # not recorded yet
    node = type("N", (), {})()
    node.unique_id, node.kind, node.data_hash, node.own_hash, node.metadata_hash = (
        "segmentation.s",
        "segmentation",
        "d",
        "o",
        "m",
    )
    node.part_hashes = lambda: {"population": "p1", "labels": "l1"}
    db.record_nodes(con, [node], 1)
    assert DbState(con).node("segmentation.s").parts == {"population": "p1", "labels": "l1"}


def test_remigrate_is_a_no_op(con, tmp_path):
    proj = make_proj(tmp_path)
    db.migrate(con, proj)
    run_id = db.start_run(con, "run", "dev", {})
    db.set_meta(con, "custom", "kept")
    before = con.execute("SELECT * FROM _segtool.meta ORDER BY key").fetchall()
    db.migrate(con, proj)
    assert con.execute("SELECT * FROM _segtool.meta ORDER BY key").fetchall() == before
    assert con.execute("SELECT run_id FROM _segtool.runs").fetchall() == [(run_id,)]


def test_database_of_another_project_is_refused(con, tmp_path):
    db.migrate(con, make_proj(tmp_path, "shop"))
    with pytest.raises(ProjectError) as ei:
        db.migrate(con, make_proj(tmp_path, "other"))
    e = ei.value
    assert e.message == "database target/segtool.duckdb belongs to project 'shop', not 'other'"
    assert e.hint == "use another target/database for this project"
    assert e.exit_code == 1
    assert db.get_meta(con, "project") == "shop"


def test_newer_state_version_is_refused(con, tmp_path):
    db.migrate(con, make_proj(tmp_path))
    db.set_meta(con, "state_version", "99")
    with pytest.raises(ExecutionError, match=r"newer segtool \(state version 99 > \d+\)"):
        db.migrate(con, make_proj(tmp_path))


def test_failed_migration_rolls_back(con, tmp_path, monkeypatch):
    monkeypatch.setitem(
        db.MIGRATIONS, 1, [*db.MIGRATIONS[1], "CREATE TABLE _segtool.broken (x NOT_A_TYPE)"]
    )
    with pytest.raises(duckdb.Error):
        db.migrate(con, make_proj(tmp_path))
    assert "_segtool" not in schemas(con)
    assert db.state_version(con) == 0


def test_meta_roundtrip(con, tmp_path):
    db.migrate(con, make_proj(tmp_path))
    db.set_meta(con, "k", "v1")
    db.set_meta(con, "k", "v2")
    assert db.get_meta(con, "k") == "v2"
    assert db.get_meta(con, "absent") is None


# ----------------------------------------------------------------- runs and nodes


def test_runs_are_numbered_and_finished(con, tmp_path):
    db.migrate(con, make_proj(tmp_path))
    r1 = db.start_run(con, "run", "dev", {"select": ["a"]})
    r2 = db.start_run(con, "run", "prod", {})
    assert (r1, r2) == (1, 2)
    db.finish_run(con, r1, "success", {"models": 2})
    rows = con.execute(
        "SELECT run_id, status, target, args, summary, finished_at IS NOT NULL FROM _segtool.runs ORDER BY 1"
    ).fetchall()
    assert rows[0][:3] == (1, "success", "dev")
    assert json.loads(rows[0][3]) == {"select": ["a"]} and json.loads(rows[0][4]) == {"models": 2}
    assert rows[0][5] is True
    assert rows[1][1] == "running" and rows[1][5] is False


def test_record_nodes_and_node_states(con, tmp_path):
    db.migrate(con, make_proj(tmp_path))
    a = Node(
        unique_id="model.a",
        kind="model",
        name="a",
        path=None,
        own_hash="o1",
        data_hash="d1",
        metadata_hash="m1",
    )
    db.record_nodes(con, [a], 1)
    a.data_hash = "d2"
    db.record_nodes(con, [a], 2)
    db.record_nodes(con, [], 3)
    assert db.node_states(con) == {
        "model.a": {"data_hash": "d2", "own_hash": "o1", "metadata_hash": "m1", "run_id": 2}
    }


def test_relation_exists(con, tmp_path):
    db.migrate(con, make_proj(tmp_path))
    con.execute("CREATE TABLE segments.t (x INT)")
    con.execute("CREATE VIEW main.v AS SELECT 1")
    assert db.table_exists(con, "segments", "t")
    assert not db.table_exists(con, "segments", "v")
    assert db.relation_exists(con, "segments", "t") == "table"
    assert db.relation_exists(con, "main", "v") == "view"
    assert db.relation_exists(con, "main", "nothing") is None


# ----------------------------------------------------------------- connect


def test_connect_creates_folder_and_sets_search_path(tmp_path):
    proj = make_proj(tmp_path)
    c = db.connect(proj)
    try:
        assert (tmp_path / "target" / "segtool.duckdb").exists()
        assert c.execute("SELECT current_setting('file_search_path')").fetchall() == [
            (str(tmp_path),)
        ]
        assert c.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
        # chunked commits do not checkpoint every 16 MB of log (state/db.py)
        threshold = c.execute("SELECT current_setting('checkpoint_threshold')").fetchall()[0][0]
        assert threshold.replace(" ", "").upper() in ("1GB", "1.0GB", "953.6MIB"), threshold
    finally:
        c.close()


def test_connect_read_only_needs_existing_database(tmp_path):
    with pytest.raises(ProjectError) as ei:
        db.connect(make_proj(tmp_path), read_only=True)
    assert ei.value.message == "database target/segtool.duckdb does not exist yet"
    assert ei.value.hint == "run `segtool run` first"


_HOLDER = """
import sys
from pathlib import Path
import duckdb
from segtool.state.lock import RunLock
path = Path(sys.argv[1])
lock = RunLock(path, "segtool run").acquire()
con = duckdb.connect(str(path))
print("ready", flush=True)
sys.stdin.read()
"""


def test_connect_to_database_held_by_another_process_names_holder(tmp_path):
    proj = make_proj(tmp_path)
    path = proj.database_path
    path.parent.mkdir(parents=True)
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(LockError) as ei:
            db.connect(proj)
        assert (
            f"is locked by `segtool run` (pid {child.pid} on {socket.gethostname()}"
            in ei.value.message
        )
        assert ei.value.exit_code == 1
    finally:
        child.stdin.close()
        child.wait(timeout=30)


# ----------------------------------------------------------------- RunLock


def test_lock_names_its_holder_and_release_frees_it(tmp_path):
    dbp = tmp_path / "x.duckdb"
    lock = RunLock(dbp, "segtool run").acquire()
    assert lock.held and lock.path == tmp_path / "x.duckdb.lock"
    info = lock.read()
    assert info["pid"] == os.getpid()
    assert info["host"] == socket.gethostname()
    assert info["command"] == "segtool run"
    lock.release()
    assert not lock.held and not lock.info_path.exists()
    RunLock(dbp, "segtool test").acquire().release()


def test_second_acquire_fails_with_holder_pid(tmp_path):
    dbp = tmp_path / "x.duckdb"
    with RunLock(dbp, "segtool run"):
        with pytest.raises(LockError) as ei:
            RunLock(dbp, "segtool test").acquire()
        e = ei.value
        assert e.message.startswith(
            f"database {dbp} is locked by `segtool run` (pid {os.getpid()} on "
        )
        assert "released when its process ends" in e.hint
    # free again once released
    RunLock(dbp, "segtool test").acquire().release()


_HOLD_AND_DIE = """
import sys, time
from pathlib import Path
from segtool.state.lock import RunLock
lock = RunLock(Path(sys.argv[1]), "segtool run").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_holder_releases_the_lock(tmp_path):
    """No stale lock to take over: the OS drops the lock with its process."""
    dbp = tmp_path / "x.duckdb"
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_DIE, str(dbp)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(LockError, match=f"pid {child.pid}"):
        RunLock(dbp, "segtool run").acquire()
    child.kill()
    child.wait()
    lock = RunLock(dbp, "segtool run").acquire()  # the holder's info file is left behind: no matter
    assert lock.read()["pid"] == os.getpid()
    lock.release()


_RACE = """
import sys, time
from pathlib import Path
from segtool.errors import LockError
from segtool.state.lock import RunLock
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    lock = RunLock(Path(sys.argv[1]), "segtool run").acquire()
    print("won", flush=True)
    time.sleep(2)
except LockError:
    print("lost", flush=True)
"""


def test_racing_runs_exactly_one_wins(tmp_path):
    """The old pid-file lock let a second process that found the file empty
    delete it and acquire too."""
    import time

    dbp = tmp_path / "x.duckdb"
    start = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(dbp), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(6)
    ]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["lost"] * 5 + ["won"]


def test_unreadable_holder_info_still_refuses(tmp_path):
    dbp = tmp_path / "x.duckdb"
    with RunLock(dbp, "segtool run") as lock:
        lock.info_path.write_text("{not json")
        with pytest.raises(LockError, match="locked by another process"):
            RunLock(dbp, "segtool run").acquire()


def test_release_without_holding_keeps_other_lock(tmp_path):
    dbp = tmp_path / "x.duckdb"
    holder = RunLock(dbp, "segtool run").acquire()
    other = RunLock(dbp, "segtool test")
    other.release()
    assert holder.held and holder.info_path.exists()
    holder.release()


def test_describe_holder():
    assert describe_holder(
        {"command": "segtool run", "pid": 7, "host": "h", "started_at": "now"}
    ) == ("`segtool run` (pid 7 on h, since now)")
