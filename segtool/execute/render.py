"""Texts: render a template once per user, incrementally.

The rendered texts of TEXT live in `_segtool.texts__TEXT` with a hash of the
model row each was rendered from. When the template is unchanged, only users
whose row hash changed (or who are new) are rendered again; users gone from
the model are deleted. Rows stream through in batches; nothing holds every
user in a Python list."""

from __future__ import annotations

import time
from pathlib import Path

from segtool.compile.sql import quote_ident, relation
from segtool.errors import ProjectError
from segtool.execute.context import StepResult
from segtool.execute.texts import model_rows, render_rows, rendered_batch, text_renderer
from segtool.project import reach
from segtool.state.db import table_exists
from segtool.state.result import one
from segtool.words import counted

BATCH = 20_000


def execute_text(ctx, step) -> StepResult:
    """Render the users the plan put in work_table('text', NAME) and write
    their texts (through the workspace: the texts table, or a dry-run overlay).
    Large work sets render on every CPU (execute/render_pool.py)."""
    t0 = time.perf_counter()
    if step.action == "skip":
        return StepResult.of(step)
    from segtool.execute.render_pool import job_for, render_batch, render_parallel, workers_for
    from segtool.state.frames import registered
    from segtool.state.tables import work_table

    proj = ctx.loaded
    spec = proj.texts[step.name]
    con = ctx.con
    ws = ctx.workspace
    k = quote_ident(proj.key)
    work = work_table("text", spec.name)
    stored = ws.texts(spec.name)
    key_type = con.execute(f"DESCRIBE SELECT {k} FROM {work}").fetchall()[0][1]
    rendered = quote_ident(f"__segtool_rendered_{spec.name}")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {rendered} ({k} {key_type}, row_hash UBIGINT,
        text_hash VARCHAR, text VARCHAR, n_chars INTEGER, truncated BOOLEAN)"""
    )
    n_work = one(con.execute(f"SELECT count(*) FROM {work}"))[0]

    def batches():
        for lo in range(1, n_work + 1, BATCH):
            yield con.sql(
                f"SELECT * EXCLUDE (__rn, __new) FROM {work} WHERE __rn >= {lo} AND __rn < {lo + BATCH}"
            ).to_arrow_table()

    workers = workers_for(n_work)
    if workers > 1:
        results = render_parallel(job_for(proj, spec), batches(), workers)
    else:
        render = text_renderer(proj, spec)
        # a dry run embeds nothing: it needs Polars only
        later = ("polars",) if ws.dry else _later_imports(ctx, spec.name)
        results = (
            (rendered_batch(out), t, e)
            for out, t, e in (render_batch(proj, spec, b, render, later) for b in batches())
        )
    n_trunc = n_empty = 0
    with ctx.reporter.progress(f"render {spec.name}", n_work, "users") as bar:
        for table, t, e in results:
            n_trunc += t
            n_empty += e
            with registered(con, "__segtool_batch", table):
                con.execute(f"INSERT INTO {rendered} SELECT * FROM __segtool_batch")
            bar.advance(len(table))
    texts_changed = 0
    if stored is not None:
        texts_changed = one(
            con.execute(
                f"SELECT count(*) FROM {rendered} r JOIN {stored} t ON t.{k} = r.{k} WHERE t.text_hash <> r.text_hash"
            )
        )[0]
    ws.write_texts(
        spec.name, rendered, full=step.action in ("create", "rebuild"), run_id=ctx.run_id
    )
    # temporary tables live until the connection closes: at 1M users these two
    # held ~1 GB through the embedding and segmentation stages (a dry run's
    # texts are a view over `rendered`, which it keeps)
    con.execute(f"DROP TABLE {work}")
    if not ws.dry:
        con.execute(f"DROP TABLE {rendered}")
    if n_trunc:
        ctx.reporter.warn(
            f"text '{spec.name}': {counted(n_trunc, 'text')} cut to max_chars={spec.max_chars}"
        )
    if n_empty:
        ctx.reporter.warn(f"text '{spec.name}': {counted(n_empty, 'empty text')}")
    return StepResult.of(
        step,
        time.perf_counter() - t0,
        texts_changed=int(texts_changed),
        truncated=n_trunc,
        empty=n_empty,
    )


def _later_imports(ctx, text_name: str) -> tuple[str, ...]:
    """Modules the run imports after rendering TEXT: Polars (the texts are
    written through it) and the libraries of the encoders that embed TEXT.
    Rendering on two CPUs imports them while the other CPU renders."""
    mods = ["polars"]
    for node in ctx.graph.by_kind("embedding"):
        if node.data["text"] == text_name:
            try:
                mods += getattr(ctx.encoders.get(node.data["encoder"]), "imports", ())
            except Exception:  # noqa: BLE001 - an encoder this run may not use: its step says why
                pass
    return tuple(dict.fromkeys(mods))


# ----------------------------------------------------------------------------- samples / one user


def _scratch_models(project):
    """An in-memory DuckDB, fenced like a run's, with every model as a view:
    `segtool render` runs the project's SQL, as `run` does."""
    import duckdb

    from segtool.state.db import setup_connection

    built = project.graph()
    con = duckdb.connect(":memory:")
    setup_connection(con, project.loaded, threads=2)
    for uid in built.graph.order():
        n = built.graph[uid]
        if n.kind == "model":
            con.execute(f"CREATE VIEW {relation(n.name)} AS {built.compiled[n.name].sql}")
    return con


