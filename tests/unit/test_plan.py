"""The plan: the pure decision rules (plan/decide.py), the frozen value
(plan/model.py), and a dry run that writes nothing."""

from __future__ import annotations

import json

import pytest

from segtool.plan import decide
from segtool.plan.decide import FitFacts, Stored
from segtool.plan.model import Plan, Step

S = Stored("own", "input", "exec", 1)


def model_decision(**kw) -> tuple[str, str]:
    args = dict(
        materialized="table",
        exists_as="table",
        stored=S,
        own_hash="own",
        input_hash="input",
        exec_hash="exec",
        volatile=False,
        full_refresh=False,
    )
    args.update(kw)
    return decide.model_action(**args)


def model(**kw) -> str:
    return model_decision(**kw)[0]


def test_model_rules():
    assert model() == "skip"
    assert model(exists_as=None) == "create"
    assert model(exists_as="view") == "rebuild"  # materialization changed
    assert model_decision(materialized="incremental", exists_as="view")[1] == (
        "now an incremental (it was a view)"  # was 'now a incremental'
    )
    assert model(own_hash="new") == "rebuild"
    assert model(exec_hash="moved") == "rebuild"
    assert model(input_hash="new data") == "rebuild"
    assert model(volatile=True) == "rebuild"
    assert model(full_refresh=True) == "rebuild"
    assert model(stored=None) == "rebuild"
    # a view reads its upstream at query time: only its own SQL rebuilds it
    assert model(materialized="view", exists_as="view", input_hash="new data") == "skip"
    assert model(materialized="view", exists_as="view", own_hash="new") == "rebuild"
    assert model(materialized="view", exists_as="view", full_refresh=True) == "skip"
    inc = dict(materialized="incremental")
    assert model(**inc) == "skip"
    assert model(**inc, input_hash="new data") == "incremental"
    # a changed SQL rebuilds: merging would keep the old SQL's rows
    assert model(**inc, own_hash="new") == "rebuild"
    assert model(**inc, full_refresh=True) == "rebuild"
    # full_refresh: false in the config keeps the rows (a source that forgets old rows)
    kept = dict(inc, may_rebuild=False)
    assert model(**kept, own_hash="new") == "incremental"
    assert model(**kept, full_refresh=True) == "incremental"
    assert model(**kept, stored=None) == "incremental"
    assert model(**kept, input_hash="new data") == "incremental"
    assert model(**kept) == "skip"
    assert model(**kept, exists_as=None) == "create"
    _, reason = model_decision(**kept, own_hash="new")
    assert "full_refresh: false" in reason


def test_text_rules():
    def text(**kw):
        args = dict(exists=True, stored=S, own_hash="own", input_hash="input", full_refresh=False)
        args.update(kw)
        return decide.text_action(**args)[0]

    assert text() == "skip"
    assert text(exists=False) == "create"
    assert text(full_refresh=True) == "rebuild"
    assert text(own_hash="template changed") == "rebuild"
    assert text(input_hash="model data changed") == "incremental"


def test_embedding_rules():
    assert not decide.embedding_needs_check(stored=S, input_hash="input", has_vectors=True)
    assert decide.embedding_needs_check(stored=S, input_hash="input", has_vectors=False)
    assert decide.embedding_needs_check(stored=None, input_hash="input", has_vectors=True)
    assert decide.embedding_needs_check(stored=S, input_hash="changed", has_vectors=True)
    assert decide.embedding_action(has_vectors=False, to_embed=3)[0] == "create"
    assert decide.embedding_action(has_vectors=True, to_embed=3)[0] == "incremental"
    assert decide.embedding_action(has_vectors=True, to_embed=0)[0] == "skip"


def facts(**kw) -> FitFacts:
    args = dict(
        has_fit=True,
        tables_present=True,
        fit_changed=[],
        refit_flag=False,
        policy="on_drift",
        drift_threshold=0.25,
    )
    args.update(kw)
    return FitFacts(**args)


