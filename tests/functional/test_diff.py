"""`segtool diff`: project versions (git refs, folders) and `--data` (runs, databases)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import duckdb
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from tests.conftest import ProjectDir, write_files
from tests.fixtures import tiny_project_files

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}

LOYAL = "orders.{% if user_id < 10 %} A loyal customer.{% endif %}"


def git(cwd, *args) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def commit_a_then_loyal_b(repo, pd: ProjectDir) -> None:
    """A new repository at `repo`: commit A as the project is, commit B the
    template with loyal customers (9 users' texts differ)."""
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "A")
    pd.edit("templates/story.j2", "orders.", LOYAL)
    git(repo, "commit", "-qam", "B: loyal customers")


def diff_json(pd: ProjectDir, *args, expect: int = 0) -> dict:
    return json.loads(pd.cli("diff", *args, "--format", "json", expect=expect).stdout)


def change(result: dict, uid: str) -> dict:
    return next(c for c in result["changes"] if c["unique_id"] == uid)


def step(result: dict, uid: str) -> dict | None:
    """The plan step of a node that does something (skip steps are left out)."""
    return next((i for i in result["steps"] if i["unique_id"] == uid), None)


@pytest.fixture
def twins(tmp_path):
    """Two folders with the tiny project: (base, head). Edit head, then diff."""
    base = ProjectDir(write_files(tmp_path / "base", tiny_project_files()))
    head = ProjectDir(write_files(tmp_path / "head", tiny_project_files()))
    return base, head


# ----------------------------------------------------------------------------- git refs


def test_git_refs_in_a_repo_with_the_project_in_a_subfolder(_built_tiny, tmp_path):
    repo = tmp_path / "repo"
    pd = ProjectDir(shutil.copytree(_built_tiny, repo / "segs"))  # database = the state of commit A
    (repo / ".gitignore").write_text("target/\n")
    commit_a_then_loyal_b(repo, pd)

    assert diff_json(pd)["changes"] == []  # working tree == HEAD
    assert "no changes" in pd.cli("diff").stdout

    r = diff_json(pd, "HEAD~1", "HEAD")
    assert (
        r["base"]["kind"] == "git"
        and r["base"]["label"] == "HEAD~1"
        and len(r["base"]["commit"]) == 40
    )
    assert r["head"]["kind"] == "git"
    assert [c["unique_id"] for c in r["changes"]] == ["text.story"]
    c = change(r, "text.story")
    assert c["change"] == "changed" and c["fields"] == ["template story.j2"]
    assert [(f["unique_id"], f["action"]) for f in c["forces"]] == [
        ("text.story", "rebuild"),
        ("embedding.story.hash", "incremental"),
        ("segmentation.behaviour", "assign"),
    ]
    # counted against the working tree's database (built at commit A)
    assert r["database"]["used"] and r["database"]["last_run"] == 1
    assert step(r, "text.story")["detail"]["texts_changed"] == 9
    assert step(r, "embedding.story.hash")["detail"]["embedded"] == 9
    assert step(r, "segmentation.behaviour")["detail"]["assigned"] == 9
    assert r["summary"] == {
        **r["summary"],
        "nodes_changed": 1,
        "refits": 0,
        "re_render": 1,
        "re_embed": 1,
        "reassign": 1,
        "texts_to_render": 60,  # a rebuild renders every user again: detail.new + detail.changed
        "texts_to_embed": 9,
        "users_to_reassign": 9,
    }
    assert step(r, "segmentation.lifecycle") is None

    # the working tree against a branch name; a ref with the project elsewhere
    git(repo, "branch", "base-branch", "HEAD~1")
    assert [c["unique_id"] for c in diff_json(pd, "base-branch")["changes"]] == ["text.story"]
    md = pd.cli("diff", "HEAD~1", "--format", "markdown").stdout
    assert (
        md.startswith("### segtool diff: `HEAD~1 (")
        and "| changed | `text.story` | template story.j2: +1 -1 lines |" in md
    )
    assert "(9 texts differ)" in md and "9 texts to embed" in md
    text = pd.cli("diff", "HEAD~1").stdout
    assert (
        "forces: rebuild text.story, incremental embedding.story.hash, assign segmentation.behaviour"
        in text
    )
    # the sides by name, as the first line names them ("HEAD" alone would be ambiguous)
    assert "1 node changed: 0 added" in text
    assert "plan of working tree against the state HEAD~1 (" in text

    # bad refs
    r = pd.cli("diff", "no-such-ref", expect=1)
    assert "unknown git ref 'no-such-ref'" in r.stderr and "hint:" in r.stderr
    git(repo, "mv", "segs", "moved")
    git(repo, "commit", "-qm", "C: move")
    r = ProjectDir(repo / "moved").cli("diff", "HEAD~2", expect=1)
    assert "has no segtool project at moved/segtool_project.yml" in r.stderr