def _model_connection(project):
    """The project database when it holds the models, else a scratch one."""
    from segtool.errors import SegtoolError

    if project.loaded.database_path.exists():
        try:
            return project.connect(read_only=True)
        except SegtoolError:
            pass
    return _scratch_models(project)


def write_samples(project, text_nodes, n: int) -> tuple[list[Path], list[str]]:
    """Sample texts rendered from the models a run has built. `compile` runs no
    model SQL of its own (it is safe on an untrusted pull request), so without
    a built database there are no samples, and the notes say so."""
    from segtool.errors import SegtoolError

    if not text_nodes:
        return [], []
    db = project.loaded.database_path
    if not db.exists():
        return [], [f"no sample texts: no database at {project.relpath(db)} (run first)"]
    try:
        # compile is safe on a pull request, which can point profiles.yml at
        # any database on the machine: samples come only from one within reach
        reach.check_reach(project.loaded.roots, db, "the database")
        con = project.connect(read_only=True)
    except SegtoolError as exc:
        return [], [f"no sample texts: {exc.message}"]
    out: list[Path] = []
    notes: list[str] = []
    try:
        for node in text_nodes:
            spec = node.spec
            if _view_exists(con, spec.model):
                # a view runs SQL the database holds (a committed file's view
                # summed range(10^14) until killed): compile runs none
                notes.append(
                    f"no sample texts for '{spec.name}': model '{spec.model}' is a view, and "
                    f"compile runs no model SQL (`segtool render {spec.name} --user <key>` shows one)"
                )
                continue
            if not table_exists(con, "main", spec.model):
                notes.append(
                    f"no sample texts for '{spec.name}': model '{spec.model}' is not built yet"
                )
                continue
            generated = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' "
                "AND table_name = ? AND is_generated = 'ALWAYS'",
                [spec.model],
            ).fetchall()
            if generated:
                # segtool never makes one: a committed database's generated
                # column ran its expression for every row read (an hour a row)
                notes.append(
                    f"no sample texts for '{spec.name}': model '{spec.model}' has a generated "
                    f"column ({generated[0][0]}) segtool did not make, and compile runs no SQL"
                )
                continue
            render = text_renderer(project.loaded, spec)
            rows = model_rows(
                con.sql(
                    f"SELECT * FROM {relation(spec.model)} ORDER BY {quote_ident(project.loaded.key)} LIMIT {int(n)}"
                ).to_arrow_table()
            )
            rendered, _, _ = render_rows(project.loaded, spec, rows, render)
            target = project.target_dir
            path = reach.check_inside(target, target / "samples" / f"{spec.name}.md")
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [
                f"# {spec.name} — {counted(len(rendered), 'sample')} from {spec.model} (template {spec.template})",
                "",
            ]
            for r in rendered:
                lines += [f"## {project.loaded.key} = {r[0]}", "", r[3], ""]
            path.write_text("\n".join(lines), encoding="utf-8")
            out.append(path)
    finally:
        con.close()
    return out, notes


def _view_exists(con, name: str) -> bool:
    from segtool.state.db import relation_exists

    return relation_exists(con, "main", name) == "view"


def render_one(project, text_name: str, user: str) -> str:
    from segtool.errors import DataError, did_you_mean

    proj = project.loaded
    if text_name not in proj.texts:
        raise ProjectError(f"no text named '{text_name}'", hint=did_you_mean(text_name, proj.texts))
    spec = proj.texts[text_name]
    import duckdb

    con = _model_connection(project)
    try:
        key = quote_ident(proj.key)
        # read in the key's type, as score and assign read keys ('01' is user 1;
        # compared as text it was "no user_id = '01'")
        rows = model_rows(
            con.sql(
                f"SELECT * FROM {relation(spec.model)} WHERE {key} = ?", params=[str(user)]
            ).to_arrow_table()
        )
    except duckdb.ConversionException:
        rows = []  # not a value of the key's type: no such user
    finally:
        con.close()
    if not rows:
        raise DataError(f"no {proj.key} = {user!r} in model '{spec.model}'")
    out, _, _ = render_rows(proj, spec, rows, text_renderer(proj, spec))
    return out[0][3]
