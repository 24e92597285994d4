"""`Project`: the library facade. Every CLI command is one call here, so
notebooks and tests use the same code as the command line."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from segtool.errors import ProjectError, ProjectErrors
from segtool.graph.build import BuiltGraph, build_graph
from segtool.project.loader import LoadedProject, load_project
from segtool.words import counted


class Project:
    def __init__(self, loaded: LoadedProject, cli_vars: dict | None = None):
        self.loaded = loaded
        self._built: BuiltGraph | None = None
        self._pii: dict[str, set[str]] | None = None
        self._cli_vars = cli_vars or {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        target: str | None = None,
        vars: dict | None = None,
        strict: bool = True,
        linked_root: Path | None = None,
    ) -> Project:
        return cls(
            load_project(path, target=target, vars=vars, strict=strict, linked_root=linked_root),
            vars,
        )

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
        """target/: artifacts and, by default, the database. It may lead
        elsewhere only where the environment allows (reach.check_target)."""
        from segtool.project import reach

        return reach.check_target(self.loaded.roots, self.root / "target")

    def graph(self) -> BuiltGraph:
        if self._built is None:
            self._built = build_graph(self.loaded, strict=True)
        return self._built

    def pii_columns(self) -> dict[str, set[str]]:
        """model -> its PII columns (marked there or upstream), from the graph."""
        if self._pii is None:
            from segtool.compile.checks import pii_columns

            self._pii = {m: set(c) for m, c in pii_columns(self.loaded, self.graph()).items()}
        return self._pii

    def state_manifest(self, state_dir: str | Path) -> dict:
        from segtool.compile.artifacts import read_manifest

        p = Path(state_dir)
        return read_manifest(p if p.is_absolute() else Path.cwd() / p)

    # ------------------------------------------------------------------ commands
    def validate(
        self, *, check_encoders: bool = True, reuse_bind: bool = False, remember_bind: bool = False
    ) -> list[ProjectError]:
        """Every problem found, without writing anything or loading a model.
        `reuse_bind`: skip binding when nothing it depends on changed since a
        check that found no problem and was remembered (`remember_bind`: in
        target/, compile/bind_cache.py)."""
        from segtool.compile import bind_cache

        errors = list(self.loaded.errors)
        built = build_graph(self.loaded, strict=False)
        errors += built.errors
        if not built.errors:
            self._built = built  # reused by graph(): compile every model once
        if not any("cycle" in e.message for e in built.errors):
            from segtool.compile.checks import bind_models

            cached = (reuse_bind or remember_bind) and not errors
            keys = bind_cache.BindKeys(self.loaded, built) if cached else None
            if not (keys and reuse_bind and keys.already_bound(self.target_dir)):
                bound = bind_models(self.loaded, built)
                errors += bound.errors
                if keys and remember_bind and not errors:
                    keys.remember(self.target_dir)
            elif keys.refreshed and remember_bind:  # the same schemas: keep the files' new key
                keys.remember(self.target_dir)
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

    def check(self, *, remember: bool = True) -> None:
        """validate() before a command reads or writes data; `remember=False`
        for one that writes nothing (a dry run)."""
        errors = self.validate(check_encoders=False, reuse_bind=True, remember_bind=remember)
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

        try:
            self.check()
        except ProjectErrors:
            # a bind error's hint sends the user to the compiled SQL: write
            # every model that compiles, then report
            for cm in build_graph(self.loaded, strict=False).compiled.values():
                write_sql(
                    self.target_dir, "compiled", cm.path, self.loaded.secrets.mask(cm.portable_sql)
                )
            raise
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
        elif (self.target_dir / "samples").is_dir():  # none asked: old ones would read as current
            shutil.rmtree(self.target_dir / "samples", ignore_errors=True)
        man = manifest(self.loaded, built.graph)
        write_json(self.target_dir / "manifest.json", man, self.loaded.secrets)
        man["_compiled_dir"] = str(compiled_dir)
        man["_selected"] = len(nodes)
        man["_notes"] = notes
        return man

    def encoders(self, device: str | None = None, con=None):
        """The encoders of this project: one builder, one fingerprint per encoder
        for every command (encoders/builder.py); with `con`, fingerprinting as
        that database keys its vectors and fits (state/rekey.py)."""
        from segtool.encoders.builder import Encoders

        encoders = Encoders(self.loaded, device=device)
        return encoders.follow(con) if con is not None else encoders

    def plan(self, **opts):
        """What `run(**opts)` would do, step by step (a frozen Plan); writes nothing."""
        from segtool.execute.context import RunOptions
        from segtool.execute.runner import Runner

        self.check(remember=False)
        return Runner(self, RunOptions(**opts)).plan()

    def run(self, reporter=None, **opts):
        """Run the plan; returns a RunResult (also target/run_results.json)."""
        from segtool.compile.artifacts import manifest, write_json
        from segtool.execute.context import RunOptions
        from segtool.execute.runner import Runner

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

    def connect(self, read_only: bool = True, **kw):
        """The project's database (or `database=`). Its own database must be
        this project's: `show` and `test` read another project's segments
        and passed its tests (only `run` checked)."""
        from segtool.state.db import check_owner, connect

        con = connect(self.loaded, read_only=read_only, **kw)
        if kw.get("database") is None:
            try:
                check_owner(con, self.loaded)
            except BaseException:
                con.close()
                raise
        return con

    # ------------------------------------------------------------------ results
    def segments(self, name: str):
        """The current segment table of a segmentation, as a polars DataFrame."""
        from segtool.execute.segment.store import read_segments

        return read_segments(self, name)

    def history(self, name: str):
        from segtool.execute.segment.store import read_history

        return read_history(self, name)

    def render(self, text: str, user: str) -> str:
        """One user's text, rendered with the current template."""
        from segtool.execute.render import render_one

        return render_one(self, text, user)

    def clean_cache(self) -> dict:
        """Drop cached vectors no current text and encoder use."""
        from segtool.execute.embed import clean_cache

        return clean_cache(self)

    def clean_orphans(self) -> list:
        """Drop the tables of models, texts and segmentations the project no
        longer defines; returns what was dropped (state/orphans.py)."""
        from segtool.state.db import has_state, rollback
        from segtool.state.orphans import drop_orphans, find_orphans

        if not self.loaded.database_path.exists():  # connecting would create an empty one
            return []
        con = self.connect(read_only=False)
        try:
            if not has_state(con):
                return []
            con.execute("BEGIN")
            try:
                found = find_orphans(con, set(self.graph().graph.nodes))
                drop_orphans(con, found)
                con.execute("COMMIT")
            except BaseException:
                rollback(con)
                raise
            return found
        finally:
            con.close()

    def clean_target(self) -> list[str]:
        removed = []
        for sub in ("compiled", "run", "samples", "report"):
            path = self.target_dir / sub
            if not os.path.lexists(path):
                continue
            # a link goes, not what it leads to (rmtree refused links, and
            # `removed target/report` was printed over what stayed)
            try:
                if path.is_symlink() or not path.is_dir():
                    path.unlink()
                else:
                    shutil.rmtree(path)
            except OSError as exc:
                raise ProjectError(
                    f"cannot remove {self.relpath(path)}: {exc.strerror or exc}",
                    hint=f"removed before it: {', '.join(removed) or 'nothing'}",
                ) from exc
            removed.append(sub)
        return removed

    def profile(self, name: str, examples: int = 3) -> dict:
        """What `segtool show NAME` prints."""
        from segtool.report.profile import segmentation_profile

        return segmentation_profile(self, name, examples=examples)

    def export(
        self,
        name: str,
        *,
        fmt: str | None = None,
        output: str | Path | None = None,
        history: bool = False,
        force: bool = False,
    ) -> tuple[Path, int]:
        """Write a segment table (or its history) as Parquet or CSV: `fmt`,
        else by `output`'s extension, else Parquet. Returns (path, rows)."""
        if output:
            out = Path(output)
        else:
            from segtool.project.reach import check_inside

            fmt = fmt or "parquet"
            target = self.target_dir
            file = f"{name}{'_history' if history else ''}.{fmt}"
            out = check_inside(target, target / "export" / file)
        # the default file under target/export is segtool's own: refreshed without --force
        dest = check_output(self, out, force=force or output is None)
        fmt = output_format(out, fmt, "--format")
        df = self.history(name) if history else self.segments(name)
        with writing(out):
            dest.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "parquet":
                df.write_parquet(dest)
            else:
                df.write_csv(dest)
        return out, df.height

    def assign(self, name: str, input_path: str | Path, output: str | Path, *, force: bool = False):
        """Score the users of a file with the stored model; writes `output`
        (CSV or Parquet by extension), changes no state. Returns (path, rows)."""
        from segtool.execute.assign import assign_file

        dest = check_output(self, output, force=force)
        fmt = output_format(Path(output), None, None)
        df = assign_file(self, name, Path(input_path))
        with writing(output):
            dest.parent.mkdir(parents=True, exist_ok=True)  # as export does
            if fmt == "parquet":
                df.write_parquet(dest)
            else:
                df.write_csv(dest)
        return Path(output), df.height

    def report(self, output: str | Path | None = None, *, force: bool = False) -> Path:
        """The self-contained HTML report (segtool docs). An existing `output`
        is replaced when it is a report segtool wrote, else only with `force`
        (`-o data/users.csv` turned the data into HTML)."""
        from segtool.report.html import build_report

        if output is None:
            from segtool.project.reach import check_inside

            shown = check_inside(self.target_dir, self.target_dir / "report" / "index.html")
            # segtool's own file: refreshed without --force, but never written
            # through a link to the database (`ln -s ../segtool.duckdb` there)
            dest = check_output(self, shown, force=True)
        else:
            shown = Path(output)
            dest = check_output(self, output, force=force or _is_report(shown))
        page = build_report(self)
        with writing(shown):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(page, encoding="utf-8")
        return shown

    def diff(
        self, base: str | None = "HEAD", head: str | None = None, *, counts: bool = True
    ) -> dict:
        """What changing the project from BASE to HEAD does (git refs or folders)."""
        from segtool.diff.project import project_diff

        return project_diff(
            base,
            head,
            project_dir=self.root,
            target=self.loaded.target_name,
            vars=self._cli_vars,
            counts=counts,
            load=Project.load,
        )

    def data_diff(self, **kw) -> dict:
        """How segment assignments moved between two runs or two databases."""
        from segtool.diff.data import data_diff

        return data_diff(self, **kw)

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
    above = next((p for p in dest.parents if p.exists() and not p.is_dir()), None)
    if above is not None:  # was an internal NotADirectoryError
        raise ProjectError(f"cannot create {dest}: {above} is a file")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise ProjectError(
                f"{dest} exists and is not empty",
                hint="choose a new folder, or pass --force to add the template's missing files",
            )
        files = _template_files(src, ignore)
        for rel in files:
            # a link where the template writes: copying follows it (README.md
            # -> a file outside the folder was overwritten; a `data` link took
            # the sample files elsewhere), and a dangling one failed halfway
            link = next(
                (
                    p
                    for p in [*reversed(Path(rel).parents[:-1]), Path(rel)]
                    if (dest / p).is_symlink()
                ),
                None,
            )
            if link is not None:
                raise ProjectError(
                    f"{dest / link} is a symbolic link where the template writes",
                    hint="nothing was written; init writes only into real files and folders: "
                    "remove the link, or init into a new folder",
                )
            # a file where the template has a folder (or the other way round)
            # failed halfway through the copy, as an internal error
            clash = next(
                (
                    p
                    for p in [*reversed(Path(rel).parents[:-1]), Path(rel)]
                    if _clashes(src, dest, p)
                ),
                None,
            )
            if clash is not None:
                kind = "file" if (dest / clash).is_file() else "folder"
                raise ProjectError(
                    f"{dest / clash} is a {kind} where the template has a "
                    f"{'folder' if kind == 'file' else 'file'}",
                    hint="nothing was written; move it aside, or init into a new folder",
                )
        changed = sorted(
            rel
            for rel in files
            if (dest / rel).exists() and not filecmp.cmp(src / rel, dest / rel, shallow=False)
        )
        if changed and force < 2:
            shown = ", ".join(changed[:8]) + (
                f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            )
            raise ProjectError(
                f"{dest}: {counted(len(changed), 'file', verb=('differs', 'differ'))} from the template and would be overwritten: {shown}",
                hint="nothing was written; pass --force twice to overwrite them, or init into a new folder",
            )
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
    return dest


