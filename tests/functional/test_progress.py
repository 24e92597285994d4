"""A piped `segtool run` (every CI log) says how embedding goes while it runs."""

import re

from tests.fixtures import save_tiny_bert


def test_piped_run_prints_progress_lines_during_embedding(project, tmp_path, monkeypatch):
    bert = save_tiny_bert(tmp_path / "bert")
    project.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256\n",
        "  - name: hash\n    kind: hashing\n    dim: 256\n"
        f"  - name: bert\n    kind: transformers\n    model: {bert}\n",
    )
    project.edit("segments/segments.yml", "encoder: hash}", "encoder: bert}")
    monkeypatch.setenv("SEGTOOL_PROGRESS_INTERVAL", "0.01")
    out = project.cli("run").stdout
    lines = re.findall(r"^  embed story with bert: (\d+)/(\d+) \((\d+)%\).*$", out, re.M)
    assert lines, out
    assert "texts/s" in out or "starting" in out
    # no progress lines with -q
    project.cli("run", "--full-refresh", "-q")
    assert "embed story with bert:" not in project.cli("run", "-q").stdout
