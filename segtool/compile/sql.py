"""Compile SQL models: render Jinja with ref/source/var/env_var/config/
is_incremental/this, and record what each model depends on."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtool.compile.guard import SelectShape, check_select
from segtool.compile.jinja import render_string, sql_env
from segtool.errors import ProjectError, did_you_mean
from segtool.project.loader import LoadedProject, ModelFile, SourceTable
from segtool.project.specs import ModelConfig
from segtool.project.validation import validate_spec
from segtool.state.tables import MODELS as MODEL_SCHEMA
from segtool.state.tables import quote as quote_ident

_MISSING = object()  # var('x', none) is a valid default, so None cannot mean "no default"
SOURCE_READERS = {"csv": "read_csv", "parquet": "read_parquet", "json": "read_json"}


def sql_literal(value: Any) -> str:
    """A Python value as a DuckDB literal (for reader options)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{sql_literal(str(k))}: {sql_literal(v)}" for k, v in value.items())
            + "}"
        )
    return "'" + str(value).replace("'", "''") + "'"


def make_var(proj: LoadedProject, used: dict[str, Any] | None = None, *, quote: bool = False):
    """The Jinja `var(name, default)` of SQL models, text templates and
    predicates: project vars merged with --vars; `used` records what was read.

    quote=True (predicates): a string value comes back with its single quotes
    doubled, so inside '...' it stays a value and cannot end the literal."""

    def var(name: str, default: Any = _MISSING) -> Any:
        if name in proj.vars:
            value = proj.vars[name]
        elif default is not _MISSING:
            value = default
        else:
            raise ProjectError(
                f"var('{name}') is not defined",
                hint=did_you_mean(name, proj.vars)
                or "define it under `vars:` in segtool_project.yml or pass --vars",
            )
        if used is not None:
            used[name] = value
        if quote and isinstance(value, str):
            return value.replace("'", "''")
        return value

    return var


def unread_vars(proj: LoadedProject, names) -> list[str]:
    """Of `names` (the keys of --vars), those the project neither declares
    under `vars:` nor reads with var('name') in a model, a template or a
    YAML value (a predicate, a source's path): most likely a typo, and the
    run would use the declared value unnoticed (dbt says nothing). Empty
    when some var() takes its name from an expression: it could read any."""
    names = [n for n in names if n not in proj.spec.vars]
    if not names:
        return []
    texts = [m.sql for m in proj.models.values()] + [t.text for t in proj.templates.values()]
    specs = [proj.spec, *(m.props for m in proj.models.values() if m.props is not None)]
    specs += [s.source for s in proj.sources.values()]
    for kind in (proj.features, proj.texts, proj.encoders, proj.segmentations):
        specs += kind.values()
    texts += [t for spec in specs for t in _strings(spec.model_dump()) if "var" in t]
    from segtool.compile.reads import reads_of

    read = reads_of(*texts).vars
    if read is None:
        return []
    return [n for n in names if n not in read]


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")  # fmt: skip


def lossless_cast_sql(expr: str, typ: str) -> str:
    """`expr` as `typ`, NULL where it does not convert or would change: DuckDB
    rounds 1.4 and '1.4' to the integer 1 (two users as one key, a number
    silently rounded), so an integer must equal the number it came from."""
    cast = f"TRY_CAST({expr} AS {typ})"
    if typ.upper() in _INTEGERS:
        return f"(CASE WHEN {cast} = TRY_CAST({expr} AS DOUBLE) THEN {cast} END)"
    return cast


def relation(name: str, schema: str = MODEL_SCHEMA) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def attach_alias(source_name: str) -> str:
    return f"src_{source_name}"


def source_path(root: Path, path: str) -> str:
    """A source path as the database reads it: absolute (relative ones start at
    the project root), so views over files work from any folder."""
    if "://" in path or Path(path).is_absolute():
        return path
    return (Path(root) / path).as_posix()


MAX_GLOB_FILES = 100_000


