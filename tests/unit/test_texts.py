"""Rendering texts: what a render's time limit reports, wherever it fires."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from segtool.compile.jinja import RenderTimeout
from segtool.errors import ProjectError
from segtool.execute import texts


def test_a_time_limit_that_fires_after_a_render_returned_names_the_user(monkeypatch):
    """The clock for a user runs until the next user's rearm: when it ran out
    just after render() returned (here: while the text was cut), a raw
    RenderTimeout left the loop, an 'internal error' with no user."""
    proj = SimpleNamespace(key="user_id")
    spec = SimpleNamespace(name="story", max_chars=100)
    real = texts.truncate

    def truncate(text, max_chars):
        if text == "user 2":
            raise RenderTimeout("took longer than 2s")
        return real(text, max_chars)

    monkeypatch.setattr(texts, "truncate", truncate)
    rows = [{"user_id": i} for i in (1, 2, 3)]
    with pytest.raises(ProjectError) as info:
        texts.render_texts(proj, spec, rows, lambda ctx: f"user {ctx['key']}")
    assert str(info.value).startswith("text 'story', user_id 2: rendering took longer than 2s")


def test_texts_render_in_order_with_their_cut_flags():
    proj = SimpleNamespace(key="user_id")
    spec = SimpleNamespace(name="story", max_chars=8)
    rows = [{"user_id": 1, "__row_hash": 5}, {"user_id": 2, "__row_hash": 6}]
    out = texts.render_texts(proj, spec, rows, lambda ctx: f"user\n {ctx['key']} " * ctx["key"])
    assert [cut for _, cut in out] == [False, True]
    assert out[0][0] == "user 1"


def test_model_rows_are_the_values_to_pylist_gives():
    """model_rows turns timestamps and dates into Python through NumPy (a
    fast path): every type, null and edge must come out as PyArrow's own."""
    import datetime as dt

    import pyarrow as pa

    stamp = dt.datetime(2024, 2, 29, 23, 59, 58, 123456)
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "ts_us": pa.array([stamp, None, dt.datetime(9999, 12, 31)], pa.timestamp("us")),
            "ts_ms": pa.array([stamp.replace(microsecond=123000), None, stamp], pa.timestamp("ms")),
            "ts_s": pa.array([stamp.replace(microsecond=0), stamp, None], pa.timestamp("s")),
            "ts_ns": pa.array([stamp, None, stamp], pa.timestamp("ns")),
            "ts_tz": pa.array([stamp, None, stamp], pa.timestamp("us", tz="Europe/Madrid")),
            "day": pa.array([dt.date(1, 1, 1), None, dt.date(2024, 2, 29)], pa.date32()),
            "day64": pa.array([dt.date(2024, 2, 29), None, dt.date(1970, 1, 1)], pa.date64()),
            "nested": pa.array(
                [[{"at": stamp}], None, []], pa.list_(pa.struct([("at", pa.timestamp("us"))]))
            ),
        }
    )
    assert texts.model_rows(table) == table.to_pylist()
    assert texts.model_rows(table.slice(1, 2)) == table.slice(1, 2).to_pylist()
    assert texts.model_rows(table.slice(0, 0)) == []
    fast = texts.model_rows(table)[0]
    assert type(fast["ts_us"]) is dt.datetime and type(fast["day"]) is dt.date


def test_model_rows_reports_a_timestamp_out_of_range_as_pyarrow_does():
    """Year 10000 is no datetime: NumPy would give an int, which a template
    would read as a number; the column goes back to PyArrow, which raises."""
    import pyarrow as pa

    table = pa.table({"at": pa.array([253402300800 * 10**6 + 5], pa.timestamp("us"))})
    with pytest.raises(OverflowError):
        table.to_pylist()
    with pytest.raises(OverflowError):
        texts.model_rows(table)


def test_model_rows_reads_every_chunk_and_imports_no_pandas():
    """PyArrow's NumPy and null-filling paths import pandas (~0.35 s, in
    each render process); the buffers are read directly."""
    import subprocess
    import sys

    # built by DuckDB, as a run's rows are (pa.array of datetimes imports pandas)
    code = """
import sys, duckdb, pyarrow as pa
from segtool.execute.texts import model_rows
a = duckdb.sql("SELECT * FROM (VALUES (TIMESTAMP '2024-01-01', NULL::DATE),"
               " (NULL, DATE '2024-01-02')) v(stamp, day)").to_arrow_table()
b = duckdb.sql("SELECT * FROM (VALUES (NULL::TIMESTAMP, DATE '1970-01-01'),"
               " (TIMESTAMP '1999-12-31 23:59', NULL)) v(stamp, day)").to_arrow_table()
table = pa.concat_tables([a, b, a.slice(1)])
assert table.column(0).num_chunks == 3
rows = model_rows(table)
assert "pandas" not in sys.modules, "model_rows imported pandas"
assert rows == table.to_pylist(), (rows, table.to_pylist())
assert model_rows(table.slice(1, 3)) == table.slice(1, 3).to_pylist()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
