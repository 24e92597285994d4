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
    # (source, table) -> column -> type, of each source that could be read
    source_columns: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
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
                _check_files_exist(st, proj.root)
                cols = empty_relation(con, stub, f"SELECT * FROM {source_sql(st, proj.root)}")
                if list(cols) == ["column0"]:  # what DuckDB makes of a CSV with no header
                    _check_not_empty(st, proj.root)
                elif len(cols) == 1:
                    _check_one_column(st, proj.root, next(iter(cols)))
                stubs[(s, t)] = stub
                out.source_columns[(s, t)] = cols
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
            at = None  # `at`: the compiled SQL a binder error's line is a line of
            try:
                cm = at = compile_model(proj, model, source_override=stubs)
                out.columns[cm.name] = empty_relation(con, relation(cm.name), cm.sql)
                if cm.config.materialized == "incremental":
                    # bind the is_incremental() branch too, against the empty `this`
                    inc = compile_model(proj, model, incremental=True, source_override=stubs)
                    inc_cols = out.columns[cm.name]
                    if inc.sql != cm.sql:
                        at = inc  # an error here is in the merge's SQL, not the full build's
                        rows = con.execute(f"DESCRIBE {inc.sql}").fetchall()
                        inc_cols = {r[0]: r[1] for r in rows}
                        at = cm
                    _check_incremental_columns(cm, out.columns[cm.name], inc_cols)
                    _check_delete_not_in(cm, out.columns)
            except ProjectError as exc:
                broken.add(uid)
                out.errors.append(exc)
            except duckdb.Error as exc:
                broken.add(uid)
                merge = at is not None and at is not cm
                out.errors.append(_bind_error(exc, node.name, model, at, merge=merge))
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


def _check_files_exist(st, root) -> None:
    """A file source's path names a file, a folder or a glob that matches
    one: DuckDB's error for a missing file inside the project was the SQL
    fence's ('file system operations are disabled': it looks for a folder
    of partitions), and told the user to widen the fence."""
    import glob
    from pathlib import Path

    from segtool.compile.sql import source_files, source_path

    files = source_files(st, root)
    if files is None:  # remote, or a table of an attached database
        return
    pattern = source_path(root, st.table.path)
    if files and (glob.has_magic(pattern) or Path(files[0]).exists()):
        return
    raise ProjectError(
        f"{'no file matches' if glob.has_magic(pattern) else 'there is no file'} {st.table.path}",
        hint="put the source's data there, or fix its `path` (relative paths start at the "
        "project root)",
    )


def _source_hint(msg: str) -> str:
    if "Permission Error" in msg:
        return (
            "the path is outside what the SQL fence allows: add it to `allow_paths` "
            "of the target in profiles.yml, and its folder to SEGTOOL_DATA_DIRS where "
            "segtool runs if it lies outside the project (docs/security.md)"
        )
    return "check `path`, `format` and reader `options` (relative paths start at the project root)"


def _bind_error(exc: duckdb.Error, name: str, model, cm, *, merge: bool = False) -> ProjectError:
    """A binding error at the line of the model file; the compiled line only
    as context when Jinja moved lines around. `cm`: the compiled model whose
    SQL failed (`merge`: its is_incremental() branch)."""
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
    if merge:  # what `segtool compile` writes is the full build, not this
        hint = (
            "the error is in the SQL a merge runs (with the {% if is_incremental() %} branch); "
            "fix it and run `segtool validate` again"
        )
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
            elif c.type == "categorical" and _nested(have[col]):
                out.errors.append(
                    ProjectError(
                        f"features '{name}': column '{col}' is {have[col]}, not one value per "
                        "user: a categorical column holds one category per user",
                        path=fs.file,
                        line=fs.line,
                        hint="derive one value in the model (e.g. `list_first(...)`, or a count), "
                        "or leave the column out of the feature set",
                    )
                )

    _check_texts(proj, out)

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