def source_files(st: SourceTable, root: Path) -> list[str] | None:
    """The files a file source reads (a glob expanded, sorted), or None for
    one without a local path (remote, or a table of an attached database)."""
    import glob
    import itertools

    path = st.table.path
    if path is None or "://" in path:
        return None
    pattern = source_path(root, path)
    if not glob.has_magic(pattern):
        return [pattern]
    # DuckDB's glob matches hidden files too: a .late.parquet it read was not
    # in the fingerprint, so adding it changed nothing the plan saw
    try:
        found = glob.iglob(pattern, recursive=True, include_hidden=True)
    except TypeError:  # Python 3.10 has no include_hidden
        found = glob.iglob(pattern, recursive=True)
    # bounded: `**` follows links, and two links to `.` in a folder made
    # compile walk 2^depth paths until killed
    files = list(itertools.islice(found, MAX_GLOB_FILES + 1))
    if len(files) > MAX_GLOB_FILES:
        raise ProjectError(
            f"source '{st.source.name}.{st.table.name}': {path} matches more than "
            f"{MAX_GLOB_FILES:,} files (a symbolic link that leads back into its folder?)",
            path=st.table.file,
            line=st.table.line,
        )
    return sorted(files)


def source_sql(st: SourceTable, root: Path | None = None) -> str:
    """What `{{ source('s', 't') }}` compiles to: a reader call over the file,
    or a table of an attached database. With `root`, relative paths become
    absolute (what runs); without, they stay as written (what is hashed and
    shown, so fingerprints do not depend on where the project is checked out)."""
    src, tbl = st.source, st.table
    if tbl.path is not None:
        fmt = tbl.format or infer_format(tbl.path)
        if fmt is None:
            raise ProjectError(
                f"cannot tell the format of source '{src.name}.{tbl.name}' from '{tbl.path}'",
                path=tbl.file,
                line=tbl.line,
                hint="add `format: csv|parquet|json`",
            )
        path = source_path(root, tbl.path) if root is not None else tbl.path
        # option names are identifiers (SourceTableSpec refuses others; left
        # unquoted so the compiled SQL, and so every hash, stays as it was)
        args = [sql_literal(path)] + [
            f"{k} = {sql_literal(v)}" for k, v in sorted(tbl.options.items())
        ]
        return f"{SOURCE_READERS[fmt]}({', '.join(args)})"
    schema = src.schema_ or "main"
    return ".".join(
        quote_ident(p) for p in (attach_alias(src.name), schema, tbl.identifier or tbl.name)
    )


def infer_format(path: str) -> str | None:
    p = path.lower()
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "csv"),
        (".csv.gz", "csv"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
        (".json", "json"),
        (".jsonl", "json"),
        (".ndjson", "json"),
    ):
        if p.endswith(ext):
            return fmt
    return None


def line_map(source: str, compiled: str):
    """compiled line -> source line. Jinja can add or drop lines; lines that
    survive rendering unchanged are matched (difflib), and a generated line
    maps to the nearest matched line before it."""
    src = [ln.strip() for ln in source.splitlines()]
    out = [ln.strip() for ln in compiled.splitlines()]
    mapping: dict[int, int] = {}
    replaced = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, src, out, autojunk=False).get_opcodes():
        if op == "equal":
            for i in range(a2 - a1):
                mapping[b1 + i + 1] = a1 + i + 1
        elif op == "replace":
            replaced.append((a1, a2, b1, b2))

    def match_rendered() -> None:
        # a line with {{ }} in it renders to another line: matched by its
        # literal text, in order (`... from {{ this }})` is the line of
        # `... from "main"."orders")`, not the unchanged line before it).
        # Only when a line is asked for: every compile makes a map
        while replaced:
            a1, a2, b1, b2 = replaced.pop()
            pieces = [_literal_parts(ln) for ln in src[a1:a2]]
            a = 0
            for b in range(b1, b2):
                for i in range(a, len(pieces)):
                    if pieces[i] is not None and _renders_to(pieces[i], out[b]):
                        mapping[b + 1] = a1 + i + 1
                        a = i + 1
                        break

    def to_source(line: int) -> int | None:
        match_rendered()
        for n in range(line, 0, -1):
            if n in mapping:
                return mapping[n]
        return 1 if source else None

    return to_source


_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}")


