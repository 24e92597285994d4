"""Commands over segment results: show, export, assign, history."""

from __future__ import annotations

from pathlib import Path

import click

from segtool.cli import handle_errors, load, project_options


def register(main: click.Group) -> None:
    main.add_command(show)
    main.add_command(export)
    main.add_command(assign)
    main.add_command(docs)


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
    from segtool.api import check_output
    from segtool.report.html import build_report

    project = load(project_dir, target, vars_)
    if output is not None:
        check_output(project, output, force=True)  # a report may be replaced, the database not
    out = build_report(project, output)
    click.echo(f"wrote {out}")


@click.command()
@project_options
@click.argument("name")
@click.option("--examples", default=3, show_default=True, help="Example users per segment.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
)
@handle_errors
def show(project_dir, target, vars_, debug, name, examples, fmt):
    """A segmentation's profile: sizes, labels, distinguishing features, example users.

    \b
    Example:
      segtool show behaviour --examples 2
    """
    from segtool.report.profile import format_profile, segmentation_profile

    project = load(project_dir, target, vars_)
    prof = segmentation_profile(project, name, examples=examples)
    click.echo(format_profile(prof, fmt))


@click.command()
@project_options
@click.argument("name")
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True
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
    from segtool.api import check_output

    project = load(project_dir, target, vars_)
    out = output or project.target_dir / "export" / f"{name}{'_history' if history else ''}.{fmt}"
    # the default file under target/export is segtool's own: refreshed without --force
    check_output(project, out, force=force or output is None)
    df = project.history(name) if history else project.segments(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.write_parquet(out)
    else:
        df.write_csv(out)
    click.echo(f"wrote {df.height:,} rows to {out}")


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
    from segtool.api import check_output
    from segtool.execute.assign import assign_file

    project = load(project_dir, target, vars_)
    check_output(project, output, force=force)
    df = assign_file(project, name, input_)
    if output.suffix == ".parquet":
        df.write_parquet(output)
    else:
        df.write_csv(output)
    click.echo(f"assigned {df.height:,} users to segments of '{name}' -> {output}")
