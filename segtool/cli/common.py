"""What every command shares: the error handler, the project and selection
options, loading the project, and the reporter."""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import click

from segtool.errors import SegtoolError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _debug_requested() -> bool:
    return "--debug" in sys.argv


def _internal_error(exc: Exception, kwargs: dict) -> NoReturn:
    if kwargs.get("debug") or _debug_requested():
        traceback.print_exc()
    from segtool.project.secrets import mask_read

    click.echo(
        mask_read(
            f"internal error: {type(exc).__name__}: {exc}\n  (run with --debug for the traceback)"
        ),
        err=True,
    )
    sys.exit(2)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (a test runner's buffer)
        return False


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner's buffer)
        pass


def examples_option(help: str):
    """`--examples N` (N >= 0: a negative LIMIT was an internal error)."""
    return click.option(
        "--examples", default=3, show_default=True, type=click.IntRange(0, 1000), help=help
    )


def _interrupted():
    click.echo(
        "interrupted: results written before the interrupt are kept; run again to continue",
        err=True,
    )
    sys.exit(130)


def handle_errors(fn):
    """The one place errors become `path:line:col: message` and an exit code
    (0 ok, 1 user error, 2 failure, 141 the output's reader left); tracebacks
    only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from segtool.project.secrets import forget_read

        forget_read()  # mask what this command read, not an earlier one's values
        try:
            return fn(*args, **kwargs)
        except SegtoolError as exc:
            if kwargs.get("debug") or _debug_requested():
                traceback.print_exc()
            from segtool.project.secrets import masked
            from segtool.report.console import error_text, paint, use_color

            text = error_text(masked(exc))
            first, _, rest = text.partition("\n")
            click.echo(  # click strips colour off a pipe unless told, so tell it
                paint(first, "bold red", sys.stderr) + (f"\n{rest}" if rest else ""),
                err=True,
                color=use_color(sys.stderr),
            )
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _interrupted()
        except (click.exceptions.Exit, click.ClickException):
            raise  # click prints a usage error its own way (exit 2)
        except BrokenPipeError as exc:
            if not _stdout_gone():  # another pipe (a worker's): a failure like any
                _internal_error(exc, kwargs)
            # the reader left (`segtool ls | head -1`): stop quietly, as a tool
            # killed by SIGPIPE does (exit 141); a run's open stage rolled back.
            # Later writes (the final flush) go nowhere instead of failing again.
            _silence_stdout()
            sys.exit(141)
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors are turned into exit 2
            from segtool.errors import is_interrupt

            if is_interrupt(exc):  # Ctrl-C inside a query: DuckDB's own error for it
                _interrupted()
            _internal_error(exc, kwargs)

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


def format_option(*choices: str, help: str | None = None):
    """--format, as every command that prints something spells it."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=choices[0],
        show_default=True,
        help=help,
    )


def load(project_dir, target, vars_, strict=True):
    from segtool.api import Project
    from segtool.project.loader import parse_vars

    cli_vars = parse_vars(vars_)
    project = Project.load(project_dir, target=target, vars=cli_vars, strict=strict)
    warn_unread_vars(project.loaded, cli_vars)
    warn_ignored_options(project.loaded)
    return project


def warn_ignored_options(loaded) -> None:
    """An option the chosen method never reads (`min_cluster_size` with
    kmeans) is a setting the user believes in and segtool ignores: say so
    (a warning, not an error: files that ran before still run)."""
    from segtool.report.console import paint

    for seg in loaded.segmentations.values():
        for why in seg.cluster.ignored() if seg.cluster is not None else ():
            click.echo(
                paint("warning: ", "yellow", sys.stderr)
                + f"{seg.file}:{seg.line}: segmentation '{seg.name}': {why}",
                err=True,
            )


def warn_unread_vars(loaded, cli_vars: dict) -> None:
    """A --vars key the project neither declares nor reads is most likely a
    typo: `--vars '{as_off: ...}'` ran silently as of the declared as_of."""
    from segtool.compile.sql import unread_vars

    warn_vars(unread_vars(loaded, cli_vars), loaded.spec.vars)


def warn_vars(names, declared) -> None:
    import difflib

    from segtool.report.console import paint

    for name in names:
        near = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.5)
        click.echo(
            paint("warning: ", "yellow", sys.stderr)
            + f"--vars sets '{name}', which the project neither declares under `vars:` nor reads with var()"
            + (f" (did you mean '{near[0]}'?)" if near else ""),
            err=True,
        )


def reporter(quiet: bool = False):
    from segtool.report.console import Reporter

    return Reporter(quiet=quiet)