def test_git_refs_count_users_from_data_git_does_not_keep(_built_tiny, tmp_path):
    """data/ and profiles.yml are ignored by git: each extracted ref links
    them to the working tree's, and that folder is within its reach
    (project/reach.py), so the project loads and the plan counts users."""
    repo = tmp_path / "repo"
    pd = ProjectDir(shutil.copytree(_built_tiny, repo))
    (repo / ".gitignore").write_text("target/\ndata/\nprofiles.yml\n")
    (repo / "profiles.yml").write_text("targets:\n  dev: {threads: 2}\n")
    commit_a_then_loyal_b(repo, pd)
    r = diff_json(pd, "HEAD~1", "HEAD")
    assert r["database"]["used"], r.get("notes")
    assert step(r, "text.story")["detail"]["texts_changed"] == 9
    assert not any("lies outside" in n for n in r.get("notes", []))


def test_not_a_git_repo(project):
    r = project.cli("diff", expect=1)
    assert "not inside a git repository" in r.stderr and "OLD_DIR NEW_DIR" in r.stderr


# ----------------------------------------------------------------------------- kinds of change (folders)


def test_description_only_edit_is_metadata_only(twins):
    base, head = twins
    head.edit(
        "models/schema.yml", "description: One row per user.", "description: One row per shopper."
    )
    head.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        "  - name: lifecycle\n    description: Where a shopper is.\n",
    )
    r = diff_json(head, str(base.root), str(head.root))
    assert {c["unique_id"]: (c["change"], c["fields"]) for c in r["changes"]} == {
        "model.user_features": ("metadata only", ["description"]),
        "segmentation.lifecycle": ("metadata only", ["description"]),
    }
    assert r["steps"] == []
    assert r["summary"]["nodes_changed"] == 0 and r["summary"]["refits"] == 0
    assert "plan: nothing reruns" in head.cli("diff", str(base.root), str(head.root)).stdout
    head.cli("diff", str(base.root), str(head.root), "--fail-on", "nodes_changed>0")


def test_a_secret_var_s_values_stay_out_of_the_diff(twins):
    """The diff goes to CI logs and pull-request comments: it printed
    `vars.api_key: old -> new` in clear (text, Markdown and JSON)."""
    base, head = twins
    for pd, key in ((base, "k3y-before-2024"), (head, "k3y-after-2025")):
        pd.edit(
            "segtool_project.yml",
            'vars: {as_of: "2024-07-01"}',
            f'vars: {{as_of: "2024-07-01", api_key: "{key}", tier: 7}}\nsecret_vars: [api_key, tier]',
        )
        pd.write(
            "templates/story.j2", "{{ var('api_key') }} {{ var('tier') }}: {{ orders }} orders"
        )
    head.edit("segtool_project.yml", "tier: 7", "tier: 8")  # short: masked by name
    outputs = [
        head.cli("diff", str(base.root), str(head.root), "--format", fmt).stdout
        for fmt in ("text", "markdown", "json")
    ]
    for out in outputs:
        assert "k3y-before-2024" not in out and "k3y-after-2025" not in out, out
        assert "7 -> 8" not in out
    r = json.loads(outputs[2])
    assert change(r, "text.story")["details"] == [
        "vars.api_key: changed (secret: ***)",
        "vars.tier: changed (secret: ***)",
    ]


def test_a_head_that_run_would_reject_fails_the_diff(twins):
    """A relationships test to a model that no longer exists: `run` refuses
    the tree, the diff printed a plan and exited 0 (CI passed the PR)."""
    base, head = twins
    head.edit("models/schema.yml", "ref('user_features')", "ref('user_featurez')")
    r = head.cli("diff", str(base.root), str(head.root), expect=1)
    assert (
        "HEAD (" in r.stderr
        and "relationships on 'user_id': unknown model 'user_featurez'" in r.stderr
    )
    # the pull request that mends it: BASE is history, not checked
    base.edit("models/schema.yml", "ref('user_features')", "ref('user_featurez')")
    head.edit("models/schema.yml", "ref('user_featurez')", "ref('user_features')")
    head.cli("diff", str(base.root), str(head.root))


