"""The command line: thin. Each command parses flags, calls `segtool.Project`,
and prints through report/. One handler turns errors into
`path:line:col: message` and an exit code (0 ok, 1 user error, 2 failure)."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

from segtool import __version__
from segtool.errors import ProjectError, ProjectErrors, SegtoolError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _debug_requested() -> bool:
    return "--debug" in sys.argv


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SegtoolError as exc:
            if kwargs.get("debug") or _debug_requested():
                traceback.print_exc()
            click.echo(f"error: {exc.format()}" if not exc.location() else exc.format(), err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                "interrupted: results written before the interrupt are kept; run again to continue",
                err=True,
            )
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors are turned into exit 2
            if kwargs.get("debug") or _debug_requested():
                traceback.print_exc()
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n  (run with --debug for the traceback)",
                err=True,
            )
            sys.exit(2)

    return wrapper


def project_options(fn):
    fn = click.option("--debug", is_flag=True, help="Show tracebacks.")(fn)
    fn = click.option(
        "--vars", "vars_", metavar="YAML", help="Override vars: '{as_of: \"2024-02-01\"}'."
    )(fn)
    fn = click.option("--target", "-t", metavar="NAME", help="Target from profiles.yml.")(fn)
    fn = click.option(
        "--project-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Project folder (default: the current folder or a parent).",
    )(fn)
    return fn


def selection_options(fn):
    fn = click.option(
        "--state", "state_dir", metavar="DIR", help="target/ of an earlier run, for state:modified."
    )(fn)
    fn = click.option("--exclude", multiple=True, metavar="SELECTOR", help="Nodes to leave out.")(
        fn
    )
    fn = click.option(
        "-s",
        "--select",
        multiple=True,
        metavar="SELECTOR",
        help="Nodes to include: name, +name, name+, tag:x, path:p, state:modified.",
    )(fn)
    return fn


def load(project_dir, target, vars_, strict=True):
    from segtool.api import Project
    from segtool.project.loader import parse_vars

    return Project.load(project_dir, target=target, vars=parse_vars(vars_), strict=strict)


def reporter(quiet: bool = False):
    from segtool.report.console import Reporter

    return Reporter(quiet=quiet)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="segtool")
def main():
    """segtool: dbt for user segments.

    \b
    SQL models -> per-user features and texts -> embeddings -> segments, in DuckDB.
    Start with:  segtool init shop && cd shop && segtool run
    """


@main.command()
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


@main.command()
@project_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
)
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
    from segtool.report.formats import format_validation

    # text errors go to stderr like every other command's; json/github are the output itself
    click.echo(format_validation(errors, fmt, n_nodes), err=bool(errors) and fmt == "text")
    sys.exit(1 if errors else 0)


@main.command(name="compile")
@project_options
@selection_options
@click.option("--samples", default=3, show_default=True, help="Rendered sample texts per text.")
@handle_errors
def compile_(project_dir, target, vars_, debug, select, exclude, state_dir, samples):
    """Write compiled SQL, sample texts and target/manifest.json."""
    project = load(project_dir, target, vars_)
    man = project.compile(select, exclude, samples=samples, state_dir=state_dir)
    click.echo(
        f"compiled {len(man['nodes'])} nodes -> {project.relpath(project.target_dir)}/ (manifest.json, compiled/, samples/)"
    )
    for note in man["_notes"]:
        click.echo(f"note: {note}")


@main.command()
@project_options
@selection_options
@click.option(
    "--full-refresh", is_flag=True, help="Rebuild incremental models and re-render every text."
)
@click.option("--refit", is_flag=True, help="Refit every selected segmentation on all users.")
@click.option(
    "--threads", type=click.IntRange(min=1), help="DuckDB threads (default: the target's)."
)
@click.option("--device", help="Encoder device override: cpu, cuda, cuda:1, mps.")
@click.option(
    "--dry-run", is_flag=True, help="Show the plan (what would rerun and why) and write nothing."
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
    quiet,
):
    """Build models, texts, embeddings and segments; only what changed.

    \b
    Examples:
      segtool run
      segtool run -s +user_features          # a model and everything it needs
      segtool run --vars '{as_of: "2024-07-31"}' --refit
    """
    project = load(project_dir, target, vars_)
    rep = reporter(quiet)
    if dry_run:
        from segtool.plan import format_plan, make_plan

        plan = make_plan(
            project, select, exclude, full_refresh=full_refresh, refit=refit, state_dir=state_dir
        )
        click.echo(format_plan(plan, "text"))
        return
    rep.line(
        f"segtool {__version__} · project {project.name} · target {project.loaded.target_name} · {project.relpath(project.loaded.database_path)}"
    )
    result = project.run(
        reporter=rep,
        select=tuple(select),
        exclude=tuple(exclude),
        full_refresh=full_refresh,
        refit=refit,
        threads=threads,
        state_dir=state_dir,
        device=device,
    )
    from segtool.report.formats import run_summary

    rep.line(run_summary(result))


@main.command(name="test")
@project_options
@selection_options
@handle_errors
def test_(project_dir, target, vars_, debug, select, exclude, state_dir):
    """Run column tests and segmentation tests; exit 1 on failure."""
    project = load(project_dir, target, vars_)
    results = project.test(select, exclude, reporter(), state_dir=state_dir)
    failed = [r for r in results if r.status in ("fail", "error")]
    sys.exit(1 if failed else 0)


@main.command(name="ls")
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


@main.command()
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
    from segtool.execute.render import render_one

    project = load(project_dir, target, vars_)
    click.echo(render_one(project, text, user))


@main.command()
@project_options
@click.option(
    "--cache", is_flag=True, help="Delete cached vectors that no current text and encoder use."
)
@handle_errors
def clean(project_dir, target, vars_, debug, cache):
    """Remove target/ artifacts (and, with --cache, unused embedding vectors)."""
    import shutil

    project = load(project_dir, target, vars_)
    if cache:
        from segtool.execute.embed import clean_cache

        out = clean_cache(project)
        click.echo(f"removed {out['removed']:,} unused vectors from the embedding cache")
        for name, n, why in out["kept"]:
            click.echo(f"kept {n:,} vectors of encoder '{name}': it cannot be built now ({why})")
        return
    for sub in ("compiled", "run", "samples", "report"):
        shutil.rmtree(project.target_dir / sub, ignore_errors=True)
    click.echo("removed target/compiled, run, samples, report (the database is kept)")


def _register_optional():
    """Commands whose modules arrive with their stage."""
    from segtool import cli_diff, cli_segments

    cli_segments.register(main)
    cli_diff.register(main)


_register_optional()