def _clashes(src: Path, dest: Path, rel: Path) -> bool:
    """Whether dest/rel exists as the other kind (file/folder) than src/rel."""
    there = dest / rel
    return there.exists() and there.is_dir() != (src / rel).is_dir()


def _template_files(src: Path, ignore) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        skip = ignore(dirpath, dirnames + filenames)
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            if f not in skip:
                out.append((Path(dirpath) / f).relative_to(src).as_posix())
    return out


def _is_report(path: Path) -> bool:
    """Whether `path` is an HTML report `segtool docs` wrote (its generator tag)."""
    try:
        with open(path, "rb") as f:
            return b'<meta name="generator" content="segtool docs">' in f.read(4096)
    except OSError:
        return False


_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def output_format(path: Path, fmt: str | None, option: str | None) -> str:
    """The format to write `path` in: `fmt` when given (`option` names where
    it came from), else by the file's extension. A .parquet file written as
    CSV (or the reverse) read as garbage in the next tool, and any other
    extension silently became CSV."""
    by_name = _FORMATS.get(path.suffix.lower())
    if fmt and by_name and fmt != by_name:
        raise ProjectError(
            f"{option} {fmt} does not match {path.name}, a {by_name} file name",
            hint=f"name the file *.{fmt}, or drop {option}",
        )
    if fmt or by_name:
        return fmt or by_name
    choice = f" (or pass {option} csv|parquet)" if option else ""
    raise ProjectError(
        f"cannot tell the format of {path.name} from its name",
        hint=f"name it *.csv or *.parquet{choice}",
    )


@contextmanager
def writing(path: str | Path):
    """An output the user named that cannot be written (a read-only folder,
    a file where a folder would be) is their error, not an internal one."""
    try:
        yield
    except OSError as exc:
        raise ProjectError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="choose another file with -o",
        ) from exc


def check_output(project: Project, path: str | Path, *, force: bool) -> Path:
    """Where `export` / `assign` / `docs` may write (the path to write to,
    symlinks resolved): never over the project database or its WAL, under
    any name (a symlink, a hard link: `ln target/segtool.duckdb x.parquet`
    turned the database into Parquet), and over an existing file only with
    --force."""
    out = Path(path).resolve()
    db = project.loaded.database_path.resolve()

    def is_database(p: Path) -> bool:
        try:
            return p.exists() and out.exists() and os.path.samefile(p, out)
        except OSError:
            return False

    guarded = (db, Path(str(db) + ".wal"))
    if out in guarded or any(is_database(p) for p in guarded):
        raise ProjectError(
            f"refusing to write over the project database {project.relpath(db)}",
            hint="write the output somewhere else",
        )
    if out.exists() and not force:
        raise ProjectError(
            f"{path} exists", hint="pass --force to overwrite it, or choose another file"
        )
    return out
