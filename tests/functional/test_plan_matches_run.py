"""One plan: what `run --dry-run` says a run will do is what the run then does,
action by action and count by count, in every scenario a project goes
through. The one allowed difference is the data-dependent policy a step
states (`refit if drift > 0.25`), which the run reports as a drift refit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from tests.conftest import ProjectDir
from tests.fixtures import data_files, generate_example

TEMPLATE = Path(__file__).resolve().parents[2] / "project_template"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ecommerce"


def dry_then_run(pd: ProjectDir, *args: str) -> dict[str, dict]:
    """Plan, run, and compare every step with the run's result. Returns the
    run's results by node."""
    plan = json.loads(pd.cli("run", "--dry-run", "--format", "json", *args).stdout)
    pd.cli("run", *args)
    results = json.loads((pd.root / "target/run_results.json").read_text())["results"]
    by_uid = {r["unique_id"]: r for r in results}
    assert [s["unique_id"] for s in plan["steps"]] == [r["unique_id"] for r in results]
    for step in plan["steps"]:
        got = by_uid[step["unique_id"]]
        assert set(step) <= set(got), "a plan step and a run result share their keys"
        if got["action"] != step["action"]:
            # the one decision a run takes while executing: the policy the plan stated
            assert step["detail"].get("policy", "").startswith("refit if drift"), (step, got)
            assert got["action"] == "refit" and got["reason"].startswith("drift"), got
            continue
        for key, value in step["detail"].items():
            assert got["detail"].get(key) == value, (step["unique_id"], key, value, got["detail"])
    return by_uid


def actions(results: dict[str, dict]) -> dict[str, str]:
    return {
        u: r["action"]
        for u, r in results.items()
        if not u.startswith(("source.", "encoder.", "features."))
    }


def test_tiny_project_every_scenario(project):
    pd = project
    # first run
    r = dry_then_run(pd)
    assert set(actions(r).values()) == {"create"}
    # no change: nothing runs
    r = dry_then_run(pd)
    assert set(actions(r).values()) == {"skip"}
    # new and changed users
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        pd.write(rel, content)
    r = dry_then_run(pd)
    assert r["text.story"]["detail"]["new"] == 3 and r["text.story"]["detail"]["changed"] == 2
    assert r["segmentation.behaviour"]["action"] in ("assign", "refit")
    # removed users
    users = pd.read("data/users.csv").splitlines()
    pd.write("data/users.csv", "\n".join(u for u in users if not u.startswith(("7,", "8,"))) + "\n")
    r = dry_then_run(pd)
    assert r["text.story"]["detail"]["removed"] == 2
    # a template edit: every user rendered, only changed texts embedded
    pd.edit(
        "templates/story.j2", "A shopper from {{ country }}", "A shopper from {{ country | lower }}"
    )
    r = dry_then_run(pd)
    assert r["text.story"]["action"] == "rebuild"
    assert r["embedding.story.hash"]["action"] == "incremental"
    # a feature-set edit refits what uses it
    pd.edit("segments/segments.yml", "revenue: {transform: log1p}", "revenue: {transform: rank}")
    r = dry_then_run(pd)
    assert r["segmentation.behaviour"]["action"] == "refit"
    # an encoder edit re-embeds every text and refits
    pd.edit("segments/segments.yml", "dim: 256", "dim: 128")
    r = dry_then_run(pd)
    assert r["embedding.story.hash"]["action"] == "create"
    assert r["segmentation.behaviour"]["action"] == "refit"
    # --refit
    r = dry_then_run(pd, "--refit")
    assert r["segmentation.behaviour"]["action"] == "refit"
    # a dropped state table (the dry run used to say "reassign", the run refit)
    con = duckdb.connect(str(pd.db))
    con.execute("DROP TABLE _segtool.inputs__behaviour")
    con.close()
    r = dry_then_run(pd)
    assert r["segmentation.behaviour"]["action"] == "refit"
    assert "missing" in r["segmentation.behaviour"]["reason"]


