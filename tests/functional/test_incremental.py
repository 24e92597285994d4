"""Incremental runs: only new or changed users are rendered, embedded and
assigned; ids stay stable over refits; history keeps every move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import data_files


def summary(project) -> dict:
    return json.loads((project.root / "target/run_results.json").read_text())["summary"]


def test_second_run_does_no_work(project):
    project.cli("run")
    project.cli("run")
    s = summary(project)
    assert s["actions"] == {"skip": 6}
    assert s["texts"]["story"]["action"] == "skip"
    assert s["embeddings"]["story.hash"]["action"] == "skip"
    assert s["segmentations"]["behaviour"]["action"] == "skip"


def test_changed_and_new_users_only(project):
    project.cli("run")
    before = dict(project.sql("select user_id, segment_id from segments.behaviour"))
    # users 5 and 9 get more orders, 3 users are new
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        project.write(rel, content)
    project.cli("run")
    s = summary(project)
    t = s["texts"]["story"]
    assert (t["new"], t["changed"], t["removed"]) == (3, 2, 0)
    assert t["unchanged"] == 58
    e = s["embeddings"]["story.hash"]
    assert e["embedded"] <= 5 and e["embedded"] + e["cached"] == e["texts"]
    g = s["segmentations"]["behaviour"]
    assert g["action"] == "assign" and g["assigned"] == 5, g
    # assigned through the target's executor, as a sampled fit's other users are
    results = json.loads((project.root / "target/run_results.json").read_text())["results"]
    detail = next(r["detail"] for r in results if r["unique_id"] == "segmentation.behaviour")
    assert detail["executor"] == "local" and detail["users_per_s"] > 0
    reasons = {r["unique_id"]: r["reason"] for r in results}
    assert reasons["source.shop.users"] == "source files changed: nothing to run"
    after = dict(project.sql("select user_id, segment_id from segments.behaviour"))
    assert len(after) == 63
    assert all(after[u] == before[u] for u in before if u not in (5, 9))


def test_a_selection_over_nodes_never_built_says_so(project):
    """`run -s lifecycle` on a fresh project: 'database error: Catalog Error:
    Table with name user_features does not exist!'; its dry run an
    internal CatalogException."""
    for args in (("run", "-s", "lifecycle"), ("run", "--dry-run", "-s", "lifecycle")):
        r = project.cli(*args, expect=1)
        assert (
            "model.user_features is not built yet (nor is 1 more node the selection needs), "
            "and segmentation.lifecycle reads it" in r.stderr
        ), r.stderr
        assert "segtool run -s +lifecycle" in r.stderr and "internal error" not in r.stderr
    project.cli("run", "-s", "+lifecycle")
    assert project.sql("select count(*) from segments.lifecycle")[0][0] == 60
    # a new model behind a built table: the selection reads what the table
    # holds (out of date, and said so), it does not need the new model
    project.write("models/orders_kept.sql", "select * from {{ ref('stg_orders') }}\n")
    project.edit("models/user_features.sql", "{{ ref('stg_orders') }}", "{{ ref('orders_kept') }}")
    r = project.cli("run", "-s", "lifecycle")
    assert "model.user_features is not selected and out of date" in r.output
    assert "not built yet" not in r.output


def test_a_selection_over_a_stale_table_does_not_hide_it_from_the_next_run(project):
    """`-s lifecycle story` (or `--exclude user_features`) after new users came:
    the selected nodes read the stale user_features, and used to remember the
    inputs of a fresh one, so the next full run rebuilt user_features and
    skipped them: the new users got no text, no rule segment, and `behaviour`
    failed on every later run with "3 users have no vector". They now
    remember what they read, and the plan says the table is stale."""
    project.cli("run")
    for rel, content in data_files(extra_users=3).items():
        project.write(rel, content)
    for selection in (["-s", "lifecycle story"], ["--exclude", "user_features"]):
        r = project.cli("run", *selection)
        assert "model.user_features is not selected and out of date: " in r.stderr + r.stdout, (
            r.stdout + r.stderr
        )
        assert "`-s user_features+` rebuilds it and what reads it" in r.stderr + r.stdout
        assert project.sql("select count(*) from segments.lifecycle")[0][0] == 60
    plan = project.cli("run", "--dry-run", "-s", "lifecycle").stdout
    # said as the run says it
    assert "\nwarning: model.user_features is not selected and out of date" in plan
    as_json = json.loads(
        project.cli("run", "--dry-run", "-s", "lifecycle", "--format", "json").stdout
    )
    assert as_json["warnings"][0].startswith("model.user_features is not selected and out of date")
    project.cli("run")
    for table in ("segments.lifecycle", "segments.behaviour", '_segtool."texts__story"'):
        assert project.sql(f"select count(*) from {table}")[0][0] == 63, table
    assert "not selected" not in project.cli("run", "-s", "lifecycle").stderr  # up to date now


def test_a_table_built_over_an_unselected_edited_view_is_rebuilt_with_the_view(project):
    """`-s user_features` after editing the view stg_orders: the table reads
    the view the database holds (the old one); the next full run, which
    creates the new view, must rebuild the table too."""
    project.cli("run")
    project.write(
        "models/stg_orders.sql",
        "select order_id, user_id, product, category, amount * 2 as amount, ordered_at\n"
        "from {{ source('shop', 'orders') }}\n",
    )
    revenue = "select sum(revenue) from user_features"
    before = project.sql(revenue)[0][0]
    r = project.cli("run", "-s", "user_features")
    assert "model.stg_orders is not selected and out of date" in r.stdout + r.stderr
    assert project.sql(revenue)[0][0] == before  # it read the view the database holds
    project.cli("run")
    assert project.sql(revenue)[0][0] == pytest.approx(2 * before)


def test_a_merge_after_an_upstream_sql_change_says_old_rows_keep_the_old_sql(project):
    """An incremental model keeps the rows it merged when a model upstream
    gets new SQL (as in dbt); the plan said only 'upstream data changed'."""
    project.edit(
        "models/user_features.sql",
        "{{ config(materialized='table') }}",
        "{{ config(materialized='incremental', unique_key='user_id') }}",
    )
    project.cli("run")
    project.write(
        "models/stg_orders.sql",
        "select order_id, user_id, product, category, amount * 2 as amount, ordered_at\n"
        "from {{ source('shop', 'orders') }}\n",
    )
    note = (
        "(stg_orders has new SQL: rows merged before keep what the old SQL computed; "
        "--full-refresh rebuilds them)"
    )
    # with stg_orders not selected the merge reads its old view: that note instead
    alone = project.cli("run", "--dry-run", "-s", "user_features").stdout
    assert (
        "has new SQL" not in alone and "model.stg_orders is not selected and out of date" in alone
    )
    assert note in project.cli("run", "--dry-run").stdout
    assert note in project.cli("run").stdout
    assert note not in project.cli("run", "--dry-run").stdout  # said once, when it happens


def test_edited_labels_are_pending_until_the_next_refit(project):
    """The plan said 'labels changed: they apply at the next refit' at the run
    after the edit, then never again, while the catalog kept the old labels."""
    project.cli("run")
    project.edit("segments/segments.yml", "labels: {keywords: 3}", "labels: {keywords: 2}")

    def reason() -> str:
        plan = json.loads(project.cli("run", "--dry-run", "--format", "json").stdout)
        return next(
            s["reason"] for s in plan["steps"] if s["unique_id"] == "segmentation.behaviour"
        )

    assert "labels changed: they apply at the next refit" in reason()
    project.cli("run")
    assert reason() == (
        "inputs unchanged for every user; labels changed since the last fit: they apply at "
        "the next refit (segtool run --refit -s behaviour relabels now)"
    )
    project.cli("run", "--refit", "-s", "behaviour")
    assert reason() == "inputs unchanged for every user"


def test_a_column_marked_pii_after_a_fit_is_pending_until_a_refit(project):
    """Cluster labels are written at a fit from the traits, which leave PII
    out; a column marked PII later could still be named, with its values,
    in the labels (`country US · ...`) with no word from the plan."""
    project.cli("run")
    project.edit(
        "models/schema.yml",
        "      - name: top_category\n",
        "      - name: country\n        pii: true\n      - name: top_category\n",
    )
    # the story tells the country: allowed on the text, not on the segmentation
    project.edit(
        "segments/segments.yml",
        "    max_chars: 300\n",
        "    max_chars: 300\n    allow_pii: [country]\n",
    )

    def reason() -> str:
        plan = json.loads(project.cli("run", "--dry-run", "--format", "json").stdout)
        return next(
            s["reason"] for s in plan["steps"] if s["unique_id"] == "segmentation.behaviour"
        )

    note = (
        "user_features.country is PII since the last fit: its labels may name their values "
        "until a refit (segtool run --refit -s behaviour relabels now)"
    )
    assert note in reason()
    project.cli("run")
    assert note in reason()  # said until the refit
    project.cli("run", "--refit", "-s", "behaviour")
    assert "PII" not in reason()


def test_an_unselected_view_is_read_live_until_rebuilt_whatever_its_config_says(project):
    """stg_orders' config now says table, but the database still holds the
    view, which reads the orders live: a new order must reach a selected
    user_features (it was hashed as a frozen table and skipped)."""
    project.cli("run")
    project.write(
        "models/stg_orders.sql",
        "{{ config(materialized='table') }}\n" + project.read("models/stg_orders.sql"),
    )
    orders = project.read("data/orders.csv")
    project.write("data/orders.csv", orders + "9999,1,diapers,baby,1000.00,2024-06-02 10:00:00\n")
    revenue = "select revenue from user_features where user_id = 1"
    before = project.sql(revenue)[0][0]
    r = project.cli("run", "-s", "user_features")
    assert "rebuild     model.user_features" in r.stdout, r.stdout
    assert project.sql(revenue)[0][0] == pytest.approx(before + 1000)


def test_a_volatile_unselected_model_is_not_called_out_of_date(project):
    """Its hash is new every run: the note would repeat at every `-s` run."""
    project.write(
        "models/stg_orders.sql",
        "{{ config(materialized='table') }}\n"
        + project.read("models/stg_orders.sql").replace(
            "ordered_at", "ordered_at, now() as seen_at", 1
        ),
    )
    project.cli("run")
    r = project.cli("run", "-s", "user_features")
    assert "not selected" not in r.output, r.output


def test_a_selection_after_the_project_moved_names_the_views_left_behind(project, tmp_path):
    """The views made in the old folder read its files; with `-s` they are not
    made again, and the run failed with 'Permission Error ... fix the model'."""
    import shutil

    from tests.conftest import ProjectDir

    project.cli("run")
    moved = ProjectDir(Path(shutil.move(str(project.root), str(tmp_path / "moved"))))
    r = moved.cli("run", "-s", "user_features", expect=1)
    assert (
        "model.stg_orders is not selected and still reads its sources at the project's old folder"
        in r.output
    )
    assert "if the project folder moved, views made before still read the old paths" in r.stderr
    moved.cli("run")  # every view made again: "source paths moved"


def test_removed_users_leave_the_table(project):
    project.cli("run")
    files = data_files()
    lines = files["data/users.csv"].splitlines()
    project.write(
        "data/users.csv",
        "\n".join(line for line in lines if not line.startswith(("7,", "8,"))) + "\n",
    )
    project.cli("run")
    s = summary(project)
    assert s["texts"]["story"]["removed"] == 2
    keys = {r[0] for r in project.sql("select user_id from segments.behaviour")}
    assert 7 not in keys and 8 not in keys and len(keys) == 58
    closed = project.sql(
        "select user_id from segments.behaviour_history where valid_to_run = 2 order by 1"
    )
    assert [r[0] for r in closed] == [7, 8]


def test_template_change_rerenders_all_but_reembeds_only_changed_texts(project):
    project.cli("run")
    project.edit(
        "templates/story.j2",
        "A shopper from {{ country }}",
        "A shopper from {{ 'Germany' if country == 'DE' else country }}",
    )
    project.cli("run")
    s = summary(project)
    assert s["texts"]["story"]["action"] == "rebuild" and s["texts"]["story"]["changed"] == 60
    de_texts = project.sql(
        "select count(distinct text_hash) from _segtool.texts__story where text like '%Germany%'"
    )[0][0]
    assert s["embeddings"]["story.hash"]["embedded"] == de_texts > 0
    # the template is not part of the fitted model: no "definition changed" refit
    # (a third of the vectors moved, so the drift policy may still refit)
    g = s["segmentations"]["behaviour"]
    assert g["action"] == "assign" or g["reason"].startswith("drift"), g


def test_encoder_change_reembeds_and_refits(project):
    project.cli("run")
    project.edit("segments/segments.yml", "dim: 256", "dim: 128")
    project.cli("run")
    s = summary(project)
    assert s["embeddings"]["story.hash"]["embedded"] == s["embeddings"]["story.hash"]["texts"]
    assert s["segmentations"]["behaviour"]["action"] == "refit"
    assert s["segmentations"]["behaviour"]["reason"].startswith("encoder 'hash' changed")


def test_refit_keeps_ids_and_history_shows_exactly_the_movers(project):
    project.cli("run")
    before = dict(project.sql("select user_id, segment_id from segments.behaviour"))
    labels_before = dict(
        project.sql(
            "select segment_id, label from _segtool.segment_catalog where segmentation = 'behaviour'"
        )
    )
    project.edit(
        "segments/segments.yml",
        "cluster: {method: kmeans, k: 3, seed: 7}",
        "cluster: {method: kmeans, k: 3, seed: 11}",
    )
    project.cli("run")
    after = dict(project.sql("select user_id, segment_id from segments.behaviour"))
    same = np.mean([after[u] == before[u] for u in before])
    assert same >= 0.9
    moved = {u for u in before if after[u] != before[u]}
    hist = {
        r[0]
        for r in project.sql(
            "select user_id from segments.behaviour_history where valid_to_run = 2"
        )
    }
    assert hist == moved
    assert (
        dict(
            project.sql(
                "select segment_id, label from _segtool.segment_catalog where segmentation = 'behaviour'"
            )
        ).keys()
        == labels_before.keys()
    )


def test_forced_refit_and_policy(project):
    project.cli("run")
    project.cli("run", "--refit")
    g = summary(project)["segmentations"]["behaviour"]
    assert g["action"] == "refit" and g["reason"].startswith("--refit") and g["moved"] == 0
    fits = project.sql(
        "select count(*), count(*) filter (where active) from _segtool.fitted where segmentation = 'behaviour'"
    )
    assert fits == [(2, 1)]


def test_rules_segments_and_history(project):
    project.cli("run")
    counts = dict(project.sql("select segment, count(*) from segments.lifecycle group by 1"))
    assert sum(counts.values()) == 60 and set(counts) <= {"big", "lapsed", "active"}
    project.edit("segments/segments.yml", 'when: "revenue > 300"', 'when: "revenue > 200"')
    project.cli("run")
    g = summary(project)["segmentations"]["lifecycle"]
    moved = project.sql("select count(*) from segments.lifecycle_history where valid_to_run = 2")[
        0
    ][0]
    assert g["moved"] == moved


def test_rule_segments_rewrite_only_the_users_who_change(project):
    """Same rules, new data: users who arrive or move get this run's row;
    everyone else keeps theirs. The table equals the rules evaluated now."""
    project.cli("run")
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        project.write(rel, content)
    project.cli("run")
    g = summary(project)["segmentations"]["lifecycle"]
    rows = {
        u: (seg, run)
        for u, seg, run in project.sql("select user_id, segment, run_id from segments.lifecycle")
    }
    expected = dict(
        project.sql(
            "select user_id, case when revenue > 300 then 'big' when recency_days > 120 "
            "then 'lapsed' else 'active' end from main.user_features"
        )
    )
    assert {u: seg for u, (seg, _) in rows.items()} == expected
    rewritten = {u for u, (_, run) in rows.items() if run == 2}
    opened = {
        u
        for (u,) in project.sql(
            "select user_id from segments.lifecycle_history where valid_from_run = 2"
        )
    }
    assert rewritten == opened
    assert len(rewritten) == g["assigned"] and {61, 62, 63} <= rewritten


def test_python_api_and_export(project):
    from segtool import Project

    project.cli("run")
    df = Project.load(project.root).segments("behaviour")
    assert df.height == 60 and {
        "user_id",
        "segment_id",
        "segment",
        "distance",
        "confidence",
        "run_id",
        "updated_at",
    } <= set(df.columns)
    project.cli("export", "behaviour", "--format", "csv", "-o", str(project.root / "b.csv"))
    assert (project.root / "b.csv").read_text().count("\n") == 61


def test_export_and_assign_write_the_format_their_file_is_named(built):
    """`export -o seg.csv` wrote Parquet into seg.csv (--format defaulted to
    parquet), `--format csv -o seg.parquet` CSV into seg.parquet, and
    `assign -o out.json` CSV: each read as garbage in the next tool."""
    import polars as pl

    r = built.root
    built.cli("export", "behaviour", "-o", str(r / "seg.csv"))
    assert pl.read_csv(r / "seg.csv").height == 60
    built.cli("export", "behaviour", "-o", str(r / "seg.pq"))
    assert pl.read_parquet(r / "seg.pq").height == 60
    res = built.cli("export", "behaviour", "--format", "csv", "-o", str(r / "x.parquet"), expect=1)
    assert "--format csv does not match x.parquet, a parquet file name" in res.stderr
    res = built.cli("export", "behaviour", "-o", str(r / "x.json"), expect=1)
    assert "cannot tell the format of x.json from its name" in res.stderr
    built.cli("export", "behaviour", "--format", "csv", "-o", str(r / "seg.txt"))
    assert pl.read_csv(r / "seg.txt").height == 60
    # assign checks the name before it reads anything
    res = built.cli(
        "assign", "behaviour", "--input", str(r / "seg.csv"), "-o", str(r / "out.json"), expect=1
    )
    assert "cannot tell the format of out.json from its name" in res.stderr
    assert not (r / "out.json").exists()


def test_segmentation_tests(project):
    project.cli("run")
    r = project.cli("test", "-s", "kind:segmentation")
    assert (
        "PASS  one_segment_per_user(behaviour)" in r.stdout
        and "PASS  min_share(behaviour)" in r.stdout
    )
    project.edit(
        "segments/segments.yml",
        "tests: {min_share: 0.05, max_share: 0.9}",
        "tests: {min_share: 0.34, max_share: 0.9}",
    )
    r = project.cli("test", "-s", "behaviour", expect=1)
    assert "FAIL  min_share(behaviour)" in r.stdout


def test_show_and_unknown_segmentation(project):
    project.cli("run")
    r = project.cli("show", "behaviour")
    assert "segment" in r.stdout and "examples" in r.stdout
    r = project.cli("show", "behaviur", expect=1)
    assert "did you mean 'behaviour'" in r.stderr
    r = project.cli(
        "assign",
        "behaviur",
        "--input",
        str(project.root / "data/users.csv"),
        "--output",
        "x.csv",
        expect=1,
    )
    assert "did you mean 'behaviour'" in r.stderr


def test_assign_one_at_a_time_equals_batch(project):
    project.cli("run")
    project.cli("export", "behaviour", "-o", str(project.root / "seg.parquet"))
    import duckdb
    import polars as pl

    con = duckdb.connect(str(project.db), read_only=True)
    con.execute(
        f"COPY (SELECT * FROM user_features WHERE user_id <= 12 ORDER BY user_id) TO '{project.root / 'in.parquet'}'"
    )
    for i in (3, 7):
        con.execute(
            f"COPY (SELECT * FROM user_features WHERE user_id = {i}) TO '{project.root / f'one{i}.parquet'}'"
        )
    con.close()
    before = project.snapshot()
    project.cli(
        "assign",
        "behaviour",
        "--input",
        str(project.root / "in.parquet"),
        "--output",
        str(project.root / "out.csv"),
    )
    batch = pl.read_csv(project.root / "out.csv")
    stored = dict(
        project.sql("select user_id, segment_id from segments.behaviour where user_id <= 12")
    )
    assert dict(zip(batch["user_id"], batch["segment_id"])) == stored
    for i in (3, 7):
        project.cli(
            "assign",
            "behaviour",
            "--input",
            str(project.root / f"one{i}.parquet"),
            "--output",
            str(project.root / "one.csv"),
            "--force",  # the second pass writes over the first one's file
        )
        one = pl.read_csv(project.root / "one.csv")
        row = batch.filter(pl.col("user_id") == i)
        assert one["segment_id"][0] == row["segment_id"][0]
        assert abs(one["distance"][0] - row["distance"][0]) < 1e-5
    assert project.snapshot() == before


def test_docs_report_is_self_contained(project):
    project.cli("run")
    project.edit("segments/segments.yml", "k: 3,", "k: 4,")
    project.cli("run")
    r = project.cli("docs")
    page = (project.root / "target/report/index.html").read_text()
    assert "Lineage" in page and "behaviour" in page and "lifecycle" in page
    assert "<circle" in page and "Sizes over runs" in page and "Flows in run 2" in page
    assert (
        "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
        and "https://" not in page
        and "<script" not in page
    )
    assert "wrote" in r.stdout
    # -o replaces a report, but not another file: `-o data/users.csv` made the data HTML
    users = project.read("data/users.csv")
    r = project.cli("docs", "-o", str(project.root / "data/users.csv"), expect=1)
    assert "users.csv exists" in r.stderr and project.read("data/users.csv") == users
    out = project.root / "site.html"
    project.cli("docs", "-o", str(out))
    project.cli("docs", "-o", str(out))  # its own report: replaced without --force
    project.cli("docs", "-o", str(project.root / "data/users.csv"), "--force")
    assert project.read("data/users.csv").lstrip().startswith("<!doctype html>")


def test_show_and_diff_refuse_a_negative_number_of_examples(built):
    for args in (["show", "behaviour"], ["diff", "--data"]):
        r = built.cli(*args, "--examples", "-1", expect=2)
        assert "internal error" not in r.output and "-1 is not in the range 0<=x<=1000" in r.stderr


def test_drift_policy_refits_when_the_population_moves(project):
    project.cli("run")
    # every user's behaviour changes a lot: far from the fitted centroids
    files = data_files(changed=tuple(range(1, 61)))
    for rel, content in files.items():
        project.write(
            rel, content.replace(",outdoor,", ",gaming,").replace("tent", "graphics card")
        )
    project.cli("run")
    g = summary(project)["segmentations"]["behaviour"]
    assert g["action"] == "refit" and g["reason"].startswith("drift"), g
    assert g["drift"]["score"] > 0.25


@pytest.mark.parametrize(
    "cluster",
    [
        "{method: minibatch_kmeans, k: 3, seed: 7}",
        "{method: gmm, k: 3, seed: 7}",
        "{method: agglomerative, k: 3, seed: 7}",
        "{method: hdbscan, min_cluster_size: 5, seed: 7}",
        "{method: kmeans, k: auto, k_range: [2, 5], seed: 7}",
    ],
)
def test_every_clusterer_fits_stores_and_assigns(project, cluster):
    project.edit(
        "segments/segments.yml", "cluster: {method: kmeans, k: 3, seed: 7}", f"cluster: {cluster}"
    )
    project.edit("segments/segments.yml", "tests: {min_share: 0.05, max_share: 0.9}", "tests: {}")
    project.cli("run")
    first = dict(project.sql("select user_id, segment_id from segments.behaviour"))
    assert len(first) == 60
    for rel, content in data_files(changed=(4,), extra_users=2).items():
        project.write(rel, content)
    project.cli("run")
    g = summary(project)["segmentations"]["behaviour"]
    assert g["users"] == 62
    if g["action"] == "assign":  # the stored model (restored from npz) scored the new users
        assert g["assigned"] == 3
        after = dict(project.sql("select user_id, segment_id from segments.behaviour"))
        assert all(after[u] == first[u] for u in first if u != 4)
    project.cli("test", "-s", "behaviour")
    if "hdbscan" in cluster:
        labels = {
            r[0]
            for r in project.sql("select segment from segments.behaviour where segment_id = -1")
        }
        assert labels <= {"outlier"}


def test_render_one_user_and_clean_cache(built):
    r = built.cli("render", "story", "--user", "3")
    assert (
        r.stdout.strip()
        == built.sql("select text from _segtool.texts__story where user_id = 3")[0][0]
    )
    # the key in its type, as score and assign read it ('03' was "no user_id = '03'")
    assert built.cli("render", "story", "--user", "03").stdout == r.stdout
    r = built.cli("render", "story", "--user", "9999", expect=1)
    assert "no user_id = '9999'" in r.stderr
    r = built.cli("render", "story", "--user", "abc", expect=1)
    assert "no user_id = 'abc'" in r.stderr and "Conversion" not in r.stderr
    old = built.n_vectors()
    built.edit("templates/story.j2", "A shopper", "One shopper")
    built.cli("run")
    assert built.n_vectors() == 2 * old
    r = built.cli("clean", "--cache")
    assert f"removed {old:,} unused vectors" in r.stdout
    live = built.sql("select count(distinct text_hash) from _segtool.texts__story")[0][0]
    assert built.n_vectors() == live == old
    built.cli("run")  # nothing to re-embed: the live vectors were kept
    assert summary(built)["embeddings"]["story.hash"]["action"] == "skip"


def test_clean_cache_before_the_first_run_creates_no_database(project):
    """It created an empty target/segtool.duckdb, after which a dry run said
    'the database has no segtool state yet'."""
    r = project.cli("clean", "--cache")
    assert "removed 0 unused vectors" in r.stdout
    assert not project.db.exists()


def test_parallel_rendering_gives_the_same_texts(project, tmp_path, monkeypatch):
    """Large work sets render in worker processes: same texts, same errors."""
    import shutil

    from tests.conftest import ProjectDir

    serial = ProjectDir(shutil.copytree(project.root, tmp_path / "serial"))
    serial.cli("run")
    monkeypatch.setattr("segtool.execute.render_pool.RENDER_POOL_MIN", 1)
    monkeypatch.setattr("segtool.execute.render_pool.SUB_BATCH", 7)
    project.cli("run")
    q = "select user_id, row_hash, text_hash, text from _segtool.texts__story order by 1"
    assert project.sql(q) == serial.sql(q)
    # an error in a worker keeps its template line and user
    project.write("templates/story.j2", "Story\n{{ (100 / (user_id - 7)) | round }}")
    r = project.cli("run", expect=1)
    assert "templates/story.j2:2" in r.stderr and "user_id 7" in r.stderr


def test_split_rendering_gives_the_same_texts_and_errors(project, tmp_path, monkeypatch):
    """Work sets too small for the pool render on two CPUs, a forked child
    taking chunks from the end and this process from the start: same texts
    however the work falls between them (this process slow to start, as when
    it imports torch meanwhile, or the child slow); a template error for a
    user in either part reads as in one process."""
    import os
    import shutil
    import time

    import segtool.execute.texts as texts_module
    from tests.conftest import ProjectDir

    monkeypatch.setattr("segtool.execute.render_pool.RENDER_SPLIT_MIN", 10**9)
    serial = ProjectDir(shutil.copytree(project.root, tmp_path / "serial"))
    serial.cli("run")
    monkeypatch.setattr("segtool.execute.render_pool.RENDER_SPLIT_MIN", 2)
    monkeypatch.setattr("segtool.execute.render_pool.SPLIT_CHUNK", 4)
    monkeypatch.setattr("segtool.encoders._device.available_cpus", lambda: 2)
    forks = []
    real_fork = os.fork

    def fork():
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    q = "select user_id, row_hash, text_hash, text, n_chars, truncated from _segtool.texts__story order by 1"
    real_render = texts_module.render_texts
    here = os.getpid()

    def slow(side):
        def render_texts(*args):
            if (os.getpid() == here) == (side == "here"):
                time.sleep(0.05)
            return real_render(*args)

        return render_texts

    for side in (None, "here", "child"):
        if side is not None:
            monkeypatch.setattr(texts_module, "render_texts", slow(side))
        shutil.rmtree(project.root / "target", ignore_errors=True)
        project.cli("run")
        assert project.sql(q) == serial.sql(q), side
    monkeypatch.setattr(texts_module, "render_texts", real_render)
    assert len(forks) == 3  # the split path ran each time
    # an error for a user in either part: 7 and 50, far apart in the work set
    for user in (7, 50):
        project.write("templates/story.j2", f"Story\n{{{{ (100 / (user_id - {user})) | round }}}}")
        serial.write("templates/story.j2", f"Story\n{{{{ (100 / (user_id - {user})) | round }}}}")
        monkeypatch.setattr("segtool.execute.render_pool.RENDER_SPLIT_MIN", 2)
        r = project.cli("run", expect=1)
        monkeypatch.setattr("segtool.execute.render_pool.RENDER_SPLIT_MIN", 10**9)
        one = serial.cli("run", expect=1)
        assert f"user_id {user}" in r.stderr and "templates/story.j2:2" in r.stderr
        assert r.stderr == one.stderr.replace(str(serial.root), str(project.root))


def test_split_rendering_imports_what_the_embedding_needs_meanwhile(project, monkeypatch):
    """While the child renders, this process imports Polars and the
    libraries of the encoders that embed the text (here the hashing
    encoder's NumPy featurisation), which the run needs next anyway."""
    import segtool.execute.render_pool as pool

    seen = []
    real = pool.render_split

    def render_split(proj, spec, table, render, prefetch=()):
        seen.append(prefetch)
        # a module that cannot be imported is the business of the step needing it
        return real(proj, spec, table, render, (*prefetch, "segtool_no_such_module"))

    monkeypatch.setattr(pool, "render_split", render_split)
    monkeypatch.setattr(pool, "RENDER_SPLIT_MIN", 2)
    monkeypatch.setattr("segtool.encoders._device.available_cpus", lambda: 2)
    project.cli("run")
    assert seen == [("polars", "segtool.encoders._hashing_features")]
    assert project.sql("select count(*) from _segtool.texts__story")[0][0] == 60


def test_work_tables_are_dropped_when_their_step_is_done(project, monkeypatch):
    """Temporary tables last until the connection closes: the users to
    render, their rendered texts and the texts to embed (at 1M users about a
    gigabyte) must be gone before the segmentations run."""
    import segtool.execute.segment as segment

    seen = []
    real = segment.execute_segmentation

    def spy(ctx, step):
        seen.append(
            sorted(
                r[0]
                for r in ctx.con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE temporary"
                ).fetchall()
            )
        )
        return real(ctx, step)

    monkeypatch.setattr(segment, "execute_segmentation", spy)
    project.cli("run")
    assert seen, "no segmentation ran"
    left = {t for tables in seen for t in tables}
    assert not {
        t
        for t in left
        if t.startswith(("__segtool_text_", "__segtool_rendered_", "__segtool_embed_"))
    }, left


