"""Static and bound checks for `segtool validate` (and before `run` writes).

SQL is bound, not run: every model becomes an empty table of its described
result schema in a fenced in-memory DuckDB, in dependency order, so DuckDB
resolves tables, columns and types against the real source files without
executing any model. Nothing is written."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb

from segtool.compile.jinja import compile_template, default_env
from segtool.compile.predicates import bind_predicate, compile_predicate
from segtool.compile.sql import compile_model, quote_ident, relation, source_sql
from segtool.errors import ProjectError, did_you_mean
from segtool.graph.build import BuiltGraph
from segtool.project.loader import LoadedProject
from segtool.state.db import setup_connection
from segtool.words import counted

# names a text template may use besides its model's columns (see execute/render.py)
TEMPLATE_GLOBALS = {
    "loop",
    "range",
    "dict",
    "cycler",
    "joiner",
    "namespace",
    "key",
    "var",
    "env_var",
}


@dataclass
class BoundProject:
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> column -> type
    errors: list[ProjectError] = field(default_factory=list)


def _relabel_line(msg: str, compiled: int, source: int) -> str:
    """DuckDB's `LINE 23: <sql>` and its caret line, as `line 25: <sql>` (the
    model file's line), the caret moved by the difference in width."""
    old, new = f"LINE {compiled}: ", f"line {source}: "
    out = []
    shift = len(new) - len(old)
    after = False
    for ln in msg.splitlines():
        if ln.startswith(old):
            out.append(new + ln[len(old) :])
            after = True
            continue
        if after and ln.strip().startswith("^"):
            ln = (" " * shift + ln) if shift >= 0 else ln[-shift:]
        after = False
        out.append(ln)
    return "\n".join(out)


def _line_of(msg: str) -> int | None:
    m = re.search(r"LINE (\d+):", msg)
    return int(m.group(1)) if m else None


def empty_relation(con: duckdb.DuckDBPyConnection, name: str, select_sql: str) -> dict[str, str]:
    """Create `name` as an empty table with the result schema of `select_sql`.

    The query is bound, never executed (DESCRIBE of a SELECT only binds it;
    the guard has checked it is one SELECT), so a model's SQL does nothing here."""
    cols = {r[0]: r[1] for r in con.execute(f"DESCRIBE {select_sql}").fetchall()}
    # a column that is NULL everywhere has type "NULL", which a table cannot hold
    null_type = '"NULL"'
    defs = ", ".join(
        f"{quote_ident(c)} {'INTEGER' if t == null_type else t}" for c, t in cols.items()
    )
    con.execute(f"CREATE TABLE {name} ({defs})")
    return cols


def bind_models(proj: LoadedProject, built: BuiltGraph) -> BoundProject:
    """Bind every model against schema-only copies of its sources and parents.

    Each source is described once (its files are sniffed for a schema); each
    model then becomes an empty table of its result schema, so binding a
    downstream model never recomputes or re-reads anything upstream. No model
    statement is executed, and the in-memory connection is fenced like a
    run's (state/db.py), so a model cannot reach outside the project here."""
    out = BoundProject()
    con = duckdb.connect(":memory:")
    try:
        con.execute("CREATE SCHEMA __src")
        try:
            setup_connection(con, proj, threads=1)
        except ProjectError as exc:
            out.errors.append(exc)
            return out
        stubs: dict[tuple[str, str], str] = {}
        # a model that did not compile is reported already: what reads it
        # would only add "table does not exist"
        broken: set[str] = {f"model.{name}" for name in built.failed}
        for (s, t), st in proj.sources.items():
            stub = f"__src.{quote_ident(s + '__' + t)}"
            try:
                cols = empty_relation(con, stub, f"SELECT * FROM {source_sql(st, proj.root)}")
                if list(cols) == ["column0"]:  # what DuckDB makes of a CSV with no header
                    _check_not_empty(st, proj.root)
                elif len(cols) == 1:
                    _check_one_column(st, proj.root, next(iter(cols)))
                stubs[(s, t)] = stub
            except ProjectError as exc:  # what segtool found wrong with the data
                broken.add(f"source.{s}.{t}")
                out.errors.append(
                    ProjectError(
                        f"source '{s}.{t}' cannot be read: {exc.message}",
                        path=st.table.file,
                        line=st.table.line,
                        hint=exc.hint or _source_hint(exc.message),
                    )
                )
            except duckdb.Error as exc:
                broken.add(f"source.{s}.{t}")
                first = " ".join(
                    ln.strip() for ln in str(exc).strip().splitlines()[:4] if ln.strip()
                )
                out.errors.append(
                    ProjectError(
                        f"source '{s}.{t}' cannot be read: {first}",
                        path=st.table.file,
                        line=st.table.line,
                        hint=_source_hint(str(exc)),
                    )
                )
        for uid in built.graph.order():
            node = built.graph[uid]
            if node.kind != "model":
                continue
            if any(d in broken for d in node.depends_on):
                broken.add(uid)
                continue
            model = proj.models[node.name]
            cm = None
            try:
                cm = compile_model(proj, model, source_override=stubs)
                out.columns[cm.name] = empty_relation(con, relation(cm.name), cm.sql)
                if cm.config.materialized == "incremental":
                    # bind the is_incremental() branch too, against the empty `this`
                    inc = compile_model(proj, model, incremental=True, source_override=stubs)
                    inc_cols = out.columns[cm.name]
                    if inc.sql != cm.sql:
                        rows = con.execute(f"DESCRIBE {inc.sql}").fetchall()
                        inc_cols = {r[0]: r[1] for r in rows}
                    _check_incremental_columns(cm, out.columns[cm.name], inc_cols)
                    _check_delete_not_in(cm, out.columns)
            except ProjectError as exc:
                broken.add(uid)
                out.errors.append(exc)
            except duckdb.Error as exc:
                broken.add(uid)
                out.errors.append(_bind_error(exc, node.name, model, cm))
        _check_segments(proj, built, con, out)
        _check_column_tests(proj, out)
        _check_pii(proj, built, out)
        _check_association_tests(proj, built, out)
    finally:
        con.close()
    return out


