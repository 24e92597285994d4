"""Tables of models, texts and segmentations a project no longer defines.

A segmentation renamed in segments.yml left `segments.<old>` and its history
in the database as the last run wrote them; every run after said nothing, and
a dashboard reading the old table saw frozen segments."""

from __future__ import annotations

import json


def _rename(built) -> None:
    built.edit("segments/segments.yml", "- name: lifecycle", "- name: stages")
    built.edit("segments/segments.yml", "- name: story", "- name: tale")
    built.edit("segments/segments.yml", "text: story,", "text: tale,")


def _tables(built) -> set[str]:
    return {
        f"{s}.{t}"
        for s, t in built.sql(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name <> 'main'"
        )
    }


def test_run_and_dry_run_warn_about_what_the_project_no_longer_defines(built):
    _rename(built)
    plan = json.loads(built.cli("run", "--dry-run", "--format", "json").stdout)
    warned = [w for w in plan["warnings"] if "no longer in the project" in w]
    assert len(warned) == 2, plan["warnings"]
    seg = next(w for w in warned if w.startswith("segmentation 'lifecycle'"))
    assert "segments.lifecycle, segments.lifecycle_history hold" in seg  # rules keep no inputs
    assert "hold what run 1 wrote and no run updates them" in seg
    assert "`segtool clean --orphans` drops them" in seg
    text = next(w for w in warned if w.startswith("text 'story'"))
    assert "_segtool.texts__story holds what run 1 wrote" in text

    out = built.cli("run")
    assert "warning: segmentation 'lifecycle' is no longer in the project" in out.stdout
    assert "warning: text 'story' is no longer in the project" in out.stdout
    # the run leaves them alone: only clean --orphans drops them
    assert {"segments.lifecycle", "_segtool.texts__story"} <= _tables(built)


def test_clean_orphans_drops_them_and_their_catalog_only(built):
    _rename(built)
    built.cli("run")
    kept = built.sql("SELECT count(*) FROM segments.behaviour")[0][0]
    out = built.cli("clean", "--orphans").stdout
    assert (
        "dropped segmentation 'lifecycle': segments.lifecycle, segments.lifecycle_history\n" in out
    )
    assert "dropped text 'story': _segtool.texts__story" in out
    tables = _tables(built)
    assert not {t for t in tables if "lifecycle" in t or t.endswith("texts__story")}
    assert {"segments.stages", "segments.stages_history", "_segtool.texts__tale"} <= tables
    assert built.sql("SELECT count(*) FROM segments.behaviour")[0][0] == kept
    for table in ("fitted", "segment_catalog", "segment_events", "drivers"):
        assert not built.sql(
            f"SELECT count(*) FROM _segtool.{table} WHERE segmentation = 'lifecycle'"
        )[0][0]
    assert built.sql("SELECT count(*) FROM _segtool.segment_catalog WHERE segmentation = 'stages'")[
        0
    ][0]
    assert not built.sql(
        "SELECT count(*) FROM _segtool.nodes WHERE unique_id IN ('segmentation.lifecycle', 'text.story')"
    )[0][0]

    before = built.snapshot()
    assert "nothing to drop" in built.cli("clean", "--orphans").stdout
    assert built.snapshot() == before
    assert "no longer in the project" not in built.cli("run").stdout
    # renamed back: a fresh segmentation, not the dropped one's history
    built.edit("segments/segments.yml", "- name: stages", "- name: lifecycle")
    assert "create      segmentation.lifecycle" in built.cli("run", "--dry-run").stdout


def test_a_removed_model_is_an_orphan(built):
    built.write("models/old_model.sql", "select 1 as x")
    built.cli("run")
    (built.root / "models/old_model.sql").unlink()
    assert "model 'old_model' is no longer in the project" in built.cli("run").stdout
    assert "dropped model 'old_model': main.old_model" in built.cli("clean", "--orphans").stdout
    assert "main.old_model" not in {
        f"{s}.{t}"
        for s, t in built.sql(
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal"
        )
    }


def test_clean_orphans_before_any_run_makes_no_database(project):
    assert "nothing to drop" in project.cli("clean", "--orphans").stdout
    assert not project.db.exists()


def test_clean_takes_one_of_cache_and_orphans(built):
    out = built.cli("clean", "--cache", "--orphans", expect=2)
    assert "--cache and --orphans: one at a time" in out.stderr
