"""Texts: render a template once per user, incrementally.

The rendered texts of TEXT live in `_segtool.texts__TEXT` with a hash of the
model row each was rendered from. When the template is unchanged, only users
whose row hash changed (or who are new) are rendered again; users gone from
the model are deleted. Rows stream through in batches; nothing holds every
user in a Python list."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from segtool.compile.jinja import RenderTimeout, make_env, renderer, time_limit
from segtool.compile.sql import quote_ident, relation
from segtool.errors import ProjectError
from segtool.state.db import STATE, node_states, table_exists
from segtool.state.result import one

BATCH = 20_000


def text_table(name: str) -> str:
    return f"{STATE}.{quote_ident('texts__' + name)}"


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class _TemplateLoader(jinja2.BaseLoader):
    """Loads `{% include %}`d templates from the project's already-read templates."""

    def __init__(self, templates: Mapping[str, Any]):
        self.templates = templates

    def get_source(self, environment, template):
        tf = self.templates.get(template)
        if tf is None:
            raise jinja2.TemplateNotFound(template)
        return tf.text, tf.path, lambda: True


def text_renderer(proj, text_spec) -> Callable[[Mapping[str, Any]], str]:
    from segtool.compile.sql import make_var

    env = make_env(_TemplateLoader(proj.templates))
    env.globals.update(var=make_var(proj), env_var=proj.env_var)
    tf = proj.templates[text_spec.template]
    return renderer(env, tf.text, tf.path)


def truncate(text: str, max_chars: int) -> tuple[str, bool]:
    if len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars * 0.8:  # end on a word boundary when one is near
        cut = cut[:space]
    return cut.rstrip(), True


def render_rows(proj, spec, rows: list[dict], render) -> tuple[list[tuple], int, int]:
    """Render a batch: (key, row_hash, text_hash, text, n_chars, truncated).
    Each user's render is bounded in time (compile/jinja.py)."""
    key = proj.key
    out = []
    n_trunc = n_empty = 0
    with time_limit() as rearm:
        for row in rows:
            rh = row.pop("__row_hash", None)  # present when rendering for the texts table
            ctx = dict(row)
            ctx["key"] = row[key]
            rearm()
            try:
                text = render(ctx)
            except ProjectError as exc:
                exc.message = f"text '{spec.name}', {key} {row[key]!r}: {exc.message}"
                raise
            except RenderTimeout as exc:  # fired between two renders
                raise ProjectError(
                    f"text '{spec.name}', {key} {row[key]!r}: rendering {exc}"
                ) from exc
            text = " ".join(text.split())  # templates are multi-line; the text is one line
            text, cut = truncate(text, spec.max_chars)
            n_trunc += cut
            n_empty += not text
            out.append((row[key], rh, text_hash(text), text, len(text), cut))
    return out, n_trunc, n_empty


def run_texts(runner, con, uids: list[str]) -> None:
    from segtool.state.db import record_nodes

    graph = runner.project.graph().graph
    prev = node_states(con)
    for uid in uids:
        node = graph[uid]
        t0 = time.perf_counter()
        stats = render_text(runner, con, node, prev.get(uid))
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        from segtool.execute.run import NodeResult

        runner.results.append(
            NodeResult(
                uid,
                "text",
                "success",
                stats["mode"],
                stats["users"],
                stats["seconds"],
                detail=stats,
            )
        )
        runner.summary.setdefault("texts", {})[node.name] = stats
        msg = (
            f"  text  {node.name:<28} {stats['users']:,} users: {stats['new']:,} new, {stats['changed']:,} changed, "
            f"{stats['removed']:,} removed, {stats['unchanged']:,} unchanged in {stats['seconds']:.2f}s"
        )
        runner.rep.line(msg)
        if stats["truncated"]:
            runner.rep.warn(
                f"text '{node.name}': {stats['truncated']:,} text(s) cut to max_chars={node.spec.max_chars}"
            )
        if stats["empty"]:
            runner.rep.warn(f"text '{node.name}': {stats['empty']:,} empty text(s)")
        record_nodes(con, [node], runner.run_id)


