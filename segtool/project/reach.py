"""What project SQL may read, decided outside the project.

A pull request can change every file of a project, and CI runs `segtool
validate` on it; binding a model reads the files its sources name (the header
row becomes column names, which bind errors quote). So the files a project
declares (sources, attached databases, `allow_paths`) must lie in the project
folder, outside its hidden entries (`.git`, whose config can hold a CI token;
`.env`), or in a folder listed in `SEGTOOL_DATA_DIRS` where segtool runs; and
`external_access: true` needs `SEGTOOL_EXTERNAL_ACCESS=1` there. Paths are
compared after symlinks are resolved (a symlink in `data/` is where it leads).
docs/security.md, "The fence". The same goes for the Ray cluster a target's
executor joins (`SEGTOOL_RAY_ADDRESSES`) and the models whose own code an
encoder's `trust_remote_code: true` would run (`SEGTOOL_TRUST_REMOTE_CODE`)."""

from __future__ import annotations

import os
from pathlib import Path

from segtool.errors import ProjectError

DATA_DIRS = "SEGTOOL_DATA_DIRS"  # more folders project SQL may read (os.pathsep-separated)
EXTERNAL_ACCESS = (
    "SEGTOOL_EXTERNAL_ACCESS"  # "1": a target's external_access may turn the fence off
)
# the Ray cluster addresses a target's executor may name (comma-separated)
RAY_ADDRESSES = "SEGTOOL_RAY_ADDRESSES"
# the models (as `model:` names them, comma-separated) whose own code may run
TRUST_REMOTE_CODE = "SEGTOOL_TRUST_REMOTE_CODE"
# addresses that name no host: what they reach is the machine's own business
_MACHINE_RAY_ADDRESSES = {"auto", "local"}
_OUTSIDE_THE_PROJECT = "not in a project file: a pull request could change it"


def data_dirs() -> list[Path]:
    """The folders the environment lets project SQL read besides the project."""
    return [
        Path(d).expanduser().resolve()
        for d in os.environ.get(DATA_DIRS, "").split(os.pathsep)
        if d.strip()
    ]


def within_reach(roots: list[Path], path: Path, extra: list[Path]) -> bool:
    """Whether resolved `path` lies in one of the resolved project `roots` (not
    under a hidden entry: that rule holds even where a data folder contains
    the project) or in one of the data folders `extra`."""
    for root in roots:
        if path.is_relative_to(root):
            rel = path.relative_to(root).parts
            return not (rel and rel[0].startswith("."))
    return any(path == d or path.is_relative_to(d) for d in extra)


def check_reach(
    roots: list[Path],
    path: Path,
    what: str,
    *,
    file=None,
    line=None,
    code: bool = False,
    keep: str | None = None,
) -> Path:
    """`path` resolved, or a ProjectError saying why it may not be read.
    `roots`: the project folder (and the one its entries link to, in `diff`);
    `code`: a project file (a model, a template), which only they may hold;
    `keep`: what the hint says to keep in the project folder."""
    resolved = path.resolve()
    roots = [r.resolve() for r in roots]
    if within_reach(roots, resolved, [] if code else data_dirs()):
        return resolved
    keep = keep or ("the project's files" if code else "data")
    link = resolved != path.absolute()
    leads = f" (it leads to {resolved})" if link else ""
    if any(resolved.is_relative_to(r) for r in roots):
        where = "in a hidden entry of the project folder"
        hint = f"hidden entries (.git, .env) are never read: keep {keep} in a visible folder"
    else:
        where = "outside the project folder"
        hint = f"keep {keep} in the project folder"
        if not code:
            # a link that leads out is what an attack looks like: no folder to allow
            folder = resolved if resolved.is_dir() else resolved.parent
            allow = f"list its folder in {DATA_DIRS}" if link else f"`export {DATA_DIRS}={folder}`"
            hint += f", or {allow} where segtool runs ({_OUTSIDE_THE_PROJECT})"
    raise ProjectError(f"{what} {path}{leads} lies {where}", hint=hint, path=file, line=line)


