"""YAML reading that keeps line numbers.

`load_yaml` returns plain Python data plus a map from the path of every key
(a tuple like ("segmentations", 0, "cluster", "k")) to its (line, col), so
schema errors found later can point at the right line. Always safe: only the
SafeLoader's constructors are used. The parser is libyaml's (CSafeLoader)
when PyYAML has it, ~7x faster than the pure-Python one (a run reads every
YAML file of the project); the nodes, marks and constructors are the same.
A file it rejects is parsed again by the pure-Python parser, whose messages
are the ones users see (and tests pin).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

from segtool.errors import ProjectError

Marks = dict[tuple, tuple[int, int]]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"}


def _context_lines(text: str, line: int, around: int = 2) -> str:
    """Numbered source lines around `line` (1-based), with a marker, as dbt prints them."""
    lines = text.splitlines()
    lo, hi = max(1, line - around), min(len(lines), line + around)
    out = []
    for n in range(lo, hi + 1):
        marker = ">" if n == line else " "
        text_of = lines[n - 1]
        # a line of a megabyte quoted whole buried the error
        shown = (
            text_of if len(text_of) <= 200 else text_of[:200] + f"... ({len(text_of):,} characters)"
        )
        out.append(f"  {marker}{n:4d} | {shown}")
    return "\n".join(out)


def load_yaml(path: Path, rel: str | None = None) -> tuple[Any, Marks]:
    rel = rel or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProjectError(f"cannot read file: {exc.strerror}", path=rel) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProjectError(
            f"file is not valid UTF-8 (byte {exc.start})", path=rel, hint="save the file as UTF-8"
        ) from exc
    return parse_yaml(text, rel)


def parse_yaml(text: str, rel: str) -> tuple[Any, Marks]:
    if _Loader is not yaml.SafeLoader:
        try:
            return _parse(_Loader(text), text, rel)
        except ProjectError as exc:
            if not isinstance(exc.__cause__, yaml.YAMLError):
                raise  # segtool's own (a duplicate key, a tag): the same either way
    return _parse(yaml.SafeLoader(text), text, rel)


def _parse(loader, text: str, rel: str) -> tuple[Any, Marks]:
    try:
        node = loader.get_single_node()
        marks: Marks = {}
        data = _construct(loader, node, (), marks, rel) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        ctx = "\n" + _context_lines(text, line) if line else ""
        raise ProjectError(
            f"malformed YAML: {problem}{ctx}",
            path=rel,
            line=line,
            col=col,
            hint="check indentation and quoting on the marked line",
        ) from exc
    except yaml.YAMLError as exc:
        raise ProjectError(f"malformed YAML: {exc}", path=rel) from exc
    except RecursionError:
        # ~1000 nested brackets: libyaml refuses them, the pure-Python parser recurses
        raise ProjectError(f"the file nests deeper than {MAX_DEPTH} levels", path=rel) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ProjectError(f"a value cannot be read: {exc}", path=rel) from None
    finally:
        loader.dispose()
    budget = _project_values.get()
    if budget is not None:
        budget[0] += len(marks)
    return data, marks


# an alias (*a) is walked again wherever it is used: six lines of aliases of
# aliases made 10^6 values (5 s, 310 MB) out of 238 bytes, and `a: &a [*a]`
# never ends. Project files are far below both bounds.
MAX_VALUES = 200_000
MAX_DEPTH = 100
# ... and at most this many in all the files one project load reads (a
# hundred files of 196,000 values each took 26 s to refuse one by one)
MAX_PROJECT_VALUES = 1_000_000
_project_values: ContextVar[list[int] | None] = ContextVar("project_values", default=None)


@contextmanager
def project_budget(limit: int = MAX_PROJECT_VALUES):
    """Count the values of every file parsed inside against `limit`."""
    token = _project_values.set([0, limit])
    try:
        yield
    finally:
        _project_values.reset(token)


def _over_budget(marks: Marks) -> bool:
    budget = _project_values.get()
    return budget is not None and budget[0] + len(marks) > budget[1]


class ProjectYamlTooBig(ProjectError):
    """The project's YAML went past MAX_PROJECT_VALUES: loading stops (every
    file after it would say the same)."""


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: tuple, marks: Marks, rel: str):
    if _over_budget(marks):
        raise ProjectYamlTooBig(
            f"the project's YAML files expand to more than {MAX_PROJECT_VALUES:,} values "
            "(this file reached it)",
            path=rel,
            line=node.start_mark.line + 1,
            hint="YAML aliases (*name) repeat what they point at wherever they are used",
        )
    if len(marks) > MAX_VALUES or len(path) > MAX_DEPTH:
        raise ProjectError(
            f"the file expands to more than {MAX_VALUES:,} values"
            if len(marks) > MAX_VALUES
            else f"the file nests deeper than {MAX_DEPTH} levels",
            path=rel,
            line=node.start_mark.line + 1,
            hint="YAML aliases (*name) repeat what they point at wherever they are used: "
            "an alias of aliases multiplies, one inside its own anchor never ends",
        )
    marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise _error_at(
            node,
            rel,
            f"unsupported YAML tag {node.tag}",
            "segtool reads plain YAML only; remove the tag",
        )
    if isinstance(node, yaml.MappingNode):
        n_explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # resolves `<<:` merge keys; merged pairs come first
        n_merged = len(node.value) - n_explicit
        out: dict = {}
        merged: set = set()
        for i, (key_node, value_node) in enumerate(node.value):
            _check_scalar(key_node, rel)
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise _error_at(key_node, rel, "mapping keys must be plain scalars")
            if i < n_merged:
                merged.add(key)
            elif key in merged:
                merged.discard(key)  # an explicit key overrides a merged one
                out.pop(key, None)
            if key in out and i >= n_merged:
                raise _error_at(
                    key_node,
                    rel,
                    f"duplicate key '{key}'",
                    "each key may appear once in a mapping; remove or rename one",
                )
            child = path + (key,)
            marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if isinstance(value_node, yaml.ScalarNode):
                # where the value's text starts: a block scalar (`when: |`)
                # begins on the line after its indicator
                block = 1 if value_node.style in ("|", ">") else 0
                marks[child + (TEXT,)] = (
                    value_node.start_mark.line + 1 + block,
                    value_node.start_mark.column + 1,
                )
            out[key] = _construct(loader, value_node, child, marks, rel)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(loader, item, path + (i,), marks, rel) for i, item in enumerate(node.value)
        ]
    _check_scalar(node, rel)
    return loader.construct_object(node, deep=True)


def _error_at(node: yaml.Node, rel: str, message: str, hint: str | None = None) -> ProjectError:
    """An error at `node`'s line and column of file `rel`."""
    mark = node.start_mark
    return ProjectError(message, path=rel, line=mark.line + 1, col=mark.column + 1, hint=hint)


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _check_scalar(node: yaml.Node, rel: str) -> None:
    """YAML 1.1 reads `1:30:00` as a number in base 60, and PyYAML does so in
    quadratic time: one scalar of 128,000 colons took seconds, of a million
    minutes. Project files never need a long one."""
    if (
        isinstance(node, yaml.ScalarNode)
        and node.tag in _NUMBER_TAGS
        and ":" in node.value
        and len(node.value) > 100
    ):
        raise _error_at(
            node,
            rel,
            f"a base-60 number of {len(node.value):,} characters (YAML 1.1 reads 1:30:00 as one)",
            "quote it to keep it as text",
        )


# marks[(*path, TEXT)]: the line where the text of the scalar at `path` starts
TEXT = "<text>"


def mark_for(marks: Marks, path: tuple) -> tuple[int | None, int | None]:
    """Line/col of `path`, falling back to the nearest enclosing key."""
    p = tuple(path)
    while p:
        if p in marks:
            return marks[p]
        p = p[:-1]
    return marks.get((), (None, None))
