"""`segtool diff`: project versions (git refs or folders) and segment data."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from segtool.cli.common import (
    examples_option,
    format_option,
    handle_errors,
    load,
    project_options,
    warn_vars,
)


@click.command()
@project_options
@click.argument("base", required=False)
@click.argument("head", required=False)
@click.option(
    "--data",
    is_flag=True,
    help="Compare segment assignments (two runs, or two databases) instead of project files.",
)
@click.option(
    "--from-run",
    type=int,
    metavar="N",
    help="--data: the earlier run (default: the run just before --to-run).",
)
@click.option(
    "--to-run",
    type=int,
    metavar="M",
    help="--data: the later run (default: the last run that changed each segmentation).",
)
@click.option(
    "--base-db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--data: compare this database (e.g. prod) ...",
)
@click.option(
    "--head-db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--data: ... with this one (default: the target's).",
)
@click.option(
    "-s",
    "--segmentation",
    "segmentations",
    multiple=True,
    metavar="NAME",
    help="--data: only these segmentations.",
)
@examples_option("--data: example users who moved, per segmentation.")
@click.option("--no-counts", is_flag=True, help="Do not estimate user counts from the database.")
@format_option("text", "json", "markdown")
@click.option(
    "--fail-on",
    multiple=True,
    metavar="EXPR",
    help="Exit 1 when a metric crosses a threshold: 'moved_share>0.2', 'ari<0.8', 'entered>100', 'left>100', "
    "'nodes_changed>10', 'refits>0'. Repeat or separate with commas.",
)
@handle_errors
def diff(
    project_dir,
    target,
    vars_,
    debug,
    base,
    head,
    data,
    from_run,
    to_run,
    base_db,
    head_db,
    segmentations,
    examples,
    no_counts,
    fmt,
    fail_on,
):
    """Compare two versions of the project, or two sets of segment assignments.

    BASE and HEAD are git refs or project folders. Defaults: BASE=HEAD (the
    last commit), HEAD=the working tree. Shows the nodes added, removed and
    changed, and the plan of HEAD against the state BASE would have left: each
    step's action (create, rebuild, incremental, refit, assign) and, when the
    database exists, how many users and texts it touches.

    With --data: sizes before/after, transition matrix, users entering and
    leaving, share moved, ARI/NMI and example users, per segmentation before and
    after the last run that changed it (or --from-run/--to-run), or between two
    databases (--base-db/--head-db).

    \b
    Examples:
      segtool diff                          # working tree vs the last commit
      segtool diff main                     # working tree vs branch main
      segtool diff main HEAD --format markdown >> "$GITHUB_STEP_SUMMARY"
      segtool diff ../old_project .         # two folders
      segtool diff --data                   # each segmentation's last change
      segtool diff --data --base-db prod.duckdb --head-db target/segtool.duckdb --fail-on 'moved_share>0.2'
    """
    from segtool.diff import thresholds as th
    from segtool.errors import ProjectError
    from segtool.report.diff import format_diff

    data = (
        data
        or any(x is not None for x in (from_run, to_run, base_db, head_db))
        or bool(segmentations)
    )
    thresholds = th.parse_fail_on(fail_on, data=data)
    if data:
        if base or head:
            raise ProjectError(
                "--data compares databases, not project versions: BASE/HEAD are not used",
                hint="use --from-run/--to-run (one database) or --base-db/--head-db (two databases)",
            )
        from segtool.diff.data import data_diff

        project = None
        try:
            project = load(project_dir, target, vars_)
        except ProjectError:
            if head_db is None:
                raise
        result = data_diff(
            project,
            from_run=from_run,
            to_run=to_run,
            base_db=base_db,
            head_db=head_db,
            segmentations=tuple(segmentations),
            examples=examples,
        )
    else:
        from segtool.api import Project
        from segtool.compile.sql import unread_vars
        from segtool.diff.project import project_diff
        from segtool.project.loader import parse_vars

        cli_vars = parse_vars(vars_)
        unread: list[set] = []  # per version: a typo is unread in both
        declared: dict = {}

        def load_version(*args, **kwargs):
            version = Project.load(*args, **kwargs)
            unread.append(set(unread_vars(version.loaded, cli_vars)))
            declared.update(version.loaded.spec.vars)
            return version

        result = project_diff(
            base or "HEAD",
            head,
            project_dir=project_dir,
            target=target,
            vars=cli_vars,
            counts=not no_counts,
            load=load_version,
        )
        if unread:
            warn_vars(sorted(set.intersection(*unread)), declared)
    checks = th.check_thresholds(result, thresholds)
    click.echo(format_diff(result, fmt))
    msg = th.violation_message(checks)
    if msg:
        click.echo(msg, err=True)
        sys.exit(1)
