"""Drivers: which columns go with a segmentation's segments, and how much.

For every column of the models that feed a segmentation (its base model and
the models of its inputs), the association between the segment a user is in
and the user's value (ml/association.py: bias-corrected Cramér's V for
categorical columns, rank η² for numeric and date ones). Computed at each fit
(and each rules run) on at most SAMPLE users, stored in `_segtool.drivers`,
shown by `segtool show`, tested by `max_association` / `min_association`.

Left out: the key, PII columns (unless the segmentation declares them in
`allow_pii`), nested columns (lists, structs, maps), and categorical columns
that are nearly unique per user (identifiers, free text: they would "explain"
any segmentation). A categorical column's rarest values beyond TOP_VALUES
are pooled as "(other)".

Also here: traits, the values that set one segment apart (a category most
members share, a numeric column where members sit high or low), which make
labels that agree with the members (ml/labels.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from segtool.compile.segments import column_kind, feeding_models, hidden_columns  # noqa: F401 - re-exported
from segtool.compile.sql import quote_ident
from segtool.ml.association import CRAMERS_V, RANK_ETA2, cramers_v, rank_eta_squared
from segtool.state import tables
from segtool.state.db import column_types

SAMPLE = 100_000  # users the measures read (seeded by key hash); plenty for effect sizes
TOP_VALUES = 50
UNIQUE_SHARE = 0.5  # categorical columns with more distinct values than this share are skipped
DRIVERS = f"{tables.STATE}.drivers"


@dataclass
class Column:
    model: str
    name: str
    kind: str  # numeric | categorical | list


def candidate_columns(con, proj, seg, pii: dict[str, set[str]]) -> list[Column]:
    """The columns drivers and traits read, in model then column order."""
    cols: list[Column] = []
    for m, hidden in hidden_columns(proj, seg, pii).items():
        for name, typ in column_types(con, tables.MODELS, m).items():
            kind = column_kind(typ)
            if name == proj.key or name in hidden or kind is None:
                continue
            cols.append(Column(m, name, kind))
    return cols


def sample_table(con, proj, seg, cols: list[Column], segments_rel: str, limit: int = SAMPLE) -> str:
    """A temp table of (segment_id, one column per candidate) for at most
    `limit` users, chosen by key hash (the same users on every call)."""
    k = quote_ident(proj.key)
    models = list(dict.fromkeys(c.model for c in cols))
    alias = {m: f"m{i}" for i, m in enumerate(models)}
    select = ", ".join(
        f"{alias[c.model]}.{quote_ident(c.name)} AS {quote_ident(f'c{i}')}"
        for i, c in enumerate(cols)
    )
    joins = " ".join(
        f"LEFT JOIN {tables.model(m)} {alias[m]} ON {alias[m]}.{k} = s.{k}" for m in models
    )
    name = quote_ident(f"__segtool_drivers_{seg.name}")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {name} AS
        SELECT s.segment_id{", " + select if select else ""}
        FROM (SELECT * FROM {segments_rel} ORDER BY hash({k}), {k} LIMIT {int(limit)}) s {joins}"""
    )
    return name


@dataclass
class Profile:
    drivers: list[dict]  # strongest first
    traits: dict[int, list[dict]]  # segment id -> its traits, most telling first


MIN_SHARE = 0.5  # a value is a trait of a segment when at least half its members have it
MIN_LIFT = 1.5  # ... and it is 1.5x as common there as in the population
HIGH, LOW = 0.65, 0.35  # mean rank percentile of "high X" / "low X"


