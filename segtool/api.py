"""`Project`: the library facade. Every CLI command is one call here, so
notebooks and tests use the same code as the command line."""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

from segtool.errors import ProjectError, ProjectErrors
from segtool.graph.build import BuiltGraph, build_graph
from segtool.project.loader import LoadedProject, load_project


class Project:
    def __init__(self, loaded: LoadedProject):
        self.loaded = loaded
        self._built: BuiltGraph | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        target: str | None = None,
        vars: dict[str, Any] | None = None,
        strict: bool = True,
    ) -> Project:
        return cls(load_project(path, target=target, vars=vars, strict=strict))

    @property
    def root(self) -> Path:
        return self.loaded.root

    @property
    def name(self) -> str:
        return self.loaded.name

    def relpath(self, p: Path) -> str:
        return self.loaded.relpath(Path(p))

    @property
    def target_dir(self) -> Path:
        return self.root / "target"

    def graph(self) -> BuiltGraph:
        if self._built is None:
            self._built = build_graph(self.loaded, strict=True)
        return self._built

    def state_manifest(self, state_dir: str | Path) -> dict:
        from segtool.compile.artifacts import read_manifest

        p = Path(state_dir)
        return read_manifest(p if p.is_absolute() else Path.cwd() / p)

    # ------------------------------------------------------------------ commands
    def validate(self, *, check_encoders: bool = True) -> list[ProjectError]:
        """Every problem found, without writing anything or loading a model."""
        errors = list(self.loaded.errors)
        built = build_graph(self.loaded, strict=False)
        errors += built.errors
        if not built.errors:
            self._built = built  # reused by graph(): compile every model once
        if not any("cycle" in e.message for e in built.errors):
            from segtool.compile.checks import bind_models

            bound = bind_models(self.loaded, built)
            errors += bound.errors
        if check_encoders:
            from segtool.encoders import check_encoder

            for enc in self.loaded.encoders.values():
                for problem in check_encoder(enc, self.root):
                    errors.append(
                        ProjectError(
                            f"encoder '{enc.name}': {problem}", path=enc.file, line=enc.line
                        )
                    )
        return errors

    def check(self) -> None:
        errors = self.validate(check_encoders=False)
        if errors:
            raise ProjectErrors(errors)

    def ls(self, select=(), exclude=(), state_dir: str | None = None) -> list:
        from segtool.graph.selection import select as select_nodes

        built = self.graph()
        st = self.state_manifest(state_dir) if state_dir else None
        return [built.graph[u] for u in select_nodes(built.graph, select, exclude, st)]

    def compile(
        self, select=(), exclude=(), samples: int = 3, state_dir: str | None = None
    ) -> dict:
        """Write target/compiled/**.sql, rendered sample texts and manifest.json."""
        from segtool.compile.artifacts import manifest, write_json
        from segtool.execute.sql import write_sql

        self.check()
        built = self.graph()
        nodes = self.ls(select, exclude, state_dir)
        compiled_dir = self.target_dir / "compiled"
        for n in nodes:
            if n.kind == "model":
                write_sql(
                    self.target_dir,
                    "compiled",
                    n.path,
                    self.loaded.secrets.mask(built.compiled[n.name].portable_sql),
                )
        notes: list[str] = []
        if samples:
            from segtool.execute.render import write_samples

            _, notes = write_samples(self, [n for n in nodes if n.kind == "text"], samples)
        man = manifest(self.loaded, built.graph)
        write_json(self.target_dir / "manifest.json", man, self.loaded.secrets)
        man["_compiled_dir"] = str(compiled_dir)
        man["_notes"] = notes
        return man

    def run(self, reporter=None, **opts) -> Any:
        from segtool.compile.artifacts import manifest, write_json
        from segtool.execute.run import Runner, RunOptions

        self.check()
        result = Runner(self, RunOptions(**opts), reporter).run()
        write_json(
            self.target_dir / "manifest.json",
            manifest(self.loaded, self.graph().graph),
            self.loaded.secrets,
        )
        return result

    def write_run_results(self, result) -> None:
        from segtool.compile.artifacts import write_json

        write_json(self.target_dir / "run_results.json", result.to_dict(), self.loaded.secrets)

    def test(self, select=(), exclude=(), reporter=None, state_dir: str | None = None):
        from segtool.execute.tests import run_tests

        return run_tests(self, select, exclude, reporter, state_dir)

    def connect(self, read_only: bool = True):
        from segtool.state.db import connect

        return connect(self.loaded, read_only=read_only)

    # ------------------------------------------------------------------ results
    def segments(self, name: str):
        """The current segment table of a segmentation, as a polars DataFrame."""
        from segtool.execute.segment import read_segments

        return read_segments(self, name)

    def history(self, name: str):
        from segtool.execute.segment import read_history

        return read_history(self, name)

    @cached_property
    def version(self) -> str:
        from segtool import __version__

        return __version__


def template_dir() -> Path:
    """project_template/: packaged as segtool/_template in a wheel, read from
    the repo in an editable install."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_template", here.parent / "project_template"):
        if (cand / "segtool_project.yml").is_file():
            return cand
    raise ProjectError(
        "the project template is missing from this installation", hint="reinstall segtool"
    )


def init_project(dest: str | Path, *, force: int = 0) -> Path:
    """Copy the template into `dest`.

    A folder that is not empty needs `force`; even then, a file the user has
    changed (it differs from the template's) is only overwritten with force=2
    (`--force --force`): the refusal lists them, and nothing is written."""
    import filecmp

    dest = Path(dest)
    src = template_dir()
    ignore = shutil.ignore_patterns("target", "*.duckdb*", "__pycache__", "*.lock")
    if dest.exists() and not dest.is_dir():
        raise ProjectError(f"{dest} exists and is not a folder")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise ProjectError(
                f"{dest} exists and is not empty",
                hint="choose a new folder, or pass --force to add the template's missing files",
            )
        changed = sorted(
            rel
            for rel in _template_files(src, ignore)
            if (dest / rel).exists() and not filecmp.cmp(src / rel, dest / rel, shallow=False)
        )
        if changed and force < 2:
            shown = ", ".join(changed[:8]) + (
                f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            )
            raise ProjectError(
                f"{dest}: {len(changed)} file(s) differ from the template and would be overwritten: {shown}",
                hint="nothing was written; pass --force twice to overwrite them, or init into a new folder",
            )
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
    return dest


def _template_files(src: Path, ignore) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        skip = ignore(dirpath, dirnames + filenames)
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            if f not in skip:
                out.append((Path(dirpath) / f).relative_to(src).as_posix())
    return out


def check_output(project: Project, path: str | Path, *, force: bool) -> Path:
    """Where `export` / `assign` may write: never over the project database
    (or its WAL), and over an existing file only with --force."""
    out = Path(path).resolve()
    db = project.loaded.database_path.resolve()
    if out in (db, Path(str(db) + ".wal")):
        raise ProjectError(
            f"refusing to write over the project database {project.relpath(db)}",
            hint="write the output somewhere else (the default is under target/export/)",
        )
    if out.exists() and not force:
        raise ProjectError(
            f"{path} exists", hint="pass --force to overwrite it, or choose another file"
        )
    return out
