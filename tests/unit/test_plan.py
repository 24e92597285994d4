"""`segtool run --dry-run` / segtool.plan: categories, counts that match what the
run then does, and no writes."""

from __future__ import annotations

import json

from segtool.api import Project
from segtool.plan import format_plan, make_plan


def _plan(project, **kw):
    return make_plan(Project.load(project.root), **kw)


def _run_summary(project) -> dict:
    return json.loads((project.root / "target/run_results.json").read_text())["summary"]


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
    }


def test_no_database_everything_new_and_nothing_written(project):
    r = project.cli("run", "--dry-run")
    assert "nothing is written" in r.stdout
    assert "no database at target/segtool.duckdb" in r.stdout
    plan = _plan(project)
    assert {it.action for it in plan.items} == {"new"}
    assert not plan.has_state and plan.last_run is None
    assert not (project.root / "target").exists()


def test_unchanged_after_run_and_dry_run_writes_nothing(built):
    project = built
    before_db = project.snapshot()
    before_files = _files(project.root)
    r = project.cli("run", "--dry-run")
    assert project.snapshot() == before_db
    assert _files(project.root) == before_files  # no run_results.json, manifest, samples...
    assert "summary:" in r.stdout
    plan = _plan(project)
    acts = {it.unique_id: it.action for it in plan.items}
    assert acts["model.stg_orders"] == "rebuild" and acts["model.user_features"] == "rebuild"
    assert "SQL models rebuild on every run" in plan.item("model.user_features").reason
    for uid in (
        "text.story",
        "embedding.story.hash",
        "segmentation.behaviour",
        "segmentation.lifecycle",
        "encoder.hash",
    ):
        assert acts[uid] == "unchanged", (uid, plan.item(uid))
    assert plan.item("text.story").counts["texts_changed"] == 0
    assert plan.item("embedding.story.hash").counts["to_embed"] == 0
    assert plan.item("segmentation.behaviour").counts["changed_users"] == 0
    assert plan.last_run == 1


def test_template_edit_counts_match_the_run(built):
    project = built
    project.edit(
        "templates/story.j2", "orders.", "orders.{% if user_id < 10 %} A loyal customer.{% endif %}"
    )
    snap = project.snapshot()
    plan = _plan(project)
    assert project.snapshot() == snap
    text = plan.item("text.story")
    assert text.action == "re-render"
    assert "template (story.j2)" in text.reason and "every user" in text.reason
    assert text.counts["users"] == 60
    assert text.counts["texts_changed"] == 9  # users 1..9
    assert text.counts["new_users"] == 0 and text.counts["removed"] == 0
    emb = plan.item("embedding.story.hash")
    assert emb.action == "re-embed"
    seg = plan.item("segmentation.behaviour")
    assert seg.action == "reassign" and seg.counts["changed_users"] == 9
    assert plan.item("segmentation.lifecycle").action == "unchanged"
    # the run does exactly what the plan said
    project.cli("run")
    s = _run_summary(project)
    assert s["embeddings"]["story.hash"]["embedded"] == emb.counts["to_embed"] > 0
    assert s["segmentations"]["behaviour"]["changed_inputs"] == 9
    assert s["segmentations"]["behaviour"]["action"] == "assign"


def test_description_only_edit_is_metadata_only(built):
    project = built
    project.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        "  - name: lifecycle\n    description: Where a shopper is.\n",
    )
    project.edit(
        "segments/segments.yml",
        "    tests: {min_share: 0.05, max_share: 0.9}",
        "    tests: {min_share: 0.01, max_share: 0.9}",
    )
    plan = _plan(project)
    assert plan.item("segmentation.lifecycle").action == "metadata only"
    assert plan.item("segmentation.behaviour").action == "metadata only"
    assert plan.summary().keys() <= {"metadata only", "rebuild", "unchanged"}


def test_encoder_change_reembeds_everything_and_refits(built):
    project = built
    project.edit("segments/segments.yml", "dim: 256", "dim: 64")
    plan = _plan(project)
    emb = plan.item("embedding.story.hash")
    assert emb.action == "re-embed" and "encoder 'hash' changed" in emb.reason
    assert emb.counts["to_embed"] == emb.counts["distinct_texts"] > 0
    seg = plan.item("segmentation.behaviour")
    assert seg.action == "refit" and "encoder 'hash' changed" in seg.reason
    assert plan.item("encoder.hash").action == "re-embed"
    assert plan.item("text.story").action == "unchanged"
    project.cli("run")
    s = _run_summary(project)
    assert s["embeddings"]["story.hash"]["embedded"] == emb.counts["to_embed"]
    assert s["segmentations"]["behaviour"]["action"] == "refit"


def test_rules_and_sql_changes_count_the_users_that_move(built):
    project = built
    project.edit("segments/segments.yml", "revenue > 300", "revenue > 200")
    project.edit(
        "models/user_features.sql",
        "coalesce(sum(o.amount), 0) as revenue",
        "coalesce(sum(o.amount), 0) * 1.5 as revenue",
    )
    plan = _plan(project)
    assert plan.item("model.user_features").action == "rebuild"
    rules = plan.item("segmentation.lifecycle")
    assert rules.action == "reassign" and "rules changed" in rules.reason
    feats = plan.item("segmentation.behaviour")
    # the features feed it: every user's inputs changed, but no refit (SQL is not fit-relevant)
    assert feats.action == "reassign"
    assert feats.counts["changed_users"] == 60
    assert plan.item("text.story").action == "re-render"  # upstream model changed
    assert plan.item("text.story").counts["texts_changed"] == 0
    # compare with the segment table the run then writes
    old = dict(project.sql("select user_id, segment from segments.lifecycle"))
    project.cli("run")
    new = dict(project.sql("select user_id, segment from segments.lifecycle"))
    assert sum(old[k] != new[k] for k in new) == rules.counts["changed_users"] > 0


def test_options_and_selection(built):
    project = built
    plan = _plan(project, select=("behaviour",), refit=True)
    assert [it.unique_id for it in plan.items] == ["segmentation.behaviour"]
    assert plan.items[0].action == "refit" and "--refit" in plan.items[0].reason
    plan = _plan(project, select=("+story",), full_refresh=True)
    assert (
        plan.item("text.story").action == "re-render"
        and "--full-refresh" in plan.item("text.story").reason
    )
    assert plan.options == {
        "select": ["+story"],
        "exclude": [],
        "full_refresh": True,
        "refit": False,
    }


def test_formats(built):
    built.edit("templates/story.j2", "orders.", "orders!")
    plan = _plan(built)
    data = json.loads(format_plan(plan, "json"))
    assert data["schema_version"] == 1 and data["kind"] == "plan"
    assert set(data) >= {
        "project",
        "target",
        "database",
        "has_state",
        "last_run",
        "options",
        "summary",
        "nodes",
        "notes",
    }
    node = next(n for n in data["nodes"] if n["unique_id"] == "text.story")
    assert set(node) == {"unique_id", "kind", "name", "action", "reason", "details", "counts"}
    assert data["summary"]["re-render"] == 1
    md = format_plan(plan, "markdown")
    assert md.startswith("### segtool plan") and "| re-render | `text.story` |" in md
    text = format_plan(plan, "text")
    assert "re-render" in text and "text.story" in text and "60 users: 60 texts change" in text


def test_dry_run_on_a_database_of_another_project_fails(built):
    project = built
    project.edit("segtool_project.yml", "name: tiny", "name: other")
    r = project.cli("run", "--dry-run", expect=1)
    assert "belongs to project 'tiny'" in r.stderr