def _literal_parts(source_line: str) -> list[str] | None:
    """A source line's text outside its Jinja tags, in pieces: what it
    renders to holds them in order. None for a line without tags, or with too
    little text besides them to tell lines apart (one that is only a tag)."""
    parts = _TAG.split(source_line)
    if len(parts) < 2 or len("".join(parts).strip()) < 4:
        return None
    return parts


def _renders_to(parts: list[str], line: str) -> bool:
    """`line` starts with the first piece, ends with the last and holds the
    others in order between (a leftmost search: linear, no backtracking)."""
    first, *middle, last = parts
    if len(line) < len(first) + len(last) or not (line.startswith(first) and line.endswith(last)):
        return False
    at, end = len(first), len(line) - len(last)
    for p in middle:
        at = line.find(p, at, end)
        if at < 0:
            return False
        at += len(p)
    return True


@dataclass
class CompiledModel:
    name: str
    path: str
    sql: str  # what runs: source paths absolute
    config: ModelConfig
    refs: list[str] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    vars_used: dict[str, Any] = field(default_factory=dict)
    portable_sql: str = ""  # source paths as written: hashed, diffed and shown
    shape: SelectShape | None = None
    source_text: str = ""  # the model file, for mapping compiled lines back
    source_reads: int = 0  # source() calls that compile to a file reader

    def source_line(self, compiled_line: int | None) -> int | None:
        if compiled_line is None:
            return None
        return line_map(self.source_text, self.sql)(compiled_line)

    @property
    def relation(self) -> str:
        return relation(self.name)


def compile_model(
    proj: LoadedProject,
    model: ModelFile,
    *,
    incremental: bool = False,
    source_override: dict[tuple[str, str], str] | None = None,
    ref_override: dict[str, str] | None = None,
) -> CompiledModel:
    """Render one model and check it is exactly one SELECT. `source_override`
    maps sources to other relations (validation binds against schema-only
    copies, so each file is sniffed once); `ref_override` maps models to other
    relations (a dry run reads its temporary stand-ins)."""
    sql, refs, sources, vars_used, config_kw, source_reads, sql_config = _render_model(
        proj,
        model,
        incremental=incremental,
        source_override=source_override,
        ref_override=ref_override,
        root=proj.root,
    )
    portable = sql
    if sources and not source_override:
        portable = _render_model(proj, model, incremental=incremental, root=None)[0]
    cfg, errs = validate_spec(ModelConfig, config_kw, marks={}, rel=model.path)
    if cfg is None:
        # the YAML entry when its own options are wrong, else the config() call
        from_yaml = {k: v for k, v in config_kw.items() if k not in sql_config}
        yaml_errs = validate_spec(ModelConfig, from_yaml, marks={}, rel=model.path)[1]
        e = (yaml_errs or errs)[0]
        path, line = _config_location(model, from_yaml if yaml_errs else {})
        raise ProjectError(
            f"model '{model.name}' config: {e.message}", path=path, line=line, hint=e.hint
        )
    _check_incremental_config(model, cfg, refs, sql_config)
    if not sql.strip():
        raise ProjectError(f"model '{model.name}' is empty", path=model.path, line=1)
    sql = _clean(sql)
    shape = check_select(
        sql,
        what=f"model '{model.name}'",
        path=model.path,
        line_of=line_map(model.sql, sql),
    )
    return CompiledModel(
        name=model.name,
        path=model.path,
        sql=sql,
        config=cfg,
        refs=refs,
        sources=sources,
        vars_used=vars_used,
        portable_sql=_clean(portable),
        shape=shape,
        source_text=model.sql,
        source_reads=source_reads,
    )


