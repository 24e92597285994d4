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


def measure(con, column, col='"c0"', rel="t"):
    """drivers' measure and traits of one column of `rel`, shares over every
    member of each segment (as drivers.compute calls them)."""
    fn = drivers._numeric if column.kind == "numeric" else drivers._categorical
    return fn(con, rel, col, column, *drivers._segment_sizes(con, rel))


def test_numeric_measure_matches_the_raw_values_with_ties_and_nulls():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400).tolist()
    # few distinct values (many ties), shifted by segment; some NULLs
    values = [
        None if i % 37 == 0 else int(rng.integers(0, 6)) + lab for i, lab in enumerate(labels)
    ]
    con = duckdb.connect()
    table(con, labels, values, "INTEGER")
    value, n, _ = measure(con, drivers.Column("m", "c0", "numeric"))
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
    value, n, _ = measure(con, drivers.Column("m", "c0", "categorical"))
    assert n == sum(v is not None for v in values)
    assert value == pytest.approx(cramers_v_of(values, np.array(labels)), abs=1e-9)
    # more distinct values than TOP_VALUES are pooled as (other): same as pooling by hand
    many = [None if v is None else f"v{i % 80}" for i, v in enumerate(values)]
    table(con, labels, many, "VARCHAR")
    value, _, _ = measure(con, drivers.Column("m", "c0", "categorical"))
    counts = {}
    for v in many:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    top = set(sorted(counts, key=lambda v: (-counts[v], v))[: drivers.TOP_VALUES])
    pooled = [None if v is None else (v if v in top else "(other)") for v in many]
    assert value == pytest.approx(cramers_v_of(pooled, np.array(labels)), abs=1e-9)
    # an id-like column (nearly one value per row) says nothing: skipped
    table(con, labels, [f"id{i}" for i in range(600)], "VARCHAR")
    got = measure(con, drivers.Column("m", "c0", "categorical"))
    assert got == (None, 0, {})


def test_traits_of_the_same_users_fold_into_the_strongest():
    """Users without orders have orders 0, revenue 0 and no top category: one
    fact, one trait (the first), the others listed under same_users; a trait
    of other users (most, not all, of them) stays its own."""
    from decimal import Decimal

    con = duckdb.connect()
    con.execute(
        "CREATE TABLE s (segment_id INTEGER, c0 VARCHAR, c1 BIGINT, c2 DECIMAL(18, 2),"
        " c3 VARCHAR, c4 VARCHAR[])"
    )
    rows = []
    for i in range(200):
        buyer = i >= 40
        # the first 40 users never ordered; 36 of them (and 2 buyers) are from DE
        country = "DE" if (i < 36 or i in (50, 51)) else "US"
        rows.append(
            (0 if i < 50 else 1, "Books" if buyer else "none", 3 if buyer else 0,
             Decimal("12.50") if buyer else Decimal("0.00"), country,
             ["Kindle"] if buyer else [])
        )  # fmt: skip
    con.executemany("INSERT INTO s VALUES (?, ?, ?, ?, ?, ?)", rows)
    col = {("m", n): f'"c{i}"' for i, n in enumerate(["top", "orders", "revenue", "country", "l"])}

    def value(name, v, **extra):
        return {"model": "m", "column": name, "kind": "value", "value": v, **extra}

    traits = {
        0: [
            value("top", "none"),
            value("orders", 0, _raw="0"),
            value("country", "DE"),
            {"model": "m", "column": "orders", "kind": "low", "text": "low orders"},
            value("revenue", 0.0, _raw="0.00"),
        ],
        1: [
            value("top", "Books"),
            {"model": "m", "column": "l", "kind": "contains", "value": "Kindle"},
        ],
    }
    out = drivers.fold_same_users(con, "s", traits, col)
    kept = out[0]
    assert [t["column"] for t in kept] == ["top", "country", "orders"]
    assert [t["column"] for t in kept[0]["same_users"]] == ["orders", "revenue"]
    assert "same_users" not in kept[1]  # DE: 38 users, 36 shared with the 40 non-buyers
    assert [t["column"] for t in out[1]] == ["top"]  # Kindle owners are the Books buyers
    assert out[1][0]["same_users"][0]["kind"] == "contains"
    every = [*kept, *kept[0]["same_users"], *out[1], *out[1][0]["same_users"]]
    assert all("_raw" not in t for t in every)  # JSON-bound: no raw values left