def test_encoder_change_reembeds_and_refits_every_user(twins):
    base, head = twins
    second = (
        "  - name: behaviour2\n    inputs:\n      - {embedding: {text: story, encoder: hash}}\n"
        "    cluster: {method: kmeans, k: 2, seed: 1}\n  - name: lifecycle\n"
    )
    for pd in twins:
        pd.edit("segments/segments.yml", "  - name: lifecycle\n", second)
    head.edit("segments/segments.yml", "dim: 256", "dim: 128")
    r = diff_json(head, str(base.root), str(head.root))
    assert [(c["unique_id"], c["fields"]) for c in r["changes"]] == [("encoder.hash", ["dim"])]
    assert step(r, "embedding.story.hash")["action"] == "create"  # a new fingerprint
    for seg in ("segmentation.behaviour", "segmentation.behaviour2"):
        assert step(r, seg)["action"] == "refit"
        assert step(r, seg)["reason"].startswith("encoder 'hash' changed")
    assert step(r, "segmentation.lifecycle") is None and step(r, "text.story") is None
    assert r["summary"]["refits"] == 2
    assert r["database"]["used"] is False and "no database" in r["database"]["note"]
    res = head.cli("diff", str(base.root), str(head.root), "--fail-on", "refits>0", expect=1)
    assert "refits = 2 violates --fail-on 'refits>0'" in res.stderr
    assert "refit" in res.stdout  # the report is printed before failing


def test_new_rule_segmentation_is_the_only_change(twins):
    base, head = twins
    head.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        "  - name: spenders\n    model: user_features\n"
        '    rules:\n      - {segment: high, when: "revenue > 500"}\n    default: low\n  - name: lifecycle\n',
    )
    r = diff_json(head, str(base.root), str(head.root))
    assert [(c["unique_id"], c["change"]) for c in r["changes"]] == [
        ("segmentation.spenders", "added")
    ]
    assert [(i["unique_id"], i["action"]) for i in r["steps"]] == [
        ("segmentation.spenders", "create")
    ]
    assert r["summary"]["added"] == 1 and r["summary"]["nodes_changed"] == 1
    # counted against head's database, where `run -s spenders` made its table
    # already: still what BASE -> HEAD does (it was 'assign' with counts only)
    head.cli("run")
    counted = diff_json(head, str(base.root), str(head.root))
    assert [(i["unique_id"], i["action"]) for i in counted["steps"]] == [
        ("segmentation.spenders", "create")
    ]


def test_renamed_nodes(twins):
    base, head = twins
    head.edit("segments/segments.yml", "name: story", "name: shopper_story")
    head.edit("segments/segments.yml", "text: story,", "text: shopper_story,")
    head.edit("segments/segments.yml", "name: lifecycle", "name: stage")
    r = diff_json(head, str(base.root), str(head.root))
    by = {c["unique_id"]: c for c in r["changes"]}
    assert (
        by["text.shopper_story"]["change"] == "added"
        and by["text.shopper_story"]["renamed_from"] == "text.story"
    )
    assert (
        by["text.story"]["change"] == "removed"
        and by["text.story"]["renamed_to"] == "text.shopper_story"
    )
    assert by["embedding.shopper_story.hash"]["renamed_from"] == "embedding.story.hash"
    assert by["segmentation.stage"]["renamed_from"] == "segmentation.lifecycle"
    assert "stay in the database" in by["segmentation.lifecycle"]["note"]
    assert by["segmentation.behaviour"]["change"] == "changed" and by["segmentation.behaviour"][
        "fields"
    ] == ["inputs"]
    assert r["summary"]["renamed"] == 3
    assert "renamed from text.story" in head.cli("diff", str(base.root), str(head.root)).stdout


def test_removed_source_and_sql_change(twins):
    base, head = twins
    extra = "      - name: returns\n        path: data/returns.csv\n"
    base.write("models/sources.yml", base.read("models/sources.yml") + extra)
    head.edit(
        "models/user_features.sql",
        "count(o.order_id) as orders",
        "count(distinct o.order_id) as orders",
    )
    r = diff_json(head, str(base.root), str(head.root))
    assert change(r, "source.shop.returns")["change"] == "removed"
    c = change(r, "model.user_features")
    assert c["change"] == "changed" and c["fields"] == ["SQL"]
    assert {i["unique_id"]: i["action"] for i in r["steps"]} == {
        "model.user_features": "rebuild",
        "segmentation.lifecycle": "assign",
        "text.story": "incremental",
        "embedding.story.hash": "incremental",
        "segmentation.behaviour": "assign",
    }


def test_a_var_neither_version_reads_is_warned_about(twins):
    base, head = twins
    r = head.cli("diff", str(base.root), str(head.root), "--vars", "{as_off: '2024-06-01'}")
    assert "--vars sets 'as_off', which the project neither declares" in r.stderr
    assert "did you mean 'as_of'" in r.stderr
    # read by HEAD only (a rule the change adds): no warning
    head.edit("segments/segments.yml", '"revenue > 300"', "\"revenue > {{ var('big_at', 300) }}\"")
    r = head.cli("diff", str(base.root), str(head.root), "--vars", "{big_at: 200}")
    assert "warning" not in r.stderr, r.stderr