def test_split_rendering_without_a_fork_renders_here(project, monkeypatch):
    """No memory or process slot for a child: the texts are rendered in one process."""
    import os

    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr("segtool.execute.render_pool.RENDER_SPLIT_MIN", 2)
    monkeypatch.setattr("segtool.encoders._device.available_cpus", lambda: 2)
    monkeypatch.setattr(os, "fork", no_fork)
    project.cli("run")
    assert project.sql("select count(*) from _segtool.texts__story")[0][0] == 60


def test_split_rendering_packs_texts_exactly():
    from segtool.execute.render_pool import _pack, _unpack

    texts = [("", False), ("plain", True), ("münchen · 東京 🙂", False), ("\udcff lone", True)]
    assert _unpack(_pack(texts)) == texts
    assert _unpack(_pack([])) == []


def test_assign_from_csv_reads_lists_or_says_why_not(built):
    """A CSV holds a LIST column as text: DuckDB's own notation is read as the
    list the template expects; anything else is refused naming the column."""
    import duckdb
    import polars as pl

    built.cli("run")  # a copied project: rebuild its views
    con = duckdb.connect(str(built.db), read_only=True)
    con.execute(
        f"COPY (SELECT * FROM user_features WHERE user_id <= 6 ORDER BY user_id) TO '{built.root / 'in.csv'}' (HEADER)"
    )
    con.execute(
        f"COPY (SELECT * FROM user_features WHERE user_id <= 6 ORDER BY user_id) TO '{built.root / 'in.parquet'}'"
    )
    con.close()
    r = built.root
    built.cli("assign", "behaviour", "--input", str(r / "in.parquet"), "--output", str(r / "p.csv"))
    built.cli("assign", "behaviour", "--input", str(r / "in.csv"), "--output", str(r / "c.csv"))
    assert pl.read_csv(built.root / "c.csv").equals(pl.read_csv(built.root / "p.csv"))
    # the name given says the format: a link users.csv -> export_2024 is a CSV
    # file ("cannot tell the format of .../export_2024")
    (r / "export_2024").write_bytes((r / "in.csv").read_bytes())
    (r / "linked.csv").symlink_to(r / "export_2024")
    built.cli("assign", "behaviour", "--input", str(r / "linked.csv"), "--output", str(r / "l.csv"))
    assert pl.read_csv(built.root / "l.csv").equals(pl.read_csv(built.root / "p.csv"))

    text = (built.root / "in.csv").read_text().splitlines()
    head = text[0].split(",")
    assert "products" in head
    bad = [text[0]] + [ln.replace("[", "").replace("]", "") for ln in text[1:]]
    built.write("bad.csv", "\n".join(bad) + "\n")
    before = built.snapshot()
    res = built.cli(
        "assign", "behaviour", "--input", str(r / "bad.csv"), "--output", str(r / "b.csv"), expect=1
    )
    assert "column 'products' is VARCHAR[]" in res.stderr and "Parquet or JSON" in res.stderr
    assert built.snapshot() == before and not (built.root / "b.csv").exists()
    # a CSV the reader refuses: why, not only "CSV Error on Line: 1", and not the line
    built.write("huge.csv", "user_id,orders\n1," + "x" * 3_000_000 + "\n")
    res = built.cli(
        "assign",
        "behaviour",
        "--input",
        str(r / "huge.csv"),
        "--output",
        str(r / "h.csv"),
        expect=1,
    )
    assert "CSV Error on Line: 1: Maximum line size" in res.stderr and "xxxx" not in res.stderr


