"""`segtool diff [BASE] [HEAD]`: what changing the project does.

Two parts, both from the one plan:

* changes: node by node, what was added, removed, changed or renamed
  (diff/changes.py);
* steps: the plan of HEAD against the state BASE would have left had it been
  run (plan/state.py BaseState), so an edit shows exactly as it affects a run:
  a template edit re-renders, an encoder edit re-embeds and refits, a changed
  `device:` does nothing. With the target's database, the plan also counts
  the users and texts each step touches (a dry run of HEAD over it).
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from segtool.diff.changes import compare_projects
from segtool.diff.versions import open_version
from segtool.errors import SegtoolError
from segtool.plan.model import SCHEMA_VERSION
from segtool.project import reach


def _base_state(base_project):
    from segtool.compile.segments import fit_hash
    from segtool.plan.state import BaseState

    graph = base_project.graph().graph
    loaded = base_project.loaded

    def settings(enc: str) -> str:  # encoders by their settings: BASE's model folders may be absent
        return graph[f"encoder.{enc}"].own_hash

    fits = {
        name: fit_hash(loaded, settings, seg)
        for name, seg in loaded.segmentations.items()
        if not seg.is_rules
    }
    return BaseState(base_project, fits, {settings(e) for e in loaded.encoders})


def _database(head, worktree: Path) -> Path:
    db = Path(head.project.loaded.target.database)
    if db.is_absolute():
        return db
    return (worktree if head.kind == "git" else head.root) / db


def plan_head(base, head, worktree: Path, *, counts: bool):
    """(plan steps, database info) of HEAD against BASE's state."""
    from segtool.execute.context import RunOptions
    from segtool.execute.runner import Runner
    from segtool.state.db import connect, has_state

    state = _base_state(base.project)
    runner = Runner(head.project, RunOptions())
    database = {"path": None, "used": False, "last_run": None, "note": None}
    if not counts:
        database["note"] = "--no-counts"
        return runner.plan_against(state, data_aware=False), database
    db = _database(head, worktree)
    database["path"] = str(db)
    if not db.exists():
        database["note"] = f"no database at {db}: no user counts (run `segtool run` to get them)"
        return runner.plan_against(state, data_aware=False), database
    try:
        # HEAD's profiles.yml (a pull request's) names it: not any database on the machine
        reach.check_reach(
            [*head.project.loaded.roots, head.root], db, "the database", keep="the database"
        )
        con = connect(head.project.loaded, read_only=True, database=db)
    except SegtoolError as exc:
        database["note"] = f"no user counts: {exc.message.splitlines()[0]}"
        return runner.plan_against(state, data_aware=False), database
    try:
        if not has_state(con):
            database["note"] = f"{db} has no segtool state yet: no user counts"
            return runner.plan_against(state, data_aware=False), database
        try:
            plan = runner.plan_against(state, data_aware=False, con=con)
        except SegtoolError as exc:
            database["note"] = f"no user counts: {exc.message.splitlines()[0]}"
            return runner.plan_against(state, data_aware=False), database
        from segtool.plan.state import DbState

        database.update(used=True, last_run=DbState(con).last_run)
        if plan.warnings or plan.notes:
            database["note"] = "; ".join([*plan.warnings, *plan.notes])
        return plan, database
    finally:
        con.close()


def _forces(change: dict, steps: list, graph) -> list[dict]:
    """The non-skip steps a change leads to: its own and its descendants'."""
    uid = change["unique_id"]
    if uid not in graph or change["change"] == "metadata only":
        return []  # a metadata edit forces nothing (other edits may force steps below it)
    reach = {uid} | graph.descendants(uid)
    return [
        {"unique_id": s.unique_id, "action": s.action}
        for s in steps
        if s.unique_id in reach and s.action != "skip"
    ]


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _summary(changes: list[dict], steps: list, counted: bool) -> dict:
    n = {
        c: sum(1 for x in changes if x["change"] == c)
        for c in ("added", "removed", "changed", "metadata only")
    }

    def total(kind: str, key: str) -> int | None:
        vals = [s.detail.get(key) for s in steps if s.kind == kind and s.action != "skip"]
        if not counted or any(v is None for v in vals):
            return None
        return int(sum(vals))

    def with_action(kind: str, *actions: str) -> int:
        return sum(1 for s in steps if s.kind == kind and s.action in actions)

    return {
        "added": n["added"],
        "removed": n["removed"],
        "changed": n["changed"],
        "metadata_only": n["metadata only"],
        "renamed": sum(1 for x in changes if x["renamed_from"]),
        "nodes_changed": n["added"] + n["removed"] + n["changed"],
        "refits": with_action("segmentation", "refit", "create"),
        "rebuilds": with_action("model", "create", "rebuild", "incremental"),
        "re_render": with_action("text", "create", "rebuild", "incremental"),
        "re_embed": with_action("embedding", "create", "incremental"),
        "reassign": with_action("segmentation", "assign"),
        "texts_to_render": _add(total("text", "new"), total("text", "changed")),
        "texts_to_embed": total("embedding", "embedded"),
        "users_to_reassign": total("segmentation", "assigned"),
    }


def project_diff(
    base_arg: str | None = "HEAD",
    head_arg: str | None = None,
    *,
    project_dir: str | Path | None = None,
    target: str | None = None,
    vars: dict | None = None,
    counts: bool = True,
    load=None,
) -> dict:
    """Compare two versions of the project. BASE/HEAD: a git ref, a folder, or
    None for the working tree (the project at `project_dir` or the current folder).
    `load` loads a project folder (segtool.Project.load)."""
    from segtool.project.loader import find_project_root

    worktree = find_project_root(Path(project_dir or "."))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segtool-diff-")))
        opts = dict(worktree=worktree, tmp=tmp, target=target, vars=vars, load=load)
        base = open_version(base_arg, role="BASE", **opts)
        head = open_version(head_arg, role="HEAD", **opts)
        changes = compare_projects(base.project, head.project)
        plan, database = plan_head(base, head, worktree, counts=counts)
        graph = head.project.graph().graph
        steps = list(plan.steps)
        for c in changes:
            c["forces"] = _forces(c, steps, graph)
        result = {
            "schema_version": SCHEMA_VERSION,
            "kind": "project_diff",
            "project": head.project.name,
            "base": base.to_dict(),
            "head": head.to_dict(),
            "database": database,
            "summary": _summary(changes, steps, counted=database["used"]),
            "changes": changes,
            "steps": [s.to_dict() for s in steps if s.action != "skip"],
        }
        return _masked(result, base.project.loaded, head.project.loaded)


def _masked(result: dict, *versions) -> dict:
    """`result` with the values of either version's `secret_vars` (and any
    env_var() value read) masked: the diff goes to CI logs and pull-request
    comments (it printed `vars.api_key: old -> new` in clear). A change to a
    secret var reads `changed (secret)`, however short its values."""
    import re

    from segtool.project.secrets import MASK, Secrets

    names = sorted({n for v in versions for n in v.spec.secret_vars})
    secrets = Secrets()
    for v in versions:
        secrets.values |= v.secrets.values
    if names:
        secret_detail = re.compile(
            rf"^((?:\S+\.)?vars(?:_used)?\.(?:{'|'.join(map(re.escape, names))})): .*$"
        )
        for c in result["changes"]:
            c["details"] = [
                secret_detail.sub(rf"\1: changed (secret: {MASK})", d) for d in c["details"]
            ]
    return secrets.mask_obj(result)
