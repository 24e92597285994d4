"""The outputs docs/quickstart.md shows are what segtool prints today: the
page's session is run in a fresh folder and compared (durations and rates
aside). When this fails, regenerate: python scripts/docs_session.py docs/quickstart.md"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_outputs_are_current():
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "docs_session.py"),
            "docs/quickstart.md",
            "--check",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_the_checker_blanks_only_what_varies():
    sys.path.insert(0, str(ROOT / "scripts"))
    from docs_session import normalise

    a = "  create      text.story  ... in 0.39s\nrun 1: success in 24.1s (6 create); 71 texts/s"
    b = "  create      text.story  ... in 0.41s\nrun 1: success in 23.7s (6 create); 69 texts/s"
    assert normalise(a) == normalise(b)
    assert normalise(a) != normalise(a.replace("6 create", "5 create"))