def _check_texts(proj: LoadedProject, out: BoundProject) -> None:
    """Each text's template and every template it includes, imports or
    extends: it compiles, reads only columns of the text's model (or names
    it sets), and the var() and env_var() it reads exist, each at its own
    file and line. A run renders them all; validate checked the first only."""
    env = default_env()
    cols, key = out.columns, proj.key
    asts: dict[str, object] = {}  # template -> its syntax tree, when it compiles
    reads: dict[str, dict] = {}  # template -> the names it reads (unbound_template_names)
    sets: dict[str, set[str]] = {}  # template -> the names it sets anywhere (_stored_names)
    said: set[tuple] = set()

    def report(exc: ProjectError) -> None:
        if (exc.path, exc.line, exc.message) not in said:
            said.add((exc.path, exc.line, exc.message))
            out.errors.append(exc)

    for name, tx in proj.texts.items():
        if tx.template not in proj.templates:
            continue  # build_graph reports it
        closure = _template_closure(proj, tx.template)
        for t in closure:
            if t in asts:
                continue
            tf = proj.templates[t]
            try:
                compile_template(env, tf.text, tf.path)
            except ProjectError as exc:
                asts[t] = None  # its errors are reported once
                report(exc)
                continue
            asts[t] = env.parse(tf.text)
            reads[t], sets[t] = unbound_template_names(asts[t]), _stored_names(asts[t])
            for exc in _template_reads(proj, t, tf, asts[t]):
                report(exc)
        if asts[tx.template] is None or tx.model not in cols:
            continue
        have = cols[tx.model]
        if key not in have:
            report(
                ProjectError(
                    f"text '{name}': model '{tx.model}' has no key column '{key}'",
                    path=tx.file,
                    line=tx.line,
                )
            )
        if "key" in have and key != "key":
            # `key` in a template is the entity key: the model's own `key`
            # column could not be read, and a template reading it got the
            # user's id with no word
            for t in closure:
                if asts[t] is not None and "key" in reads[t]:
                    tf = proj.templates[t]
                    report(
                        ProjectError(
                            f"template '{t}' reads 'key', which in a template is the entity key "
                            f"('{key}'), not column 'key' of model '{tx.model}'",
                            path=tf.path,
                            line=_first_line(tf.text, "key"),
                            hint=f"rename the column in model '{tx.model}' (e.g. `key AS "
                            f"{tx.model}_key`), or read `{key}` for the entity key",
                        )
                    )
        # an included template sees the names its includer sets where it is
        # included (a loop's variable too): any name set in one of them counts
        set_in = set().union(*(sets[t] for t in closure if asts[t] is not None))
        for t in closure:
            if asts[t] is None:
                continue
            tf = proj.templates[t]
            allowed = set(have) | TEMPLATE_GLOBALS | (set_in if t != tx.template else set())
            stored = sets[t]
            for var, line in sorted(reads[t].items()):
                if var in allowed:
                    continue
                via = "" if t == tx.template else f" (included by text '{name}')"
                if var in stored:  # a loop's (or macro's) variable, read outside it
                    report(
                        ProjectError(
                            f"template '{t}'{via} uses '{var}' where it is not set: it is set "
                            f"only inside a {{% for %}}, macro or {{% with %}} block, and is not "
                            f"a column of model '{tx.model}'",
                            path=tf.path,
                            line=line or _first_line(tf.text, var),
                            hint="a loop's variables exist inside the loop only: use it there, "
                            "or {% set %} it at the top level (namespace() carries a value out "
                            "of a loop)",
                        )
                    )
                    continue
                report(
                    ProjectError(
                        f"template '{t}'{via} uses '{var}', which is not a column of model "
                        f"'{tx.model}'",
                        path=tf.path,
                        line=line or _first_line(tf.text, var),
                        hint=did_you_mean(var, have),
                    )
                )


def _template_closure(proj: LoadedProject, name: str) -> list[str]:
    """NAME, then every template it includes, imports or extends by a
    constant name, transitively. (A name computed when rendering may be any
    template: those are not checked against this text's model; build_graph
    reports a constant name that is no template.)"""
    import jinja2.meta

    seen: list[str] = []
    todo = [name]
    while todo:
        t = todo.pop(0)
        if t in seen or t not in proj.templates:
            continue
        seen.append(t)
        try:
            ast = default_env().parse(proj.templates[t].text)
        except Exception:  # noqa: BLE001 - compile_template reports it
            continue
        todo.extend(r for r in jinja2.meta.find_referenced_templates(ast) if r)
    return seen