def test_labels_and_cluster_changes(twins):
    base, head = twins
    head.edit("segments/segments.yml", "labels: {keywords: 3}", "labels: {keywords: 4}")
    r = diff_json(head, str(base.root), str(head.root))
    s = step(r, "segmentation.behaviour")
    assert s["action"] == "assign" and "they apply at the next refit" in s["reason"]
    head.edit("segments/segments.yml", "k: 3, seed: 7", "k: 4, seed: 7")
    r = diff_json(head, str(base.root), str(head.root))
    assert change(r, "segmentation.behaviour")["fields"] == ["cluster", "labels"]
    assert change(r, "segmentation.behaviour")["details"] == [
        "cluster.k: 3 -> 4",
        "labels.keywords: 3 -> 4",
    ]
    assert step(r, "segmentation.behaviour")["action"] == "refit"


def test_an_edited_or_added_rule_reads_as_that_rule(twins):
    """Rules were shown as two JSON lists cut at 60 characters, which read
    the same on both sides when the edit was past the first rule."""
    base, head = twins
    head.edit("segments/segments.yml", "recency_days > 120", "recency_days > 90")
    head.edit(
        "segments/segments.yml",
        '- {segment: big, when: "revenue > 300"}',
        '- {segment: big, when: "revenue > 300"}\n      - {segment: huge, when: "revenue > 900"}',
    )
    r = diff_json(head, str(base.root), str(head.root))
    assert change(r, "segmentation.lifecycle")["details"] == [
        'rules[1]: added {"segment": "huge", "when": "revenue > 900"}',
        "rules[2].when: 'recency_days > 120' -> 'recency_days > 90'",
    ]
    # a long value: both sides cut around where they differ, not at the start
    long_rule = "revenue > 300 AND orders > 1 AND recency_days < 400 AND revenue < 9999"
    head.edit("segments/segments.yml", '"revenue > 900"', f'"{long_rule}1"')
    base.edit(
        "segments/segments.yml",
        '"revenue > 300"}',
        f'"revenue > 300"}}\n      - {{segment: huge, when: "{long_rule}2"}}',
    )
    r = diff_json(head, str(base.root), str(head.root))
    (line,) = [
        d for d in change(r, "segmentation.lifecycle")["details"] if d.startswith("rules[1]")
    ]
    before, after = line.split(" -> ")
    assert before.endswith("revenue < 99992'") and after.endswith("revenue < 99991'")


# ----------------------------------------------------------------------------- bad inputs


def test_bad_project_inputs(project, tmp_path):
    notproj = tmp_path / "empty"
    notproj.mkdir()
    r = project.cli("diff", str(notproj), str(project.root), expect=1)
    assert "is not a segtool project" in r.stderr
    r = project.cli("diff", "--fail-on", "moved_shar>0.2", "--data", expect=1)
    assert "unknown metric 'moved_shar'" in r.stderr and "moved_share" in r.stderr
    r = project.cli(
        "diff", str(project.root), str(project.root), "--fail-on", "moved_share>0.2", expect=1
    )
    assert "with --data" in r.stderr
    r = project.cli("diff", "--data", "--fail-on", "moved_share 0.2", expect=1)
    assert "cannot read" in r.stderr
    r = project.cli("diff", "--data", "HEAD", expect=1)
    assert "--data compares databases" in r.stderr
    r = project.cli("diff", "--data", expect=1)
    assert "does not exist" in r.stderr
    broken = ProjectDir(write_files(tmp_path / "broken", tiny_project_files()))
    broken.edit("segments/segments.yml", "encoder: hash}", "encoder: hsh}")
    r = project.cli("diff", str(broken.root), str(project.root), expect=1)
    assert "BASE (" in r.stderr and "unknown encoder 'hsh'" in r.stderr


# ----------------------------------------------------------------------------- --data


def _make_db(
    path, project: str, assignments: dict[str, dict[int, int]], texts: dict[int, str] | None = None
) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA _segtool; CREATE SCHEMA segments")
    con.execute("CREATE TABLE _segtool.meta (key VARCHAR, value VARCHAR)")
    con.execute(
        "INSERT INTO _segtool.meta VALUES ('state_version', '1'), ('project', ?)", [project]
    )
    con.execute("CREATE TABLE _segtool.runs (run_id INTEGER, status VARCHAR, summary JSON)")
    con.execute("INSERT INTO _segtool.runs VALUES (1, 'success', '{}')")
    for name, assign in assignments.items():
        con.execute(
            f'CREATE TABLE segments."{name}" (user_id INTEGER, segment_id INTEGER, segment VARCHAR)'
        )
        con.executemany(
            f'INSERT INTO segments."{name}" VALUES (?, ?, ?)',
            [[u, s, f"seg{s}"] for u, s in assign.items()],
        )
    if texts:
        con.execute("CREATE TABLE _segtool.texts__story (user_id INTEGER, text VARCHAR)")
        con.executemany(
            "INSERT INTO _segtool.texts__story VALUES (?, ?)", [[u, t] for u, t in texts.items()]
        )
    con.close()