def assign_refuses(built, name: str, messages: dict[str, str]) -> None:
    """`assign NAME` of each file (in the project folder) fails with its
    message, no internal error and no internal column, writes no output and
    leaves the database as it was."""
    before = built.snapshot()
    for file, message in messages.items():
        out = built.root / f"{file}.out.csv"
        r = built.cli("assign", name, "--input", str(built.root / file), "-o", str(out), expect=1)
        assert message in r.stderr, r.stderr
        assert "internal error" not in r.stderr and "__ord" not in r.stderr, r.stderr
        assert not out.exists()
    assert built.snapshot() == before


@pytest.mark.parametrize("name", ["behaviour", "lifecycle"])
def test_assign_needs_one_row_per_user(built, name):
    """A row without a key came out with key 0 (NumPy has no NULL), a file of
    one such row crashed writing the CSV; a repeated key got two answers."""
    import duckdb

    built.cli("run")
    con = duckdb.connect(str(built.db), read_only=True)
    rows = "SELECT * FROM user_features WHERE user_id <= 3"
    for file, sql in {
        "null.parquet": f"{rows} UNION ALL SELECT * REPLACE (NULL AS user_id) FROM user_features WHERE user_id = 4",
        "one_null.parquet": "SELECT * REPLACE (NULL AS user_id) FROM user_features WHERE user_id = 4",
        "twice.parquet": f"{rows} UNION ALL SELECT * FROM user_features WHERE user_id = 2",
        "thrice.parquet": f"{rows} UNION ALL (SELECT * FROM user_features WHERE user_id = 2) "
        "UNION ALL (SELECT * FROM user_features WHERE user_id = 2)",
        # a column named as segtool's row order: keys and rows were sorted apart
        # and zipped with other users' rows (exit 0)
        "ord.parquet": f"SELECT *, 0 AS __ORD FROM ({rows})",
    }.items():
        con.execute(f"COPY ({sql}) TO '{built.root / file}'")
    con.close()
    assign_refuses(
        built,
        name,
        {
            "null.parquet": "null.parquet: 1 row has no user_id",
            "one_null.parquet": "one_null.parquet: 1 row has no user_id",
            "twice.parquet": "twice.parquet: 1 user_id value repeats: 2 (2 rows)",
            "thrice.parquet": "thrice.parquet: 1 user_id value repeats: 2 (3 rows)",
            "ord.parquet": "ord.parquet has a column '__ORD', the name segtool gives the file's row order",
        },
    )