def _check_incremental_config(
    model: ModelFile, cfg: ModelConfig, refs: list[str], sql_config: set[str]
) -> None:
    """full_refresh=false and delete_not_in are for incremental models;
    delete_not_in names a model this one reads, and needs a unique_key to match on.
    Errors point where the option was set: the model's config() call, or its
    entry in a models/*.yml (config() wins over YAML, as in dbt)."""

    def error(message: str, option: str, hint: str) -> ProjectError:
        from_yaml = {} if option in sql_config else {option: True}
        path, line = _config_location(model, from_yaml)
        return ProjectError(message, path=path, line=line, hint=hint)

    keep = cfg.delete_not_in
    incremental_only = {
        "full_refresh": ("full_refresh=false", cfg.full_refresh is False),
        "delete_not_in": (f"delete_not_in={keep!r}", keep is not None),
    }
    for key, (option, given) in incremental_only.items():
        if given and cfg.materialized != "incremental":
            raise error(
                f"model '{model.name}' config: {option} applies to incremental models only "
                f"(this one is a {cfg.materialized}, rebuilt from its SQL whenever it changes)",
                key,
                f"drop {option}, or make the model materialized='incremental'",
            )
    if keep is None:
        return
    where = f"model '{model.name}' config: delete_not_in={keep!r}"
    if not cfg.unique_key:
        raise error(
            f"{where} needs a unique_key: rows are matched on it",
            "delete_not_in",
            "add unique_key='...' (the column or columns that identify a row)",
        )
    if keep not in refs:
        if not refs:
            hint = "name a model this one reads with ref()"
        elif "delete_not_in" in sql_config:
            hint = f"name a model this one reads, e.g. delete_not_in=ref('{refs[0]}')"
        else:  # YAML: the model's name
            hint = f"name a model this one reads, e.g. `delete_not_in: {refs[0]}`"
        raise error(f"{where}: the model does not read '{keep}'", "delete_not_in", hint)


def _config_location(model: ModelFile, options: dict) -> tuple[str, int | None]:
    """Where `options` were set: the model's models/*.yml entry when they
    came from there (config() in the SQL wins over YAML, as in dbt), else
    the .sql file."""
    props = model.props
    if options and props is not None and props.file and all(o in props.config for o in options):
        return props.file, props.line
    # the line of the SQL's config() call (the first: a model has one)
    m = re.search(r"\{\{-?\s*config\s*\(", model.sql)
    return model.path, (model.sql.count("\n", 0, m.start()) + 1 if m else None)


def _clean(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _render_model(proj, model, *, incremental, root, source_override=None, ref_override=None):
    refs: list[str] = []
    ref_names: dict[str, str] = {}  # what ref() returned -> the model's name
    reads = [0]
    sources: list[tuple[str, str]] = []
    vars_used: dict[str, Any] = {}
    config_kw: dict[str, Any] = {}
    sql_config: set[str] = set()  # the options the SQL's config() set
    if model.props is not None:
        config_kw.update(model.props.config)

    def ref(name: str, *rest: str) -> str:
        if rest:  # ref('package', 'model') in dbt: we have one package
            name = rest[-1]
        if name not in proj.models:
            raise ProjectError(
                f"ref('{name}'): no model named '{name}'", hint=did_you_mean(name, proj.models)
            )
        if name not in refs:
            refs.append(name)
        rel = ref_override[name] if ref_override and name in ref_override else relation(name)
        ref_names[rel] = name
        return rel

    def source(src: str, table: str) -> str:
        key = (src, table)
        if key not in proj.sources:
            names = [f"{s}.{t}" for s, t in proj.sources]
            raise ProjectError(
                f"source('{src}', '{table}'): not declared in any models/*.yml",
                hint=did_you_mean(f"{src}.{table}", names)
                or "declare it under `sources:` in a models/*.yml",
            )
        if key not in sources:
            sources.append(key)
        if source_override and key in source_override:
            return source_override[key]
        if proj.sources[key].table.path is not None:
            reads[0] += 1
        return source_sql(proj.sources[key], root)

    def config(**kw: Any) -> str:
        if isinstance(kw.get("delete_not_in"), str):  # ref('x') is kept as the name 'x'
            kw["delete_not_in"] = ref_names.get(kw["delete_not_in"], kw["delete_not_in"])
        config_kw.update(kw)
        sql_config.update(kw)
        return ""

    ctx = {
        "ref": ref,
        "source": source,
        "var": make_var(proj, vars_used),
        "env_var": proj.env_var,
        "config": config,
        "is_incremental": lambda: incremental,
        "this": relation(model.name),
        "target": {"name": proj.target_name, "database": proj.target.database},
    }
    sql = render_string(model.sql, ctx, name=model.path, what="SQL model", env=sql_env())
    return sql, refs, sources, vars_used, config_kw, reads[0], sql_config
