"""Differential test of incremental runs: a project brought up to date by a
sequence of plain `segtool run`s, one after each random edit of its CSV data,
holds the same state as a project run once, from scratch, on the final data.

Each case starts from the tiny project (tests/fixtures.py), runs it, then
applies 3-4 seeded random edits (new users with or without orders, new
orders, changed countries and signup dates, deleted users with their
orders, users replaced by others under the same ids, a third of the users
buying a lot in one category (the drift policy then refits), deleted orders,
changed order amounts, a mix), each followed by `segtool run`. A second
project with the same files and only the final data is run once. Then,
compared row by row:

- every SQL model in `main`, by its rows: `stg_orders`, a view, and
  `user_features`, a table; in the `incremental` variant `user_features` is
  an incremental model with `unique_key` and `delete_not_in=ref('stg_users')`
  (a view) whose `is_incremental()` branch selects every user whose own row
  or whose orders changed, so that no edit is a "past row" its branch
  cannot see (docs/project.md, "Edits to past rows ... are not seen by such
  a branch");
- the texts table: key, row_hash (a hash of the model row), text_hash, text,
  n_chars, truncated (not run_id: the run that rendered it);
- each user's cached vector, looked up by their text hash (the hashing
  encoder is deterministic); the cache may hold more vectors (texts no
  user has any more) until `segtool clean --cache`;
- `_segtool.inputs__behaviour`: each user's input hash (feature values and
  text hash), what the next run compares to decide who is assigned again;
- rule segments `segments.lifecycle`: user_id, segment_id, segment;
- the clustering `segments.behaviour`: a refit on other data legitimately
  gives other clusters, and `--full-refresh` does not
  refit a clustering nor re-assign users whose inputs are unchanged
  (plan/decide.py `clustering_refit`, `clustering_update`), so it is compared
  instead with `segtool assign` of every final user's row with the STORED
  model: segment_id and segment equal, distance within float noise; its user
  set equals the fresh project's.

Also checked, within the incremental project: the open history spells are
the current assignments (by segment id: a spell keeps the label its segment
had when it opened), and no user who left keeps one.

Not compared: run ids and timestamps, the history (it records the path, not
the state), the segment catalog and drivers of the clustering (fit-time
profiles), and fitted models (the drift policy may refit at any step).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

from tests.conftest import ProjectDir, write_files
from tests.fixtures import GROUPS, data_files, tiny_project_files

COUNTRIES = ("DE", "FR", "US", "IT")

# ----------------------------------------------------------------- the data, edited in memory


@dataclass
class ShopData:
    """users.csv and orders.csv as rows; amounts and times kept as written."""

    users: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (signup_at, country)
    orders: dict[int, dict] = field(default_factory=dict)  # order_id -> row

    @classmethod
    def tiny(cls) -> ShopData:
        files = data_files()
        data = cls()
        for line in files["data/users.csv"].splitlines()[1:]:
            uid, signup, country = line.split(",")
            data.users[int(uid)] = (signup, country)
        for line in files["data/orders.csv"].splitlines()[1:]:
            oid, uid, product, category, amount, ordered_at = line.split(",")
            data.orders[int(oid)] = {
                "user_id": int(uid),
                "product": product,
                "category": category,
                "amount": amount,
                "ordered_at": ordered_at,
            }
        return data

    def files(self) -> dict[str, str]:
        users = ["user_id,signup_at,country"] + [
            f"{u},{s},{c}" for u, (s, c) in sorted(self.users.items())
        ]
        orders = ["order_id,user_id,product,category,amount,ordered_at"] + [
            f"{o},{r['user_id']},{r['product']},{r['category']},{r['amount']},{r['ordered_at']}"
            for o, r in sorted(self.orders.items())
        ]
        return {
            "data/users.csv": "\n".join(users) + "\n",
            "data/orders.csv": "\n".join(orders) + "\n",
        }

    def new_order(self, rng: random.Random, user_id: int) -> int:
        oid = max(self.orders, default=0) + 1
        group = rng.choice(list(GROUPS))
        # 11:00 or later, minutes from the order id: never a tie with another
        # order of the same user (the tiny project's orders are at 10:00), so
        # `list(product order by ordered_at)` has one right answer
        self.orders[oid] = {
            "user_id": user_id,
            "product": rng.choice(GROUPS[group]),
            "category": group,
            "amount": f"{rng.uniform(5, 250):.2f}",
            "ordered_at": f"2024-{rng.randint(1, 6):02d}-{rng.randint(1, 28):02d} "
            f"{11 + oid // 60 % 12:02d}:{oid % 60:02d}:00",
        }
        return oid


def add_users(rng: random.Random, data: ShopData) -> str:
    first = max(data.users, default=0) + 1  # may reuse the id of a user deleted before
    new = list(range(first, first + rng.randint(1, 4)))
    for u in new:
        data.users[u] = (f"2024-0{rng.randint(1, 6)}-{rng.randint(10, 28)}", rng.choice(COUNTRIES))
        for _ in range(rng.randint(0, 4)):  # 0: a user with no orders
            data.new_order(rng, u)
    return f"add users {new}"


def add_orders(rng: random.Random, data: ShopData) -> str:
    users = rng.sample(sorted(data.users), rng.randint(1, 4))
    for u in users:
        for _ in range(rng.randint(1, 2)):
            data.new_order(rng, u)
    return f"add orders for users {users}"


def change_users(rng: random.Random, data: ShopData) -> str:
    users = rng.sample(sorted(data.users), rng.randint(1, 3))
    for u in users:
        signup, country = data.users[u]
        if rng.random() < 0.7:
            country = rng.choice([c for c in COUNTRIES if c != country])
        else:
            signup = f"2022-{rng.randint(1, 12):02d}-{rng.randint(10, 28)}"
        data.users[u] = (signup, country)
    return f"change country/signup of users {users}"


def delete_users(rng: random.Random, data: ShopData) -> str:
    users = rng.sample(sorted(data.users), rng.randint(1, 3))
    for u in users:
        del data.users[u]
    data.orders = {o: r for o, r in data.orders.items() if r["user_id"] not in users}
    return f"delete users {users} and their orders"


def reuse_user_ids(rng: random.Random, data: ShopData) -> str:
    """Users leave and others arrive under the same ids, in one step."""
    users = rng.sample(sorted(data.users), rng.randint(1, 2))
    data.orders = {o: r for o, r in data.orders.items() if r["user_id"] not in users}
    for u in users:
        data.users[u] = (f"2024-0{rng.randint(1, 6)}-{rng.randint(10, 28)}", rng.choice(COUNTRIES))
        for _ in range(rng.randint(0, 3)):
            data.new_order(rng, u)
    return f"replace users {users} by new ones with the same ids"


def shift_many_users(rng: random.Random, data: ShopData) -> str:
    """A third of the users buy a lot in one category: enough drift that the
    `on_drift` policy usually refits the clustering."""
    users = rng.sample(sorted(data.users), len(data.users) // 3)
    group = rng.choice(list(GROUPS))
    for u in users:
        for _ in range(rng.randint(3, 5)):
            oid = data.new_order(rng, u)
            data.orders[oid]["category"] = group
            data.orders[oid]["product"] = rng.choice(GROUPS[group])
    return f"{len(users)} users buy {group}"


def delete_orders(rng: random.Random, data: ShopData) -> str:
    orders = rng.sample(sorted(data.orders), rng.randint(1, 4))
    for o in orders:
        del data.orders[o]
    return f"delete orders {orders}"


def change_amounts(rng: random.Random, data: ShopData) -> str:
    orders = rng.sample(sorted(data.orders), rng.randint(1, 3))
    for o in orders:
        data.orders[o]["amount"] = f"{rng.uniform(5, 400):.2f}"
    return f"change amount of orders {orders}"


SIMPLE_EDITS = (
    add_users,
    add_orders,
    change_users,
    delete_users,
    reuse_user_ids,
    shift_many_users,
    delete_orders,
    change_amounts,
)


def mix(rng: random.Random, data: ShopData) -> str:
    return "; ".join(e(rng, data) for e in rng.sample(SIMPLE_EDITS, rng.randint(2, 3)))


EDITS = (*SIMPLE_EDITS, mix)


def edit_sequence(seed: int) -> list:
    rng = random.Random(seed)
    return [rng.choice(EDITS) for _ in range(rng.randint(3, 4))]


# three sequences that between them draw every edit (seed 5 refits on drift);
# 140 more six-step sequences of both variants passed when this file was
# written (2026-11-30): widen SEEDS to look again, at ~5 s a case
SEEDS = (5, 7, 13)


def test_the_seeds_draw_every_kind_of_edit():
    """The cases below cover every edit (a change of SEEDS or EDITS keeps it so)."""
    drawn = {e for seed in SEEDS for e in edit_sequence(seed)}
    assert drawn == set(EDITS), {e.__name__ for e in set(EDITS) - drawn}


# ----------------------------------------------------------------- the project variants

STG_USERS = """
    select user_id, signup_at, country from {{ source('shop', 'users') }}
