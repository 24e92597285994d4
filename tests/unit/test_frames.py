"""state/frames.py: columns to DuckDB and back without pandas."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np
import pytest

from segtool.state.frames import arrow_matrix, arrow_numpy, first_column, frame, registered


def test_frame_types_reach_duckdb():
    con = duckdb.connect()
    cols = {
        "k": np.array(["a", "b"], dtype=object),
        "h": np.array([2**64 - 1, 1], dtype=np.uint64),
        "n": np.array([1, 2], dtype=np.int32),
        "f": [True, False],
        "v": np.array([[1.5, 2.0], [3.0, 4.0]], dtype=np.float32),
    }
    with registered(con, "t", cols):
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE t)").fetchall())
        rows = con.execute("SELECT * FROM t ORDER BY k").fetchall()
    assert types == {
        "k": "VARCHAR",
        "h": "UBIGINT",
        "n": "INTEGER",
        "f": "BOOLEAN",
        "v": "FLOAT[2]",
    }
    assert rows[0][:4] == ("a", 2**64 - 1, 1, True) and list(rows[1][4]) == [3.0, 4.0]
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT * FROM t")  # unregistered after the block
    assert len(frame({"x": np.arange(3)})) == 3


def test_first_column_and_arrow_views_respect_offsets():
    con = duckdb.connect()
    assert first_column(con, "SELECT 'x' || range AS s FROM range(3)").tolist() == [
        "x0",
        "x1",
        "x2",
    ]
    batch = (
        con.sql("SELECT range::BIGINT AS o, [range, range * 2]::FLOAT[2] AS v FROM range(10)")
        .to_arrow_table()
        .combine_chunks()
        .to_batches()[0]
        .slice(3, 4)
    )
    assert arrow_numpy(batch.column(0), np.int64).tolist() == [3, 4, 5, 6]
    assert arrow_matrix(batch.column(1), 2).tolist() == [[3, 6], [4, 8], [5, 10], [6, 12]]
    with_null = con.sql("SELECT * FROM (VALUES (1::BIGINT), (NULL)) t(x)").to_arrow_table()
    with pytest.raises(ValueError, match="nulls: 1"):
        arrow_numpy(with_null.column(0).chunk(0), np.int64)
    with pytest.raises(ValueError, match="as float32"):
        arrow_numpy(batch.column(0), np.float32)  # 64-bit numbers are not float32s


def test_no_pandas_on_the_way():
    code = (
        "import sys, duckdb, numpy as np\n"
        "from segtool.state.frames import registered, first_column, arrow_matrix, arrow_batches\n"
        "con = duckdb.connect()\n"
        "with registered(con, 't', {'k': np.arange(3), 'v': np.ones((3, 4), np.float32)}):\n"
        "    b = next(iter(arrow_batches(con.sql('SELECT k, v FROM t'), 10)))\n"
        "    arrow_matrix(b.column(1), 4); first_column(con, 'SELECT k FROM t')\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_failing_statement_inside_keeps_its_own_error():
    """After a failed statement DuckDB refuses even `unregister` until the
    transaction is rolled back; the error raised is still the first one."""
    import uuid

    con = duckdb.connect()
    con.execute("CREATE TABLE s (k UUID)")
    con.execute("BEGIN")
    with pytest.raises(duckdb.BinderException, match="Cannot compare values of type UUID"):
        with registered(con, "t", {"k": [uuid.uuid4()]}):  # a UUID arrives as text
            con.execute("DELETE FROM s WHERE k IN (SELECT k FROM t)")
    con.execute("ROLLBACK")
