"""Static and bound checks for `segtool validate` (and before `run` writes).

SQL is bound, not run: every model becomes a view in an in-memory DuckDB, in
dependency order, so DuckDB resolves tables, columns and types against the
real source files without computing anything. Nothing is written."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb

from segtool.compile.jinja import compile_template, default_env
from segtool.compile.sql import compile_model, make_var, quote_ident, relation, source_sql
from segtool.errors import ProjectError, did_you_mean
from segtool.graph.build import BuiltGraph
from segtool.project.loader import LoadedProject, env_var
from segtool.state.db import setup_connection

# names a text template may use besides its model's columns (see execute/render.py)
TEMPLATE_GLOBALS = {
    "loop",
    "range",
    "dict",
    "lipsum",
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


def _line_of(msg: str) -> int | None:
    m = re.search(r"LINE (\d+):", msg)
    return int(m.group(1)) if m else None


def bind_models(proj: LoadedProject, built: BuiltGraph) -> BoundProject:
    """Bind every model against schema-only copies of its sources and parents.

    Each source file is read once (CREATE TABLE ... LIMIT 0 sniffs its schema);
    each model then becomes an empty table of its result schema, so binding a
    downstream model never recomputes or re-reads anything upstream."""
    out = BoundProject()
    con = duckdb.connect(":memory:")
    try:
        try:
            setup_connection(con, proj, threads=1)
        except ProjectError as exc:
            out.errors.append(exc)
            return out
        con.execute("CREATE SCHEMA __src")
        stubs: dict[tuple[str, str], str] = {}
        broken: set[str] = set()
        for (s, t), st in proj.sources.items():
            stub = f"__src.{quote_ident(s + '__' + t)}"
            try:
                con.execute(f"CREATE TABLE {stub} AS SELECT * FROM {source_sql(st)} LIMIT 0")
                stubs[(s, t)] = stub
            except (duckdb.Error, ProjectError) as exc:
                broken.add(f"source.{s}.{t}")
                first = " ".join(
                    ln.strip() for ln in str(exc).strip().splitlines()[:4] if ln.strip()
                )
                out.errors.append(
                    ProjectError(
                        f"source '{s}.{t}' cannot be read: {first}",
                        path=st.table.file,
                        line=st.table.line,
                        hint="check `path`, `format` and reader `options` (relative paths start at the project root)",
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
            try:
                cm = compile_model(proj, model, source_override=stubs)
                con.execute(
                    f"CREATE TABLE {relation(cm.name)} AS SELECT * FROM (\n{cm.sql}\n) LIMIT 0"
                )
                if cm.config.materialized == "incremental":
                    # bind the is_incremental() branch too, against the empty `this`
                    inc = compile_model(proj, model, incremental=True, source_override=stubs)
                    if inc.sql != cm.sql:
                        con.execute(f"DESCRIBE SELECT * FROM (\n{inc.sql}\n)")
                cols = con.execute(f"DESCRIBE {relation(cm.name)}").fetchall()
                out.columns[cm.name] = {r[0]: r[1] for r in cols}
            except duckdb.Error as exc:
                msg = str(exc).strip()
                broken.add(uid)
                first, rest = (
                    (msg.splitlines() or [msg])[0],
                    "\n".join("    " + ln for ln in msg.splitlines()[1:5]),
                )
                line = _line_of(msg)
                line = line - 1 if line and line > 1 else line  # we wrapped the SQL in one line
                same_lines = len(cm.sql.splitlines()) == len(model.sql.strip().splitlines())
                where = "" if same_lines or line is None else f" (compiled SQL line {line})"
                out.errors.append(
                    ProjectError(
                        f"model '{node.name}'{where}: {first}" + (f"\n{rest}" if rest else ""),
                        path=model.path,
                        line=line if same_lines else None,
                        hint=f"`segtool compile` writes the compiled SQL to target/compiled/{model.path}",
                    )
                )
        _check_segments(proj, built, con, out)
        _check_column_tests(proj, out)
    finally:
        con.close()
    return out


def check_predicate(
    con: duckdb.DuckDBPyConnection,
    proj: LoadedProject,
    model: str,
    predicate: str,
    *,
    where: str,
    spec,
) -> str | None:
    """A rule or population predicate: one boolean SQL expression over the
    model's columns. Returns the rendered predicate; raises ProjectError."""
    from segtool.compile.jinja import render_string

    rendered = render_string(
        predicate,
        {"var": make_var(proj), "env_var": env_var},
        name=spec.file or "<segments>",
        what="predicate",
    )
    _expression_only(rendered, where, spec)
    try:
        rows = con.execute(f"DESCRIBE SELECT ({rendered}) AS p FROM {relation(model)}").fetchall()
    except duckdb.Error as exc:
        raise ProjectError(
            f"{where}: invalid predicate `{rendered}`: {str(exc).splitlines()[0]}",
            path=spec.file,
            line=spec.line,
            hint=f"a SQL boolean expression over the columns of '{model}'",
        ) from None
    if rows and rows[0][1] != "BOOLEAN":
        raise ProjectError(
            f"{where}: predicate `{rendered}` is {rows[0][1]}, not BOOLEAN",
            path=spec.file,
            line=spec.line,
            hint="compare something: e.g. `revenue > 1000`",
        )
    return rendered