def _check_not_empty(st, root) -> None:
    """A source read as a lone `column0` whose files are all empty (0 bytes):
    every model then failed to bind with 'column "user_id" not found', never
    naming the file. (An empty file with declared columns is a valid empty
    table, and reads as one.)"""
    from pathlib import Path

    from segtool.compile.sql import source_files

    sizes = [Path(f).stat().st_size for f in source_files(st, root) or [] if Path(f).is_file()]
    if sizes and not any(sizes):
        path = st.table.path
        which = path if len(sizes) == 1 else f"every file of {path}"
        raise ProjectError(
            f"{which} is empty (0 bytes): without a header row its columns are unknown"
        )


def _check_one_column(st, root, name: str) -> None:
    """A CSV read as one column named like its whole header line
    ('user_id,signup_at,country'): DuckDB found no delimiter because the rows
    do not all have as many fields (one short row at the end did it). Every
    model then failed to bind with 'column "signup_at" not found', blaming
    the model. Names the first such row."""
    import csv
    from pathlib import Path

    from segtool.compile.sql import infer_format, source_files

    if (st.table.format or infer_format(st.table.path or "")) != "csv":
        return
    if any(k in st.table.options for k in ("delim", "sep", "delimiter")):
        return  # a delimiter set on purpose: the one column is what was asked
    delim = max(",;\t|", key=name.count)
    if name.count(delim) == 0:
        return
    where, widest = "", 0
    for file in source_files(st, root) or []:
        try:
            with open(file, newline="", encoding="utf-8", errors="replace") as fh:
                rows = csv.reader(fh, delimiter=delim)
                width = len(next(rows, []))
                widest = max(widest, width)
                for row in rows:
                    if row and len(row) != width:
                        where = f" ({Path(file).name} line {rows.line_num}: {counted(len(row), 'field')}, the header has {width})"
                        break
        except OSError:
            continue
        if where:
            break
    if widest <= 1 and not where:
        return  # one column indeed (a quoted header may hold the delimiter)
    raise ProjectError(
        f"{st.table.path} was read as one column named {name[:60]!r}: its rows do not all "
        f"have the same number of fields, so no delimiter was found{where}",
        path=st.table.file,
        line=st.table.line,
        hint="fix the row, or set the reader's options on the source (e.g. `options: {delim: ',', null_padding: true}`)",
    )