def _template_reads(proj: LoadedProject, t: str, tf, ast) -> list[ProjectError]:
    """The var() and env_var() calls of template T that fail whoever the user
    is: a var that is not defined and has no default; an environment variable
    the project may not read, or that is not set and has no default. (SQL
    models and predicates fail on them when validate renders them; a text is
    rendered only by the run.) A name computed when rendering is not known."""
    from jinja2 import nodes

    from segtool.compile.reads import reads_of
    from segtool.compile.sql import make_var

    reads = reads_of(tf.text)
    if reads.vars == frozenset() and reads.env_vars == frozenset():
        return []
    read = {"var": reads.vars, "env_var": reads.env_vars}  # None: any (computed names)
    var = make_var(proj)
    errors = []
    for call in ast.find_all(nodes.Call):
        fn = call.node.name if isinstance(call.node, nodes.Name) else None
        if fn not in read or call.dyn_args is not None or call.dyn_kwargs is not None:
            continue
        named = {k.key: k.value for k in call.kwargs}
        arg = call.args[0] if call.args else named.get("name")
        if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
            continue  # a computed name
        if read[fn] is not None and arg.value not in read[fn]:
            continue
        default = call.args[1] if len(call.args) > 1 else named.get("default")
        # env_var(name, none) has no default: an unset variable fails as without one
        no_default = default is None or (
            fn == "env_var" and isinstance(default, nodes.Const) and default.value is None
        )
        try:
            if fn == "var":
                if no_default:
                    var(arg.value)
            else:
                proj.env_var(arg.value, None if no_default else "")
        except ProjectError as exc:
            errors.append(
                ProjectError(
                    f"template '{t}': {exc.message}",
                    path=tf.path,
                    line=call.lineno,
                    hint=exc.hint,
                )
            )
    return errors


def _set_here(body) -> set[str]:
    """The names the nodes of BODY set in its scope ({% set %}, macros,
    imports), not those set in a nested loop, macro, call or with block."""
    from jinja2 import nodes

    out: set[str] = set()
    todo = list(body)
    while todo:
        n = todo.pop()
        if isinstance(n, (nodes.Assign, nodes.AssignBlock)):
            out |= {x.name for x in n.target.find_all(nodes.Name)}
            if isinstance(n.target, nodes.Name):
                out.add(n.target.name)
        elif isinstance(n, nodes.Macro):
            out.add(n.name)
        elif isinstance(n, nodes.Import):
            out.add(n.target)
        elif isinstance(n, nodes.FromImport):
            out |= {x if isinstance(x, str) else x[1] for x in n.names}
        if isinstance(n, (nodes.For, nodes.Macro, nodes.CallBlock, nodes.With)):
            continue  # a scope of its own: what is set in it stays there
        if isinstance(n, nodes.Node):
            todo.extend(n.iter_child_nodes())
    return out


def _stored_names(ast) -> set[str]:
    """Every name a template (its syntax tree) sets anywhere (loop variables,
    macro parameters, {% set %}, macros, imports)."""
    from jinja2 import nodes

    out = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    out |= {n.name for n in ast.find_all(nodes.Macro)}
    out |= {n.target for n in ast.find_all(nodes.Import)}
    for n in ast.find_all(nodes.FromImport):
        out |= {x if isinstance(x, str) else x[1] for x in n.names}
    return out


