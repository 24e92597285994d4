"""The one Jinja environment: sandboxed, StrictUndefined, no autoescape.

Used for SQL models, text templates, rule predicates and profiles.yml. Errors
come back as ProjectError pointing at the template's file and line."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from segtool.errors import ProjectError


class _Env(ImmutableSandboxedEnvironment):
    pass


def make_env(loader: jinja2.BaseLoader | None = None) -> _Env:
    env = _Env(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        loader=loader,
        extensions=["jinja2.ext.loopcontrols"],
    )
    env.filters["round_to"] = lambda x, n=0: round(float(x), n)
    return env


@lru_cache(maxsize=1)
def default_env() -> _Env:
    return make_env()


def compile_template(env: _Env, text: str, name: str) -> jinja2.Template:
    """Compile with `name` as the filename, so tracebacks carry template lines."""
    try:
        code = env.compile(text, name=name, filename=name)
    except jinja2.TemplateSyntaxError as exc:
        raise ProjectError(
            f"template syntax error: {exc.message}",
            path=name,
            line=exc.lineno,
            hint="check the {{ }} / {% %} tags on that line",
        ) from exc
    return env.template_class.from_code(env, code, env.make_globals(None))


def template_line(exc: BaseException, name: str) -> int | None:
    """The template line where `exc` was raised (Jinja rewrites tracebacks)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == name:
            line = frame.lineno
    return line


def render_error(exc: BaseException, name: str, what: str = "template") -> ProjectError:
    if isinstance(exc, ProjectError):
        if exc.path is None:
            exc.path = name
            exc.line = template_line(exc, name)
        return exc
    line = template_line(exc, name)
    if isinstance(exc, jinja2.UndefinedError):
        msg = exc.message or str(exc)
        return ProjectError(
            f"undefined in {what}: {msg}",
            path=name,
            line=line,
            hint="every variable must exist (StrictUndefined); use `x | default('')` for optional values",
        )
    if isinstance(exc, SecurityError):
        return ProjectError(f"unsafe operation in {what}: {exc}", path=name, line=line)
    if isinstance(exc, jinja2.TemplateError):
        return ProjectError(f"{what} error: {exc}", path=name, line=line)
    return ProjectError(f"{what} error: {type(exc).__name__}: {exc}", path=name, line=line)


def render_string(
    text: str,
    context: Mapping[str, Any],
    *,
    name: str,
    env: _Env | None = None,
    what: str = "template",
) -> str:
    env = env or default_env()
    tmpl = compile_template(env, text, name)
    try:
        return tmpl.render(**context)
    except Exception as exc:  # noqa: BLE001 - every render error becomes a ProjectError
        raise render_error(exc, name, what) from exc


def renderer(
    env: _Env, text: str, name: str, what: str = "template"
) -> Callable[[Mapping[str, Any]], str]:
    """A compiled template as a function of its context (for per-user rendering)."""
    tmpl = compile_template(env, text, name)

    def render(ctx: Mapping[str, Any]) -> str:
        try:
            return tmpl.render(ctx)
        except Exception as exc:  # noqa: BLE001
            raise render_error(exc, name, what) from exc

    return render
