"""A run whose inputs did not change does (almost) nothing: it skips every
step, and it imports no torch, transformers, scikit-learn or model2vec, not
even NumPy or Polars (0.1-0.2 s each), and loads no model: fingerprints come
from files and settings only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import save_tiny_bert

HEAVY = ("torch", "transformers", "sklearn", "model2vec", "sentence_transformers", "pandas")
# what a run with nothing to do does not need either
NO_WORK = (*HEAVY, "numpy", "polars", "scipy")

PROBE = """
import json, sys
from segtool.cli import main
try:
    main(["run", "-q", "--project-dir", sys.argv[1], *sys.argv[2:]])
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _rerun_modules(root: Path, env=None, modules=HEAVY, args=()) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=modules), str(root), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _local_encoder(project, bert, kind: str) -> None:
    """The project's encoder `hash` becomes KIND over a copy of the tiny BERT."""
    shutil.copytree(bert, project.root / "local_model")
    project.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256",
        f"  - name: hash\n    kind: {kind}\n    model: ./local_model"
        + ("\n    dim: 16" if kind == "static" else ""),
    )


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.mark.parametrize("kind", ["hashing", "transformers", "static"])
def test_no_change_rerun_imports_no_model_library(project, bert, kind, tmp_path, monkeypatch):
    import os

    env = {**os.environ, "SEGTOOL_CACHE": str(tmp_path / "cache")}
    monkeypatch.setenv("SEGTOOL_CACHE", env["SEGTOOL_CACHE"])
    if kind != "hashing":
        _local_encoder(project, bert, kind)
    project.cli("run")
    assert _rerun_modules(project.root, env, NO_WORK) == []
    results = json.loads((project.root / "target/run_results.json").read_text())
    assert results["summary"]["actions"] == {"skip": 6}


def test_incremental_run_imports_no_pandas_or_model_library(project):
    """New and changed users are rendered, embedded and assigned with the
    stored fit: no pandas (pyarrow's converters import it: 0.6 s, a tenth of
    such a run at 200,000 users; state/frames.py), no scikit-learn, no torch."""
    from tests.fixtures import data_files

    project.cli("run")
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        project.write(rel, content)
    assert _rerun_modules(project.root) == []
    results = json.loads((project.root / "target/run_results.json").read_text())
    seg = results["summary"]["segmentations"]["behaviour"]
    assert seg["action"] == "assign" and seg["assigned"] == 5


def test_a_dry_run_that_renders_imports_no_model_library(project, bert, tmp_path):
    """A dry run renders the changed users' texts but embeds nothing: its
    two-CPU render imported the encoder's libraries (torch) meanwhile."""
    import os

    from tests.fixtures import data_files

    _local_encoder(project, bert, "transformers")
    project.cli("run")
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        project.write(rel, content)
    # the fixture's few users render on two CPUs too
    env = {**os.environ, "SEGTOOL_RENDER_SPLIT_MIN": "1"}
    assert _rerun_modules(project.root, env, args=("--dry-run",)) == []
    assert "torch" in _rerun_modules(project.root, env)  # the run embeds with it


def test_a_first_distillation_says_what_it_does(project, bert, tmp_path, monkeypatch):
    """preflight distilled without a word (minutes for MiniLM in a CI log)."""
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "cache"))
    _local_encoder(project, bert, "static")
    out = project.cli("run").stdout
    assert "distilling static encoder 'hash' from" in out and "distilled 'hash' in" in out
    assert "distilling" not in project.cli("run").stdout  # once per machine


def test_a_dry_run_says_when_it_cannot_tell_a_refit(project, bert, tmp_path, monkeypatch):
    """A static encoder whose source weights changed is distilled by the
    run: the dry run said `skip ... inputs unchanged for every user` and the
    run then refitted."""
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "cache"))
    _local_encoder(project, bert, "static")
    project.cli("run")
    other = save_tiny_bert(tmp_path / "other", seed=1)
    shutil.copy(other / "model.safetensors", project.root / "local_model" / "model.safetensors")
    plan = project.cli("run", "--dry-run").stdout
    line = next(ln for ln in plan.splitlines() if "segmentation.behaviour" in ln)
    assert "until encoder 'hash' is ready the plan cannot tell whether its model changed" in line
    assert "refit" in project.cli("run").stdout