@pytest.mark.parametrize(
    ("name", "column", "reader"),
    [
        ("behaviour", "country", "text 'story'"),
        ("lifecycle", "revenue", "segmentation 'lifecycle'"),
        ("lifecycle", "orders", "the population of segmentation 'lifecycle'"),
    ],
)
def test_assign_names_the_column_the_file_lacks(built, name, column, reader):
    """A file without a column the template or a rule reads: the errors were
    the template's "'country' is undefined" and the rule's "invalid
    predicate ... Binder Error", as if the project were wrong."""
    import duckdb

    if "population" in reader:
        built.edit(
            "segments/segments.yml",
            "  - name: lifecycle\n",
            "  - name: lifecycle\n    population: orders >= 0\n",
        )
    built.cli("run")
    con = duckdb.connect(str(built.db), read_only=True)
    file = built.root / "in.parquet"
    con.execute(f"COPY (SELECT * EXCLUDE ({column}) FROM user_features) TO '{file}'")
    con.close()
    r = built.cli("assign", name, "--input", str(file), "-o", str(built.root / "o.csv"), expect=1)
    assert f"in.parquet lacks column '{column}', which {reader} reads" in r.stderr, r.stderr
    assert "user_features" in r.stderr  # the hint names the model whose columns it needs


def test_assign_reads_the_file_in_the_models_types(built):
    """Keys past BIGINT came out as floats (two users as one key 1.2e19), a
    number held as text failed inside the template as the project's error,
    a header-only CSV failed as 'not numeric', a 0-byte file listed the
    internal __ord column; users outside the population kept a distance and
    a confidence."""
    import duckdb
    import polars as pl

    built.edit(
        "segments/segments.yml",
        "  - name: behaviour\n",
        "  - name: behaviour\n    population: orders > 2\n",
    )
    built.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        "  - name: lifecycle\n    population: orders > 2\n",
    )
    built.cli("run")
    r = built.root
    con = duckdb.connect(str(built.db), read_only=True)
    rows = "SELECT * FROM user_features ORDER BY user_id"
    con.execute(f"COPY ({rows} LIMIT 3) TO '{r / 'in.csv'}' (HEADER)")
    con.execute(f"COPY ({rows} LIMIT 0) TO '{r / 'empty.csv'}' (HEADER)")
    con.execute(f"COPY ({rows}) TO '{r / 'all.parquet'}'")
    n_outside = con.execute("SELECT count(*) FROM user_features WHERE NOT orders > 2").fetchall()[
        0
    ][0]
    con.close()
    lines = (r / "in.csv").read_text().splitlines()
    head = lines[0].split(",")
    big = [lines[0]] + [
        f"1234567890123456789{i}" + ln[ln.index(",") :] for i, ln in enumerate(lines[1:])
    ]
    built.write("big.csv", "\n".join(big) + "\n")
    cells = lines[2].split(",")
    cells[head.index("revenue")] = "abc"
    built.write("text.csv", "\n".join([lines[0], lines[1], ",".join(cells)]) + "\n")
    built.write("zero.csv", "")
    # 1.2 and 1.4 are no BIGINT keys (DuckDB rounds both to user 1)
    frac = [lines[0]] + [f"1.{2 + 2 * i}" + ln[ln.index(",") :] for i, ln in enumerate(lines[1:])]
    built.write("frac.csv", "\n".join(frac) + "\n")
    assign_refuses(
        built,
        "behaviour",
        {
            "big.csv": "big.csv: column 'user_id' is BIGINT in the project's models, but the file holds it as HUGEINT, which does not read as BIGINT (e.g. 12345678901234567890)",
            "text.csv": "text.csv: column 'revenue' is DOUBLE in the project's models, but the file holds it as VARCHAR, which does not read as DOUBLE (e.g. user_id 2: 'abc')",
            "zero.csv": "zero.csv is empty (0 bytes)",
            "frac.csv": "frac.csv: column 'user_id' is BIGINT in the project's models, but the file holds it as DOUBLE, which does not read as BIGINT (e.g. 1.2)",
        },
    )
    built.cli("assign", "behaviour", "--input", str(r / "empty.csv"), "-o", str(r / "o.csv"))
    assert pl.read_csv(r / "o.csv").height == 0
    built.cli("assign", "behaviour", "--input", str(r / "all.parquet"), "-o", str(r / "all.csv"))
    out = pl.read_csv(r / "all.csv")
    outside = out.filter(pl.col("segment") == "outside population")
    assert outside.height == n_outside > 0
    assert outside["distance"].null_count() == outside["confidence"].null_count() == n_outside
    assert out.filter(pl.col("segment") != "outside population")["confidence"].null_count() == 0
    # rule segments alike: no id and no confidence outside the population
    built.cli("assign", "lifecycle", "--input", str(r / "all.parquet"), "-o", str(r / "rules.csv"))
    rules = pl.read_csv(r / "rules.csv")
    outside = rules.filter(pl.col("segment") == "outside population")
    assert outside.height == n_outside
    assert outside["segment_id"].null_count() == outside["confidence"].null_count() == n_outside