"""

# user_features as an incremental model: recompute the users whose own row
# or whose orders (a digest of them, kept in its own column) changed, merge
# by user_id, drop users gone from stg_users. Unlike the tiny project's SQL
# it is deterministic whatever rows a run aggregates: revenue is summed as
# DECIMAL (a sum of DOUBLEs depends on the order of the rows, which differs
# between a merge of a few users and a full build) and the top category
# breaks ties by name (`mode` returns any of the tied values)
INCREMENTAL_USER_FEATURES = """
    {{ config(materialized='incremental', unique_key='user_id', delete_not_in=ref('stg_users')) }}
    with
    order_digests as (
        select user_id,
               md5(string_agg(concat_ws('|', order_id, product, category, amount, ordered_at), ';'
                              order by order_id)) as orders_digest
        from {{ ref('stg_orders') }}
        group by user_id
    ),
    top_categories as (
        select user_id, first(category order by n desc, category) as top_category
        from (select user_id, category, count(*) as n from {{ ref('stg_orders') }} group by all)
        group by user_id
    ),
    {% if is_incremental() %}
    touched as (
        select u.user_id
        from {{ ref('stg_users') }} u
        left join order_digests d on d.user_id = u.user_id
        where not exists (
            select 1 from {{ this }} t
            where t.user_id = u.user_id
              and t.country is not distinct from u.country
              and t.orders_digest is not distinct from d.orders_digest
        )
    ),
    {% endif %}
    users as (
        select * from {{ ref('stg_users') }}
        {% if is_incremental() %}where user_id in (select user_id from touched){% endif %}
    )
    select
        u.user_id,
        u.country,
        count(o.order_id) as orders,
        coalesce(sum(o.amount::decimal(18, 2)), 0)::double as revenue,
        coalesce(date_diff('day', max(o.ordered_at), DATE '{{ var("as_of") }}'), 999) as recency_days,
        coalesce(any_value(c.top_category), 'none') as top_category,
        list(o.product order by o.ordered_at desc) filter (where o.product is not null) as products,
        d.orders_digest
    from users u
    left join {{ ref('stg_orders') }} o on o.user_id = u.user_id
    left join order_digests d on d.user_id = u.user_id
    left join top_categories c on c.user_id = u.user_id
    group by u.user_id, u.country, d.orders_digest