def test_data_between_two_databases_matches_hand_computed_numbers(project, tmp_path):
    # users 1..10 before, 3..12 after
    before = {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 1, 8: 2, 9: 2, 10: 2}
    after = {3: 0, 4: 1, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2, 10: 0, 11: 3, 12: 3}
    _make_db(
        tmp_path / "prod.duckdb",
        "tiny",
        {"behaviour": before, "gone": {1: 0}},
        {u: f"old text {u}" for u in range(1, 11)},
    )
    _make_db(
        tmp_path / "pr.duckdb",
        "tiny",
        {"behaviour": after, "fresh": {1: 5}},
        {u: f"new text {u}" for u in range(3, 13)},
    )
    args = (
        "diff",
        "--data",
        "--base-db",
        str(tmp_path / "prod.duckdb"),
        "--head-db",
        str(tmp_path / "pr.duckdb"),
    )
    r = json.loads(project.cli(*args, "--format", "json", "--examples", "2").stdout)
    assert r["kind"] == "data_diff" and r["mode"] == "databases"
    segs = {s["name"]: s for s in r["segmentations"]}
    assert segs["gone"]["status"] == "removed" and segs["fresh"]["status"] == "added"
    s = segs["behaviour"]
    assert s["status"] == "compared"
    assert s["users"] == {"before": 10, "after": 10, "both": 8, "entered": 2, "left": 2, "moved": 3}
    assert s["moved_share"] == pytest.approx(3 / 8)
    common = sorted(set(before) & set(after))
    a = np.array([before[u] for u in common])
    b = np.array([after[u] for u in common])
    assert s["ari"] == pytest.approx(adjusted_rand_score(a, b))
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(a, b))
    # users in both: 3,4 from 0 -> 0,1; 5,6 from 1 -> 1,1 ; 7 from 1 -> 2; 8,9 from 2 -> 2; 10 from 2 -> 0
    assert s["transitions"] == {
        "from": [0, 1, 2],
        "to": [0, 1, 2],
        "counts": [[1, 1, 0], [0, 2, 1], [1, 0, 2]],
    }
    assert s["sizes"] == [
        {
            "segment_id": 0,
            "label": "seg0",
            "label_before": "seg0",
            "before": 4,
            "after": 2,
            "delta": -2,
        },
        {
            "segment_id": 1,
            "label": "seg1",
            "label_before": "seg1",
            "before": 3,
            "after": 3,
            "delta": 0,
        },
        {
            "segment_id": 2,
            "label": "seg2",
            "label_before": "seg2",
            "before": 3,
            "after": 3,
            "delta": 0,
        },
        {
            "segment_id": 3,
            "label": "seg3",
            "label_before": None,
            "before": 0,
            "after": 2,
            "delta": 2,
        },
    ]
    assert s["examples"] == [
        {
            "key": 4,
            "from": {"segment_id": 0, "segment": "seg0"},
            "to": {"segment_id": 1, "segment": "seg1"},
            "text": "new text 4",
            "text_before": "old text 4",
        },
        {
            "key": 7,
            "from": {"segment_id": 1, "segment": "seg1"},
            "to": {"segment_id": 2, "segment": "seg2"},
            "text": "new text 7",
            "text_before": "old text 7",
        },
    ]
    assert r["ok"] is True and r["thresholds"] == []
    # thresholds
    res = project.cli(*args, "--fail-on", "moved_share>0.2", expect=1)
    assert "moved_share = 0.375 in behaviour violates --fail-on 'moved_share>0.2'" in res.stderr
    project.cli(*args, "--fail-on", "moved_share>0.5,entered>2,left>=3")
    res = project.cli(*args, "--fail-on", "ari<0.99", "--format", "json", expect=1)
    assert json.loads(res.stdout)["ok"] is False
    md = project.cli(*args, "--format", "markdown").stdout
    assert "| `behaviour` | base → head | 10 → 10 | 2 | 2 | 3 (37.5%) |" in md
    assert "| **2** | 1 | 0 | 2 |" in md
    txt = project.cli(*args).stdout
    assert "behaviour (base → head): 10 -> 10 users; 2 entered, 2 left, 3 moved (37.5% of 8)" in txt
    # databases of different projects; runs that do not exist; a file that is not a segtool database
    _make_db(tmp_path / "other.duckdb", "other", {"behaviour": after})
    res = project.cli(
        "diff",
        "--data",
        "--base-db",
        str(tmp_path / "prod.duckdb"),
        "--head-db",
        str(tmp_path / "other.duckdb"),
        expect=1,
    )
    assert "different projects" in res.stderr and "'tiny'" in res.stderr and "'other'" in res.stderr
    res = project.cli(*args, "--from-run", "7", expect=1)
    assert "run 7 does not exist" in res.stderr
    duckdb.connect(str(tmp_path / "plain.duckdb")).close()
    res = project.cli("diff", "--data", "--head-db", str(tmp_path / "plain.duckdb"), expect=1)
    assert "not a segtool database" in res.stderr
    res = project.cli(*args, "-s", "behavior", expect=1)
    assert "did you mean 'behaviour'" in res.stderr


