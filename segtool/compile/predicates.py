"""Rule and population predicates: rendered once (var(), env_var()), checked
to be one SQL expression, then embedded only through `Predicate.wrapped`.

A var's string value is quoted for use inside '...' (see make_var), and the
guard refuses anything that is more than one expression, so neither a
project file nor `--vars` can turn a predicate into a statement."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from segtool.compile.guard import check_expression
from segtool.compile.jinja import render_string, sql_env
from segtool.compile.reads import reads_of
from segtool.compile.sql import make_var, relation
from segtool.errors import ProjectError
from segtool.project.secrets import env_digest_of


@dataclass(frozen=True)
class Predicate:
    source: str  # as written in the YAML
    sql: str  # rendered and checked
    what: str  # "segmentation 'x' rule 'vip'"
    path: str | None
    line: int | None

    @property
    def wrapped(self) -> str:
        # the newline ends a trailing `--` comment before the parenthesis
        return f"({self.sql}\n)"


@dataclass(frozen=True)
class SegmentationPredicates:
    population: Predicate | None
    rules: tuple[tuple[str, Predicate], ...]


def compile_predicate(proj, text: str, *, what: str, spec, field: str | None = None) -> Predicate:
    """TEXT (`spec.<field>`) rendered and checked; errors point at the line
    where the field's text starts (without a field, at the spec's line)."""
    line = spec.text_line(field) if field else spec.line
    try:
        rendered = render_string(
            text,
            {"var": make_var(proj, quote=True), "env_var": proj.env_var},
            name=spec.file or "<segments>",
            what="predicate",
            env=sql_env(),
        )
    except ProjectError as exc:
        # the template's line 1 is the predicate's line in the YAML file
        if line is not None and exc.path == (spec.file or "<segments>"):
            exc.line = line + (exc.line or 1) - 1
        exc.message = f"{what}: {exc.message}"
        raise
    check_expression(rendered, what=what, path=spec.file, line=line)
    return Predicate(text, rendered, what, spec.file, line)


def predicate_vars(proj, seg) -> dict | None:
    """The vars a segmentation's predicates read, with their values (as a
    model's `vars_used`): a --vars change to one of them moves users, a change
    to any other var does not. None when they read none."""
    texts = [t for t in (seg.population, *(r.when for r in seg.rules)) if t]
    reads = reads_of(*texts)
    if reads.vars == frozenset() and reads.env_vars == frozenset():
        return None
    # env_var() values too (as a digest: they may be secrets): a changed one
    # moved no user, the run said "rules and model data unchanged"
    env = env_digest_of(*texts)
    return {
        **(_predicate_var_values(proj, seg, texts) or {}),
        **({"env_var()": env} if env else {}),
    } or None


def _predicate_var_values(proj, seg, texts: list[str]) -> dict | None:
    used: dict = {}
    try:
        for t in texts:
            render_string(
                t,
                {"var": make_var(proj, used, quote=True), "env_var": proj.env_var},
                name=seg.file or "<segments>",
                what="predicate",
                env=sql_env(),
            )
    except ProjectError:  # validate reports it; meanwhile every var counts
        return dict(proj.vars)
    return used or None


def segmentation_predicates(proj, seg) -> SegmentationPredicates:
    where = f"segmentation '{seg.name}'"
    population = (
        compile_predicate(
            proj, seg.population, what=f"{where} population", spec=seg, field="population"
        )
        if seg.population
        else None
    )
    rules = tuple(
        (
            rule.segment,
            compile_predicate(
                proj, rule.when, what=f"{where} rule '{rule.segment}'", spec=rule, field="when"
            ),
        )
        for rule in seg.rules
    )
    return SegmentationPredicates(population, rules)


def bind_predicate(con: duckdb.DuckDBPyConnection, model: str, pred: Predicate) -> None:
    """The predicate binds against the model's columns and is BOOLEAN."""
    try:
        rows = con.execute(f"DESCRIBE SELECT {pred.wrapped} AS p FROM {relation(model)}").fetchall()
    except duckdb.Error as exc:
        raise ProjectError(
            f"{pred.what}: invalid predicate `{pred.sql}`: {str(exc).splitlines()[0]}",
            path=pred.path,
            line=pred.line,
            hint=f"a SQL boolean expression over the columns of '{model}'",
        ) from None
    if rows and rows[0][1] != "BOOLEAN":
        raise ProjectError(
            f"{pred.what}: predicate `{pred.sql}` is {rows[0][1]}, not BOOLEAN",
            path=pred.path,
            line=pred.line,
            hint="compare something: e.g. `revenue > 1000`",
        )