"""

VARIANTS = ("table", "incremental")


def project_files(variant: str) -> dict[str, str]:
    files = tiny_project_files()
    if variant == "incremental":
        files["models/stg_users.sql"] = STG_USERS
        files["models/user_features.sql"] = INCREMENTAL_USER_FEATURES
    return files


def run(project: ProjectDir) -> dict:
    """`segtool run`; returns each node's action."""
    project.cli("run")
    results = json.loads((project.root / "target/run_results.json").read_text())
    return {r["unique_id"]: r["action"] for r in results["results"]}


# ----------------------------------------------------------------- comparing states

TEXT_COLUMNS = ("user_id", "row_hash", "text_hash", "text", "n_chars", "truncated")


def read_state(project: ProjectDir) -> dict[str, tuple[tuple[str, ...], list[tuple]]]:
    """What is compared, by table: (columns, rows keyed by the first column),
    read through one connection. Also leaves every final user's row of
    user_features in final_users.parquet, for `segtool assign`."""
    import duckdb

    con = duckdb.connect(str(project.db), read_only=True)
    try:

        def rows(query: str) -> list[tuple]:
            return con.execute(query).fetchall()

        models = rows(
            "select table_name, table_type from information_schema.tables "
            "where table_schema = 'main' order by 1"
        )
        state = {"main (models and their kinds)": (("model", "kind"), models)}
        for model, _ in models:
            key = "order_id" if model == "stg_orders" else "user_id"
            columns = [c for (c, *_) in rows(f"describe main.{model}") if c != key]
            state[f"main.{model}"] = (
                (key, *columns),
                rows(f"select {key}, * exclude ({key}) from main.{model} order by 1"),
            )
        state["_segtool.texts__story"] = (
            TEXT_COLUMNS,
            rows(f"select {', '.join(TEXT_COLUMNS)} from _segtool.texts__story order by 1"),
        )
        ((vectors,),) = rows("select table_name from _segtool.encoders where encoder = 'hash'")
        state["cached vector of each user's text"] = (
            ("user_id", "vector"),
            rows(
                f"select t.user_id, e.vector from _segtool.texts__story t "
                f'left join _segtool."{vectors}" e on e.text_hash = t.text_hash order by 1'
            ),
        )
        state["_segtool.inputs__behaviour"] = (
            ("user_id", "input_hash"),
            rows("select user_id, input_hash from _segtool.inputs__behaviour order by 1"),
        )
        for seg in ("lifecycle", "behaviour"):
            state[f"segments.{seg}"] = (
                ("user_id", "segment_id", "segment", "distance"),
                rows(
                    f"select user_id, segment_id, segment, distance from segments.{seg} order by 1"
                ),
            )
            # ids only: a spell keeps the label its segment had when it
            # opened (docs/segmentations.md, "Outputs and history")
            state[f"segments.{seg}_history (open spells)"] = (
                ("user_id", "segment_id"),
                rows(
                    f"select user_id, segment_id from segments.{seg}_history "
                    "where valid_to_run is null order by 1"
                ),
            )
        con.execute(
            "copy (select * from main.user_features order by user_id) "
            f"to '{project.root / 'final_users.parquet'}'"
        )
        return state
    finally:
        con.close()