def compute(
    con, proj, seg, segments_rel: str, pii: dict[str, set[str]], only: set[str] | None = None
) -> Profile:
    """Every candidate column's association with the segment (drivers), and
    each segment's traits. `only`: just these columns ("col" or "model.col")."""
    cols = candidate_columns(con, proj, seg, pii)
    if only is not None:
        cols = [c for c in cols if c.name in only or f"{c.model}.{c.name}" in only]
    if not cols:
        return Profile([], {})
    sample = sample_table(con, proj, seg, cols, segments_rel)
    try:
        sizes, n_rows = _segment_sizes(con, sample)  # read once, for every column
        drivers: list[dict] = []
        found: list[tuple[Column, dict[int, list[dict]]]] = []
        for i, c in enumerate(cols):
            col = quote_ident(f"c{i}")
            if c.kind == "numeric":
                value, n, traits = _numeric(con, sample, col, c, sizes, n_rows)
                measure = RANK_ETA2
            elif c.kind == "categorical":
                value, n, traits = _categorical(con, sample, col, c, sizes, n_rows)
                measure = CRAMERS_V
            else:  # lists: traits only (a user has several values)
                value, n, traits = None, 0, _contains(con, sample, col, c, sizes, n_rows)
            if value is not None:
                drivers.append(
                    {"model": c.model, "column": c.name, "measure": measure,
                     "value": round(value, 4), "n": n}
                )  # fmt: skip
            found.append((c, traits))
        drivers.sort(key=lambda d: (-d["value"], d["model"], d["column"]))
        strength = {(d["model"], d["column"]): d["value"] for d in drivers}
        by_segment: dict[int, list[dict]] = {}
        for c, traits in found:
            for sid, items in traits.items():
                for t in items:
                    t["association"] = strength.get((c.model, c.name), 0.0)
                    by_segment.setdefault(sid, []).append(t)
        for items in by_segment.values():
            # columns that drive the segmentation first, then the sharpest trait
            items.sort(key=lambda t: (-t["association"], -t.get("lift", 1.0), t["column"]))
        where = {(c.model, c.name): quote_ident(f"c{i}") for i, c in enumerate(cols)}
        return Profile(drivers, fold_same_users(con, sample, by_segment, where))
    finally:
        con.execute(f"DROP TABLE IF EXISTS {sample}")


SAME_USERS = 0.95  # two traits whose users overlap this much (Jaccard) say one thing


def _membership(t: dict, col: str) -> tuple[str, object] | None:
    """SQL (with one ?) true for the sampled users a value trait is about;
    None for "high X" / "low X", which name no set of users."""
    if t.get("kind") == "contains":
        return f"list_contains(CAST({col} AS VARCHAR[]), ?)", str(t["value"])
    if t.get("kind") != "value":
        return None
    # as DuckDB writes the value: a categorical's (as _categorical read it), or
    # a numeric one's (_raw, from _numeric: a DECIMAL, a TIMESTAMP_NS exactly)
    return f"CAST({col} AS VARCHAR) = ?", t.get("_raw", str(t["value"]))


def fold_same_users(
    con, sample: str, by_segment: dict[int, list[dict]], where: dict[tuple[str, str], str]
) -> dict[int, list[dict]]:
    """Traits that pick out (nearly) the same users say one thing: users
    without orders have `orders 0`, `revenue 0` and `top category none`. Each
    segment keeps the first of them (the strongest driver's) and lists the
    others under `same_users`, so a label spends its words on different facts.
    Measured on the whole sample (the population), not only the segment."""
    tests: dict[tuple[str, str], int] = {}  # (SQL, value) -> its column in the query
    params: list = []
    slot: dict[int, int] = {}  # id(trait) -> the column of its users
    for items in by_segment.values():
        for t in items:
            m = _membership(t, where[(t["model"], t["column"])])
            if m is None:
                continue
            key = (m[0], repr(m[1]))
            if key not in tests:
                tests[key] = len(tests)
                params.append(m[1])
            slot[id(t)] = tests[key]
    masks = None
    if len(tests) > 1:
        select = ", ".join(f"coalesce({sql}, false) AS m{i}" for i, (sql, _) in enumerate(tests))
        try:
            rows = con.execute(f"SELECT {select} FROM {sample}", params).fetchnumpy()
            masks = [np.asarray(rows[f"m{i}"], dtype=bool) for i in range(len(tests))]
        except duckdb.Error:
            masks = None  # a value the cast cannot compare: traits stay as they are

    def same(a: dict, b: dict) -> bool:
        if masks is None or id(a) not in slot or id(b) not in slot:
            return False
        x, y = masks[slot[id(a)]], masks[slot[id(b)]]
        union = np.count_nonzero(x | y)
        return bool(union) and np.count_nonzero(x & y) / union >= SAME_USERS

    out: dict[int, list[dict]] = {}
    for sid, items in by_segment.items():
        kept: list[dict] = []
        for t in items:
            t.pop("_raw", None)
            home = next((k for k in kept if same(k, t)), None)
            if home is None:
                kept.append(t)
            else:
                home.setdefault("same_users", []).append(t)
        out[sid] = kept
    return out


def _words(column: str) -> str:
    return column.replace("_", " ")


_VAGUE = {"none", "null", "other", "unknown", "n/a", "na", "yes", "no", "true", "false", ""}


def _speaks_for_itself(value) -> bool:
    """A value that reads as a label on its own ("Video Games", "Kindle"),
    unlike "none", "0" or "FR", which need their column's name."""
    import re

    v = str(value).strip()
    return bool(re.search(r"[A-Za-z]{4,}", v)) and v.lower() not in _VAGUE


