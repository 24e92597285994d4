"""Commands over the project: init, validate, compile, run, test, ls, render, clean."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from segtool import __version__
from segtool.cli.common import (
    format_option,
    handle_errors,
    load,
    project_options,
    reporter,
    selection_options,
)
from segtool.errors import ProjectError, ProjectErrors
from segtool.words import counted


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--force",
    "-f",
    count=True,
    help="Add the template's files to a folder that is not empty; files you changed are "
    "only overwritten with --force twice.",
)
@handle_errors
def init(directory: Path, force: int):
    """Create a new project in DIRECTORY from the template (with sample data).

    \b
    Example:
      segtool init shop && cd shop && segtool run
    """
    from segtool.api import init_project

    init_project(directory, force=force)
    click.echo(f"created project in {directory}\nnext: cd {directory} && segtool run")


@click.command()
@project_options
@format_option("text", "json", "github")
@handle_errors
def validate(project_dir, target, vars_, debug, fmt):
    """Check every file without writing anything or loading a model.

    Parses YAML, checks schemas, refs, cycles, Jinja, binds SQL against the
    real source schemas, checks rule predicates and encoder settings.
    Exit 1 when there are errors.

    \b
    Example:
      segtool validate --format github   # annotations in GitHub Actions
    """
    try:
        project = load(project_dir, target, vars_, strict=False)
        errors = project.validate()
        n_nodes = None if errors else len(project.graph().graph.nodes)
    except ProjectErrors as exc:
        errors = exc.errors
        n_nodes = None
    except ProjectError as exc:
        errors = [exc]
        n_nodes = None
    from segtool.project.secrets import masked
    from segtool.report.formats import format_validation

    # text errors go to stderr like every other command's; json/github are the output itself
    errors = [masked(e) for e in errors]
    click.echo(format_validation(errors, fmt, n_nodes), err=bool(errors) and fmt == "text")
    sys.exit(1 if errors else 0)


@click.command(name="compile")
@project_options
@selection_options
@click.option(
    "--samples",
    default=3,
    show_default=True,
    type=click.IntRange(0, 10_000),
    help="Rendered sample texts per text (0: none, and the old ones are removed).",
)
@handle_errors
def compile_(project_dir, target, vars_, debug, select, exclude, state_dir, samples):
    """Write compiled SQL, sample texts and target/manifest.json."""
    project = load(project_dir, target, vars_)
    man = project.compile(select, exclude, samples=samples, state_dir=state_dir)
    n, total = man["_selected"], len(man["nodes"])
    which = f"{n:,} of {total:,} nodes" if n != total else counted(n, "node")
    click.echo(
        f"compiled {which} -> {project.relpath(project.target_dir)}/ (manifest.json, compiled/"
        + (", samples/)" if samples else ")")
    )
    for note in man["_notes"]:
        click.echo(f"note: {note}")


@click.command()
@project_options
@selection_options
@click.option(
    "--full-refresh",
    is_flag=True,
    help="Rebuild tables and incremental models (not those with full_refresh=false: they merge) and re-render every text.",
)
@click.option("--refit", is_flag=True, help="Refit every selected segmentation on all users.")
@click.option(
    "--threads", type=click.IntRange(1, 4096), help="DuckDB threads (default: the target's)."
)
@click.option("--device", help="Encoder device override: cpu, cuda, cuda:1, mps.")
@click.option(
    "--dry-run", is_flag=True, help="Show the plan (what would rerun and why) and write nothing."
)
@format_option(
    "text",
    "json",
    "markdown",
    help="--dry-run output; json has the steps of target/run_results.json.",
)
@click.option("-q", "--quiet", is_flag=True)
@handle_errors
def run(
    project_dir,
    target,
    vars_,
    debug,
    select,
    exclude,
    state_dir,
    full_refresh,
    refit,
    threads,
    device,
    dry_run,
    fmt,
    quiet,
):
    """Build models, texts, embeddings and segments; only what changed.

    \b
    Examples:
      segtool run
      segtool run -s +user_features          # a model and everything it needs
      segtool run --vars '{as_of: "2024-07-31"}' --refit
    """
    if fmt != "text" and not dry_run:
        # a run prints progress, not a document; ignoring the flag would leave a
        # script parsing log lines as JSON
        raise click.UsageError(
            f"--format {fmt} is for --dry-run; a run's results are in target/run_results.json"
        )
    project = load(project_dir, target, vars_)
    opts = dict(
        select=tuple(select),
        exclude=tuple(exclude),
        full_refresh=full_refresh,
        refit=refit,
        threads=threads,
        state_dir=state_dir,
        device=device,
    )
    if dry_run:
        from segtool.report.plan import format_plan

        # --vars values a project marks secret stay out of CI logs too
        click.echo(project.loaded.secrets.mask(format_plan(project.plan(**opts), fmt)))
        return
    rep = reporter(quiet)
    rep.line(
        f"segtool {__version__} · project {project.name} · target {project.loaded.target_name} · {project.relpath(project.loaded.database_path)}"
    )
    result = project.run(reporter=rep, **opts)
    from segtool.report.plan import run_summary

    rep.line(run_summary(result))


@click.command(name="test")
@project_options
@selection_options
@handle_errors
def test_(project_dir, target, vars_, debug, select, exclude, state_dir):
    """Run column tests and segmentation tests; exit 1 on failure."""
    project = load(project_dir, target, vars_)
    results = project.test(select, exclude, reporter(), state_dir=state_dir)
    failed = [r for r in results if r.status in ("fail", "error")]
    sys.exit(1 if failed else 0)


@click.command(name="ls")
@project_options
@selection_options
@click.option(
    "--output", type=click.Choice(["name", "id", "json", "path"]), default="id", show_default=True
)
@handle_errors
def ls_(project_dir, target, vars_, debug, select, exclude, state_dir, output):
    """List nodes, with the same selection syntax as run.

    \b
    Example:
      segtool ls -s +user_features
    """
    project = load(project_dir, target, vars_)
    for n in project.ls(select, exclude, state_dir):
        if output == "json":
            click.echo(json.dumps(n.to_manifest()))
        else:
            click.echo({"name": n.name, "id": n.unique_id, "path": n.path or ""}[output])


@click.command()
@project_options
@click.argument("text")
@click.option("--user", required=True, help="The key value of the user.")
@handle_errors
def render(project_dir, target, vars_, debug, text, user):
    """Print one user's rendered TEXT.

    \b
    Example:
      segtool render shopper_story --user 42
    """
    project = load(project_dir, target, vars_)
    click.echo(project.render(text, user))


@click.command()
@project_options
@click.option(
    "--cache", is_flag=True, help="Delete cached vectors that no current text and encoder use."
)
@click.option(
    "--orphans",
    is_flag=True,
    help="Drop the tables (and history) of models, texts and segmentations the project no "
    "longer defines.",
)
@handle_errors
def clean(project_dir, target, vars_, debug, cache, orphans):
    """Remove target/compiled, run, samples and report (the database stays);
    with --cache, only the cached vectors no current text and encoder use;
    with --orphans, only what the database holds for models, texts and
    segmentations no longer in the project."""
    if cache and orphans:
        raise click.UsageError("--cache and --orphans: one at a time")
    project = load(project_dir, target, vars_)
    if orphans:
        dropped = project.clean_orphans()
        for o in dropped:
            click.echo(f"dropped {o.kind} '{o.name}': {o.shown}")
        if not dropped:
            click.echo("nothing to drop: the database holds nothing the project no longer defines")
        return
    if cache:
        out = project.clean_cache()
        click.echo(f"removed {out['removed']:,} unused vectors from the embedding cache")
        for name, n, why in out["kept"]:
            click.echo(f"kept {n:,} vectors of encoder '{name}': it cannot be built now ({why})")
        return
    removed = project.clean_target()
    if removed:
        click.echo(f"removed target/{', '.join(removed)} (the database is kept)")
    else:
        click.echo("nothing to remove: no target/compiled, run, samples or report")


COMMANDS = (init, validate, compile_, run, test_, ls_, render, clean)