def check_data(roots: list[Path], path: Path, what: str, *, file=None, line=None) -> Path:
    """check_reach for data the project declares (a source, a glob's folder,
    `allow_paths`), which may not be the project folder itself nor a file at
    its top: `path: "dat[a]/users.csv"` opened the root (its `.env`, its
    `gha-creds-*.json`) to every model, and a source could name either file."""
    resolved = check_reach(roots, path, what, file=file, line=line)
    for root in (r.resolve() for r in roots):
        if resolved == root or (resolved.parent == root and not resolved.is_dir()):
            where = (
                "the project folder itself" if resolved == root else "a file at the project's top"
            )
            raise ProjectError(
                f"{what} {path} is {where}",
                hint="keep data in a folder of the project (data/): the files at its top (.env, "
                "the credentials a CI login step writes there) are never read",
                path=file,
                line=line,
            )
    return resolved


def check_target(roots: list[Path], target: Path) -> Path:
    """`target` (the folder segtool writes its artifacts and, by default, the
    database to), when as it resolves it lies within reach. A pull request can
    commit `target` as a symlink, and `compile` (safe on a pull request) would
    write its manifest and compiled SQL wherever it leads."""
    check_reach(roots, target, "target folder", keep="target/")
    return target


def check_inside(folder: Path, path: Path) -> Path:
    """`path` (a file segtool writes under `folder`), when no symlink inside
    the folder leads it out (a committed `target/compiled` -> elsewhere)."""
    resolved = path.resolve()
    if resolved.is_relative_to(folder.resolve()):
        return path
    raise ProjectError(
        f"{path} leads to {resolved}, outside {folder}",
        hint=f"segtool writes only inside {folder}: remove the symlink",
    )


def project_folders(roots: list[Path]) -> list[str]:
    """The folders of the project folder that project SQL may read: its
    top-level folders but the hidden ones, each as it resolves, when that is
    still within reach (a symlinked `data/` that leads elsewhere is not).
    Not its top-level files: CI steps drop credentials there
    (google-github-actions/auth writes gha-creds-*.json into the workspace)."""
    roots = [r.resolve() for r in roots]
    extra = data_dirs()
    dirs: list[str] = []
    for entry in roots[0].iterdir():
        if entry.name.startswith("."):
            continue
        resolved = entry.resolve()
        # a link to the project folder (`self -> .`) or above it would open
        # the folder itself: its hidden entries and the files at its top
        if any(resolved == r or resolved in r.parents for r in roots):
            continue
        if resolved.is_dir() and within_reach(roots, resolved, extra):
            dirs.append(str(resolved).rstrip("/") + "/")
    return dirs


def confirm_external_access(target_name: str) -> None:
    """A target's `external_access: true` turns the fence off only when the
    environment agrees."""
    if os.environ.get(EXTERNAL_ACCESS) != "1":
        raise ProjectError(
            f"target '{target_name}' sets external_access: true (no SQL fence), which the "
            f"environment must confirm",
            hint=f"`export {EXTERNAL_ACCESS}=1` where segtool runs ({_OUTSIDE_THE_PROJECT})",
            path="profiles.yml",
        )


def confirm_ray_address(address: str | None, target_name: str | None = None) -> None:
    """A cluster address written in profiles.yml is joined only when the
    environment lists it: a pull request pointing the executor at its own
    cluster would be sent every text, and Ray Client unpickles what the
    cluster sends back. RAY_ADDRESS, set by the environment itself, needs no
    confirmation."""
    if address is None or address.strip() in _MACHINE_RAY_ADDRESSES:
        return
    if address.strip() in _listed(RAY_ADDRESSES):
        return
    which = f"target '{target_name}'" if target_name else "the target"
    raise ProjectError(
        f"{which} joins the Ray cluster at {address}, which the environment must confirm",
        hint=f"`export {RAY_ADDRESSES}={address.strip()}` where segtool runs "
        f"({_OUTSIDE_THE_PROJECT}), or leave `address` unset and set RAY_ADDRESS there",
        path="profiles.yml",
    )


def _listed(variable: str) -> set[str]:
    return {a.strip() for a in os.environ.get(variable, "").split(",") if a.strip()}


def remote_code_refused(model: str | None) -> tuple[str, str] | None:
    """(problem, hint) when an encoder's `trust_remote_code: true` names a
    model the environment does not list: that flag runs Python shipped with
    the model, and a pull request can set it beside a model folder of its own."""
    model = (model or "").strip()
    if model in _listed(TRUST_REMOTE_CODE):
        return None
    return (
        f"trust_remote_code: true would run the code of model '{model}', which the "
        "environment must confirm",
        f"`export {TRUST_REMOTE_CODE}={model}` where segtool runs ({_OUTSIDE_THE_PROJECT}), "
        "if you trust that code",
    )
