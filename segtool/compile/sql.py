"""Compile SQL models: render Jinja with ref/source/var/env_var/config/
is_incremental/this, and record what each model depends on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segtool.compile.jinja import render_string
from segtool.errors import ProjectError, did_you_mean
from segtool.project.loader import LoadedProject, ModelFile, SourceTable, env_var
from segtool.project.specs import ModelConfig
from segtool.project.validation import validate_spec

MODEL_SCHEMA = "main"
_MISSING = object()  # var('x', none) is a valid default, so None cannot mean "no default"
SOURCE_READERS = {"csv": "read_csv", "parquet": "read_parquet", "json": "read_json"}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


def make_var(proj: LoadedProject, used: dict[str, Any] | None = None):
    """The Jinja `var(name, default)` of SQL models, text templates and
    predicates: project vars merged with --vars; `used` records what was read."""

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
        return value

    return var


def relation(name: str, schema: str = MODEL_SCHEMA) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def attach_alias(source_name: str) -> str:
    return f"src_{source_name}"


def source_sql(st: SourceTable) -> str:
    """What `{{ source('s', 't') }}` compiles to: a reader call over the file
    (path kept relative; the connection's file_search_path is the project root,
    so fingerprints do not depend on where the project is checked out), or a
    table of an attached database."""
    src, tbl = st.source, st.table
    if tbl.path is not None:
        fmt = tbl.format or _infer_format(tbl.path)
        if fmt is None:
            raise ProjectError(
                f"cannot tell the format of source '{src.name}.{tbl.name}' from '{tbl.path}'",
                path=tbl.file,
                line=tbl.line,
                hint="add `format: csv|parquet|json`",
            )
        args = [sql_literal(tbl.path)] + [
            f"{k} = {sql_literal(v)}" for k, v in sorted(tbl.options.items())
        ]
        return f"{SOURCE_READERS[fmt]}({', '.join(args)})"
    schema = src.schema_ or "main"
    return ".".join(
        quote_ident(p) for p in (attach_alias(src.name), schema, tbl.identifier or tbl.name)
    )


def _infer_format(path: str) -> str | None:
    p = path.lower()
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "csv"),
        (".csv.gz", "csv"),
        (".parquet", "parquet"),
        (".json", "json"),
        (".jsonl", "json"),
        (".ndjson", "json"),
    ):
        if p.endswith(ext):
            return fmt
    return None


@dataclass
class CompiledModel:
    name: str
    path: str
    sql: str
    config: ModelConfig
    refs: list[str] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    vars_used: dict[str, Any] = field(default_factory=dict)

    @property
    def relation(self) -> str:
        return relation(self.name)


def compile_model(
    proj: LoadedProject,
    model: ModelFile,
    *,
    incremental: bool = False,
    source_override: dict[tuple[str, str], str] | None = None,
) -> CompiledModel:
    """Render one model. `source_override` maps sources to other relations
    (validation binds against schema-only copies, so each file is sniffed once)."""
    refs: list[str] = []
    sources: list[tuple[str, str]] = []
    vars_used: dict[str, Any] = {}
    config_kw: dict[str, Any] = {}
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
        return relation(name)

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
        return source_sql(proj.sources[key])

    var = make_var(proj, vars_used)

    def config(**kw: Any) -> str:
        config_kw.update(kw)
        return ""

    ctx = {
        "ref": ref,
        "source": source,
        "var": var,
        "env_var": env_var,
        "config": config,
        "is_incremental": lambda: incremental,
        "this": relation(model.name),
        "target": {"name": proj.target_name, "database": proj.target.database},
    }
    sql = render_string(model.sql, ctx, name=model.path, what="SQL model")
    cfg, errs = validate_spec(ModelConfig, config_kw, marks={}, rel=model.path)
    if cfg is None:
        e = errs[0]
        raise ProjectError(
            f"model '{model.name}' config: {e.message}", path=model.path, hint=e.hint
        )
    if cfg.materialized == "incremental" and not cfg.unique_key:
        pass  # append-only incremental is allowed
    if not sql.strip():
        raise ProjectError(f"model '{model.name}' is empty", path=model.path, line=1)
    return CompiledModel(
        name=model.name,
        path=model.path,
        sql=sql.strip().rstrip(";").strip(),
        config=cfg,
        refs=refs,
        sources=sources,
        vars_used=vars_used,
    )
