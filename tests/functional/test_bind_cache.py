"""`run` re-binds the project only when something the bind depends on
changed (compile/bind_cache.py); `validate` always binds."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def binds(monkeypatch):
    """How many times bind_models ran."""
    import segtool.compile.checks as checks

    calls = []
    real = checks.bind_models

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "bind_models", counted)
    return calls


def test_an_unchanged_project_is_bound_once(project, binds):
    project.cli("run")
    project.cli("run")
    project.cli("run", "--dry-run")
    assert len(binds) == 1
    project.cli("validate")  # what CI runs: always the whole check
    assert len(binds) == 2
    (project.root / "target" / "bind_check.json").write_text("{not json")
    project.cli("run")
    assert len(binds) == 3


def test_a_changed_model_var_env_var_or_source_file_is_bound_again(project, binds, monkeypatch):
    project.cli("run")
    project.edit("models/user_features.sql", "as orders,", "as orders, 1 as one,")
    project.cli("run")
    assert len(binds) == 2
    # the compiled SQL is in the key: an environment variable it reads counts
    monkeypatch.setenv("SEGTOOL_TEST_COLUMN", "country")
    project.edit(
        "models/user_features.sql", "1 as one,", "u.{{ env_var('SEGTOOL_TEST_COLUMN') }} as c,"
    )
    project.cli("run")
    assert len(binds) == 3
    monkeypatch.setenv("SEGTOOL_TEST_COLUMN", "signup_at")
    project.cli("run")
    assert len(binds) == 4
    users = project.root / "data" / "users.csv"
    os.utime(users, ns=(users.stat().st_atime_ns, users.stat().st_mtime_ns + 10**9))
    project.cli("run")
    assert len(binds) == 5
    project.cli("run", "--vars", '{"as_of": "2024-08-15"}')
    assert len(binds) == 6


def test_a_source_that_lost_a_column_fails_before_anything_is_written(project):
    """The case the cache must not hide: same project files, new data without
    a column a model reads. The bind says so, at the model's line, and the
    database is as it was."""
    project.cli("run")
    before = project.snapshot()
    lines = project.read("data/users.csv").splitlines()  # user_id,signup_at,country
    project.write("data/users.csv", "\n".join(ln.rsplit(",", 1)[0] for ln in lines) + "\n")
    r = project.cli("run", expect=1)
    assert "model 'user_features'" in r.stderr and "country" in r.stderr
    assert "models/user_features.sql:" in r.stderr
    assert project.snapshot() == before


def test_new_parquet_data_in_the_same_schema_is_not_bound_again(project, binds, monkeypatch):
    """A daily run: the Parquet file is rewritten with new rows, its schema is
    the same; the bind's answer stands (the file's time changed, its footer's
    schema did not). A changed schema is bound again; an unchanged project
    reads no footer."""
    import duckdb

    import segtool.compile.bind_cache as bind_cache

    footers = []
    real = bind_cache._Footers.schema
    monkeypatch.setattr(
        bind_cache._Footers, "schema", lambda self, *a: footers.append(1) or real(self, *a)
    )
    data = project.root / "data"

    def write_users(sql: str) -> None:
        con = duckdb.connect()
        con.execute(f"COPY ({sql}) TO '{data / 'users.parquet'}'")
        con.close()

    csv = f"read_csv('{data / 'users.csv'}')"
    write_users(f"SELECT * FROM {csv} WHERE user_id <= 50")
    project.edit("models/sources.yml", "path: data/users.csv", "path: data/users.parquet")
    project.cli("run")
    assert len(binds) == 1
    write_users(f"SELECT * FROM {csv}")  # ten new users, the same columns
    r = project.cli("run")
    assert len(binds) == 1 and "60 users" in r.output
    n = len(footers)
    project.cli("run")  # nothing changed: the first key matches again
    assert len(binds) == 1 and len(footers) == n
    write_users(f"SELECT *, 1 AS extra FROM {csv}")
    project.cli("run")
    assert len(binds) == 2
