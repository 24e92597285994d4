"""User keys of types NumPy holds no exact value of: HUGEINT and DECIMAL keys
above 2^53 (a CSV of 20-digit ids reads as HUGEINT) and UUID keys, through
a clustering's run and `segtool assign`."""

from __future__ import annotations

import duckdb
import pytest

from tests.fixtures import tiny_project_files

KEYS = {
    "hugeint": "user_id + 10000000000000000000000::HUGEINT",
    "decimal": "(user_id + 10000000000000000000000)::DECIMAL(25,0)",
    "uuid": "('00000000-0000-4000-8000-' || lpad(user_id::VARCHAR, 12, '0'))::UUID",
}


def _project(make_project, key_sql: str):
    files = tiny_project_files(n_users=60)
    files["models/keyed.sql"] = (
        "{{ config(materialized='table') }}\n"
        f"select {key_sql} as user_id, orders, revenue from {{{{ ref('user_features') }}}}\n"
    )
    files["segments/segments.yml"] = (
        files["segments/segments.yml"]
        .replace(
            "segmentations:\n",
            "segmentations:\n"
            "              - name: keyed\n"
            "                inputs: [{features: keyed_f}]\n"
            "                cluster: {method: kmeans, k: 3, seed: 7}\n"
            "                labels: {keywords: 0}\n",
        )
        .replace(
            "features:\n",
            "features:\n"
            "              - name: keyed_f\n"
            "                model: keyed\n"
            "                columns: {orders: {}, revenue: {}}\n",
            1,
        )
    )
    return make_project(files)


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_every_user_keeps_their_own_key(make_project, tmp_path, kind):
    """HUGEINT and DECIMAL keys came back from NumPy as float64: above 2^53
    the 60 users fell together, and the run wrote 60 rows of one user_id
    (and said success); assign wrote 1.0000000000000001e+22 for each. A UUID
    key made assign fail: 'cannot write Object datatype'."""
    pd = _project(make_project, KEYS[kind])
    pd.cli("run", "-s", "+keyed")
    rows = pd.sql("select count(*), count(distinct user_id) from segments.keyed")
    assert rows == [(60, 60)]
    assert pd.sql("select count(*) from segments.keyed s join main.keyed m using (user_id)") == [
        (60,)
    ]
    assert pd.sql(
        "select count(*), count(distinct user_id) from segments.keyed_history "
        "where valid_to_run is null"
    ) == [(60, 60)]
    # a refit matches each user's old segment by key; the report draws them
    before = dict(pd.sql("select user_id::VARCHAR, segment_id from segments.keyed"))
    pd.cli("run", "--refit", "-s", "keyed")
    assert dict(pd.sql("select user_id::VARCHAR, segment_id from segments.keyed")) == before
    assert "Not drawn" not in pd.cli("docs", "-o", str(tmp_path / "r.html")).stdout
    assert "Not drawn" not in (tmp_path / "r.html").read_text()
    # assign: the keys of the file come back as they are, in their segments
    con = duckdb.connect(str(pd.root / "target/segtool.duckdb"), read_only=True)
    try:
        con.execute(
            f"COPY (select * from main.keyed order by revenue limit 5) TO '{tmp_path / 'in.csv'}'"
        )
        want = dict(
            con.execute(
                "select s.user_id::VARCHAR, s.segment_id from segments.keyed s "
                f"join read_csv('{tmp_path / 'in.csv'}') i using (user_id)"
            ).fetchall()
        )
    finally:
        con.close()
    for out in ("out.csv", "out.parquet"):
        pd.cli("assign", "keyed", "--input", str(tmp_path / "in.csv"), "-o", str(tmp_path / out))
        reader = "read_csv" if out.endswith(".csv") else "read_parquet"
        got = dict(
            duckdb.sql(
                f"select user_id::VARCHAR, segment_id from {reader}('{tmp_path / out}')"
            ).fetchall()
        )
        assert got == want
