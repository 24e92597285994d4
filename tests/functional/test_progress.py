"""A piped `segtool run` (every CI log) says how embedding goes while it runs."""

import os
import re
import subprocess
import sys

import pytest

from tests.fixtures import save_tiny_bert


def embed_with_tiny_bert(project, tmp_path) -> None:
    """The project's story embedded by a tiny local BERT (a transformers encoder)."""
    bert = save_tiny_bert(tmp_path / "bert")
    project.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256\n",
        "  - name: hash\n    kind: hashing\n    dim: 256\n"
        f"  - name: bert\n    kind: transformers\n    model: {bert}\n",
    )
    project.edit("segments/segments.yml", "encoder: hash}", "encoder: bert}")


def test_piped_run_prints_progress_lines_during_embedding(project, tmp_path, monkeypatch):
    embed_with_tiny_bert(project, tmp_path)
    monkeypatch.setenv("SEGTOOL_PROGRESS_INTERVAL", "0.01")
    out = project.cli("run").stdout
    lines = re.findall(r"^  embed story with bert: (\d+)/(\d+) \((\d+)%\).*$", out, re.M)
    assert lines, out
    assert "texts/s" in out or "starting" in out
    # no progress lines with -q
    project.cli("run", "--full-refresh", "-q")
    assert "embed story with bert:" not in project.cli("run", "-q").stdout


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_terminal_run_draws_a_bar_with_rate_and_eta(project, tmp_path):
    """`segtool run` in a real (pseudo-)terminal: rich's bar, not plain lines."""
    embed_with_tiny_bert(project, tmp_path)
    master, slave = os.openpty()
    env = {**os.environ, "SEGTOOL_EMBED_CHUNK": "8", "COLUMNS": "160", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "segtool", "run", "--project-dir", str(project.root)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    out = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in out  # drawn with terminal control codes
    assert "━" in out and "embed story with bert" in out  # the bar
    assert "texts/s" in out and "eta" in out
    assert not re.search(r"^  embed story with bert: \d+/\d+ \(", out, re.M)  # no plain lines