def _value_trait(c: Column, value, share: float, base: float, kind: str = "value") -> dict:
    # `text` is how the trait reads in a label (short); `show` adds the column
    if isinstance(value, bool) or str(value).lower() in ("true", "false"):
        truthy = str(value).lower() == "true"
        text = _words(c.name) if truthy else f"not {_words(c.name)}"
    elif _speaks_for_itself(value):
        text = str(value)
    elif kind == "contains":
        text = f"{_words(c.name)} incl. {value}"
    else:
        text = f"{_words(c.name)} {value}"
    return {
        "model": c.model, "column": c.name, "kind": kind, "value": value,
        "share": round(share, 4), "base_share": round(base, 4),
        "lift": round(share / base, 3) if base > 0 else None, "text": text,
    }  # fmt: skip


def _pick_values(rows, totals: dict[int, int], n_all: int, c: Column, kind="value"):
    """rows: (segment_id, value, users with it). The telling value per segment."""
    pop: dict = {}
    for _, v, n in rows:
        pop[v] = pop.get(v, 0) + n
    out: dict[int, list[dict]] = {}
    for sid, v, n in rows:
        share = n / max(totals.get(sid, 0), 1)
        base = pop[v] / max(n_all, 1)
        if v == "(other)" or share < MIN_SHARE or base <= 0 or share / base < MIN_LIFT:
            continue
        best = out.get(sid)
        if best is None or share / base > best[0]["lift"]:
            out[sid] = [_value_trait(c, v, share, base, kind)]
    return out


def _segment_sizes(con, sample: str) -> tuple[dict[int, int], int]:
    sizes = dict(con.execute(f"SELECT segment_id, count(*) FROM {sample} GROUP BY 1").fetchall())
    return sizes, int(sum(sizes.values()))


