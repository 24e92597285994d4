#!/usr/bin/env python3
"""Keep the outputs shown in a Markdown doc true: run the session the doc
describes, in a fresh temp folder, and write (or check) every output block.

    python scripts/docs_session.py docs/quickstart.md           # rewrite the outputs
    python scripts/docs_session.py docs/quickstart.md --check   # exit 1 if any is stale

Markers (HTML comments, invisible on GitHub):

    <!-- session -->           the next fenced block holds `$ command` lines:
                               each is run in the project folder (the first
                               `segtool init` makes it) and its output written
                               below it. Options: `head=N tail=M` keep the
                               first N / last M lines of each output, with
                               `...` between.
    <!-- do -->                the next fenced block (bash) is run as shown
                               (the reader runs it too): edits, git commits
    <!-- hidden: CMD -->       run CMD, show nothing (set-up the prose explains)
    <!-- python -->            the next fenced block (python) is run; its
                               output replaces the block after the next
                               `<!-- output -->` marker

The session runs with fixed git identities and dates (so commit ids are the
same every time), progress lines off, and COLUMNS=100. `--check` compares
after blanking what honestly varies from run to run: durations, rates and
run times; and numbers printed with six or more decimals (distances and
confidences in float32, whose last digits follow the CPU's vector unit) are
compared to a relative 1e-5. Anything else that differs means the doc no
longer matches what segtool prints: regenerate it and read the diff.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHOWN_ROOT = "/tmp/shop"  # how the session folder reads in the doc
FENCE = re.compile(r"^```")
MARK = re.compile(r"^<!-- (session|do|python|output|hidden)(?::?\s*(.*?))? -->\s*$")


def environment(home: Path) -> dict:
    env = dict(os.environ)
    env.update(
        COLUMNS="100",
        NO_COLOR="1",
        SEGTOOL_PROGRESS_INTERVAL="100000",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GIT_AUTHOR_NAME="Ana Lyst",
        GIT_AUTHOR_EMAIL="ana@example.com",
        GIT_COMMITTER_NAME="Ana Lyst",
        GIT_COMMITTER_EMAIL="ana@example.com",
        GIT_AUTHOR_DATE="2026-11-30T09:00:00Z",
        GIT_COMMITTER_DATE="2026-11-30T09:00:00Z",
        GIT_CONFIG_GLOBAL=str(home / "gitconfig"),
        PYTHONUNBUFFERED="1",
    )
    # the session's `segtool` and `python` are this interpreter's
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


class Session:
    def __init__(self, work: Path):
        self.work = work
        self.cwd = work
        self.env = environment(work)
        (work / "gitconfig").write_text("[init]\n\tdefaultBranch = main\n")

    def shell(self, cmd: str) -> str:
        # `cd DIR` lines move the session (a reader's shell would)
        cmd = cmd.replace(SHOWN_ROOT, str(self.work / "shop"))
        out = subprocess.run(
            ["bash", "-c", cmd + "\necho __PWD__$PWD"],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        text = out.stdout + out.stderr
        lines = text.splitlines()
        pwd = [ln for ln in lines if ln.startswith("__PWD__")]
        if pwd:
            self.cwd = Path(pwd[-1][len("__PWD__") :])
        text = "\n".join(ln for ln in lines if not ln.startswith("__PWD__"))
        return text.replace(str(self.work / "shop"), SHOWN_ROOT).replace(str(self.work), "/tmp")

    def python(self, code: str) -> str:
        code = code.replace(SHOWN_ROOT, str(self.work / "shop"))
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=self.cwd, env=self.env, capture_output=True, text=True
        )
        return (out.stdout + out.stderr).replace(str(self.work / "shop"), SHOWN_ROOT).rstrip()


def _keep(lines: list[str], opts: dict) -> list[str]:
    head, tail = int(opts.get("head", 0)), int(opts.get("tail", 0))
    if (head or tail) and len(lines) > head + tail + 1:
        return lines[:head] + ["..."] + (lines[-tail:] if tail else [])
    return lines


def render(doc: str, session: Session) -> str:
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    pending_output: str | None = None
    while i < len(lines):
        ln = lines[i]
        m = MARK.match(ln)
        if not m:
            out.append(ln)
            i += 1
            continue
        kind, arg = m.group(1), (m.group(2) or "").strip()
        out.append(ln)
        i += 1
        if kind == "hidden":
            session.shell(arg)
            continue
        # the fenced block that follows the marker
        while i < len(lines) and not FENCE.match(lines[i]):
            out.append(lines[i])
            i += 1
        start = i
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            i += 1
        fence_open, body, fence_close = lines[start], lines[start + 1 : i], lines[i]
        i += 1
        if kind == "do":
            session.shell("\n".join(body))
            out += [fence_open, *body, fence_close]
        elif kind == "python":
            pending_output = session.python("\n".join(body))
            out += [fence_open, *body, fence_close]
        elif kind == "output":
            shown = (pending_output or "").splitlines()
            out += [fence_open, *shown, fence_close]
            pending_output = None
        else:  # session
            opts = dict(kv.split("=", 1) for kv in arg.split() if "=" in kv)
            block: list[str] = []
            for cmd in [b[2:] for b in body if b.startswith("$ ")]:
                block.append(f"$ {cmd}")
                block += _keep(session.shell(cmd).splitlines(), opts)
            out += [fence_open, *block, fence_close]
    return "\n".join(out) + "\n"


VARIES = [
    (re.compile(r"\b\d+\.\d+s\b"), "<secs>"),  # durations
    (re.compile(r"\b[\d,]+(\.\d+)? (texts|users)/s\b"), "<rate>"),
    (re.compile(r"\b\d+:\d\d(:\d\d)? (elapsed|eta)\b"), "<clock>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?"), "<timestamp>"),
]


# float32 results written as float64 (0.7689674496650696): another CPU's
# vector unit sums in another order and changes the last digits
LONG_FLOAT = re.compile(r"-?\b\d+\.\d{6,}(?:e[-+]?\d+)?")


def normalise(text: str) -> str:
    for pattern, repl in VARIES:
        text = pattern.sub(repl, text)
    return text


def same_outputs(old: str, new: str) -> bool:
    """Equal once what varies is blanked, long floats within a relative 1e-5."""
    old, new = normalise(old), normalise(new)
    if old == new:
        return True
    if LONG_FLOAT.sub("<float>", old) != LONG_FLOAT.sub("<float>", new):
        return False
    pairs = zip(LONG_FLOAT.findall(old), LONG_FLOAT.findall(new), strict=True)
    return all(math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-7) for a, b in pairs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("doc", type=Path)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when stale")
    ap.add_argument("--keep", action="store_true", help="keep the session folder")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="segtool-docs-"))
    try:
        new = render(args.doc.read_text(), Session(work))
    finally:
        if args.keep:
            print(f"session folder: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    old = args.doc.read_text()
    if args.check:
        if same_outputs(old, new):
            print(f"{args.doc}: outputs are current")
            return 0
        diff = difflib.unified_diff(
            normalise(old).splitlines(), normalise(new).splitlines(), "doc", "session", lineterm=""
        )
        print("\n".join(list(diff)[:200]))
        print(
            f"\n{args.doc}: outputs are stale; regenerate with: python scripts/docs_session.py {shlex.quote(str(args.doc))}",
            file=sys.stderr,
        )
        return 1
    args.doc.write_text(new)
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
