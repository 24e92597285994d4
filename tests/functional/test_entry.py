"""The `segtool` command leaves with os._exit once its work is done
(segtool.cli.entry): the exit code, every byte of output and the exit
handlers must be exactly as with a normal interpreter exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    # buffered output, as on a user's machine (this one may set PYTHONUNBUFFERED)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def _segtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segtool", *args], capture_output=True, text=True, cwd=cwd
    )


def test_exit_codes_and_messages_are_the_commands(tmp_path):
    ok = _segtool("--version")
    assert (ok.returncode, ok.stdout.split()[0]) == (0, "segtool,")
    usage = _segtool("no-such-command")
    assert usage.returncode == 2 and "No such command 'no-such-command'" in usage.stderr
    missing = _segtool("validate", "--project-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no segtool_project.yml" in missing.stderr


# a command that writes a lot and registers exit handlers, run through entry()
ENTRY = """
import atexit, sys, tempfile, threading, time
import click
from segtool.cli import entry, main

@main.command("spill")
@click.option("--thread", is_flag=True)
def spill(thread):
    for i in range(100_000):  # small writes: the last ones wait in the buffer
        print(f"line {i}")
    print("to stderr", file=sys.stderr)
    atexit.register(lambda: print("exit handler ran", file=sys.stderr, flush=True))
    folder = tempfile.TemporaryDirectory(prefix="segtool-entry-")
    spill.folder = folder  # kept alive: removed by its exit-time finalizer
    print(folder.name, file=sys.stderr)
    if thread:  # a thread still running: Python waits for it, and so must we
        def late():
            time.sleep(0.3)
            print("thread finished", file=sys.stderr, flush=True)
        threading.Thread(target=late).start()
    sys.exit(3)

sys.argv = ["segtool", *sys.argv[1:]]
entry()
"""


def test_output_exit_handlers_and_threads_survive_the_quick_exit():
    r = _python(ENTRY, "spill")
    assert r.returncode == 3
    lines = r.stdout.splitlines()
    assert len(lines) == 100_000 and r.stdout.endswith("line 99999\n")  # to the last byte
    assert "to stderr" in r.stderr and "exit handler ran" in r.stderr
    folder = Path(r.stderr.splitlines()[1])
    assert folder.name.startswith("segtool-entry-") and not folder.exists()
    threaded = _python(ENTRY, "spill", "--thread")
    assert threaded.returncode == 3 and "thread finished" in threaded.stderr


@pytest.mark.parametrize("unbuffered", [True, False])
def test_a_reader_that_leaves_stops_the_command_quietly(tmp_path, unbuffered):
    """`segtool ls | head -1`: the pipe closes under the command. It stops
    as a tool killed by SIGPIPE does (exit 141), without an 'internal error',
    whether a line meets the closed pipe (unbuffered) or the last flush does."""
    init = _segtool("init", str(tmp_path / "p"))
    assert init.returncode == 0, init.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segtool", "ls"],
        cwd=tmp_path / "p",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_a_broken_pipe_that_is_not_stdout_is_a_failure():
    """Only a closed stdout is the quiet exit 141; a pipe to a worker that
    breaks is an error like any other (exit 2, said on stderr)."""
    code = """
import os
from segtool.cli import entry, main
from segtool.cli.common import handle_errors

@main.command("pipe")
@handle_errors
def pipe():
    r, w = os.pipe()
    os.close(r)
    os.write(w, b"to a worker that is gone")

entry()
"""
    r = _python(code, "pipe")
    assert r.returncode == 2 and "internal error: BrokenPipeError" in r.stderr, r.stderr