def _numeric(con, sample: str, col: str, c: Column, members: dict[int, int], n_members: int):
    """rank η² over the members with a value; traits over every member
    (`members`: per segment, `n_members`: in all): a segment where 1 of 51
    members had a last order read 'last order at 2023-03-20 (100% vs 0%)'."""
    rows = con.execute(
        f"""WITH r AS (
            SELECT segment_id, {col} AS x,
                   rank() OVER (ORDER BY {col}) + (count(*) OVER (PARTITION BY {col}) - 1) / 2.0 AS r
            FROM {sample} WHERE {col} IS NOT NULL)
        SELECT segment_id, count(*), sum(r), sum(r * r), median(x) FROM r GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    if not rows:
        return None, 0, {}
    a = np.array([r[1:4] for r in rows], dtype=np.float64)
    n_all = int(a[:, 0].sum())
    spread = a[:, 2].sum() - a[:, 1].sum() ** 2 / n_all  # of the ranks: 0 for one value
    # one value: nothing to measure, as for a categorical column (it was η² 0.00)
    value = rank_eta_squared(a[:, 0], a[:, 1], a[:, 2]) if spread > 1e-9 * a[:, 2].sum() else None
    ((pop_median,),) = con.execute(
        f"SELECT median({col}) FROM {sample} WHERE {col} IS NOT NULL"
    ).fetchall()
    traits: dict[int, list[dict]] = {}
    # one value most members share ("orders 0"): a trait like a category
    top = con.execute(
        f"""WITH c AS (SELECT segment_id, {col} AS x, count(*) AS n FROM {sample}
                       WHERE {col} IS NOT NULL GROUP BY ALL),
             p AS (SELECT x, sum(n) AS pn FROM c GROUP BY x)
        SELECT segment_id, x, n, pn, CAST(x AS VARCHAR) FROM c JOIN p USING (x)
        QUALIFY row_number() OVER (PARTITION BY segment_id ORDER BY n DESC, x) = 1"""
    ).fetchall()
    for sid, x, n, pn, as_text in top:
        share, pop_share = n / members[sid], pn / n_members
        if share >= MIN_SHARE and pop_share > 0 and share / pop_share >= MIN_LIFT:
            # _raw: the value as DuckDB writes it (Python's value of a
            # TIMESTAMP_NS has lost its nanoseconds), for fold_same_users
            traits[sid] = [{**_value_trait(c, _plain(x), share, pop_share), "_raw": as_text}]
    for sid, n, rsum, _, median in rows:
        if sid in traits or n < MIN_SHARE * members[sid]:
            continue  # high or low: said of a segment most of whose members have a value
        pct = (rsum / n - 0.5) / n_all  # mean rank as a percentile of the population
        med, pop_med = _plain(median), _plain(pop_median)
        if pct >= HIGH and _gt(median, pop_median):
            kind = "high"
        elif pct <= LOW and _gt(pop_median, median):
            kind = "low"
        else:
            continue
        # a date sits recent or early, a time of day late or early, not high
        # or low: "recent signup at", "late checkout time"
        word = _time_word(median, kind)
        traits[sid] = [{
            "model": c.model, "column": c.name, "kind": kind, "median": med,
            "base_median": pop_med, "percentile": round(float(pct), 3),
            "lift": round(abs(pct - 0.5) * 4, 3), "text": f"{word} {_words(c.name)}",
        }]  # fmt: skip
    return value, n_all, traits


def _time_word(x, kind: str) -> str:
    from datetime import date, time

    if isinstance(x, date):  # a datetime is a date
        return {"high": "recent", "low": "early"}[kind]
    if isinstance(x, time):
        return {"high": "late", "low": "early"}[kind]
    return kind


def _gt(a, b) -> bool:
    try:
        return a > b
    except TypeError:
        return False


def _plain(x):
    """JSON-friendly: decimals and numpy numbers as floats, dates as text."""
    from datetime import date, datetime, time, timedelta
    from decimal import Decimal

    if isinstance(x, Decimal):
        return float(x)
    if isinstance(x, (datetime, date, time)):
        return x.isoformat()
    if isinstance(x, timedelta):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def _categorical(con, sample: str, col: str, c: Column, members: dict[int, int], n_members: int):
    ((distinct,),) = con.execute(f"SELECT count(DISTINCT {col}) FROM {sample}").fetchall()
    if distinct < 2 or distinct > max(TOP_VALUES, UNIQUE_SHARE * n_members):
        return None, 0, {}
    rows = con.execute(
        f"""WITH v AS (SELECT CAST({col} AS VARCHAR) AS v, count(*) AS n FROM {sample}
                       WHERE {col} IS NOT NULL GROUP BY 1),
             top AS (SELECT v FROM v ORDER BY n DESC, v LIMIT {TOP_VALUES})
        SELECT segment_id, coalesce(t.v, '(other)') AS value, count(*)
        FROM {sample} s LEFT JOIN top t ON t.v = CAST(s.{col} AS VARCHAR)
        WHERE s.{col} IS NOT NULL GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()
    if not rows:
        return None, 0, {}
    segs = {s: i for i, s in enumerate(sorted({r[0] for r in rows}))}
    vals = {v: i for i, v in enumerate(sorted({r[1] for r in rows}))}
    table = np.zeros((len(segs), len(vals)))
    for s, v, n in rows:
        table[segs[s], vals[v]] = n
    # Cramér's V over the members with a value; traits' shares over every member
    traits = _pick_values(rows, members, n_members, c)
    return cramers_v(table), int(table.sum()), traits


def _contains(
    con, sample: str, col: str, c: Column, sizes: dict[int, int], n_all: int
) -> dict[int, list[dict]]:
    """Traits of a list column: a value at least half the members' lists hold.
    `sizes`, `n_all`: members per segment and in all (_segment_sizes)."""
    rows = con.execute(
        f"""WITH u AS (SELECT segment_id, row_number() OVER () AS row, {col} AS l FROM {sample}),
             e AS (SELECT DISTINCT segment_id, row, CAST(unnest(l) AS VARCHAR) AS v FROM u),
             top AS (SELECT v FROM e GROUP BY v ORDER BY count(*) DESC, v LIMIT {TOP_VALUES})
        SELECT segment_id, v, count(*) FROM e SEMI JOIN top USING (v) GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()
    return _pick_values(rows, sizes, n_all, c, kind="contains")


# ----------------------------------------------------------------------------- storage


def save(con, name: str, run_id: int, drivers: list[dict]) -> None:
    con.execute(f"DELETE FROM {DRIVERS} WHERE segmentation = ?", [name])
    if drivers:
        con.executemany(
            f"INSERT INTO {DRIVERS} VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                [name, run_id, d["model"], d["column"], d["measure"], d["value"], d["n"]]
                for d in drivers
            ],
        )


def load(con, name: str) -> tuple[list[dict], int | None]:
    """The stored drivers of a segmentation and the run that computed them."""
    from segtool.state.db import table_exists

    if not table_exists(con, tables.STATE, "drivers"):
        return [], None
    rows = con.execute(
        f"SELECT run_id, model, column_name, measure, value, n_rows FROM {DRIVERS} "
        "WHERE segmentation = ? ORDER BY value DESC, model, column_name",
        [name],
    ).fetchall()
    drivers = [
        {"model": r[1], "column": r[2], "measure": r[3], "value": r[4], "n": r[5]} for r in rows
    ]
    return drivers, (rows[0][0] if rows else None)
