"""The two sides of a project diff: git refs (extracted to a temporary
folder), folders, or the working tree, each loaded as a Project."""

from __future__ import annotations

import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtool.errors import ProjectError, ProjectErrors, did_you_mean
from segtool.project.loader import PROJECT_FILE


@dataclass
class Version:
    """One side of a project diff."""

    label: str  # what was asked for: "HEAD", "main", "../old", "working tree"
    kind: str  # git | folder | worktree
    root: Path  # the project folder (a temporary one for git refs)
    commit: str | None
    project: Any  # segtool.api.Project

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "kind": self.kind,
            "commit": self.commit,
            "path": None if self.kind == "git" else str(self.root),
        }


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", *args], cwd=str(cwd), capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ProjectError(
            "git is not installed",
            hint="install git, or compare two folders: segtool diff OLD_DIR NEW_DIR",
        ) from None


def git_toplevel(path: Path) -> Path:
    proc = _git(["rev-parse", "--show-toplevel"], path)
    if proc.returncode != 0:
        raise ProjectError(
            f"{path} is not inside a git repository, so git refs cannot be compared",
            hint="run `git init` and commit, or compare two folders: segtool diff OLD_DIR NEW_DIR",
        )
    return Path(proc.stdout.strip()).resolve()


def resolve_ref(top: Path, ref: str) -> str:
    proc = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], top)
    if proc.returncode != 0 or not proc.stdout.strip():
        refs = _git(
            [
                "for-each-ref",
                "--format=%(refname:short)",
                "refs/heads",
                "refs/tags",
                "refs/remotes",
            ],
            top,
        )
        names = [r for r in (refs.stdout or "").split() if r]
        hint = did_you_mean(ref, names) if names else None
        if hint is None:
            hint = "give a branch, tag or commit (e.g. main, HEAD~1), or a folder that exists"
        empty = _git(["rev-parse", "--verify", "--quiet", "HEAD"], top).returncode != 0
        if empty:
            hint = "the repository has no commits yet: commit the project first"
        raise ProjectError(f"unknown git ref '{ref}' (and no folder of that name)", hint=hint)
    return proc.stdout.strip()


def extract_ref(top: Path, commit: str, subdir: str, dest: Path, label: str) -> Path:
    """The project subtree at `commit`, extracted into `dest`. Returns the project folder."""
    inner = f"{subdir}/{PROJECT_FILE}" if subdir not in ("", ".") else PROJECT_FILE
    if _git(["cat-file", "-e", f"{commit}:{inner}"], top).returncode != 0:
        raise ProjectError(
            f"git ref '{label}' has no segtool project at {inner}",
            hint="the project did not exist at that commit (or lived elsewhere); pick another ref",
        )
    tree = commit if subdir in ("", ".") else f"{commit}:{subdir}"
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["git", "archive", "--format=tar", tree],
        cwd=str(top),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with tarfile.open(
            fileobj=proc.stdout, mode="r|"
        ) as tar:  # streamed: data files need not fit in memory
            try:
                tar.extractall(dest, filter="data")
            except TypeError:  # Python without extraction filters
                tar.extractall(dest)  # noqa: S202 - our own git archive
    except tarfile.TarError as exc:
        proc.kill()
        raise ProjectError(f"cannot extract git ref '{label}': {exc}") from None
    except OSError as exc:  # a full disk, no permission: git must not wait on a full pipe
        proc.kill()
        raise ProjectError(
            f"cannot extract git ref '{label}' into {dest}: {exc.strerror or exc}",
            hint="free space (or fix permissions) in the temporary folder, e.g. set TMPDIR",
        ) from None
    except BaseException:  # Ctrl-C: nothing reads git's output any more
        proc.kill()
        raise
    finally:
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        rc = proc.wait()
        if proc.stdout:
            proc.stdout.close()
    if rc != 0:
        raise ProjectError(
            f"cannot extract git ref '{label}': {(err.strip().splitlines() or [''])[-1]}"
        )
    return dest


def link_untracked(worktree: Path, dest: Path) -> None:
    """Files git does not have at that commit (data ignored by git, a local model
    folder) come from the working tree: each top-level entry missing from the
    extracted tree is linked to the working tree's. target/ stays out."""
    for entry in worktree.iterdir():
        if entry.name.startswith(".") or entry.name == "target":
            continue
        if not (dest / entry.name).exists():
            (dest / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def _load(
    load,
    root: Path,
    *,
    target: str | None,
    vars: dict | None,
    role: str,
    label: str,
    fallback_target: bool = False,
    linked_root: Path | None = None,
):
    def tag(exc: ProjectError) -> ProjectError:
        errs = exc.errors if isinstance(exc, ProjectErrors) else [exc]
        for e in errs:
            if not e.message.startswith(f"{role} ("):
                e.message = f"{role} ({label}): {e.message}"
        return exc

    try:
        try:
            project = load(root, target=target, vars=vars, linked_root=linked_root)
        except ProjectError as exc:
            if not (fallback_target and target and "target" in exc.message):
                raise
            project = load(root, vars=vars, linked_root=linked_root)
        if role == "HEAD":
            # what `run` checks first (binding, column tests): a tree run would
            # reject got a plan and exit 0 (a relationships test to a renamed
            # model). Its graph is the one graph() then reuses
            errors = project.validate(check_encoders=False, reuse_bind=True)
            if errors:
                raise ProjectErrors(errors)
        project.graph()
        return project
    except ProjectError as exc:
        raise tag(exc) from None


def open_version(
    arg: str | None,
    *,
    role: str,
    worktree: Path,
    tmp: Path,
    target: str | None,
    vars: dict | None,
    load,
) -> Version:
    """BASE or HEAD: None (the working tree), an existing folder, or a git ref.
    `load(root, target=..., vars=...)` loads a project (Project.load)."""
    fallback = role == "BASE"
    if arg is None:
        return Version(
            "working tree",
            "worktree",
            worktree,
            None,
            _load(
                load,
                worktree,
                target=target,
                vars=vars,
                role=role,
                label="working tree",
                fallback_target=fallback,
            ),
        )
    p = Path(arg)
    if p.is_dir():
        if not (p / PROJECT_FILE).is_file():
            raise ProjectError(
                f"folder {arg} is not a segtool project (no {PROJECT_FILE} in it)",
                hint="give the project's root folder, or a git ref",
            )
        root = p.resolve()
        kind = "worktree" if root == worktree else "folder"
        return Version(
            arg,
            kind,
            root,
            None,
            _load(
                load, root, target=target, vars=vars, role=role, label=arg, fallback_target=fallback
            ),
        )
    top = git_toplevel(worktree)
    commit = resolve_ref(top, arg)
    try:
        subdir = worktree.resolve().relative_to(top).as_posix()
    except ValueError:
        raise ProjectError(
            f"the project {worktree} is not inside the git repository {top}"
        ) from None
    dest = extract_ref(top, commit, subdir, tmp / role.lower(), arg)
    link_untracked(worktree, dest)
    project = _load(
        load,
        dest,
        target=target,
        vars=vars,
        role=role,
        label=arg,
        fallback_target=fallback,
        linked_root=worktree.resolve(),
    )
    return Version(arg, "git", dest, commit, project)