def test_a_clustering_made_rules_and_back_is_fitted_again(project):
    """value_tiers made rules for a run, then clusters again: the plan said
    'inputs unchanged for every user: skip' (the old fit was still active and
    its stored inputs still matched) and the rule assignment stayed in the
    table as if it were the clusters; the rule ids were never retired."""
    project.cli("run")

    def table():
        return project.sql(
            "select segment_id, count(*) from segments.behaviour group by 1 order by 2, 1"
        )

    def catalog():
        return project.sql(
            "select segment_id, label, died_run from _segtool.segment_catalog "
            "where segmentation = 'behaviour' order by 1"
        )

    first = [n for _, n in table()]
    cluster_ids = {i for i, _, _ in catalog()}
    # a rule named like one of the clusters does not take the cluster's id
    like_a_cluster = catalog()[0][1]
    orig = project.read("segments/segments.yml")
    start = orig.index("  - name: behaviour")
    end = orig.index("  - name: lifecycle")
    project.write(
        "segments/segments.yml",
        orig[:start]
        + "  - name: behaviour\n    model: user_features\n"
        + f'    rules: [{{segment: "{like_a_cluster}", when: "revenue > 300"}}]\n    default: small\n'
        + orig[end:],
    )
    project.cli("run", "-s", "behaviour")
    rule_ids = {i for i, _ in table()}
    assert not rule_ids & cluster_ids
    # every user's cluster spell closed and a rule spell opened: the users of
    # the cluster the rule is named like kept an open spell on its retired id
    open_spells = project.sql(
        "select h.user_id, h.segment_id, s.segment_id from segments.behaviour_history h "
        "full join segments.behaviour s using (user_id) where h.valid_to_run is null"
    )
    assert all(h == s for _, h, s in open_spells), open_spells
    assert len(open_spells) == sum(first)
    g = summary(project)["segmentations"]["behaviour"]
    assert g["assigned"] == sum(first), g
    project.write("segments/segments.yml", orig)
    plan = json.loads(project.cli("run", "--dry-run", "--format", "json").stdout)
    step = next(s for s in plan["steps"] if s["unique_id"] == "segmentation.behaviour")
    assert step["action"] in ("create", "refit"), step
    project.cli("run")
    assert [n for _, n in table()] == first  # the same clusters as the first fit
    ids = {i for i, _ in table()}
    assert not ids & rule_ids  # new ids: a rule segment's id is not a cluster's
    died = {i: d for i, _, d in catalog()}
    assert all(died[i] is not None for i in rule_ids) and all(died[i] is None for i in ids)


def test_a_rule_removed_is_retired_and_named_again_lives_again(project):
    project.cli("run")
    rule = '      - {segment: lapsed, when: "recency_days > 120"}\n'
    orig = project.read("segments/segments.yml")
    project.write("segments/segments.yml", orig.replace(rule, ""))
    project.cli("run")

    def lapsed():
        return project.sql(
            "select segment_id, size, died_run from _segtool.segment_catalog "
            "where segmentation = 'lifecycle' and label = 'lapsed'"
        )[0]

    sid, size, died = lapsed()
    assert size == 0 and died == 2
    project.write("segments/segments.yml", orig)
    project.cli("run")
    n = project.sql("select count(*) from segments.lifecycle where segment = 'lapsed'")[0][0]
    assert lapsed() == (sid, n, None) and n > 0


def test_fewer_segments_than_k_are_said(project):
    """k at the population's size: k-means cannot split users with identical
    inputs (here ten new users without orders), and the missing segments went
    without a word."""
    users = project.read("data/users.csv").rstrip("\n").splitlines()
    signup = users[1].split(",")[1]
    users += [f"{900 + i},{signup},DE" for i in range(10)]
    project.write("data/users.csv", "\n".join(users) + "\n")
    project.edit(
        "segments/segments.yml",
        "{method: kmeans, k: 3, seed: 7}",
        "{method: kmeans, k: 70, seed: 7}",
    )
    r = project.cli("run")
    found = project.sql("select count(distinct segment_id) from segments.behaviour")[0][0]
    assert found < 70
    assert f"segmentation 'behaviour': k=70 asked, {found} segments found" in r.output
    project.edit("segments/segments.yml", "k: 70,", "k: 3,")
    assert "segments found" not in project.cli("run").output


def test_a_var_in_a_rule_re_evaluates_the_rule_segments(project):
    """`--vars` that change a predicate change who is where: the rules run
    again (and a second run with the same vars has nothing to do)."""
    project.edit(
        "segments/segments.yml",
        'when: "revenue > 300"',
        "when: \"revenue > {{ var('big', 300) }}\"",
    )
    project.cli("run")
    before = dict(project.sql("select user_id, segment from segments.lifecycle"))
    out = project.cli("run", "-s", "lifecycle", "--vars", "{big: 100}").stdout
    assert "assign      segmentation.lifecycle" in out
    after = dict(project.sql("select user_id, segment from segments.lifecycle"))
    assert sum(before[u] != after[u] for u in before) > 0
    again = project.cli("run", "-s", "lifecycle", "--vars", "{big: 100}").stdout
    assert "skip        segmentation.lifecycle" in again
    # a var no predicate reads moves nobody: nothing to do
    other = project.cli("run", "-s", "lifecycle", "--vars", "{big: 100, unrelated: 7}").stdout
    assert "skip        segmentation.lifecycle" in other