def render_text(runner, con, node, prev_state: dict | None) -> dict:
    import pyarrow as pa

    proj = runner.proj
    spec = node.spec
    key = quote_ident(proj.key)
    model = relation(spec.model)
    table = text_table(spec.name)
    render = text_renderer(proj, spec)
    exists = table_exists(con, STATE, "texts__" + spec.name)
    incremental = (
        exists
        and prev_state is not None
        and prev_state["data_hash"] == node.data_hash
        and not runner.opts.full_refresh
    )

    key_type = one(con.execute(f"SELECT typeof({key}) FROM {model} LIMIT 1"))
    key_type = key_type[0] if key_type else "VARCHAR"
    total = one(con.execute(f"SELECT count(*) FROM {model}"))[0]
    work = quote_ident(f"__segtool_render_{spec.name}")
    if incremental:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {work} AS
            SELECT m.*, hash(m) AS __row_hash, row_number() OVER () AS __rn, t.{key} IS NULL AS __new
            FROM {model} m LEFT JOIN {table} t ON m.{key} = t.{key}
            WHERE t.{key} IS NULL OR t.row_hash <> hash(m)"""
        )
        removed = one(
            con.execute(
                f"SELECT count(*) FROM {table} WHERE {key} NOT IN (SELECT {key} FROM {model})"
            )
        )[0]
        con.execute(f"DELETE FROM {table} WHERE {key} NOT IN (SELECT {key} FROM {model})")
        con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {work})")
        mode = "incremental"
    else:
        removed = 0
        if exists:  # keep the old hashes to report what the re-render changed
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE __segtool_old_texts AS SELECT {key}, text_hash FROM {table}"
            )
            removed = one(
                con.execute(
                    f"SELECT count(*) FROM {table} WHERE {key} NOT IN (SELECT {key} FROM {model})"
                )
            )[0]
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {work} AS SELECT m.*, hash(m) AS __row_hash, row_number() OVER () AS __rn, true AS __new FROM {model} m"
        )
        con.execute(
            f"""CREATE OR REPLACE TABLE {table} ({key} {key_type}, row_hash UBIGINT, text_hash VARCHAR,
            text VARCHAR, n_chars INTEGER, truncated BOOLEAN, run_id INTEGER)"""
        )
        mode = "full" if not exists else "rerender"
    n_work, n_new = one(con.execute(f"SELECT count(*), count(*) FILTER (WHERE __new) FROM {work}"))
    n_trunc = n_empty = 0
    with runner.rep.progress(f"render {spec.name}", n_work) as bar:
        for lo in range(1, n_work + 1, BATCH):
            rows = (
                con.sql(
                    f"SELECT * EXCLUDE (__rn, __new) FROM {work} WHERE __rn >= {lo} AND __rn < {lo + BATCH}"
                )
                .to_arrow_table()
                .to_pylist()
            )
            out, t, e = render_rows(proj, spec, rows, render)
            n_trunc += t
            n_empty += e
            batch = pa.table(
                {
                    "k": [r[0] for r in out],
                    "row_hash": pa.array([r[1] for r in out], pa.uint64()),
                    "text_hash": [r[2] for r in out],
                    "text": [r[3] for r in out],
                    "n_chars": pa.array([r[4] for r in out], pa.int32()),
                    "truncated": [r[5] for r in out],
                }
            )
            con.register("__segtool_batch", batch)
            con.execute(
                f"INSERT INTO {table} SELECT k, row_hash, text_hash, text, n_chars, truncated, {int(runner.run_id)} FROM __segtool_batch"
            )
            con.unregister("__segtool_batch")
            bar.advance(len(out))
    con.execute(f"DROP TABLE {work}")
    n_changed = n_work - n_new
    unchanged = total - n_work
    if mode == "rerender":
        # everyone was re-rendered; count against the texts of the previous run
        n_new, n_changed = one(
            con.execute(
                f"""SELECT count(*) FILTER (WHERE o.{key} IS NULL), count(*) FILTER (WHERE o.text_hash <> t.text_hash)
            FROM {table} t LEFT JOIN __segtool_old_texts o ON o.{key} = t.{key}"""
            )
        )
        unchanged = total - n_new - n_changed
        con.execute("DROP TABLE __segtool_old_texts")
    return {
        "mode": mode,
        "users": int(total),
        "rendered": int(n_work),
        "new": int(n_new),
        "changed": int(n_changed),
        "removed": int(removed),
        "unchanged": int(unchanged),
        "truncated": n_trunc,
        "empty": n_empty,
    }


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
        con = project.connect(read_only=True)
    except SegtoolError as exc:
        return [], [f"no sample texts: {exc.message}"]
    out: list[Path] = []
    notes: list[str] = []
    try:
        for node in text_nodes:
            spec = node.spec
            if not table_exists(con, "main", spec.model) and not _view_exists(con, spec.model):
                notes.append(
                    f"no sample texts for '{spec.name}': model '{spec.model}' is not built yet"
                )
                continue
            render = text_renderer(project.loaded, spec)
            rows = (
                con.sql(
                    f"SELECT * FROM {relation(spec.model)} ORDER BY {quote_ident(project.loaded.key)} LIMIT {int(n)}"
                )
                .to_arrow_table()
                .to_pylist()
            )
            rendered, _, _ = render_rows(project.loaded, spec, rows, render)
            path = project.target_dir / "samples" / f"{spec.name}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [
                f"# {spec.name} — {len(rendered)} sample(s) from {spec.model} (template {spec.template})",
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
    con = _model_connection(project)
    try:
        key = quote_ident(proj.key)
        rows = (
            con.sql(
                f"SELECT * FROM {relation(spec.model)} WHERE CAST({key} AS VARCHAR) = ?",
                params=[str(user)],
            )
            .to_arrow_table()
            .to_pylist()
        )
    finally:
        con.close()
    if not rows:
        raise DataError(f"no {proj.key} = {user!r} in model '{spec.model}'")
    out, _, _ = render_rows(proj, spec, rows, text_renderer(proj, spec))
    return out[0][3]