def differences(name: str, got, want) -> list[str]:
    """'NAME key K: column expected X, got Y' for every cell that differs."""
    columns, got_rows = got
    _, want_rows = want
    g = {r[0]: r for r in got_rows}
    w = {r[0]: r for r in want_rows}
    out = [
        f"{name}: {columns[0]} {k} missing (expected {w[k]})" for k in sorted(w.keys() - g.keys())
    ]
    out += [f"{name}: {columns[0]} {k} unexpected {g[k]}" for k in sorted(g.keys() - w.keys())]
    for k in sorted(g.keys() & w.keys()):
        for c, a, b in zip(columns, g[k], w[k]):
            if a != b:
                show = (lambda v: f"{v!r:.80}") if c == "vector" else repr
                out.append(f"{name}: {columns[0]} {k}: {c} expected {show(b)}, got {show(a)}")
    return out


def stored_model_assignment(project: ProjectDir) -> dict:
    """Every final user (final_users.parquet) assigned with the stored
    behaviour model by `segtool assign`: user_id -> (segment_id, segment, distance)."""
    import polars as pl

    out = project.root / "final_assigned.parquet"
    rows = project.root / "final_users.parquet"
    project.cli("assign", "behaviour", "--input", str(rows), "--output", str(out), "--force")
    df = pl.read_parquet(out)
    return {
        u: (s, label, d)
        for u, s, label, d in zip(df["user_id"], df["segment_id"], df["segment"], df["distance"])
    }