def test_data_between_runs_reads_the_history(built):
    pd = built
    # more orders for some users: their revenue passes the 'big' rule
    from tests.fixtures import data_files

    for rel, content in data_files(changed=(3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36)).items():
        (pd.root / rel).write_text(content)
    pd.cli("run")
    hist = pd.sql(
        "select user_id, segment_id, valid_from_run, valid_to_run from segments.lifecycle_history"
    )
    at = {r: {u: s for u, s, f, t in hist if f <= r and (t is None or t > r)} for r in (1, 2)}
    moved = sum(at[1][u] != at[2][u] for u in at[2] if u in at[1])
    assert moved > 0
    r = json.loads(pd.cli("diff", "--data", "-s", "lifecycle", "--format", "json").stdout)
    assert r["mode"] == "runs" and [s["name"] for s in r["segmentations"]] == ["lifecycle"]
    s = r["segmentations"][0]
    assert (s["base_run"], s["head_run"]) == (1, 2)
    assert s["users"]["moved"] == moved and s["users"]["both"] == 60
    ids = sorted(at[1])
    assert s["ari"] == pytest.approx(
        adjusted_rand_score([at[1][u] for u in ids], [at[2][u] for u in ids])
    )
    ex = s["examples"][0]
    assert (
        at[1][ex["key"]] == ex["from"]["segment_id"] != ex["to"]["segment_id"] == at[2][ex["key"]]
    )
    assert ex["text"].startswith("A shopper from")
    # explicit runs, and the same comparison the other way round
    back = json.loads(
        pd.cli(
            "diff",
            "--data",
            "--from-run",
            "2",
            "--to-run",
            "1",
            "-s",
            "lifecycle",
            "--format",
            "json",
        ).stdout
    )
    sb = back["segmentations"][0]
    assert sb["users"]["moved"] == moved
    assert np.array(sb["transitions"]["counts"]).T.tolist() == s["transitions"]["counts"]
    res = pd.cli("diff", "--data", "--to-run", "5", expect=1)
    assert "run 5 does not exist" in res.stderr and "runs 1..2" in res.stderr


def test_data_default_is_the_last_run_that_changed_each_segmentation(built):
    """A later run that leaves a segmentation as it was must not hide its moves:
    the default used to compare the last two runs that touched it (0 moved),
    so --fail-on 'moved_share>...' passed while users had moved."""
    from tests.fixtures import data_files

    pd = built
    for rel, content in data_files(changed=(3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36)).items():
        (pd.root / rel).write_text(content)
    pd.cli("run")  # run 2: lifecycle users move
    pd.cli("run", "--refit", "-s", "behaviour")  # run 3: lifecycle untouched
    r = json.loads(pd.cli("diff", "--data", "-s", "lifecycle", "--format", "json").stdout)
    s = r["segmentations"][0]
    assert (s["base_run"], s["head_run"]) == (1, 2)
    assert s["users"]["moved"] > 0
    assert "compared run 1 with run 2 (the last run that changed 'lifecycle')" in s["note"]
    res = pd.cli("diff", "--data", "-s", "lifecycle", "--fail-on", "moved>0", expect=1)
    assert "violates --fail-on 'moved>0'" in res.stderr


def test_fail_on_leaves_a_segmentation_with_nothing_to_compare_alone(built):
    """After one run the diff says 'nothing to compare yet', yet counted every
    user as entered: --fail-on 'entered>0' failed CI on the first run."""
    from tests.fixtures import data_files

    r = built.cli("diff", "--data", "-s", "lifecycle", "--fail-on", "entered>0")
    assert "nothing to compare yet" in r.stdout
    for rel, content in data_files(extra_users=10).items():
        (built.root / rel).write_text(content)
    built.cli("run")  # run 2: ten users enter
    res = built.cli("diff", "--data", "-s", "lifecycle", "--fail-on", "entered>0", expect=1)
    assert "entered = 10 in lifecycle violates --fail-on 'entered>0'" in res.stderr