def unbound_template_names(ast) -> dict[str, int | None]:
    """The names a template (its syntax tree) reads from its context
    (columns, `key`, globals), each with the first line it is read there. A name set at the top level
    ({% set %}, a macro, an import) is the template's own; a loop variable,
    a macro parameter or a name set inside a loop is the template's only
    inside that block: read after the loop it is the context's (and
    undefined at run time unless it is a column)."""
    import jinja2.meta
    from jinja2 import nodes

    undeclared = jinja2.meta.find_undeclared_variables(ast)  # what Jinja reads from the context
    free: dict[str, int | None] = {}

    def names(target) -> set[str]:
        return {x.name for x in target.find_all(nodes.Name)} | (
            {target.name} if isinstance(target, nodes.Name) else set()
        )

    def visit(node, bound: frozenset) -> None:
        if isinstance(node, nodes.Name):
            if node.ctx == "load" and node.name not in bound:
                free.setdefault(node.name, node.lineno)
            return
        if isinstance(node, nodes.For):
            visit(node.iter, bound)
            inner = bound | names(node.target) | {"loop"} | _set_here(node.body)
            if node.test is not None:
                visit(node.test, inner)
            for n in node.body:
                visit(n, inner)
            for n in node.else_:
                visit(n, bound | _set_here(node.else_))
            return
        if isinstance(node, (nodes.Macro, nodes.CallBlock)):
            for d in node.defaults:
                visit(d, bound)
            if isinstance(node, nodes.CallBlock):
                visit(node.call, bound)
            params = {a.name for a in node.args} | {"varargs", "kwargs", "caller"}
            inner = bound | params | _set_here(node.body)
            for n in node.body:
                visit(n, inner)
            return
        if isinstance(node, nodes.With):
            for v in node.values:
                visit(v, bound)
            inner = bound | set().union(*map(names, node.targets)) | _set_here(node.body)
            for n in node.body:
                visit(n, inner)
            return
        for child in node.iter_child_nodes():
            visit(child, bound)

    visit(ast, frozenset(_set_here(ast.body)))
    # a name the walk and Jinja both find: neither is trusted alone
    return {n: line for n, line in free.items() if n in undeclared}


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
        s
        for s in proj.segmentations.values()
        if (s.tests.max_association or s.tests.min_association) and _inputs_resolve(proj, s)
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
        marked = pii.get(tx.model, {})
        if tx.template not in proj.templates or not marked:
            continue
        # every template the text renders: a PII column in an included one
        # was embedded with no word from validate
        for t in _template_closure(proj, tx.template):
            tf = proj.templates[t]
            try:
                used = template_names(env, tf.text)
            except Exception:  # noqa: BLE001 - syntax errors are reported by the text check
                continue
            if "key" in used and proj.key in marked:
                used.add(proj.key)
            via = "" if t == tx.template else f" (included by text '{name}')"
            for col in sorted((used & set(marked)) - set(tx.allow_pii)):
                out.errors.append(
                    ProjectError(
                        f"template '{t}'{via} uses '{col}', a PII column of model '{tx.model}' "
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
    for (s, t), st in proj.sources.items():
        have = out.source_columns.get((s, t))  # None: not read (reported already)
        for col in st.table.columns:
            tested = bool(col.all_tests())
            if tested and have is not None and _column_in(col.name, have) is None:
                # `segtool test` failed on it with a binder error
                out.errors.append(
                    ProjectError(
                        f"source '{s}.{t}' has no column '{col.name}', which its tests name "
                        f"({st.table.path} has {_some(have)})",
                        path=col.file,
                        line=col.line,
                        hint=did_you_mean(col.name, have)
                        or "name a column of the source's files, as its header spells it",
                    )
                )
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
            if kind == "model":
                have = out.columns.get(target)
                if have is not None and args["field"] not in have:
                    raise ProjectError(
                        f"relationships on '{col.name}': model '{target}' has no column "
                        f"'{args['field']}'",
                        path=col.file,
                        line=col.line,
                        hint=did_you_mean(str(args["field"]), have),
                    )
                continue
            have = out.source_columns.get(target)
            if have is not None and _column_in(str(args["field"]), have) is None:
                raise ProjectError(
                    f"relationships on '{col.name}': source '{target[0]}.{target[1]}' has no "
                    f"column '{args['field']}'",
                    path=col.file,
                    line=col.line,
                    hint=did_you_mean(str(args["field"]), have) or f"its columns: {_some(have)}",
                )
        except ProjectError as exc:
            out.errors.append(exc)


def _column_in(name: str, have: dict[str, str]) -> str | None:
    """`name` as a column of `have`, as DuckDB binds it (case-insensitively)."""
    if name in have:
        return name
    return next((c for c in have if c.lower() == name.lower()), None)


def _some(names, n: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _inputs_resolve(proj: LoadedProject, seg) -> bool:
    """Every input names a feature set or text that exists (build_graph
    reports one that does not, with a did-you-mean): the models feeding the
    segmentation are known."""
    return all(
        (inp.features in proj.features)
        if inp.features
        else (inp.embedding is not None and inp.embedding.text in proj.texts)
        for inp in seg.inputs
    )


def _first_input_model(proj: LoadedProject, seg) -> str | None:
    for inp in seg.inputs:
        if inp.features and inp.features in proj.features:
            return proj.features[inp.features].model
        if inp.embedding and inp.embedding.text in proj.texts:
            return proj.texts[inp.embedding.text].model
    return None


def _nested(t: str) -> bool:
    """A LIST, ARRAY, STRUCT, MAP or UNION type: no scalar value per row."""
    t = t.upper()
    return "[" in t or t.startswith(("STRUCT", "MAP", "UNION"))


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