_STATEMENT_WORDS = re.compile(
    r"\b(insert|update|delete|drop|create|alter|attach|detach|copy|install|load|pragma|call|export|import|set|use)\b",
    re.I,
)


def _unquoted(sql: str) -> tuple[str, bool]:
    """`sql` with the inside of '...' and "..." blanked, and whether every quote closed."""
    out = []
    quote: str | None = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
                out.append(ch)
            else:
                out.append(" ")
            continue
        if ch in ("'", '"'):
            quote = ch
        out.append(ch)
    return "".join(out), quote is None


def _expression_only(sql: str, where: str, spec) -> None:
    """Reject statements and anything that escapes the surrounding parentheses:
    no `;`, no statement keywords, parentheses balanced at every point (all
    outside string literals and quoted identifiers)."""
    bare, closed = _unquoted(sql)
    depth = 0
    balanced = closed and ";" not in bare
    for ch in bare:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            balanced = False
            break
    if not balanced or depth != 0 or _STATEMENT_WORDS.search(bare):
        raise ProjectError(
            f"{where}: `{sql}` is not a single SQL expression",
            path=spec.file,
            line=spec.line,
            hint="predicates are boolean expressions (no statements, no semicolons, balanced parentheses)",
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
        import jinja2.meta
        import jinja2.nodes

        ast = env.parse(tf.text)
        assigned = {n.name for n in ast.find_all(jinja2.nodes.Name) if n.ctx in ("store", "param")}
        undeclared = (
            jinja2.meta.find_undeclared_variables(ast) - set(have) - TEMPLATE_GLOBALS - assigned
        )
        for var in sorted(undeclared):
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
        if seg.population and base and model_ok(base):
            try:
                check_predicate(
                    con, proj, base, seg.population, where=f"{where} population", spec=seg
                )
            except ProjectError as exc:
                out.errors.append(exc)
        if seg.is_rules:
            if not model_ok(seg.model):
                continue
            if key not in cols[seg.model]:
                out.errors.append(
                    ProjectError(
                        f"{where}: model '{seg.model}' has no key column '{key}'",
                        path=seg.file,
                        line=seg.line,
                    )
                )
            for rule in seg.rules:
                try:
                    check_predicate(
                        con,
                        proj,
                        seg.model,
                        rule.when,
                        where=f"{where} rule '{rule.segment}'",
                        spec=rule,
                    )
                except ProjectError as exc:
                    out.errors.append(exc)


def _check_column_tests(proj: LoadedProject, out: BoundProject) -> None:
    """Test names and arguments, and that each tested column exists."""
    from segtool.execute.tests import parse_test

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
            for test in col.all_tests():
                try:
                    parse_test(test, col)
                except ProjectError as exc:
                    out.errors.append(exc)
    for st in proj.sources.values():
        for col in st.table.columns:
            for test in col.all_tests():
                try:
                    parse_test(test, col)
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