def test_a_changed_population_says_so_not_labels(project):
    """A var in the population moves users out of it; the plan names the
    population, and a labels edit names the labels (both keep the fit)."""
    project.edit(
        "segments/segments.yml",
        "cluster: {method: kmeans, k: 3, seed: 7}",
        "cluster: {method: kmeans, k: 3, seed: 7}\n    population: \"orders >= {{ var('min_orders', 0) }}\"",
    )
    project.cli("run")
    out = project.cli("run", "--dry-run", "-s", "behaviour", "--vars", "{min_orders: 3}").stdout
    line = next(ln for ln in out.splitlines() if "segmentation.behaviour" in ln)
    assert (
        "population changed (a var it reads): users who leave it are removed" in line
        and "labels" not in line
    )
    assert line.split()[0] == "assign" and " leave [" in line
    project.edit("segments/segments.yml", "labels: {keywords: 3}", "labels: {keywords: 2}")
    out = project.cli("run", "--dry-run", "-s", "behaviour").stdout
    line = next(ln for ln in out.splitlines() if "segmentation.behaviour" in ln)
    assert "labels changed: they apply at the next refit" in line and "population" not in line


def test_uuid_keys_run_incrementally(project):
    """A UUID entity key (Polars cannot hold one) reaches DuckDB as text and
    is stored as a UUID, so the next run finds the key type unchanged."""
    project.edit(
        "models/user_features.sql",
        "    u.user_id,\n",
        "    md5(u.user_id::varchar)::uuid as user_id,\n",
    )
    project.edit("models/user_features.sql", "group by all", "group by u.user_id, u.country")
    project.edit(
        "models/schema.yml",
        "relationships: {to: \"ref('user_features')\", field: user_id}",
        "not_null",
    )
    project.cli("run")
    for table in ("behaviour", "behaviour_history", "lifecycle"):
        got = project.sql(f"select typeof(user_id) from segments.{table} limit 1")
        assert got == [("UUID",)], table
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        project.write(rel, content)
    project.cli("run")
    s = summary(project)
    assert s["segmentations"]["behaviour"]["assigned"] == 5
    assert project.sql("select count(*) from segments.behaviour")[0][0] == 63


def test_a_dropped_history_is_started_again_for_every_user(project):
    """An assignment of a few changed users writes history only for them,
    unless the history table is gone: then every user gets an open spell."""
    project.cli("run")
    import duckdb

    with duckdb.connect(str(project.db)) as con:
        con.execute("DROP TABLE segments.behaviour_history")
    for rel, content in data_files(changed=(5, 9)).items():
        project.write(rel, content)
    project.cli("run")
    assert summary(project)["segmentations"]["behaviour"]["action"] == "assign"
    open_spells = project.sql(
        "select count(*) from segments.behaviour_history where valid_to_run is null"
    )[0][0]
    assert open_spells == project.sql("select count(*) from segments.behaviour")[0][0] == 60


def _summary(project):
    return json.loads((project.root / "target/run_results.json").read_text())["summary"]


def _user_features_keyed_incremental(project) -> None:
    project.edit(
        "models/user_features.sql",
        "{{ config(materialized='table') }}",
        "{{ config(materialized='incremental', unique_key='user_id') }}",
    )


def _incremental_user_features(project) -> None:
    """user_features incremental; merges see new users only (changed orders
    of known users wait for a rebuild)."""
    _user_features_keyed_incremental(project)
    project.edit(
        "models/user_features.sql",
        "group by all",
        "{% if is_incremental() %}where u.user_id not in (select user_id from {{ this }}){% endif %}\n"
        "group by all",
    )


def test_a_rebuilt_incremental_model_is_new_data_downstream(project):
    """--full-refresh of an incremental model (the fix the docs give for edits
    its merges do not see) recorded the same input hash as before: the texts
    it changed kept no vector, their users kept their old segments, and a
    later `run --refit` failed for missing vectors. A run after `-s model
    --full-refresh` skipped the texts it changed."""
    from tests.fixtures import data_files

    _incremental_user_features(project)
    project.cli("run")
    for rel, content in data_files(changed=(5, 9)).items():
        project.write(rel, content)
    project.cli("run")
    assert _summary(project)["texts"]["story"]["action"] == "skip"  # not seen by the merge
    project.cli("run", "--full-refresh")
    s = _summary(project)
    assert s["embeddings"]["story.hash"]["action"] == "incremental"
    assert s["embeddings"]["story.hash"]["embedded"] == 2
    assert s["segmentations"]["behaviour"]["assigned"] == 2
    project.cli("run")
    assert _summary(project)["actions"] == {"skip": 6}  # the next run finds all up to date
    # rebuilt alone: the next run renders what it changed
    for rel, content in data_files(changed=(5, 9, 11)).items():
        project.write(rel, content)
    project.cli("run")
    project.cli("run", "--full-refresh", "-s", "user_features")
    project.cli("run")
    s = _summary(project)
    assert s["texts"]["story"]["changed"] == 1 and s["segmentations"]["behaviour"]["assigned"] == 1
    project.cli("run", "--refit")


@pytest.mark.parametrize(
    "first, later, says",
    [
        ("cast(amount as integer)", "amount", "would be stored as"),  # 4.99 became 5
        ("cast(amount as varchar)", "amount", "its values would be stored as text"),
        ("cast(amount as double)", "cast(amount as decimal(10, 2))", None),  # every value kept
    ],
)
def test_a_merge_that_would_change_values_by_the_tables_type_is_refused(
    project, first, later, says
):
    from tests.fixtures import data_files

    project.write(
        "models/amounts.sql",
        "{{ config(materialized='incremental', unique_key='order_id') }}\n"
        f"select order_id, {{% if is_incremental() %}}{later}{{% else %}}{first}{{% endif %}} as amount\n"
        "from {{ ref('stg_orders') }}\n",
    )
    project.cli("run")
    for rel, content in data_files(changed=(5,)).items():
        project.write(rel, content)
    if says is None:
        project.cli("run")
        return
    r = project.cli("run", expect=1)
    assert (
        "incremental model 'amounts' returns column 'amount' as DOUBLE, but its table holds"
        in r.stderr
    )
    assert says in r.stderr and "--full-refresh" in r.stderr
    project.cli("run", "--full-refresh")


@pytest.mark.parametrize(
    "select, says",
    [
        ("select user_id, order_id from {{ ref('stg_orders') }}", "returns 4 rows for user_id 2:"),
        (
            "select {% if is_incremental() %}case when user_id = 5 then null else user_id end"
            "{% else %}user_id{% endif %} as user_id, count(*) as n from {{ ref('stg_orders') }} group by 1",
            "returns 1 row with a NULL in its unique_key (user_id)",
        ),
    ],
)
def test_a_unique_key_that_is_not_unique_is_refused(project, select, says):
    """A key twice in one batch was inserted twice, and a NULL key matched no
    row, so each merge added it again: the docs say rows with the same key
    are replaced."""
    from tests.fixtures import data_files

    project.write(
        "models/inc.sql",
        "{{ config(materialized='incremental', unique_key='user_id') }}\n" + select + "\n",
    )
    if "is_incremental" in select:
        project.cli("run")
        for rel, content in data_files(changed=(5,)).items():
            project.write(rel, content)
    r = project.cli("run", expect=1)
    assert f"incremental model 'inc' {says}" in r.stderr, r.stderr