# compared otherwise: the clustering, and the history (within one project)
NOT_EQUAL_TO_FRESH = (
    "segments.behaviour",
    "segments.behaviour_history (open spells)",
    "segments.lifecycle_history (open spells)",
)


def assert_equivalent(inc: ProjectDir, fresh: ProjectDir, story: str) -> None:
    got, want = read_state(inc), read_state(fresh)
    assert got.keys() == want.keys()
    problems = [
        d
        for name in want
        if name not in NOT_EQUAL_TO_FRESH
        for d in differences(name, got[name], want[name])
    ]
    problems += [
        f"user {u} has no cached vector"
        for u, v in got["cached vector of each user's text"][1]
        if v is None
    ]
    # the clustering: the same users as a fresh run, each in the segment (id
    # and label) the stored model assigns their final row to
    stored = {u: row for u, *row in got["segments.behaviour"][1]}
    users = {u for u, *_ in want["segments.behaviour"][1]}
    problems += [f"segments.behaviour: user {u} missing" for u in sorted(users - stored.keys())]
    problems += [f"segments.behaviour: user {u} unexpected" for u in sorted(stored.keys() - users)]
    assigned = stored_model_assignment(inc)
    for u in sorted(stored.keys() & assigned.keys()):
        (sid, label, dist), (a_sid, a_label, a_dist) = stored[u], assigned[u]
        if (sid, label) != (a_sid, a_label) or abs(dist - a_dist) > 1e-4:
            problems.append(
                f"segments.behaviour: user {u}: stored {(sid, label, dist)}, "
                f"the stored model assigns {(a_sid, a_label, a_dist)}"
            )
    # within the incremental project: one open spell per current assignment
    for seg in ("behaviour", "lifecycle"):
        current = (("user_id", "segment_id"), [r[:2] for r in got[f"segments.{seg}"][1]])
        problems += differences(
            f"segments.{seg}_history (open spells)",
            got[f"segments.{seg}_history (open spells)"],
            current,
        )
    assert not problems, f"after {story}:\n  " + "\n  ".join(problems[:30])


# ----------------------------------------------------------------- the cases


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_incremental_runs_equal_a_fresh_run_on_the_final_data(tmp_path, seed, variant):
    """Edits drawn by `seed`, each followed by `segtool run`, leave the state
    a fresh run on the final data gives (see the module docstring)."""
    rng = random.Random(seed * 7919)
    data = ShopData.tiny()
    inc = ProjectDir(write_files(tmp_path / "incremental", project_files(variant)))
    inc.cli("run")
    steps = []
    for edit in edit_sequence(seed):
        steps.append(edit(rng, data))
        for rel, content in data.files().items():
            inc.write(rel, content)
        actions = run(inc)
        # the step under test is the incremental path, never a full re-render
        assert actions["text.story"] in ("incremental", "skip"), actions
        if variant == "incremental":
            assert actions["model.user_features"] == "incremental", actions
    story = f"seed {seed}, {variant}: " + " | ".join(steps)

    fresh = ProjectDir(write_files(tmp_path / "fresh", project_files(variant)))
    for rel, content in data.files().items():
        fresh.write(rel, content)
    fresh.cli("run")
    assert_equivalent(inc, fresh, story)