def _quoted(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _check_incremental_columns(cm, full: dict[str, str], inc: dict[str, str]) -> None:
    """The unique_key columns are columns of the model, and both branches
    return the same columns: each failed only at the first merge (`Table "t"
    does not have a column named "oid"`, pointing at compiled SQL; `changed its
    columns`, whose --full-refresh hint held for one run)."""
    missing = [k for k in cm.config.unique_keys if k not in full]
    if missing:
        raise ProjectError(
            f"model '{cm.name}' config: unique_key {_quoted(missing)} is not a column of the model",
            path=cm.path,
            hint=did_you_mean(missing[0], full) or f"columns: {', '.join(list(full)[:12])}",
        )
    if set(full) != set(inc):
        only_full = sorted(set(full) - set(inc))
        only_inc = sorted(set(inc) - set(full))
        said = []
        if only_full:
            said.append(f"{', '.join(only_full)} only without it")
        if only_inc:
            said.append(f"{', '.join(only_inc)} only with it")
        raise ProjectError(
            f"model '{cm.name}': the is_incremental() branch returns other columns "
            f"than the full build ({'; '.join(said)})",
            path=cm.path,
            hint="both branches must return the same columns: a merge inserts the incremental rows into the table the full build made",
        )


def _check_delete_not_in(cm, columns: dict[str, dict[str, str]]) -> None:
    """The unique_key columns must be in the delete_not_in model too."""
    keep = cm.config.delete_not_in
    if keep is None or keep not in columns:
        return
    missing = [k for k in cm.config.unique_keys if k not in columns[keep]]
    if missing:
        raise ProjectError(
            f"model '{cm.name}' config: delete_not_in='{keep}' has no column {_quoted(missing)} of the unique_key",
            path=cm.path,
            hint=f"select the key in '{keep}' under the same name, or name another model",
        )


def _source_hint(msg: str) -> str:
    if "Permission Error" in msg:
        return (
            "the path is outside what the SQL fence allows: add it to `allow_paths` "
            "of the target in profiles.yml, and its folder to SEGTOOL_DATA_DIRS where "
            "segtool runs if it lies outside the project (docs/security.md)"
        )
    return "check `path`, `format` and reader `options` (relative paths start at the project root)"


def _bind_error(exc: duckdb.Error, name: str, model, cm) -> ProjectError:
    """A binding error at the line of the model file; the compiled line only
    as context when Jinja moved lines around."""
    msg = str(exc).strip()
    compiled_line = _line_of(msg)
    line = cm.source_line(compiled_line) if cm is not None else compiled_line
    if compiled_line is not None and line is not None:
        msg = _relabel_line(msg, compiled_line, line)
    lines = msg.splitlines() or [msg]
    rest = "\n".join("    " + ln for ln in lines[1:5] if ln.strip())
    hint = f"`segtool compile` writes the compiled SQL to target/compiled/{model.path}"
    if compiled_line is not None and line != compiled_line:
        # one line number in the message (the file's); the compiled one as context
        hint = f"that is line {compiled_line} of the compiled SQL; " + hint
    if "Permission Error" in msg:
        hint = (
            "the SQL fence keeps models inside the project's folders (not hidden ones, not "
            "files at its top) and the declared sources; read files through source(), or "
            "widen the fence: `allow_paths` in profiles.yml, within SEGTOOL_DATA_DIRS (docs/security.md)"
        )
    return ProjectError(
        f"model '{name}': {lines[0]}" + (f"\n{rest}" if rest else ""),
        path=model.path,
        line=line,
        hint=hint,
    )


def _check_segments(
    proj: LoadedProject, built: BuiltGraph, con: duckdb.DuckDBPyConnection, out: BoundProject
) -> None:
    cols = out.columns
    key = proj.key

    def model_ok(model: str) -> bool:
        return model in cols

    for name, fs in proj.features.items():
        if not model_ok(fs.model):
            continue
        have = cols[fs.model]
        if key not in have:
            out.errors.append(
                ProjectError(
                    f"features '{name}': model '{fs.model}' has no key column '{key}'",
                    path=fs.file,
                    line=fs.line,
                )
            )
        for col, c in fs.columns.items():
            if col not in have:
                out.errors.append(
                    ProjectError(
                        f"features '{name}': model '{fs.model}' has no column '{col}'",
                        path=fs.file,
                        line=fs.line,
                        hint=did_you_mean(col, have),
                    )
                )
            elif c.type == "numeric" and not _numeric(have[col]):
                out.errors.append(
                    ProjectError(
                        f"features '{name}': column '{col}' is {have[col]}, not numeric",
                        path=fs.file,
                        line=fs.line,
                        hint="mark it `type: categorical` or cast it in the model",
                    )
                )

    env = default_env()
    for name, tx in proj.texts.items():
        tf = proj.templates.get(tx.template)
        if tf is None:
            continue
        try:
            compile_template(env, tf.text, tf.path)
        except ProjectError as exc:
            out.errors.append(exc)
            continue
        if not model_ok(tx.model):
            continue
        have = cols[tx.model]
        if key not in have:
            out.errors.append(
                ProjectError(
                    f"text '{name}': model '{tx.model}' has no key column '{key}'",
                    path=tx.file,
                    line=tx.line,
                )
            )
        for var in sorted(template_names(env, tf.text) - set(have) - TEMPLATE_GLOBALS):
            out.errors.append(
                ProjectError(
                    f"template '{tx.template}' uses '{var}', which is not a column of model '{tx.model}'",
                    path=tf.path,
                    line=_first_line(tf.text, var),
                    hint=did_you_mean(var, have),
                )
            )

    for name, seg in proj.segmentations.items():
        where = f"segmentation '{name}'"
        base = seg.model or _first_input_model(proj, seg)
        if seg.is_rules and model_ok(seg.model) and key not in cols[seg.model]:
            out.errors.append(
                ProjectError(
                    f"{where}: model '{seg.model}' has no key column '{key}'",
                    path=seg.file,
                    line=seg.line,
                )
            )
        checks = []
        if seg.population:
            checks.append((base, seg.population, f"{where} population", seg, "population"))
        for rule in seg.rules:
            checks.append((seg.model, rule.when, f"{where} rule '{rule.segment}'", rule, "when"))
        for model, text, what, spec, text_of in checks:
            try:
                pred = compile_predicate(proj, text, what=what, spec=spec, field=text_of)
                if model and model_ok(model):
                    bind_predicate(con, model, pred)
            except ProjectError as exc:
                out.errors.append(exc)


def template_names(env, text: str) -> set[str]:
    """The names a template reads from its context (columns, `key`, globals)."""
    import jinja2.meta
    import jinja2.nodes

    ast = env.parse(text)
    assigned = {n.name for n in ast.find_all(jinja2.nodes.Name) if n.ctx in ("store", "param")}
    return jinja2.meta.find_undeclared_variables(ast) - assigned


def pii_columns(proj: LoadedProject, built: BuiltGraph) -> dict[str, dict[str, str]]:
    """model -> {column: where it is marked `pii: true`}.

    A column is PII where its model's YAML marks it, and also where a column of
    the same name is marked in any upstream source or model: a `select email`
    does not launder it. (Renamed columns must be marked again.)"""
    marked: dict[str, dict[str, str]] = {}
    for (s, t), st in proj.sources.items():
        marked[f"source.{s}.{t}"] = {
            c.name: f"{c.file}:{c.line}" for c in st.table.columns if c.pii
        }
    for name, m in proj.models.items():
        cols = m.props.columns if m.props is not None else []
        marked[f"model.{name}"] = {c.name: f"{c.file}:{c.line}" for c in cols if c.pii}
    out: dict[str, dict[str, str]] = {}
    graph = built.graph
    for name in proj.models:
        uid = f"model.{name}"
        if uid not in graph:
            continue
        found = dict(marked.get(uid, {}))
        for anc in graph.ancestors(uid):
            for col, where in marked.get(anc, {}).items():
                found.setdefault(col, where)
        out[name] = found
    return out


def _check_association_tests(proj: LoadedProject, built: BuiltGraph, out: BoundProject) -> None:
    """max_association / min_association name columns drivers can measure:
    a typo or a PII column passed validate and failed every `segtool test`
    as if the data were wrong."""
    tested = [
        s for s in proj.segmentations.values() if s.tests.max_association or s.tests.min_association
    ]
    if not tested:
        return
    from segtool.compile.segments import column_kind, feeding_models, hidden_columns

    pii = pii_columns(proj, built)
    for seg in tested:
        models = feeding_models(proj, seg)
        if any(m not in out.columns for m in models):
            continue  # a model that did not bind is reported already
        known: list[str] = []
        why: dict[str, str] = {}  # a column of the models that drivers leave out, and why
        for m, hidden in hidden_columns(proj, seg, pii).items():
            for col, typ in out.columns[m].items():
                kind = column_kind(typ)
                reason = (
                    "the key"
                    if col == proj.key
                    else f"PII, pii: true at {pii[m][col]}"
                    if col in hidden
                    else f"type {typ}"
                    if kind in (None, "list")
                    else None
                )
                for name in (col, f"{m}.{col}"):
                    if reason is None:
                        known.append(name)
                    else:
                        why.setdefault(name, reason)
        for test, bounds in (
            ("max_association", seg.tests.max_association),
            ("min_association", seg.tests.min_association),
        ):
            for col in bounds:
                if col in known:
                    continue
                what = (
                    f"a column drivers do not measure ({why[col]}): they measure numeric, date "
                    "and categorical columns that are not PII"
                    if col in why
                    else f"which is not a column of {', '.join(models)}"
                )
                out.errors.append(
                    ProjectError(
                        f"segmentation '{seg.name}' tests: {test} names '{col}', {what}",
                        path=seg.file,
                        line=seg.line,
                        hint=None if col in why else did_you_mean(col, dict.fromkeys(known)),
                    )
                )


def _check_pii(proj: LoadedProject, built: BuiltGraph, out: BoundProject) -> None:
    """PII columns reach a text (and so an embedding, a label, the report) or a
    feature set of a segmentation (its profile, show, the report) only where
    the text or segmentation declares them in `allow_pii`."""
    pii = pii_columns(proj, built)
    env = default_env()
    for name, tx in proj.texts.items():
        tf = proj.templates.get(tx.template)
        marked = pii.get(tx.model, {})
        if tf is None or not marked:
            continue
        try:
            used = template_names(env, tf.text)
        except Exception:  # noqa: BLE001 - syntax errors are reported by the text check
            continue
        if "key" in used and proj.key in marked:
            used.add(proj.key)
        for col in sorted((used & set(marked)) - set(tx.allow_pii)):
            out.errors.append(
                ProjectError(
                    f"template '{tx.template}' uses '{col}', a PII column of model '{tx.model}' "
                    f"(pii: true at {marked[col]}); it would be embedded and could show in labels and reports",
                    path=tf.path,
                    line=_first_line(tf.text, col if col in tf.text else "key"),
                    hint=f"leave it out, or declare `allow_pii: [{col}]` on text '{name}' ({tx.file}:{tx.line})",
                )
            )
    for name, seg in proj.segmentations.items():
        for inp in seg.inputs:
            fs = proj.features.get(inp.features) if inp.features else None
            if fs is None:
                continue
            marked = pii.get(fs.model, {})
            for col in sorted((set(fs.columns) & set(marked)) - set(seg.allow_pii)):
                out.errors.append(
                    ProjectError(
                        f"segmentation '{name}' uses feature set '{fs.name}', whose column '{col}' is PII "
                        f"(pii: true at {marked[col]}); its values would show in profiles and reports",
                        path=seg.file,
                        line=seg.line,
                        hint=f"drop it from the feature set, or declare `allow_pii: [{col}]` on segmentation '{name}'",
                    )
                )


def _check_column_tests(proj: LoadedProject, out: BoundProject) -> None:
    """Test names and arguments, and that each tested column exists."""

    for name, m in proj.models.items():
        if m.props is None:
            continue
        have = out.columns.get(name)
        for col in m.props.columns:
            if have is not None and col.name not in have:
                out.errors.append(
                    ProjectError(
                        f"model '{name}' has no column '{col.name}' (documented/tested in {col.file})",
                        path=col.file,
                        line=col.line,
                        hint=did_you_mean(col.name, have),
                    )
                )
            _check_tests_of(proj, out, col)
    for st in proj.sources.values():
        for col in st.table.columns:
            _check_tests_of(proj, out, col)


def _check_tests_of(proj: LoadedProject, out: BoundProject, col) -> None:
    """One column's tests: names, arguments, and what a relationships test
    points at (a model or source that exists, and a column of that model)."""
    from segtool.compile.column_tests import parse_test, relationship_target

    for test in col.all_tests():
        try:
            name, args = parse_test(test, col)
            if name != "relationships":
                continue
            kind, target = relationship_target(proj, args["to"], col)
            have = out.columns.get(target) if kind == "model" else None
            if have is not None and args["field"] not in have:
                raise ProjectError(
                    f"relationships on '{col.name}': model '{target}' has no column "
                    f"'{args['field']}'",
                    path=col.file,
                    line=col.line,
                    hint=did_you_mean(str(args["field"]), have),
                )
        except ProjectError as exc:
            out.errors.append(exc)


def _first_input_model(proj: LoadedProject, seg) -> str | None:
    for inp in seg.inputs:
        if inp.features and inp.features in proj.features:
            return proj.features[inp.features].model
        if inp.embedding and inp.embedding.text in proj.texts:
            return proj.texts[inp.embedding.text].model
    return None


def _numeric(t: str) -> bool:
    t = t.upper()
    return any(
        t.startswith(p)
        for p in (
            "TINYINT",
            "SMALLINT",
            "INTEGER",
            "BIGINT",
            "HUGEINT",
            "UTINYINT",
            "USMALLINT",
            "UINTEGER",
            "UBIGINT",
            "FLOAT",
            "DOUBLE",
            "DECIMAL",
            "REAL",
            "BOOLEAN",
        )
    )


def _first_line(text: str, word: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if re.search(rf"\b{re.escape(word)}\b", line):
            return i
    return None
