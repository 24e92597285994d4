"""The drivers' SQL (execute/segment/drivers.py) computes the measures that
ml/association.py defines on raw values: tied ranks, NULLs left out, rare
categories pooled, near-unique columns skipped."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from segtool.execute.segment import drivers
from segtool.ml.association import cramers_v_of, rank_eta_squared_of


def table(con, labels, values, sql_type: str) -> None:
    con.execute(f"CREATE OR REPLACE TABLE t (segment_id INTEGER, c0 {sql_type})")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(zip(labels, values)))


def test_numeric_measure_matches_the_raw_values_with_ties_and_nulls():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400).tolist()
    # few distinct values (many ties), shifted by segment; some NULLs
    values = [
        None if i % 37 == 0 else int(rng.integers(0, 6)) + lab for i, lab in enumerate(labels)
    ]
    con = duckdb.connect()
    table(con, labels, values, "INTEGER")
    value, n, _ = drivers._numeric(con, "t", '"c0"', drivers.Column("m", "c0", "numeric"))
    raw = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    assert n == int((~np.isnan(raw)).sum())
    assert value == pytest.approx(rank_eta_squared_of(raw, np.array(labels)), abs=1e-9)
    assert value > 0.2  # the shift by segment shows


def test_categorical_measure_matches_the_raw_values_and_skips_near_unique_columns():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 600).tolist()
    values = [None if i % 29 == 0 else ["DE", "FR", "US", "IT"][(lab + int(rng.integers(0, 2))) % 4] for i, lab in enumerate(labels)]  # fmt: skip
    con = duckdb.connect()
    table(con, labels, values, "VARCHAR")
    value, n, _ = drivers._categorical(
        con, "t", '"c0"', drivers.Column("m", "c0", "categorical"), 600
    )
    assert n == sum(v is not None for v in values)
    assert value == pytest.approx(cramers_v_of(values, np.array(labels)), abs=1e-9)
    # more distinct values than TOP_VALUES are pooled as (other): same as pooling by hand
    many = [None if v is None else f"v{i % 80}" for i, v in enumerate(values)]
    table(con, labels, many, "VARCHAR")
    value, _, _ = drivers._categorical(
        con, "t", '"c0"', drivers.Column("m", "c0", "categorical"), 600
    )
    counts = {}
    for v in many:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    top = set(sorted(counts, key=lambda v: (-counts[v], v))[: drivers.TOP_VALUES])
    pooled = [None if v is None else (v if v in top else "(other)") for v in many]
    assert value == pytest.approx(cramers_v_of(pooled, np.array(labels)), abs=1e-9)
    # an id-like column (nearly one value per row) says nothing: skipped
    table(con, labels, [f"id{i}" for i in range(600)], "VARCHAR")
    got = drivers._categorical(con, "t", '"c0"', drivers.Column("m", "c0", "categorical"), 600)
    assert got == (None, 0, {})
