"""One user's text: the template environment of a text, rendering a batch
of model rows (each bounded in time) and the Arrow batch the texts tables are
filled from. Used by the render stage (render.py), its worker processes
(render_pool.py) and `segtool assign`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import jinja2

from segtool.compile.jinja import RenderTimeout, make_env, renderer, time_limit
from segtool.errors import ProjectError


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


def model_rows(table) -> list[dict]:
    """An Arrow table's rows as dicts, the values `Table.to_pylist()` gives.

    PyArrow makes a datetime of a timestamp one value at a time (~3 us each:
    the four timestamp columns of examples/ecommerce's user_features were 60%
    of turning its rows into Python); NumPy makes the same datetimes in C
    (_datetimes). Only where they are the same values: a timestamp without a
    time zone in s, ms or us (a datetime holds no ns), and a date32."""
    import pyarrow as pa

    columns = []
    for col in table.columns:
        t = col.type
        values = None
        if pa.types.is_timestamp(t) and t.tz is None and t.unit != "ns":
            values = _datetimes(col, t.unit, "datetime")
        elif pa.types.is_date32(t):
            values = _datetimes(col, "D", "date")
        columns.append(values if values is not None else col.to_pylist())
    names = table.column_names
    return [dict(zip(names, row)) for row in zip(*columns)] if columns else []


def _datetimes(col, unit: str, kind: str) -> list | None:
    """A timestamp or date32 column's values as datetimes or dates, read from
    the Arrow buffers (PyArrow's own NumPy and null-filling paths import
    pandas, ~0.35 s, in a run that has no other use for it). None when a
    value is out of datetime's range (NumPy would give an int, which a
    template would read as a number): PyArrow then raises, as before."""
    import datetime

    import numpy as np

    out: list = []
    cls = datetime.datetime if kind == "datetime" else datetime.date
    for arr in col.chunks:
        n, off = len(arr), arr.offset
        validity, data = arr.buffers()[:2]
        if n == 0:
            continue
        if data is None:  # no values at all (an all-null array may carry none)
            out += [None] * n
            continue
        width = np.int32 if unit == "D" else np.int64
        ints = np.frombuffer(data, dtype=width, count=off + n)[off:].astype(np.int64)
        nulls = []
        if arr.null_count:
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
            nulls = np.flatnonzero(bits[off : off + n] == 0).tolist()
            ints[nulls] = 0  # a null slot holds any value
        values = ints.view(f"datetime64[{unit}]").astype(object).tolist()
        for i in nulls:
            values[i] = None
        if not all(type(v) is cls or v is None for v in values):
            return None
        out += values
    return out


def render_rows(proj, spec, rows: list[dict], render) -> tuple[list[tuple], int, int]:
    """Render a batch: (key, row_hash, text_hash, text, n_chars, truncated).
    Each user's render is bounded in time (compile/jinja.py)."""
    keys = [row[proj.key] for row in rows]
    row_hashes = [row.get("__row_hash") for row in rows]  # present for the texts table
    return text_rows(keys, row_hashes, render_texts(proj, spec, rows, render))


def render_texts(proj, spec, rows: list[dict], render) -> list[tuple[str, bool]]:
    """Each row's text (one line, cut to max_chars) and whether it was cut."""
    key = proj.key
    out = []
    row = None
    try:
        with time_limit() as rearm:
            for row in rows:
                ctx = dict(row)
                ctx.pop("__row_hash", None)  # present when rendering for the texts table
                ctx["key"] = row[key]
                rearm()
                try:
                    text = render(ctx)
                except ProjectError as exc:
                    exc.message = f"text '{spec.name}', {key} {row[key]!r}: {exc.message}"
                    raise
                text = " ".join(text.split())  # templates are multi-line; the text is one line
                out.append(truncate(text, spec.max_chars))
    except RenderTimeout as exc:  # the clock ran out outside render(): just after it returned
        who = f", {key} {row[key]!r}" if row is not None else ""
        raise ProjectError(f"text '{spec.name}'{who}: rendering {exc}") from exc
    return out


def text_rows(
    keys: list, row_hashes: list, texts: list[tuple[str, bool]]
) -> tuple[list[tuple], int, int]:
    """render_texts' result as the texts table's rows, with the numbers of
    cut and of empty texts."""
    out = [
        (k, rh, text_hash(text), text, len(text), cut)
        for k, rh, (text, cut) in zip(keys, row_hashes, texts, strict=True)
    ]
    return out, sum(cut for _, cut in texts), sum(not text for text, _ in texts)


def rendered_batch(out: list[tuple]):
    """render_rows' tuples as the frame the texts tables are filled from."""
    import numpy as np

    from segtool.state.frames import frame

    return frame(
        {
            "k": [r[0] for r in out],
            "row_hash": np.fromiter((r[1] for r in out), dtype=np.uint64, count=len(out)),
            "text_hash": [r[2] for r in out],
            "text": [r[3] for r in out],
            "n_chars": np.fromiter((r[4] for r in out), dtype=np.int32, count=len(out)),
            "truncated": [r[5] for r in out],
        }
    )
