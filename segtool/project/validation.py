"""Turn pydantic validation errors into ProjectErrors with file:line:col and hints."""

from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from segtool.errors import ProjectError, did_you_mean
from segtool.project.yamlio import TEXT, Marks, mark_for

M = TypeVar("M", bound=BaseModel)


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Follow field annotations along `loc` to the model that holds its last element."""
    current: Any = cls
    for part in loc:
        current = _unwrap_to_model(current, part)
        if current is None:
            return None
    return _first_model(current)


def _first_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _unwrap_to_model(tp: Any, part: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is dict and not isinstance(part, int):
        args = typing.get_args(tp)
        return args[1] if len(args) == 2 else None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            got = _unwrap_to_model(arg, part)
            if got is not None:
                return got
        return None
    model = _first_model(tp) if not isinstance(part, int) else None
    if isinstance(part, int):
        # list index: element type
        for arg in typing.get_args(tp) or ():
            return arg
        return None
    if model is not None and isinstance(part, str):
        for fname, field in model.model_fields.items():
            if part in (fname, field.alias):
                return field.annotation
        return None
    origin = typing.get_origin(tp)
    if origin in (dict, typing.Dict):  # noqa: UP006
        args = typing.get_args(tp)
        return args[1] if len(args) == 2 else None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            got = _unwrap_to_model(arg, part)
            if got is not None:
                return got
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _clean_loc(loc: tuple) -> tuple:
    # pydantic inserts union member names ("int", "function-after[...]") into loc; drop them
    return tuple(
        p
        for p in loc
        if isinstance(p, int)
        or not (
            isinstance(p, str)
            and ("[" in p or p in {"str", "int", "float", "bool", "dict", "list", "literal"})
        )
    )


def validate_spec(
    cls: type[M], data: Any, *, marks: Marks, rel: str, base: tuple = ()
) -> tuple[M | None, list[ProjectError]]:
    """Validate `data` (found at `base` in file `rel`) as `cls`.

    Returns the spec (with file/line attached) or the list of errors."""
    try:
        spec = cls.model_validate(data)
    except ValidationError as exc:
        errors = []
        seen = set()
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            line, col = mark_for(marks, base + loc)
            where = ".".join(str(p) for p in loc) or cls.__name__
            if err["type"] == "extra_forbidden":
                key = loc[-1]
                parent = _model_at(cls, loc[:-1])
                valid = _field_names(parent) if parent else []
                msg = f"unknown key '{key}'"
                hint = did_you_mean(str(key), valid) if valid else None
            elif err["type"] == "missing":
                msg = f"missing required key '{loc[-1]}'"
                hint = None
                line, col = mark_for(marks, base + loc[:-1])
            else:
                text = err["msg"].removeprefix("Value error, ")
                msg = f"{where}: {text}" if loc else text
                hint = None
            k = (msg, line)
            if k in seen:
                continue
            seen.add(k)
            errors.append(ProjectError(msg, path=rel, line=line, col=col, hint=hint))
        return None, errors
    line, _ = mark_for(marks, base)
    _attach(spec, rel, marks, base)
    return spec, []


def _attach(obj: Any, rel: str, marks: Marks, path: tuple) -> None:
    """Set file/line on every nested Spec so later errors can point at it."""
    from segtool.project.specs import Spec

    if isinstance(obj, Spec):
        line, _ = mark_for(marks, path)
        keys = {fname: field.alias or fname for fname, field in type(obj).model_fields.items()}
        texts = {
            f: marks[(*path, k, TEXT)][0] for f, k in keys.items() if (*path, k, TEXT) in marks
        }
        obj.at(rel, line, texts)
        for fname, key in keys.items():
            _attach(getattr(obj, fname), rel, marks, path + (key,))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            _attach(item, rel, marks, path + (i,))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _attach(v, rel, marks, path + (k,))


def require_mapping(data: Any, rel: str) -> list[ProjectError]:
    if data is None or isinstance(data, dict):
        return []
    return [
        ProjectError(
            f"expected a mapping at the top of the file, got {type(data).__name__}",
            path=rel,
            line=1,
        )
    ]