def test_assign_and_the_report_map_refuse_a_fit_made_with_other_inputs(project, tmp_path):
    """After an encoder's weights changed, assign put new vectors through the
    old fit (350 of 400 users in other segments, exit 0) and the report drew
    its map that way; the plan refits then. A feature-set edit changes the
    fit's inputs the same way."""
    project.cli("run")
    project.edit(
        "segments/segments.yml", "revenue: {transform: log1p}", "revenue: {transform: none}"
    )
    import duckdb

    con = duckdb.connect(str(project.db), read_only=True)
    con.execute(f"COPY (SELECT * FROM user_features) TO '{tmp_path}/uf.parquet'")
    con.close()
    out = str(tmp_path / "a.csv")
    r = project.cli(
        "assign", "behaviour", "--input", str(tmp_path / "uf.parquet"), "-o", out, expect=1
    )
    assert (
        "segmentation 'behaviour' was fitted with other inputs than the project's now" in r.stderr
    )
    assert "segtool run -s +behaviour" in r.stderr
    project.cli("docs", "-o", str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert "fitted with other inputs than the project" in html
    project.cli("run")
    project.cli(
        "assign",
        "behaviour",
        "--input",
        str(tmp_path / "uf.parquet"),
        "-o",
        str(tmp_path / "a.csv"),
    )


def test_min_share_fails_for_a_rule_segment_no_user_is_in(project):
    """A rule that matches nobody leaves its segment with 0 users: min_share
    passed, since only segments with rows were counted."""
    project.edit(
        "segments/segments.yml",
        '- {segment: lapsed, when: "recency_days > 120"}',
        '- {segment: lapsed, when: "recency_days > 120"}\n      - {segment: nobody, when: "revenue < 0"}',
    )
    project.edit(
        "segments/segments.yml",
        "    default: active\n",
        "    default: active\n    tests: {min_share: 0.01}\n",
    )
    project.cli("run")
    assert project.sql("select count(*) from segments.lifecycle where segment = 'nobody'") == [(0,)]
    r = project.cli("test", "-s", "lifecycle", expect=1)
    assert "FAIL  min_share(lifecycle): 1 segment below min_share 0.01" in r.stdout
    assert "nobody" in r.stdout


def test_max_moved_share_reads_the_latest_run(project):
    """The share of users who moved in the latest run, of the users there
    are: a run that moved nobody passes (it read the last run that opened a
    spell, so an old move kept failing; and it counted users who left)."""
    project.edit(
        "segments/segments.yml",
        "    default: active\n",
        "    default: active\n    tests: {max_moved_share: 0.1}\n",
    )
    project.cli("run")
    project.cli("test", "-s", "lifecycle")  # the first run moves nobody
    project.edit("segments/segments.yml", '"revenue > 300"', '"revenue > 100"')
    project.cli("run")
    moved = project.sql(
        "select count(distinct user_id) from segments.lifecycle_history h where valid_to_run = "
        "(select max(run_id) from _segtool.runs) and exists (select 1 from "
        "segments.lifecycle_history n where n.user_id = h.user_id and n.valid_from_run = h.valid_to_run)"
    )[0][0]
    total = project.sql("select count(*) from segments.lifecycle")[0][0]
    assert moved / total > 0.1
    r = project.cli("test", "-s", "lifecycle", expect=1)
    assert f"FAIL  max_moved_share(lifecycle): {moved / total:.1%} of users moved" in r.stdout
    # one user leaves: nobody moved in that run
    for rel, content in data_files(n_users=59).items():
        project.write(rel, content)
    project.cli("run")
    r = project.cli("test", "-s", "lifecycle")
    assert "PASS  max_moved_share(lifecycle)" in r.stdout


def test_a_relationships_test_to_an_unknown_model_fails_validate_and_only_itself(project):
    """validate said ok; `segtool test` stopped at it with no line and ran
    no other test."""
    project.edit(
        "models/schema.yml",
        "relationships: {to: \"ref('user_features')\", field: user_id}",
        "relationships: {to: \"ref('user_featurez')\", field: user_id}",
    )
    r = project.cli("validate", expect=1)
    assert "models/schema.yml:12: relationships on 'user_id': unknown model 'user_featurez'" in (
        r.stdout + r.stderr
    )
    assert "did you mean 'user_features'" in r.stdout + r.stderr
    project.edit("models/schema.yml", "ref('user_featurez')", "ref('user_features')")
    project.edit("models/schema.yml", "field: user_id}", "field: user_idd}")
    r = project.cli("validate", expect=1)
    assert "model 'user_features' has no column 'user_idd'" in r.stdout + r.stderr
    project.edit("models/schema.yml", "field: user_idd}", "field: user_id}")
    project.cli("run")
    project.edit("models/schema.yml", "ref('user_features')", "ref('user_featurez')")
    r = project.cli("test", expect=1)
    assert (
        "relationships(stg_orders.user_id): relationships on 'user_id': unknown model" in r.stdout
    )
    assert "PASS  unique(user_features.user_id)" in r.stdout  # the others still ran
    assert "PASS  min_share(behaviour)" in r.stdout


def test_a_rule_segment_named_again_lives_again_from_that_run(project):
    """Its id is its name's; the catalog kept born_run 1 while it was gone
    for runs, so the report said it existed 'since run 1'."""
    project.cli("run")  # run 1
    project.edit("segments/segments.yml", "segment: big,", "segment: huge,")
    project.cli("run")  # run 2: big retired
    project.edit("segments/segments.yml", "segment: huge,", "segment: big,")
    project.cli("run")  # run 3: big again
    rows = project.sql(
        "select label, segment_id, born_run, died_run from _segtool.segment_catalog "
        "where segmentation = 'lifecycle' and label in ('big', 'huge') order by label"
    )
    big, huge = rows
    assert big[2:] == (3, None) and huge[3] == 3
    assert project.sql(
        "select distinct segment_id from segments.lifecycle where segment = 'big'"
    ) == [(big[1],)]
    # the report's events: what each run began and ended (none at the first)
    events = project.sql(
        "select run_id, event, detail::int from _segtool.segment_events "
        "where segmentation = 'lifecycle' order by 1, 2"
    )
    assert events == [
        (2, "birth", huge[1]),
        (2, "death", big[1]),
        (3, "birth", big[1]),
        (3, "death", huge[1]),
    ]


def test_show_says_from_which_run_traits_and_drivers_are(project):
    """An assignment of new and changed users keeps the traits and drivers
    of the fit; show said 'last run 2' over numbers of run 1 (a model edit
    since then is not in them)."""
    project.cli("run")
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        project.write(rel, content)
    project.cli("run")
    assert summary(project)["segmentations"]["behaviour"]["assigned"] == 5
    head = project.cli("show", "behaviour").stdout.splitlines()[0]
    assert head.endswith("last run 2; what sets each apart and the drivers are of run 1"), head
    project.cli("run", "--refit", "-s", "behaviour")
    head = project.cli("show", "behaviour").stdout.splitlines()[0]
    assert head.endswith("last run 3"), head


def test_an_env_var_a_rule_or_template_reads_is_part_of_what_it_depends_on(project, monkeypatch):
    """A changed env_var() value in a predicate or a template moved nobody
    and rendered nothing (`skip ... unchanged`), though models that read one
    are rebuilt; its value is in no file segtool writes."""
    project.edit(
        "segments/segments.yml",
        '"revenue > 300"',
        "\"revenue > {{ env_var('SEGTOOL_BIG', '300') }}\"",
    )
    project.edit(
        "templates/story.j2",
        "A shopper from",
        "{{ env_var('SEGTOOL_WORD', 'A') }} shopper from",
    )
    monkeypatch.setenv("SEGTOOL_BIG", "300")
    project.cli("run")
    big = project.sql("select count(*) from segments.lifecycle where segment = 'big'")[0][0]
    assert "(nothing to do;" in project.cli("run").stdout
    monkeypatch.setenv("SEGTOOL_BIG", "100")
    monkeypatch.setenv("SEGTOOL_WORD", "Some")
    plan = project.cli("run", "--dry-run").stdout
    assert "skip        segmentation.lifecycle" not in plan
    assert "skip        text.story" not in plan
    project.cli("run")
    more = project.sql("select count(*) from segments.lifecycle where segment = 'big'")[0][0]
    want = project.sql("select count(*) from main.user_features where revenue > 100")[0][0]
    assert more == want > big
    assert (
        project.sql("select count(*) from _segtool.texts__story where text like 'Some shopper%'")[
            0
        ][0]
        == 60
    )
    project.cli("compile")
    manifest = (project.root / "target" / "manifest.json").read_text()
    assert "Some" not in manifest  # hashes only: the value is written nowhere


def test_assign_of_rules_refuses_a_segment_with_no_id_yet(project):
    """A rule added since the last run, or a rule segmentation never run:
    its users came out with an empty segment_id, exit 0."""
    import duckdb

    project.cli("run")
    con = duckdb.connect(str(project.db), read_only=True)
    con.execute(f"COPY (SELECT * FROM user_features) TO '{project.root / 'u.parquet'}'")
    con.close()
    u = str(project.root / "u.parquet")
    project.edit(
        "segments/segments.yml",
        '- {segment: big, when: "revenue > 300"}',
        '- {segment: whale, when: "revenue > 400"}\n      - {segment: big, when: "revenue > 300"}',
    )
    r = project.cli(
        "assign", "lifecycle", "--input", u, "-o", str(project.root / "a.csv"), expect=1
    )
    assert "segment 'whale' of its rules has no id yet" in r.stderr
    assert "segtool run -s lifecycle" in r.stderr and not (project.root / "a.csv").exists()
    project.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        "  - name: tiers\n    model: user_features\n    rules:\n"
        '      - {segment: top, when: "revenue > 300"}\n    default: rest\n'
        "  - name: lifecycle\n",
    )
    r = project.cli("assign", "tiers", "--input", u, "-o", str(project.root / "t.csv"), expect=1)
    assert "segmentation 'tiers' has not been run yet" in r.stderr
    project.cli("run")
    project.cli("assign", "lifecycle", "--input", u, "-o", str(project.root / "a.csv"))
    # rules without a default: a user no rule holds for has no segment and so
    # no confidence in one (it was 1.0)
    project.edit("segments/segments.yml", "    default: active\n", "")
    project.cli("run", "-s", "lifecycle")
    project.cli("assign", "lifecycle", "--input", u, "-o", str(project.root / "n.csv"))
    import polars as pl

    out = pl.read_csv(project.root / "n.csv")
    none = out.filter(pl.col("segment").is_null())
    assert none.height > 0 and none["confidence"].null_count() == none.height
    assert out.filter(pl.col("segment").is_not_null())["confidence"].to_list() == [1.0] * (
        out.height - none.height
    )


def test_assign_says_a_failing_value_is_the_files(built):
    """A NULL in the file failed the features (hint: 'fix the model, or set
    impute') and a template (`{{ orders + 1 }}`) as if the project were wrong."""
    import duckdb

    built.edit("templates/story.j2", "with {{ orders }} orders", "with {{ orders + 1 }} orders")
    built.cli("run")
    con = duckdb.connect(str(built.db), read_only=True)
    file = built.root / "nulls.parquet"
    con.execute(f"COPY (SELECT * REPLACE (NULL::BIGINT AS orders) FROM user_features) TO '{file}'")
    con.close()
    r = built.cli(
        "assign", "behaviour", "--input", str(file), "-o", str(built.root / "o.csv"), expect=1
    )
    assert "text 'story'" in r.stderr and "template error" in r.stderr, r.stderr
    assert f"read {file}'s values here, not a model's: check the file" in r.stderr, r.stderr
    built.edit("templates/story.j2", "with {{ orders + 1 }} orders", "with {{ orders }} orders")
    built.cli("run")
    r = built.cli(
        "assign", "behaviour", "--input", str(file), "-o", str(built.root / "o.csv"), expect=1
    )
    assert "feature column 'orders' has 60 NaN/inf/NULL values" in r.stderr, r.stderr
    assert f"features 'rfm' read {file}'s values here, not a model's" in r.stderr, r.stderr
    assert "fix the model" not in r.stderr and not (built.root / "o.csv").exists()


