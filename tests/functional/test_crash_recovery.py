"""A run killed with SIGKILL in the middle of embedding keeps every chunk it
committed; the next run embeds only the rest and ends with the same vectors
as an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np

from tests.conftest import ProjectDir, write_files
from tests.fixtures import tiny_project_files

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import segtool.execute.embed as E
    from segtool.encoders.builder import Encoders
    E.CHUNK = 20
    real_get = Encoders.get
    calls = {"n": 0}
    def get(self, name):
        enc = real_get(self, name)
        if not getattr(enc, "_patched", False):
            real = enc.encode
            def encode(texts):
                calls["n"] += 1
                if calls["n"] == 5:  # a warm-up call, then three committed chunks
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(texts)
            enc.encode = encode
            enc._patched = True
        return enc
    Encoders.get = get
    from segtool.cli import main
    main(["run", "--project-dir", sys.argv[1]])
    """
)


def test_sigkill_during_embedding_then_resume(tmp_path):
    files = tiny_project_files(n_users=300)
    killed = ProjectDir(write_files(tmp_path / "killed", files))
    clean = ProjectDir(write_files(tmp_path / "clean", files))

    p = subprocess.run(
        [sys.executable, "-c", KILLER, str(killed.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == -9, p.stdout + p.stderr
    # the dead run's lock went with its process: the next run takes it at once
    kept = killed.n_vectors()
    # whole committed chunks of 20 survive (the encoding of one chunk overlaps
    # the write of the one before, so the kill lands after 2 or 3 of them)
    assert kept in (40, 60)
    assert killed.sql("select status from _segtool.runs") == [("running",)]
    assert killed.sql("select count(*) from _segtool.texts__story")[0][0] == 300

    killed.cli("run")
    s = json.loads((killed.root / "target/run_results.json").read_text())["summary"]["embeddings"][
        "story.hash"
    ]
    assert s["cached"] == kept
    assert s["embedded"] == s["texts"] - kept

    clean.cli("run")
    assert killed.sql("select run_id, status from _segtool.runs order by 1") == [
        (1, "interrupted"),
        (2, "success"),
    ]
    a, b = killed.vectors(), clean.vectors()
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[h], b[h]) for h in a)
    assert killed.sql("select segment_id from segments.behaviour order by user_id") == clean.sql(
        "select segment_id from segments.behaviour order by user_id"
    )
    shutil.rmtree(tmp_path / "clean")
