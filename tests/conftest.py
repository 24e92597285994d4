"""Shared fixtures: write a project to a temp dir, run the CLI on it, and
snapshot a database to prove a failed command left it unchanged."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fixtures import tiny_project_files


def write_files(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return root


class ProjectDir:
    def __init__(self, root: Path):
        self.root = root
        self.runner = CliRunner()

    @property
    def db(self) -> Path:
        return self.root / "target" / "segtool.duckdb"

    def write(self, rel: str, content: str) -> None:
        write_files(self.root, {rel: content})

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")

    def edit(self, rel: str, old: str, new: str) -> None:
        text = self.read(rel)
        assert old in text, f"{old!r} not in {rel}"
        (self.root / rel).write_text(text.replace(old, new), encoding="utf-8")

    def cli(self, *args: str, expect: int | None = 0):
        from segtool.cli import main

        result = self.runner.invoke(
            main,
            [*args, "--project-dir", str(self.root)]
            if args and args[0] not in ("init",)
            else list(args),
            catch_exceptions=False,
        )
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} != {expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def sql(self, query: str):
        import duckdb

        con = duckdb.connect(str(self.db), read_only=True)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()

    def vector_tables(self) -> list[str]:
        return [
            f'_segtool."{t}"'
            for (t,) in self.sql("select table_name from _segtool.encoders order by first_run")
        ]

    def n_vectors(self) -> int:
        """Cached vectors over every encoder's table."""
        return sum(self.sql(f"select count(*) from {t}")[0][0] for t in self.vector_tables())

    def vectors(self) -> dict:
        """text_hash -> vector, over every encoder's table."""
        import numpy as np

        out = {}
        for t in self.vector_tables():
            for h, v in self.sql(f"select text_hash, vector from {t}"):
                out[h] = np.asarray(v, dtype=np.float32)
        return out

    def snapshot(self) -> dict[str, str]:
        """A digest of every table and view in the database (contents, sorted)."""
        import duckdb

        if not self.db.exists():
            return {}
        con = duckdb.connect(str(self.db), read_only=True)
        try:
            out = {}
            for schema, name, kind in con.execute(
                "SELECT schema_name, table_name, 'table' FROM duckdb_tables() UNION ALL "
                "SELECT schema_name, view_name, 'view' FROM duckdb_views() WHERE NOT internal ORDER BY 1, 2"
            ).fetchall():
                if kind == "view":
                    sql = con.execute(
                        "SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = ?",
                        [schema, name],
                    ).fetchone()[0]
                    out[f"{schema}.{name}"] = hashlib.sha256(sql.encode()).hexdigest()
                    continue
                rows = con.execute(f'SELECT * FROM "{schema}"."{name}"').fetchall()
                digest = hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()
                out[f"{schema}.{name}"] = digest
            return out
        finally:
            con.close()


@pytest.fixture
def project(tmp_path) -> ProjectDir:
    """A small, fast project: CSV sources, hashing encoder, clusters and rules."""
    root = tmp_path / "proj"
    write_files(root, tiny_project_files())
    return ProjectDir(root)


@pytest.fixture(scope="session")
def _built_tiny(tmp_path_factory) -> Path:
    """The tiny project after one `segtool run`, built once per session."""
    pd = ProjectDir(write_files(tmp_path_factory.mktemp("built") / "proj", tiny_project_files()))
    pd.cli("run")
    return pd.root


@pytest.fixture
def built(_built_tiny, tmp_path) -> ProjectDir:
    """A private copy of the built tiny project (database included)."""
    import shutil

    return ProjectDir(shutil.copytree(_built_tiny, tmp_path / "proj"))


@pytest.fixture
def make_project(tmp_path):
    def make(files: dict[str, str], name: str = "p") -> ProjectDir:
        return ProjectDir(write_files(tmp_path / name, files))

    return make
