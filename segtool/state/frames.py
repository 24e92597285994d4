"""Columns handed to DuckDB as a table it can scan, without pandas.

pyarrow imports pandas (about 0.6 s) the first time it converts a NumPy array
or a Python list, which was a tenth of an incremental run's time at 200,000
users. Polars builds the same Arrow columns without it, and DuckDB scans a
Polars frame directly; so every table segtool registers is built here.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def frame(columns: dict[str, Any]):
    """A Polars frame of `columns`: 1-D NumPy arrays keep their dtype, 2-D
    float arrays become fixed-size arrays (DuckDB FLOAT[dim]), lists are
    typed from their values."""
    import numpy as np
    import polars as pl

    series = []
    for name, values in columns.items():
        if isinstance(values, np.ndarray) and values.ndim == 2:
            dtype = pl.Array(
                pl.Float32 if values.dtype == np.float32 else pl.Float64, values.shape[1]
            )
            series.append(pl.Series(name, values, dtype=dtype))
        elif isinstance(values, np.ndarray) and values.dtype == object:
            series.append(pl.Series(name, _plain(values.tolist())))  # keys as str (or mixed)
        elif isinstance(values, list):
            series.append(pl.Series(name, _plain(values)))
        else:
            series.append(pl.Series(name, values))
    return pl.DataFrame(series)


_PLAIN = (
    str,
    int,
    float,
    bool,
    bytes,
    datetime.date,
    datetime.datetime,
    datetime.timedelta,
    decimal.Decimal,
)


def _plain(values: list) -> list:
    """Values Polars can type; others (a UUID key) as text, which DuckDB
    compares with and casts back to the column's type."""
    if all(v is None or isinstance(v, _PLAIN) for v in values):
        return values
    return [v if v is None or isinstance(v, _PLAIN) else str(v) for v in values]


@contextmanager
def registered(con, name: str, columns) -> Iterator[str]:
    """`columns` (a dict for frame(), or a ready frame or Arrow table)
    scannable as `name` on `con` inside the block."""
    con.register(name, frame(columns) if isinstance(columns, dict) else columns)
    try:
        yield name
    except BaseException:
        # an aborted transaction refuses even this: the first error is the one to see
        with suppress(Exception):
            con.unregister(name)
        raise
    con.unregister(name)


def first_column(con, sql: str) -> np.ndarray:
    """The first column of a query as a NumPy array (DuckDB's own converter;
    strings come as an object array)."""
    import numpy as np

    result = con.sql(sql).fetchnumpy()
    return np.asarray(next(iter(result.values())))


# key types NumPy has no exact type for: HUGEINT and DECIMAL became float64
# (keys above 2^53 fell together: 400 users kept one segment row), UUID an
# object array of uuid.UUID that Polars cannot write
_KEYS_AS_TEXT = ("HUGEINT", "UHUGEINT", "DECIMAL", "UUID")


def key_column(con, sql: str) -> np.ndarray:
    """The first column of a query, user keys: as first_column, but keys of
    a type NumPy cannot hold exactly come as text (every table that stores
    keys casts them back to the model's key type)."""
    from segtool.compile.sql import quote_ident

    rel = con.sql(sql)
    if str(rel.types[0]).startswith(_KEYS_AS_TEXT):
        col = quote_ident(rel.columns[0])
        return first_column(con, f"SELECT CAST({col} AS VARCHAR) FROM ({sql})")
    import numpy as np

    return np.asarray(next(iter(rel.fetchnumpy().values())))  # the relation bound above


def arrow_batches(relation, rows: int):
    """A DuckDB relation's result as Arrow record batches of up to `rows`
    rows, streamed (to_arrow_reader since DuckDB 1.5; fetch_record_batch,
    deprecated since, before)."""
    reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
    return reader(rows)


def arrow_numpy(arr, dtype) -> np.ndarray:
    """A null-free Arrow array of fixed-width numbers as NumPy, zero copy
    (pyarrow's to_numpy imports pandas)."""
    import numpy as np

    dtype = np.dtype(dtype)
    if arr.null_count or arr.type.bit_width != dtype.itemsize * 8:
        raise ValueError(f"cannot view {arr.type} (nulls: {arr.null_count}) as {dtype}")
    return np.frombuffer(
        arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize
    )


def arrow_matrix(arr, dim: int) -> np.ndarray:
    """A null-free Arrow fixed-size list of float32 (DuckDB FLOAT[dim]) as an
    (n, dim) NumPy array, zero copy (`flatten()` imports pyarrow.compute)."""
    import numpy as np

    values = arr.values.slice(arr.offset * dim, len(arr) * dim)
    return arrow_numpy(values, np.float32).reshape(len(arr), dim)