def test_a_selection_under_an_unselected_view_is_planned_as_it_runs(project):
    """stg_orders a table, user_features a view over it; `-s "stg_orders
    story"` after a new order: the run's user_features view reads the rebuilt
    table, and the dry run's must read its stand-in (it read the old table:
    the plan said the text had nothing to render, the run rendered a user)."""
    project.write(
        "models/stg_orders.sql",
        "{{ config(materialized='table') }}\n" + project.read("models/stg_orders.sql"),
    )
    project.edit(
        "models/user_features.sql",
        "{{ config(materialized='table') }}",
        "{{ config(materialized='view') }}",
    )
    project.cli("run")
    orders = project.read("data/orders.csv")
    project.write("data/orders.csv", orders + "9999,1,diapers,baby,10.00,2024-06-02 10:00:00\n")
    by_uid = dry_then_run(project, "-s", "stg_orders story")
    assert by_uid["text.story"]["detail"]["changed"] == 1


def test_drift_triggered_refit_is_the_policy_the_plan_stated(project):
    pd = project
    dry_then_run(pd)
    # every text changes completely: the stored model no longer fits
    pd.write(
        "templates/story.j2", "{{ 'xyz ' * (orders * 7) }} {{ country }} {{ products | join(' ') }}"
    )
    plan = json.loads(pd.cli("run", "--dry-run", "--format", "json").stdout)
    step = next(s for s in plan["steps"] if s["unique_id"] == "segmentation.behaviour")
    assert step["action"] == "assign" and step["detail"]["policy"] == "refit if drift > 0.25"
    r = dry_then_run(pd)
    assert r["segmentation.behaviour"]["action"] == "refit"
    assert r["segmentation.behaviour"]["reason"].startswith("drift")


def _template_project(tmp_path) -> ProjectDir:
    root = tmp_path / "shop"
    shutil.copytree(TEMPLATE, root, ignore=shutil.ignore_patterns("target"))
    pd = ProjectDir(root)
    pd.edit("segments/segments.yml", "encoder: minilm}", "encoder: hashing}")
    return pd


def test_template_project(tmp_path):
    pd = _template_project(tmp_path)
    r = dry_then_run(pd)
    assert r["text.shopper_story"]["detail"]["users"] == 400
    r = dry_then_run(pd)
    assert set(actions(r).values()) == {"skip"}
    # a new order arrives: only what depends on it reruns
    pd.write(
        "data/orders.csv", pd.read("data/orders.csv") + "99999,5,266,2024-06-24 10:00:00,1,28.99\n"
    )
    r = dry_then_run(pd)
    assert r["model.stg_users"]["action"] == "skip"
    assert r["text.shopper_story"]["action"] == "incremental"
    assert r["text.shopper_story"]["detail"]["changed"] >= 1
    # an order stamped the same second as the newest loaded one is merged too
    # (the template's `>` watermark left it out for good: [0 rows])
    pd.write(
        "data/orders.csv", pd.read("data/orders.csv") + "99998,7,266,2024-06-24 10:00:00,1,28.99\n"
    )
    r = dry_then_run(pd)
    assert pd.sql("select count(*) from orders_enriched where order_id = 99998") == [(1,)]


@pytest.mark.slow
def test_example_project_period_two(tmp_path):
    root = tmp_path / "ecommerce"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("data", "target"))
    pd = ProjectDir(root)
    pd.edit("segments/segments.yml", "encoder: fast}", "encoder: hashing}")

    generate_example(root / "data", 1)
    dry_then_run(pd)
    generate_example(root / "data", 2)
    # the dry run used to say "0 new users ... 20,000 unchanged" here
    r = dry_then_run(pd)
    t = r["text.shopper_story"]["detail"]
    assert t["new"] > 0 and t["changed"] > 0 and t["removed"] > 0
