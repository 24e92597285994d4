"""Commands over segment results: show, export, assign, docs."""

from __future__ import annotations

from pathlib import Path

import click

from segtool.cli.common import format_option, handle_errors, load, project_options


@click.command()
@project_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Default: target/report/index.html",
)
@handle_errors
def docs(project_dir, target, vars_, debug, output):
    """Write a self-contained HTML report (works offline): lineage graph,
    per-segmentation sizes, labels, 2-D map, feature profiles, sizes over runs
    and flows since the last run.

    \b
    Example:
      segtool docs && open target/report/index.html
    """
    project = load(project_dir, target, vars_)
    click.echo(f"wrote {project.report(output)}")


@click.command()
@project_options
@click.argument("name")
@click.option("--examples", default=3, show_default=True, help="Example users per segment.")
@format_option("text", "json", "markdown")
@handle_errors
def show(project_dir, target, vars_, debug, name, examples, fmt):
    """A segmentation's profile: sizes, labels, distinguishing features, example users.

    \b
    Example:
      segtool show behaviour --examples 2
    """
    from segtool.report.profile import format_profile

    project = load(project_dir, target, vars_)
    click.echo(format_profile(project.profile(name, examples=examples), fmt))


@click.command()
@project_options
@click.argument("name")
@format_option("parquet", "csv")
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
    help="CSV or Parquet, by extension.",
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


COMMANDS = (show, export, assign, docs)