def test_assign_names_a_missing_column_a_template_uses_without_naming_it(built):
    """`{{ revenue | round }}` on a file without revenue said only 'type
    StrictUndefined doesn't define __round__' at the template's line."""
    import duckdb

    built.edit(
        "templates/story.j2", "A shopper from", "Spent {{ revenue | round }}. A shopper from"
    )
    built.cli("run")
    con = duckdb.connect(str(built.db), read_only=True)
    file = built.root / "in.parquet"
    con.execute(f"COPY (SELECT * EXCLUDE (revenue) FROM user_features) TO '{file}'")
    con.close()
    r = built.cli(
        "assign", "behaviour", "--input", str(file), "-o", str(built.root / "o.csv"), expect=1
    )
    assert "in.parquet lacks column 'revenue', and text 'story' failed without it" in r.stderr, (
        r.stderr
    )


def test_show_s_last_run_counts_a_run_that_only_removed_users(project):
    """A run in which users only left wrote no row: show said the run before."""
    project.cli("run")  # run 1
    for rel, content in data_files(n_users=59).items():
        project.write(rel, content)
    project.cli("run")  # run 2: user 60 leaves, nobody else changes
    assert project.sql("select max(run_id) from segments.lifecycle")[0][0] == 1
    head = project.cli("show", "lifecycle").stdout.splitlines()[0]
    assert "59 users, last run 2" in head, head
    listing = project.cli("show").stdout
    assert any(
        line.split()[:5] == ["lifecycle", "rules", "59", "3", "2"] for line in listing.splitlines()
    ), listing


def _model_step(project, uid="model.user_features") -> dict:
    results = json.loads((project.root / "target/run_results.json").read_text())["results"]
    return next(r for r in results if r["unique_id"] == uid)


def test_an_edit_inside_is_incremental_is_a_change(project):
    """Node hashes came from the full build's SQL only: an edit inside
    `{% if is_incremental() %}` changed nothing state:modified, diff or run
    saw, and every later merge ran the new filter over rows the old one made."""
    _incremental_user_features(project)
    project.cli("run")
    project.cli("compile")
    (project.root / "prev").mkdir()
    (project.root / "target/manifest.json").rename(project.root / "prev/manifest.json")
    project.edit("models/user_features.sql", "where u.user_id not in", "where u.user_id + 0 not in")
    listed = project.cli("ls", "-s", "state:modified", "--state", str(project.root / "prev")).stdout
    assert "model.user_features" in listed
    project.cli("run")
    step = _model_step(project)
    assert (step["action"], step["reason"]) == (
        "rebuild",
        "SQL changed: rebuilt in full, so no row keeps the old SQL's values",
    )


def test_state_from_before_the_branch_was_fingerprinted_is_not_rebuilt(project):
    """After the upgrade, an incremental model whose SQL did not change is
    merged as usual, not rebuilt from scratch: the branch is recorded then."""
    from segtool.api import Project
    from segtool.graph.dag import sha
    from segtool.project.loader import dumps

    _incremental_user_features(project)
    project.cli("run")
    node = Project.load(project.root).graph().graph["model.user_features"]
    assert "incremental_sql" in node.data
    legacy = {k: v for k, v in node.data.items() if k != "incremental_sql"}
    parts = {k: v for k, v in node.part_hashes().items() if k != "incremental_sql"}
    import duckdb

    con = duckdb.connect(str(project.db))  # as a segtool before this change recorded it
    con.execute(
        "UPDATE _segtool.nodes SET own_hash = ?, parts = ? WHERE unique_id = 'model.user_features'",
        [sha(dumps({"kind": "model", "data": legacy})), json.dumps(parts)],
    )
    con.close()
    project.cli("run")
    assert _model_step(project)["action"] in ("skip", "incremental")  # not rebuilt
    project.cli("run")
    assert _model_step(project)["action"] == "skip"
    project.edit("models/user_features.sql", "where u.user_id not in", "where u.user_id + 0 not in")
    project.cli("run")
    assert _model_step(project)["action"] == "rebuild"


def test_rules_over_rows_that_move_no_user_are_skipped(project):
    """A comment in the model's SQL rebuilt it with the same rows: the plan
    and diff listed `assign segmentation.lifecycle [0 assigned, 0 removed]`
    (ci.md: a step whose work turns out empty is `skip`)."""
    project.cli("run")
    project.edit("models/user_features.sql", "group by all", "-- a comment\ngroup by all")
    plan = json.loads(project.cli("run", "--dry-run", "--format", "json").stdout)
    step = next(s for s in plan["steps"] if s["unique_id"] == "segmentation.lifecycle")
    assert (step["action"], step["reason"]) == (
        "skip",
        "model data changed: no user's segment changes",
    )
    project.cli("run")
    assert _model_step(project, "segmentation.lifecycle")["action"] == "skip"
    assert _model_step(project)["action"] == "rebuild"
    # the same rules on rows that do move users are assigned
    project.edit("segments/segments.yml", 'when: "revenue > 300"', 'when: "revenue > 200"')
    project.cli("run")
    assert _model_step(project, "segmentation.lifecycle")["action"] == "assign"


def _user_features_merging_from(project, merge_from: str) -> None:
    """user_features incremental, reading `merge_from` instead of the users
    source when it merges (data/late_users.csv starts with no rows)."""
    project.write("data/late_users.csv", "user_id,signup_at,country\n")
    _user_features_keyed_incremental(project)
    project.edit(
        "models/user_features.sql",
        "from {{ source('shop', 'users') }} u",
        f"from {{% if is_incremental() %}}{merge_from}"
        "{% else %}{{ source('shop', 'users') }}{% endif %} u",
    )


def _late_user_is_merged(project, why: str) -> None:
    project.write("data/late_users.csv", "user_id,signup_at,country\n9001,2024-05-01,DE\n")
    plan = json.loads(project.cli("run", "--dry-run", "--format", "json").stdout)
    step = next(s for s in plan["steps"] if s["unique_id"] == "model.user_features")
    assert step["action"] == "incremental" and why in step["reason"], step
    project.cli("run")
    assert project.sql("select count(*) from main.user_features where user_id = 9001") == [(1,)]
    assert project.sql("select count(*) from segments.behaviour where user_id = 9001") == [(1,)]


def test_a_source_read_only_when_merging_is_an_input_of_the_merge(project):
    """A source read only inside `{% if is_incremental() %}` was no input of
    the model: new rows in it left the plan at 'SQL and upstream data
    unchanged' (run and dry run: nothing to do) and `ls -s source+` did not
    list the model; the rows arrived only when another input changed."""
    project.edit(
        "models/sources.yml",
        "      - name: orders\n",
        "      - name: late_users\n"
        "        path: data/late_users.csv\n"
        "        options: {types: {user_id: BIGINT}}\n"
        "      - name: orders\n",
    )
    _user_features_merging_from(project, "{{ source('shop', 'late_users') }}")
    project.cli("run")
    listed = project.cli("ls", "-s", "source:shop.late_users+").stdout
    assert "model.user_features" in listed, listed
    _late_user_is_merged(project, "upstream data changed")


def test_a_file_read_directly_only_when_merging_is_merged_every_run(project):
    """`read_csv` inside `{% if is_incremental() %}` alone: the docs say a
    model that reads files directly is merged every run, but only the full
    build's SQL was looked at: 'nothing to do', and the file's new rows never
    arrived."""
    path = project.root / "data/late_users.csv"
    _user_features_merging_from(project, f"read_csv('{path}', types = {{'user_id': 'BIGINT'}})")
    project.cli("run")
    _late_user_is_merged(project, "reads files directly")


def test_max_moved_share_counts_what_an_interrupted_run_committed(project):
    """A run stopped after a segmentation's transaction committed its moves:
    the rerun moved nobody (nothing left to move) and the test, reading only
    the latest successful run, passed over live moves (2,400 of 18,900 in a helper's run)."""
    project.edit(
        "segments/segments.yml",
        "    default: active\n",
        "    default: active\n    tests: {max_moved_share: 0.1}\n",
    )
    project.cli("run")
    project.edit("segments/segments.yml", '"revenue > 300"', '"revenue > 100"')
    project.cli("run")
    import duckdb

    con = duckdb.connect(str(project.db))  # as a run that failed after lifecycle committed
    con.execute("UPDATE _segtool.runs SET status = 'interrupted' WHERE run_id = 2")
    con.close()
    project.cli("run")  # the rerun: nothing left to move
    r = project.cli("test", "-s", "lifecycle", expect=1)
    assert "FAIL  max_moved_share(lifecycle)" in r.stdout


def test_updated_at_is_utc_whatever_the_machine_s_time_zone(project, monkeypatch):
    """segments.NAME.updated_at came from DuckDB's now()::TIMESTAMP, the
    session's local time: 5 hours behind the run's start in New York (the
    docs, _segtool.runs and the history say UTC)."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        project.cli("run")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    (started,) = project.sql("select started_at from _segtool.runs where run_id = 1")[0]
    for name in ("behaviour", "lifecycle"):
        (updated,) = project.sql(f"select max(updated_at) from segments.{name}")[0]
        assert abs((updated - started).total_seconds()) < 600, (name, updated, started)
