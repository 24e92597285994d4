"""The command line: thin. Each command parses flags, calls `segtool.Project`,
and prints through report/.

    common.py    the error handler and shared options
    project.py   init, validate, compile, run, test, ls, render, clean
    segments.py  show, score, export, assign, docs
    diff.py      diff
"""

from __future__ import annotations

import click

from segtool import __version__
from segtool.cli import diff, project, segments
from segtool.cli.common import CONTEXT


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="segtool")
def main():
    """segtool: dbt for user segments.

    \b
    SQL models -> per-user features and texts -> embeddings -> segments, in DuckDB.
    Start with:  segtool init shop && cd shop && segtool run
    """


for command in (*project.COMMANDS, *segments.COMMANDS, diff.diff):
    main.add_command(command)
