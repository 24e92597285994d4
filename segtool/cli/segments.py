"""Commands over segment results: show, score, export, assign, docs."""

from __future__ import annotations

from pathlib import Path

import click

from segtool.cli.common import (
    examples_option,
    format_option,
    handle_errors,
    load,
    project_options,
)


@click.command()
@project_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Default: target/report/index.html",
)
@click.option(
    "--force", is_flag=True, help="Overwrite an existing file that is not a segtool report."
)
@handle_errors
def docs(project_dir, target, vars_, debug, output, force):
    """Write a self-contained HTML report (works offline): lineage graph,
    per-segmentation sizes, labels, 2-D map, feature profiles, sizes over runs
    and flows since the last run.

    \b
    Example:
      segtool docs && open target/report/index.html
    """
    project = load(project_dir, target, vars_)
    click.echo(f"wrote {project.report(output, force=force)}")


@click.command()
@project_options
@click.argument("name", required=False)
@examples_option("Example users per segment.")
@click.option(
    "--vs",
    "vs",
    metavar="COLUMN",
    help="Cross-tab the segments against a column of the base model instead.",
)
@format_option("text", "json", "markdown")
@handle_errors
def show(project_dir, target, vars_, debug, name, examples, vs, fmt):
    """A segmentation's profile: sizes, labels, what sets each segment apart,
    the columns that drive it, example users. Without NAME: every segmentation.

    \b
    Examples:
      segtool show
      segtool show behaviour --examples 2
      segtool show behaviour --vs channel
    """
    from segtool.report import profile
    from segtool.report.console import terminal_width

    project = load(project_dir, target, vars_)
    width = terminal_width()  # fit a terminal; a pipe gets full lines
    if name is None:
        if vs:
            raise click.UsageError("--vs needs a segmentation NAME")
        click.echo(profile.format_list(profile.list_segmentations(project), fmt, width))
    elif vs:
        ct = profile.segment_crosstab(project, name, vs)
        click.echo(profile.format_crosstab(ct, fmt, width))
    else:
        prof = project.profile(name, examples=examples)
        click.echo(profile.format_profile(prof, fmt, width))


@click.command()
@project_options
@click.argument("name")
@click.option(
    "--truth",
    required=True,
    metavar="FILE_OR_COLUMN",
    help="A CSV/Parquet/JSON-lines file (key + label column), or a column of the base model.",
)
@click.option("--label-column", help="The label column of a truth file with several columns.")
@format_option("text", "json", "markdown")
@handle_errors
def score(project_dir, target, vars_, debug, name, truth, label_column, fmt):
    """Agreement of a segmentation with labels you already have: adjusted
    Rand index, normalised mutual information and the confusion table.

    \b
    Examples:
      segtool score behaviour --truth data/_truth.csv
      segtool score behaviour --truth channel --format json
    """
    from segtool.report.score import format_score, score_segmentation

    project = load(project_dir, target, vars_)
    click.echo(
        format_score(score_segmentation(project, name, truth, label_column=label_column), fmt)
    )


@click.command()
@project_options
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "csv"]),
    default=None,
    help="Default: by the extension of -o (.parquet, .pq, .csv); without -o, parquet.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Default: target/export/NAME.FORMAT",
)
@click.option("--history", is_flag=True, help="Export the history table instead.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@handle_errors
def export(project_dir, target, vars_, debug, name, fmt, output, history, force):
    """Write a segment table (or its history) to Parquet or CSV.

    \b
    Example:
      segtool export behaviour --format csv -o behaviour.csv
    """
    project = load(project_dir, target, vars_)
    out, rows = project.export(name, fmt=fmt, output=output, history=history, force=force)
    click.echo(f"wrote {rows:,} rows to {out}")


@click.command()
@project_options
@click.argument("name")
@click.option(
    "--input",
    "input_",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV/Parquet/JSON with the columns of the segmentation's input model(s).",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV or Parquet, by extension (.csv, .parquet or .pq).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@handle_errors
def assign(project_dir, target, vars_, debug, name, input_, output, force):
    """Put users from a file into existing segments, without changing any state.

    The file has one row per user with the columns of the model(s) the
    segmentation reads (features and texts are computed as in a run).

    \b
    Example:
      segtool assign behaviour --input new_users.parquet --output assigned.csv
    """
    project = load(project_dir, target, vars_)
    out, rows = project.assign(name, input_, output, force=force)
    click.echo(f"assigned {rows:,} users to segments of '{name}' -> {out}")


COMMANDS = (show, score, export, assign, docs)
