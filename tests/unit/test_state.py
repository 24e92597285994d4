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
        "embeddings",
        "fitted",
        "meta",
        "nodes",
        "runs",
        "segment_catalog",
        "segment_events",
    ]
    assert db.state_version(con) == db.STATE_VERSION == 1
    assert db.has_state(con)
    assert con.execute("SELECT * FROM _segtool.meta ORDER BY key").fetchall() == [
        ("project", "shop"),
        ("state_version", "1"),
    ]


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
    with pytest.raises(ExecutionError, match=r"newer segtool \(state version 99 > 1\)"):
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


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_file_contents_and_release(tmp_path):
    dbp = tmp_path / "x.duckdb"
    lock = RunLock(dbp, "segtool run").acquire()
    assert lock.held and lock.path == tmp_path / "x.duckdb.lock"
    info = lock.read()
    assert info["pid"] == os.getpid()
    assert info["host"] == socket.gethostname()
    assert info["command"] == "segtool run"
    lock.release()
    assert not lock.path.exists() and not lock.held


def test_second_acquire_fails_with_holder_pid(tmp_path):
    dbp = tmp_path / "x.duckdb"
    with RunLock(dbp, "segtool run"):
        with pytest.raises(LockError) as ei:
            RunLock(dbp, "segtool test").acquire()
        e = ei.value
        assert e.message.startswith(
            f"database {dbp} is locked by `segtool run` (pid {os.getpid()} on "
        )
        assert str(dbp) + ".lock" in e.hint
    assert not (tmp_path / "x.duckdb.lock").exists()
    # free again once released
    RunLock(dbp, "segtool test").acquire().release()


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    dbp = tmp_path / "x.duckdb"
    lockfile = tmp_path / "x.duckdb.lock"
    pid = dead_pid()
    lockfile.write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "command": "segtool run"})
    )
    lock = RunLock(dbp, "segtool run").acquire()
    assert lock.held
    assert lock.read()["pid"] == os.getpid()
    lock.release()


def test_lock_of_dead_pid_on_another_host_is_not_stale(tmp_path):
    dbp = tmp_path / "x.duckdb"
    (tmp_path / "x.duckdb.lock").write_text(
        json.dumps(
            {
                "pid": dead_pid(),
                "host": "some-other-host",
                "command": "segtool run",
                "started_at": "t0",
            }
        )
    )
    with pytest.raises(LockError, match="on some-other-host, since t0"):
        RunLock(dbp, "segtool run").acquire()


def test_unreadable_lock_file_is_taken_over(tmp_path):
    dbp = tmp_path / "x.duckdb"
    (tmp_path / "x.duckdb.lock").write_text("{not json")
    lock = RunLock(dbp, "segtool run").acquire()
    assert lock.read()["pid"] == os.getpid()
    lock.release()


def test_release_without_holding_keeps_other_lock(tmp_path):
    dbp = tmp_path / "x.duckdb"
    holder = RunLock(dbp, "segtool run").acquire()
    other = RunLock(dbp, "segtool test")
    other.release()
    assert holder.path.exists()
    holder.release()


def test_describe_holder():
    assert describe_holder(
        {"command": "segtool run", "pid": 7, "host": "h", "started_at": "now"}
    ) == ("`segtool run` (pid 7 on h, since now)")