def test_data_diff_names_a_segment_by_its_latest_label(built):
    """History spells keep the label of the run that opened them; after a
    refit relabelled an id, diff --data showed any spell's label (an old one
    beside the current `show`)."""
    import duckdb

    from tests.fixtures import data_files

    for rel, content in data_files(changed=(3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36)).items():
        (built.root / rel).write_text(content)
    built.cli("run")  # run 2: lifecycle users move
    con = duckdb.connect(str(built.db))
    sid, label = con.execute(
        "SELECT segment_id, segment FROM segments.lifecycle_history WHERE valid_from_run = 2 LIMIT 1"
    ).fetchall()[0]
    # the spells opened before carry another label for the same id
    con.execute(
        "UPDATE segments.lifecycle_history SET segment = 'old label' "
        "WHERE segment_id = ? AND valid_from_run = 1",
        [sid],
    )
    con.close()
    r = json.loads(built.cli("diff", "--data", "-s", "lifecycle", "--format", "json").stdout)
    sizes = {x["segment_id"]: x["label"] for x in r["segmentations"][0]["sizes"]}
    assert sizes[sid] == label


def test_encoder_device_edit_shows_and_reruns_nothing(twins):
    """`device:` decides where vectors are computed, not which: the cache
    fingerprint leaves it out, so a diff shows it and the plan runs nothing."""
    base, head = twins
    head.edit("segments/segments.yml", "    dim: 256", "    dim: 256\n    device: cpu")
    r = diff_json(head, str(base.root), str(head.root))
    assert [(c["unique_id"], c["change"], c["fields"]) for c in r["changes"]] == [
        ("encoder.hash", "metadata only", ["device"])
    ]
    assert r["steps"] == []


def test_a_full_disk_while_extracting_a_ref_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """git archive writes into a pipe; when extracting fails with an OSError
    (a full disk), git is stopped instead of left blocked on the full pipe
    while segtool waited for it to end (a `segtool diff` that never returned)."""
    import tarfile
    import threading

    from segtool.diff.versions import extract_ref
    from segtool.errors import ProjectError

    repo = write_files(tmp_path / "repo", tiny_project_files())
    (repo / "data" / "big.bin").write_bytes(os.urandom(2_000_000))  # far more than a pipe holds
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    commit = git(repo, "rev-parse", "HEAD")

    def full_disk(self, *args, **kwargs):
        next(iter(self))  # one member read: git has more to write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full_disk)
    outcome: list = []

    def extract():
        try:
            extract_ref(repo, commit, ".", tmp_path / "out", "HEAD")
        except ProjectError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=extract, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "extract_ref hung on git's full pipe"
    assert outcome and "No space left on device" in str(outcome[0])
    assert "cannot extract git ref 'HEAD'" in str(outcome[0])


def test_rule_segments_of_two_databases_are_matched_by_rule(built, tmp_path):
    """Two databases number rule segments in the order each first saw them: a
    rule added before another in one, all at once in the other. The same
    users in the same rules read as '87.5% moved' (and failed --fail-on)."""
    import shutil

    from tests.conftest import ProjectDir

    built.cli("run")  # a copied project: make its views here
    line = next(
        ln for ln in built.read("segments/segments.yml").splitlines() if "segment: big" in ln
    )
    fresh = line.replace(
        '{segment: big, when: "revenue > 300"}', '{segment: fresh, when: "recency_days < 60"}'
    )
    built.edit("segments/segments.yml", line, f"{fresh}\n{line}")
    built.cli("run")
    other = ProjectDir(tmp_path / "other")
    shutil.copytree(built.root, other.root, ignore=shutil.ignore_patterns("target"))
    other.cli("run")
    ids = "select segment, segment_id from segments.lifecycle group by all order by 1"
    assert built.sql(ids) != other.sql(ids)  # the same rules, numbered differently
    r = other.cli(
        "diff",
        "--data",
        "--base-db",
        str(built.db),
        "--format",
        "json",
        "--fail-on",
        "moved_share > 0.2",
    )
    seg = {s["name"]: s for s in json.loads(r.stdout)["segmentations"]}["lifecycle"]
    assert seg["users"]["moved"] == 0 and seg["ari"] == pytest.approx(1.0)
    assert all(s["before"] == s["after"] for s in seg["sizes"])