def test_clustering_rules():
    assert decide.clustering_refit(facts()) is None
    assert decide.clustering_refit(facts(has_fit=False))[0] == "create"
    # the dry run said "reassign" here while the run refit: one rule now
    assert decide.clustering_refit(facts(tables_present=False))[0] == "refit"
    action, reason = decide.clustering_refit(facts(fit_changed=["encoder 'e'"]))
    assert action == "refit" and reason.startswith("encoder 'e' changed")
    assert decide.clustering_refit(facts(refit_flag=True))[0] == "refit"
    action, _, extra = decide.clustering_update(facts(), n_changed=5, n_removed=1)
    assert action == "assign" and extra == {"policy": "refit if drift > 0.25"}
    assert decide.clustering_update(facts(), n_changed=0, n_removed=0)[0] == "skip"
    assert decide.clustering_update(facts(policy="always"), n_changed=1, n_removed=0)[0] == "refit"
    assert decide.clustering_update(facts(policy="never"), n_changed=1, n_removed=0)[2] == {}


def test_rules_rules():
    assert decide.rules_action(exists=False, stored=None, input_hash="i")[0] == "create"
    assert decide.rules_action(exists=True, stored=S, input_hash="input")[0] == "skip"
    assert decide.rules_action(exists=True, stored=S, input_hash="changed")[0] == "assign"


def test_plan_is_frozen_and_shares_the_run_results_schema():
    step = Step("text.story", "text", "incremental", "data changed", {"users": 3})
    with pytest.raises(AttributeError):
        step.action = "skip"  # type: ignore[misc]
    with pytest.raises(TypeError):
        step.detail["users"] = 4  # type: ignore[index]
    with pytest.raises(ValueError):
        Step("text.story", "text", "re-render", "old words are gone")
    plan = Plan("p", "dev", "db", None, {}, (step, Step("source.s.t", "source", "skip", "x")))
    d = plan.to_dict()
    assert set(d["steps"][0]) == {"unique_id", "kind", "action", "reason", "detail"}
    assert d["summary"] == {"incremental": 1}  # declarations are not counted
    assert json.loads(plan.to_json())["steps"][0]["detail"] == {"users": 3}


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
    }


def test_dry_run_writes_nothing(built):
    before_db = built.snapshot()
    before_files = _files(built.root)
    built.edit("templates/story.j2", "A shopper", "One shopper")
    edited = _files(built.root)
    r = built.cli("run", "--dry-run")
    assert "nothing is written" in r.stdout and "rebuild     text.story" in r.stdout
    assert built.snapshot() == before_db
    assert _files(built.root) == edited and set(edited) == set(before_files)


def test_dry_run_before_the_first_run_counts_in_memory(project):
    r = project.cli("run", "--dry-run", "--format", "json")
    plan = json.loads(r.stdout)
    assert "no database" in plan["notes"][0]
    story = next(s for s in plan["steps"] if s["unique_id"] == "text.story")
    assert story["action"] == "create" and story["detail"]["users"] == 60
    assert not (project.root / "target").exists()


def test_kept_fit_note_names_the_part_that_changed():
    stored = Stored("own", "input", parts={"population": "a", "labels": "b", "vars": "c"})
    assert decide.changed_parts(stored, {"population": "a", "labels": "b", "vars": "X"}) == ["vars"]
    assert decide.changed_parts(Stored("own", "input"), {"labels": "b"}) is None
    pop = decide.kept_fit_note("seg", ["vars"])
    assert pop.startswith("population changed (a var it reads)") and "labels" not in pop
    labels = decide.kept_fit_note("seg", ["labels"])
    assert labels.startswith("labels changed") and "--refit -s seg" in labels
    both = decide.kept_fit_note("seg", ["labels", "population"])
    assert "population changed" in both and "labels changed" in both
    assert decide.kept_fit_note("seg", ["allow_pii"]).startswith("allow_pii changed")
    # a state without parts (older segtool): say what it may be, claim nothing
    assert "population, labels or vars" in decide.kept_fit_note("seg", None)
    assert decide.kept_fit_note("seg", []) == ""
