"""examples/ecommerce end to end at a small size, on the hashing encoder:
period 1, then the period-2 update (new, changed and deleted users), then a
refit. Checks what the segmentation issue promises on the example's generator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ProjectDir
from tests.fixtures import generate_example

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ecommerce"


def generate(root: Path, period: int) -> None:
    generate_example(root / "data", period)


@pytest.fixture
def example(tmp_path) -> ProjectDir:
    root = tmp_path / "ecommerce"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("data", "target"))
    seg = root / "segments/segments.yml"
    text = seg.read_text()
    assert "encoder: fast}" in text
    seg.write_text(text.replace("encoder: fast}", "encoder: hashing}"))
    generate(root, 1)
    return ProjectDir(root)


def summary(p: ProjectDir) -> dict:
    return json.loads((p.root / "target/run_results.json").read_text())["summary"]


@pytest.mark.slow
def test_period_two_update_and_refit(example):
    example.cli("validate")
    example.cli("run")
    example.cli("test")
    before = dict(example.sql("select user_id, segment_id from segments.behaviour"))

    generate(example.root, 2)
    r = example.cli("run")
    # user_features recomputes only the touched users and drops deleted ones
    line = next(ln for ln in r.stdout.splitlines() if "model.user_features" in ln)
    assert line.split()[0] == "incremental" and " deleted]" in line, line
    features = "select * from user_features order by user_id"
    merged = example.sql(features)
    s = summary(example)
    t = s["texts"]["shopper_story"]
    g = s["segmentations"]["behaviour"]
    # only new and changed users are rendered and assigned (~6% of users)
    assert t["new"] > 0 and t["changed"] > 0 and t["removed"] >= 0
    assert t["unchanged"] > 0.9 * t["users"]
    if g["action"] == "assign":
        assert g["assigned"] < 0.1 * g["users"]
    after = dict(example.sql("select user_id, segment_id from segments.behaviour"))
    unchanged = [u for u in before if u in after]
    moved = {u for u in unchanged if after[u] != before[u]}
    closed = {
        r[0]
        for r in example.sql(
            "select user_id from segments.behaviour_history where valid_to_run = 2 and user_id in (select user_id from segments.behaviour)"
        )
    }
    assert closed == moved  # history shows exactly the users who moved

    example.cli("run", "--refit")
    refit = dict(example.sql("select user_id, segment_id from segments.behaviour"))
    same = sum(refit[u] == after[u] for u in after) / len(after)
    assert same >= 0.9, f"only {same:.1%} kept their segment id over a refit"
    example.cli("test")
    # the incremental merge left exactly what a full rebuild computes
    example.cli("run", "-s", "user_features", "--full-refresh")
    assert example.sql(features) == merged