def test_data_from_a_run_compares_with_the_latest_and_a_run_before_the_first_says_so(built):
    """--from-run alone compared that run with the last run that changed the
    segmentation, which may lie before it (run 3 -> run 2, entered and left
    swapped); --to-run before a segmentation's first run said it 'has only
    the assignment of run N' though it had none then."""
    from tests.fixtures import data_files

    pd = built
    for rel, content in data_files(changed=(3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36)).items():
        (pd.root / rel).write_text(content)
    pd.cli("run")  # run 2: lifecycle users move
    pd.cli("run", "--refit", "-s", "behaviour")  # run 3: lifecycle untouched
    r = json.loads(
        pd.cli("diff", "--data", "-s", "lifecycle", "--from-run", "3", "--format", "json").stdout
    )
    s = r["segmentations"][0]
    assert (s["base_run"], s["head_run"]) == (3, 3)
    assert s["users"]["moved"] == s["users"]["entered"] == s["users"]["left"] == 0
    assert "compared run 3 with run 3 (the latest run)" in s["note"]
    r = json.loads(
        pd.cli("diff", "--data", "-s", "lifecycle", "--from-run", "1", "--format", "json").stdout
    )
    assert (r["segmentations"][0]["base_run"], r["segmentations"][0]["head_run"]) == (1, 3)
    assert r["segmentations"][0]["users"]["moved"] > 0
    # a segmentation added at run 4: at run 2 it had no assignment
    pd.edit(
        "segments/segments.yml",
        "  - name: lifecycle\n",
        "  - name: tiers\n    model: user_features\n    rules:\n"
        '      - {segment: big, when: "revenue > 300"}\n    default: small\n'
        "  - name: lifecycle\n",
    )
    pd.cli("run")
    r = pd.cli("diff", "--data", "-s", "tiers", "--to-run", "2")
    assert "tiers: not yet ('tiers' had no assignment at run 2 (its first is run 4))" in r.stdout
    assert "has only the assignment" not in r.stdout
    pd.cli("diff", "--data", "-s", "tiers", "--to-run", "2", "--fail-on", "entered>0")


def test_show_lists_a_rule_segment_no_user_is_in_and_keeps_labels_on_one_line(built):
    """A rule that matches nobody was left out of show (and the report);
    a label with a line break split the rows of the text tables."""
    pd = built
    pd.edit(
        "segments/segments.yml",
        '- {segment: big, when: "revenue > 300"}',
        '- {segment: nobody, when: "revenue < 0"}\n'
        '      - {segment: "big\\nspender", when: "revenue > 300"}',
    )
    pd.cli("run")
    out = pd.cli("show", "lifecycle").stdout
    rows = [line.split() for line in out.splitlines()]
    assert ["nobody", "0", "0.0%"] in [r[1:4] for r in rows if len(r) >= 4]
    assert any(r[1:3] == ["big", "spender"] for r in rows if len(r) >= 3)
    assert not any(line.startswith("spender") for line in out.splitlines())
    md = pd.cli("show", "lifecycle", "--format", "markdown").stdout
    assert "| nobody | 0 | 0.0% |" in md and "big spender" in md
    listing = pd.cli("show").stdout
    live = pd.sql(
        "select count(*) from _segtool.segment_catalog where segmentation = 'lifecycle' "
        "and died_run is null"
    )[0][0]
    assert any(
        line.split()[:4] == ["lifecycle", "rules", "60", str(live)] for line in listing.splitlines()
    )


def test_a_refit_that_relabels_an_id_renews_its_spells(built):
    """A refit that gave an id a new label left its users' spells open with
    the old one: as-of queries, `diff --data` and the report's flows showed a
    label the segment no longer had (the segment table had the new one), and
    the run was not a change at all to `diff --data`."""
    pd = built
    pd.edit("segments/segments.yml", "labels: {keywords: 3}", "labels: {keywords: 0}")
    pd.cli("run", "--refit", "-s", "behaviour")
    now = dict(pd.sql("select segment_id, any_value(segment) from segments.behaviour group by 1"))
    spells = pd.sql(
        "select segment_id, segment, valid_from_run, valid_to_run from segments.behaviour_history"
    )
    before = {s: lab for s, lab, f, t in spells if f <= 1 and (t is None or t > 1)}
    assert any(before[s] != now[s] for s in now)  # the edit relabelled some id
    # each open spell carries the id's label now; the old label stays with run 1
    assert {s: lab for s, lab, f, t in spells if t is None} == now
    assert {s: lab for s, lab, f, t in spells if f == 1 and t == 2} == {
        s: before[s] for s in now if before[s] != now[s]
    }
    r = json.loads(pd.cli("diff", "--data", "-s", "behaviour", "--format", "json").stdout)
    s = r["segmentations"][0]
    assert (s["base_run"], s["head_run"], s["users"]["moved"]) == (1, 2, 0)
    assert {z["segment_id"]: (z["label_before"], z["label"]) for z in s["sizes"]} == {
        i: (before[i], now[i]) for i in now
    }
    text = pd.cli("diff", "--data", "-s", "behaviour").stdout
    i = next(i for i in now if before[i] != now[i])
    assert f"relabelled: {i} {before[i]!r} -> {now[i]!r}" in text
    # nobody moved: a renewed spell is not a move
    pd.edit("segments/segments.yml", "max_share: 0.9}", "max_share: 0.9, max_moved_share: 0.0}")
    assert "PASS  max_moved_share(behaviour)" in pd.cli("test", "-s", "behaviour").stdout