def test_a_date_column_sits_recent_or_early():
    from datetime import date, time, timedelta

    con = duckdb.connect()
    labels = [i % 2 for i in range(200)]
    start = date(2023, 1, 1)
    days = [start + timedelta(days=(i if lab else 400 + i)) for i, lab in enumerate(labels)]
    table(con, labels, days, "DATE")
    _, _, traits = measure(con, drivers.Column("m", "signup_at", "numeric"))
    assert traits[0][0]["kind"] == "high" and traits[0][0]["text"] == "recent signup at"
    assert traits[1][0]["kind"] == "low" and traits[1][0]["text"] == "early signup at"
    # a time of day sits late or early
    hours = [time(9 + 8 * lab, i % 60) for i, lab in enumerate(labels)]
    table(con, labels, hours, "TIME")
    _, _, traits = measure(con, drivers.Column("m", "checkout", "numeric"))
    assert traits[1][0]["text"] == "late checkout" and traits[0][0]["text"] == "early checkout"


def test_numeric_traits_fold_by_the_value_duckdb_stores():
    """The traits _numeric finds fold with others through their value as
    DuckDB writes it: a TIMESTAMP_NS keeps its nanoseconds (Python's value
    would not, and would match no row)."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE s (segment_id INTEGER, c0 VARCHAR, c1 TIMESTAMP_NS, c2 DECIMAL(18, 2))"
    )
    rows = []
    for i in range(300):
        a = i < 100  # segment 0: the users of plan 'A', all signed at one instant
        stamp = "2024-01-01 10:00:00.123456789" if a else f"2024-02-{1 + i % 27:02d} 10:00:00"
        rows.append((0 if a else 1, "A" if a else "B", stamp, "0.00" if a else f"{i}.50"))
    con.executemany(
        "INSERT INTO s VALUES (?, ?, CAST(? AS TIMESTAMP_NS), CAST(? AS DECIMAL(18, 2)))", rows
    )
    cols = [
        drivers.Column("m", "plan", "categorical"),
        drivers.Column("m", "signed", "numeric"),
        drivers.Column("m", "spent", "numeric"),
    ]
    traits: dict[int, list[dict]] = {}
    _, _, t0 = measure(con, cols[0], '"c0"', "s")
    _, _, t1 = measure(con, cols[1], '"c1"', "s")
    _, _, t2 = measure(con, cols[2], '"c2"', "s")
    for found in (t0, t1, t2):
        for sid, items in found.items():
            traits.setdefault(sid, []).extend(items)
    where = {("m", c.name): f'"c{i}"' for i, c in enumerate(cols)}
    out = drivers.fold_same_users(con, "s", traits, where)
    kept = out[0]
    assert [t["column"] for t in kept] == ["plan"], kept
    assert [t["column"] for t in kept[0]["same_users"]] == ["signed", "spent"]


def test_a_categorical_trait_counts_every_member():
    """51 members, one of them FR, the rest NULL: 'country FR (100% vs 2%)'."""
    con = duckdb.connect()
    labels = [0] * 51 + [1] * 49
    values = ["FR"] + [None] * 50 + ["DE"] * 30 + ["IT"] * 19
    table(con, labels, values, "VARCHAR")
    _, _, traits = measure(con, drivers.Column("m", "country", "categorical"))
    assert 0 not in traits
    assert traits[1][0]["value"] == "DE"
