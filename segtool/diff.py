"""`segtool diff`: what a change to the project forces, and how segments moved.

Two comparisons:

* project diff (`segtool diff [BASE] [HEAD]`): two versions of the project (git
  refs or folders; default BASE=HEAD, HEAD=the working tree) are loaded, their
  graphs compared node by node (added / removed / changed / metadata only, with
  likely renames), and each change is followed through HEAD's graph to what it
  forces: re-render, re-embed, reassign, refit, relabel, rebuild. Where HEAD's
  database exists, `segtool.plan` estimates how many users and texts that touches.
* data diff (`segtool diff --data`): segment assignments of two runs of one
  database (reconstructed from the history tables) or of two databases: sizes,
  transition matrix, users entering and leaving, share moved, ARI and NMI, and
  example users who moved, with their texts.

Both return plain dicts (the JSON documented in docs/ci.md) that `format_diff`
renders as text, JSON or Markdown. Nothing here writes to a database or to the
project; git refs are extracted into a temporary folder that is removed after.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tarfile
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from segtool.compile.sql import quote_ident
from segtool.errors import DataError, ProjectError, ProjectErrors, SegtoolError, did_you_mean
from segtool.graph.dag import sha
from segtool.plan import ACTIONS, SCHEMA_VERSION
from segtool.project.loader import PROJECT_FILE, dumps

# ============================================================================ versions


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
    finally:
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0:
        raise ProjectError(
            f"cannot extract git ref '{label}': {(err.strip().splitlines() or [''])[-1]}"
        )
    return dest


def _load(
    root: Path,
    *,
    target: str | None,
    vars: dict | None,
    role: str,
    label: str,
    fallback_target: bool = False,
):
    from segtool.api import Project

    def tag(exc: ProjectError) -> ProjectError:
        errs = exc.errors if isinstance(exc, ProjectErrors) else [exc]
        for e in errs:
            if not e.message.startswith(f"{role} ("):
                e.message = f"{role} ({label}): {e.message}"
        return exc

    try:
        try:
            project = Project.load(root, target=target, vars=vars)
        except ProjectError as exc:
            if not (fallback_target and target and "target" in exc.message):
                raise
            project = Project.load(root, vars=vars)
        project.graph()
        return project
    except ProjectError as exc:
        raise tag(exc) from None


def open_version(
    arg: str | None, *, role: str, worktree: Path, tmp: Path, target: str | None, vars: dict | None
) -> Version:
    """BASE or HEAD: None (the working tree), an existing folder, or a git ref."""
    fallback = role == "BASE"
    if arg is None:
        return Version(
            "working tree",
            "worktree",
            worktree,
            None,
            _load(
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
            _load(root, target=target, vars=vars, role=role, label=arg, fallback_target=fallback),
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
    return Version(
        arg,
        "git",
        dest,
        commit,
        _load(dest, target=target, vars=vars, role=role, label=arg, fallback_target=fallback),
    )


# ============================================================================ project diff


def _field_changes(old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if old.get(k) == new.get(k):
                continue
            if k == "templates" and isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
                o, n = old[k], new[k]
                names = sorted(t for t in set(o) | set(n) if o.get(t) != n.get(t))
                out.append("template " + ", ".join(names))
            else:
                out.append({"sql": "SQL"}.get(k, k))
        return out
    return [] if old == new else ["definition"]


def _short(v: Any, limit: int = 60) -> str:
    text = json.dumps(v, default=str, sort_keys=True) if not isinstance(v, str) else repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_details(old: Any, new: Any) -> list[str]:
    """Readable before -> after lines for a reviewer: `cluster.k: 6 -> 5`,
    `template story.j2: +2 -1 lines`."""
    import difflib

    if not (isinstance(old, dict) and isinstance(new, dict)):
        return []
    out = []
    for k in sorted(set(old) | set(new)):
        o, n = old.get(k), new.get(k)
        if o == n:
            continue
        if k == "templates" and isinstance(o, dict) and isinstance(n, dict):
            for t in sorted(set(o) | set(n)):
                if o.get(t) == n.get(t):
                    continue
                if t not in o or t not in n:
                    out.append(f"template {t}: {'added' if t in n else 'removed'}")
                    continue
                lines = list(
                    difflib.unified_diff(o[t].splitlines(), n[t].splitlines(), lineterm="", n=0)
                )
                plus = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
                minus = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
                out.append(f"template {t}: +{plus} -{minus} lines")
        elif k == "sql" and isinstance(o, str) and isinstance(n, str):
            lines = list(difflib.unified_diff(o.splitlines(), n.splitlines(), lineterm="", n=0))
            plus = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
            minus = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
            out.append(f"SQL: +{plus} -{minus} lines")
        elif isinstance(o, dict) and isinstance(n, dict):
            for sk in sorted(set(o) | set(n)):
                if o.get(sk) != n.get(sk):
                    out.append(f"{k}.{sk}: {_short(o.get(sk))} -> {_short(n.get(sk))}")
        else:
            out.append(f"{k}: {_short(o)} -> {_short(n)}")
    return out


def _meta_changes(b, h) -> list[str]:
    out = []
    if b.description != h.description:
        out.append("description")
    if sorted(b.tags) != sorted(h.tags):
        out.append("tags")
    bm, hm = b.meta, h.meta
    if bm != hm:
        if isinstance(bm, dict) and isinstance(hm, dict):
            out += [k for k in sorted(set(bm) | set(hm)) if bm.get(k) != hm.get(k)]
        else:
            out.append("properties")
    return out


def _rename_key(node, renames: dict[str, str]) -> str:
    data = node.data
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "name"}
        if node.kind == "embedding":
            data = {
                "text": renames.get(f"text.{data['text']}", f"text.{data['text']}"),
                "encoder": renames.get(f"encoder.{data['encoder']}", f"encoder.{data['encoder']}"),
            }
    return sha(dumps({"kind": node.kind, "data": data}))


def _detect_renames(bg, hg, removed: list[str], added: list[str]) -> dict[str, str]:
    """added uid -> removed uid, for nodes whose definition is the same but for the name.
    Embeddings are matched after texts and encoders, so a renamed text carries its
    embedding along."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for phase in (
        ("source", "model", "text", "encoder", "features", "segmentation"),
        ("embedding",),
    ):
        back = {r: a for a, r in out.items()}  # removed uid -> added uid
        pool: dict[str, list[str]] = {}
        for r in removed:
            if bg[r].kind in phase and r not in taken:
                pool.setdefault(_rename_key(bg[r], back), []).append(r)
        for a in added:
            if hg[a].kind in phase and a not in out:
                cands = [
                    c
                    for c in pool.get(_rename_key(hg[a], {}), [])
                    if c not in taken and bg[c].kind == hg[a].kind
                ]
                if cands:
                    out[a] = cands[0]
                    taken.add(cands[0])
    return out


class _Impacts:
    def __init__(self, graph):
        self.graph = graph
        self.by_uid: dict[str, dict] = {}

    def add(self, uid: str, action: str, reason: str, cause: str) -> dict:
        n = self.graph[uid]
        imp = self.by_uid.setdefault(
            uid,
            {
                "unique_id": uid,
                "kind": n.kind,
                "name": n.name,
                "action": action,
                "actions": [],
                "reasons": [],
                "caused_by": [],
                "counts": None,
                "planned": None,
                "_ranked": [],
            },
        )
        if (action, reason) not in imp["_ranked"]:
            imp["_ranked"].append((action, reason))
            imp["_ranked"].sort(key=lambda ar: ACTIONS.index(ar[0]))
        imp["actions"] = list(dict.fromkeys(a for a, _ in imp["_ranked"]))
        imp["reasons"] = list(dict.fromkeys(r for _, r in imp["_ranked"]))
        if cause not in imp["caused_by"]:
            imp["caused_by"].append(cause)
        imp["action"] = imp["actions"][0]
        return {"unique_id": uid, "action": action, "reason": reason}

    def ordered(self) -> list[dict]:
        out = [self.by_uid[u] for u in self.graph.order() if u in self.by_uid]
        for imp in out:
            imp.pop("_ranked", None)
        return out


def _data_effects(imp: _Impacts, graph, start: str, cause: str, what: str) -> list[dict]:
    """What a change of the data flowing out of `start` forces downstream."""
    out = []
    order = graph.order()
    desc = graph.descendants(start)
    for d in (u for u in order if u in desc):
        n = graph[d]
        if n.kind == "model":
            out.append(imp.add(d, "rebuild", f"{what}: rebuilt with the new upstream", cause))
        elif n.kind == "text":
            out.append(imp.add(d, "re-render", f"{what}: every user is re-rendered", cause))
        elif n.kind == "embedding":
            out.append(
                imp.add(d, "re-embed", f"{what}: only texts that change are re-embedded", cause)
            )
        elif n.kind == "segmentation":
            reason = (
                f"{what}: rules re-evaluated for every user"
                if n.spec.is_rules
                else f"{what}: users whose inputs change are reassigned with the stored model"
            )
            out.append(imp.add(d, "reassign", reason, cause))
    return out


def _effects(imp: _Impacts, hg, uid: str, fields: list[str]) -> list[dict]:
    """What a changed node (own definition) forces in HEAD's graph."""
    n = hg[uid]
    out: list[dict] = []
    if n.kind == "source":
        out += _data_effects(imp, hg, uid, uid, f"source {n.name} changed")
    elif n.kind == "model":
        out.append(imp.add(uid, "rebuild", "SQL or config changed", uid))
        out += _data_effects(imp, hg, uid, uid, f"model {n.name} changed")
    elif n.kind == "text":
        what = ", ".join(fields) or "text definition"
        out.append(imp.add(uid, "re-render", f"{what} changed: every user is re-rendered", uid))
        for d in (u for u in hg.order() if u in hg.descendants(uid)):
            dn = hg[d]
            if dn.kind == "embedding":
                out.append(
                    imp.add(
                        d,
                        "re-embed",
                        f"text {n.name} changed: texts that change are re-embedded",
                        uid,
                    )
                )
            elif dn.kind == "segmentation":
                out.append(
                    imp.add(
                        d,
                        "reassign",
                        f"text {n.name} changed: users whose text changes are reassigned",
                        uid,
                    )
                )
    elif n.kind == "encoder":
        for d in (u for u in hg.order() if u in hg.descendants(uid)):
            dn = hg[d]
            if dn.kind == "embedding":
                out.append(
                    imp.add(
                        d,
                        "re-embed",
                        f"encoder {n.name} changed ({', '.join(fields)}): every text is re-embedded",
                        uid,
                    )
                )
            elif dn.kind == "segmentation":
                out.append(
                    imp.add(
                        d,
                        "refit",
                        f"encoder {n.name} changed: its vector space changed, refit on every user",
                        uid,
                    )
                )
    elif n.kind == "features":
        for d in hg.children[uid]:
            if hg[d].kind == "segmentation":
                out.append(
                    imp.add(
                        d,
                        "refit",
                        f"feature set {n.name} changed ({', '.join(fields)}): refit on every user",
                        uid,
                    )
                )
    elif n.kind == "segmentation":
        seg = n.spec
        if seg.is_rules:
            out.append(
                imp.add(
                    uid,
                    "reassign",
                    f"{', '.join(fields)} changed: rules re-evaluated for every user",
                    uid,
                )
            )
        elif set(fields) <= {"labels"}:
            out.append(
                imp.add(
                    uid,
                    "relabel",
                    "labels settings changed: segment names are recomputed at the next refit "
                    f"(segtool run --refit -s {seg.name} applies them now)",
                    uid,
                )
            )
        else:
            out.append(
                imp.add(uid, "refit", f"{', '.join(fields)} changed: refit on every user", uid)
            )
    return out


def compare_projects(base, head) -> dict:
    """The node-by-node comparison of two loaded projects (no database)."""
    bg = base.graph().graph
    hg = head.graph().graph
    b_ids, h_ids = set(bg.nodes), set(hg.nodes)
    removed = sorted(b_ids - h_ids)
    added = [u for u in hg.order() if u not in b_ids]
    renames = _detect_renames(bg, hg, removed, added)
    renamed_to = {r: a for a, r in renames.items()}
    imp = _Impacts(hg)
    changes: list[dict] = []

    def entry(uid, node, change, fields=(), **kw) -> dict:
        d = {
            "unique_id": uid,
            "kind": node.kind,
            "name": node.name,
            "change": change,
            "path": node.path,
            "fields": list(fields),
            "details": [],
            "renamed_from": None,
            "renamed_to": None,
            "forces": [],
            "note": None,
        }
        d.update(kw)
        return d

    for uid in hg.order():
        h = hg[uid]
        if uid not in b_ids:
            e = entry(uid, h, "added", renamed_from=renames.get(uid))
            if e["renamed_from"]:
                e["note"] = f"renamed from {e['renamed_from']}"
                why = {
                    "text": "renamed: every user is rendered again under the new name (vectors of identical texts are reused)",
                    "embedding": "renamed: texts are looked up in the cache again; only texts that changed are embedded",
                    "segmentation": (
                        "renamed: evaluated under the new name; segment ids start over"
                        if h.kind == "segmentation" and h.spec.is_rules
                        else "renamed: fitted from scratch under the new name; segment ids start over"
                    ),
                    "model": "renamed: built under the new name",
                }.get(h.kind, "renamed")
                e["forces"].append(imp.add(uid, "new", why, uid))
            else:
                e["forces"].append(imp.add(uid, "new", "added", uid))
            changes.append(e)
            continue
        b = bg[uid]
        if b.own_hash != h.own_hash:
            fields = _field_changes(b.data, h.data)
            e = entry(uid, h, "changed", fields, details=_field_details(b.data, h.data))
            e["forces"] = _effects(imp, hg, uid, fields)
            meta = _meta_changes(b, h)
            if meta:
                e["note"] = "also changed: " + ", ".join(meta)
            changes.append(e)
        elif b.metadata_hash != h.metadata_hash:
            fields = _meta_changes(b, h)
            e = entry(uid, h, "metadata only", fields)
            e["forces"].append(
                imp.add(
                    uid,
                    "metadata only",
                    "only " + ", ".join(fields) + " changed: nothing reruns",
                    uid,
                )
            )
            if "update" in fields:
                e["note"] = "the update policy decides when it refits"
            changes.append(e)
    for uid in removed:
        b = bg[uid]
        e = entry(uid, b, "removed", renamed_to=renamed_to.get(uid))
        left = {
            "segmentation": f"its tables segments.{b.name} and segments.{b.name}_history stay in the database until dropped",
            "text": f"its texts (_segtool.texts__{b.name}) stay in the database until dropped",
            "model": f"the relation main.{b.name} stays in the database until dropped",
        }.get(b.kind)
        e["note"] = (
            "; ".join(
                x for x in (f"renamed to {e['renamed_to']}" if e["renamed_to"] else None, left) if x
            )
            or None
        )
        changes.append(e)

    impacts = imp.ordered()
    return {"changes": changes, "impact": impacts}


def _counts_phrase(kind: str, counts: dict | None, action: str = "") -> str:
    if not counts:
        return ""
    c = counts
    if kind == "segmentation" and action in ("refit", "new") and "users" in c:
        return f"{c['users']:,} users {'refit' if action == 'refit' else 'fitted'}"
    if kind == "text" and "texts_changed" in c:
        return (
            f"{c['texts_changed']:,} of {c['users']:,} texts change"
            + (f", {c['new_users']:,} new users" if c.get("new_users") else "")
            + (f", {c['removed']:,} removed" if c.get("removed") else "")
        )
    if kind == "text" and "users" in c:
        return f"{c['users']:,} users"
    if kind == "embedding" and "to_embed" in c:
        return f"{c['to_embed']:,} of {c['distinct_texts']:,} texts to embed"
    if kind == "segmentation" and "changed_users" in c:
        return f"{c['changed_users']:,} of {c['users']:,} users changed" + (
            f", {c['removed']:,} leave" if c.get("removed") else ""
        )
    if kind == "segmentation" and "users" in c:
        return f"{c['users']:,} users"
    if kind == "model" and "rows" in c:
        return f"{c['rows']:,} rows"
    return ""


def project_diff(
    base_arg: str | None = "HEAD",
    head_arg: str | None = None,
    *,
    project_dir: str | Path | None = None,
    target: str | None = None,
    vars: dict | None = None,
    counts: bool = True,
) -> dict:
    """Compare two versions of the project. BASE/HEAD: a git ref, a folder, or
    None for the working tree (the project at `project_dir` or the current folder)."""
    from segtool.project.loader import find_project_root

    worktree = find_project_root(Path(project_dir or "."))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segtool-diff-")))
        base = open_version(
            base_arg, role="BASE", worktree=worktree, tmp=tmp, target=target, vars=vars
        )
        head = open_version(
            head_arg, role="HEAD", worktree=worktree, tmp=tmp, target=target, vars=vars
        )
        result = compare_projects(base.project, head.project)
        database = {"path": None, "used": False, "last_run": None, "note": None}
        if counts:
            _attach_counts(result, head, worktree, database)
        else:
            database["note"] = "--no-counts"
        out = {
            "schema_version": SCHEMA_VERSION,
            "kind": "project_diff",
            "project": head.project.name,
            "base": base.to_dict(),
            "head": head.to_dict(),
            "database": database,
            "summary": _summary(result, counted=database["used"]),
            "changes": result["changes"],
            "impact": result["impact"],
        }
    return out


def _attach_counts(result: dict, head: Version, worktree: Path, database: dict) -> None:
    from segtool.plan import make_plan

    proj = head.project.loaded
    db = Path(proj.target.database)
    if not db.is_absolute():
        db = (worktree if head.kind == "git" else head.root) / db
    database["path"] = str(db)
    if not db.exists():
        database["note"] = f"no database at {db}: no user counts (run `segtool run` to get them)"
        return
    try:
        plan = make_plan(head.project, database=db, search_paths=(worktree,))
    except SegtoolError as exc:
        database["note"] = f"no user counts: {exc.message.splitlines()[0]}"
        return
    if not plan.has_state:
        database["note"] = f"{db} has no segtool state yet: no user counts"
        return
    database["used"] = True
    database["last_run"] = plan.last_run
    if plan.notes:
        database["note"] = "; ".join(plan.notes)
    for imp in result["impact"]:
        it = plan.item(imp["unique_id"])
        if it is not None:
            imp["counts"] = it.counts or None
            imp["planned"] = it.action


def _summary(result: dict, *, counted: bool = True) -> dict:
    ch = result["changes"]
    n = {
        c: sum(1 for x in ch if x["change"] == c)
        for c in ("added", "removed", "changed", "metadata only")
    }
    imps = result["impact"]

    def with_action(a: str) -> int:
        return sum(1 for i in imps if i["action"] == a)

    def total(kind: str, key: str, action: str) -> int | None:
        vals = [
            (i.get("counts") or {}).get(key)
            for i in imps
            if i["kind"] == kind and i["action"] == action
        ]
        if not counted or any(v is None for v in vals):
            return None
        return int(sum(vals))

    return {
        "added": n["added"],
        "removed": n["removed"],
        "changed": n["changed"],
        "metadata_only": n["metadata only"],
        "renamed": sum(1 for x in ch if x["renamed_from"]),
        "nodes_changed": n["added"] + n["removed"] + n["changed"],
        "refits": sum(1 for i in imps if i["kind"] == "segmentation" and i["action"] == "refit"),
        "re_render": with_action("re-render"),
        "re_embed": with_action("re-embed"),
        "reassign": with_action("reassign"),
        "relabel": with_action("relabel"),
        "texts_changed": total("text", "texts_changed", "re-render"),
        "texts_to_embed": total("embedding", "to_embed", "re-embed"),
        "users_to_reassign": total("segmentation", "changed_users", "reassign"),
    }


# ============================================================================ data diff


def _connect_db(path: Path, what: str) -> duckdb.DuckDBPyConnection:
    from segtool.state.db import has_state

    if not path.exists():
        raise ProjectError(
            f"{what} database {path} does not exist",
            hint="run `segtool run` first, or check the path",
        )
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        msg = str(exc).splitlines()[0]
        if "lock" in msg.lower():
            raise DataError(
                f"{what} database {path} is locked by another process",
                hint="wait for the running `segtool run` to finish",
            ) from None
        raise DataError(f"cannot open {what} database {path}: {msg}") from None
    if not has_state(con):
        con.close()
        raise DataError(
            f"{path} is not a segtool database (no _segtool state)",
            hint="point at a database written by `segtool run`",
        )
    return con


def _q(con, sql: str, params=None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


class _Db:
    """A database seen through the (shared) connection: its catalog and runs."""

    def __init__(self, con, catalog: str, path: Path):
        self.con = con
        self.catalog = catalog
        self.path = path
        self.cat = quote_ident(catalog)

    def tables(self, schema: str) -> set[str]:
        return {
            r[0]
            for r in _q(
                self.con,
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?",
                [self.catalog, schema],
            )
        }

    def meta(self, key: str) -> str | None:
        rows = _q(self.con, f"SELECT value FROM {self.cat}._segtool.meta WHERE key = ?", [key])
        return rows[0][0] if rows else None

    def runs(self) -> list[tuple[int, str, dict]]:
        if "runs" not in self.tables("_segtool"):
            return []
        out = []
        for run_id, status, summary in _q(
            self.con,
            f"SELECT run_id, status, summary FROM {self.cat}._segtool.runs ORDER BY run_id",
        ):
            try:
                s = json.loads(summary) if isinstance(summary, str) else (summary or {})
            except ValueError:
                s = {}
            out.append((int(run_id), status, s if isinstance(s, dict) else {}))
        return out

    def segmentations(self) -> list[str]:
        t = self.tables("segments")
        return sorted(n for n in t if not (n.endswith("_history") and n[: -len("_history")] in t))

    def seg(self, name: str) -> str:
        return f"{self.cat}.segments.{quote_ident(name)}"

    def hist(self, name: str) -> str:
        return f"{self.cat}.segments.{quote_ident(name + '_history')}"


def _check_run(db: _Db, run: int | None, which: str) -> None:
    if run is None:
        return
    ids = [r[0] for r in db.runs()]
    if run not in ids:
        have = f"runs {ids[0]}..{ids[-1]}" if ids else "no runs"
        raise DataError(
            f"{which} run {run} does not exist in {db.path} ({have})",
            hint='list them with: duckdb DB "select run_id, status, started_at from _segtool.runs"',
        )


def _touched_runs(db: _Db, name: str) -> list[int]:
    """Successful runs that processed segmentation NAME (from run summaries;
    else the runs in its history)."""
    runs = [
        r
        for r, status, s in db.runs()
        if status == "success" and name in (s.get("segmentations") or {})
    ]
    if runs:
        return runs
    if name + "_history" in db.tables("segments"):
        rows = _q(
            db.con,
            f"SELECT DISTINCT r FROM (SELECT valid_from_run AS r FROM {db.hist(name)} UNION "
            f"SELECT valid_to_run FROM {db.hist(name)}) WHERE r IS NOT NULL ORDER BY r",
        )
        return [int(r[0]) for r in rows]
    return []


def _assignment_sql(db: _Db, name: str, key: str, run: int | None) -> str:
    k = quote_ident(key)
    if run is None:
        return f"SELECT {k} AS k, segment_id, segment FROM {db.seg(name)}"
    return (
        f"SELECT {k} AS k, segment_id, segment FROM {db.hist(name)} "
        f"WHERE valid_from_run <= {int(run)} AND (valid_to_run IS NULL OR valid_to_run > {int(run)}) "
        f"QUALIFY row_number() OVER (PARTITION BY {k} ORDER BY valid_from_run DESC) = 1"
    )


def _py(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def _text_table_for(project, db: _Db, name: str) -> str | None:
    """The texts table whose texts describe segmentation NAME's users."""
    texts = {t[len("texts__") :] for t in db.tables("_segtool") if t.startswith("texts__")}
    if project is not None and name in project.loaded.segmentations:
        seg = project.loaded.segmentations[name]
        cands = [i.embedding.text for i in seg.inputs if i.embedding is not None]
        model = seg.model or next(
            (project.loaded.features[i.features].model for i in seg.inputs if i.features), None
        )
        cands += [t for t, spec in project.loaded.texts.items() if spec.model == model]
        for t in cands:
            if t in texts:
                return f"{db.cat}._segtool.{quote_ident('texts__' + t)}"
        return None
    if len(texts) == 1:
        return f"{db.cat}._segtool.{quote_ident('texts__' + texts.pop())}"
    return None


def _compare_one(
    con,
    name: str,
    key: str,
    before_sql: str,
    after_sql: str,
    examples: int,
    texts_before: str | None,
    texts_after: str | None,
) -> dict:
    import numpy as np

    from segtool.ml.metrics import adjusted_rand, nmi, transition_matrix

    k = quote_ident(key)
    joined = (
        f"SELECT coalesce(a.k, b.k) AS k, a.segment_id AS a_id, a.segment AS a_seg, b.segment_id AS b_id, b.segment AS b_seg "
        f"FROM ({before_sql}) a FULL OUTER JOIN ({after_sql}) b ON a.k = b.k"
    )
    before, after, both, entered, left, moved = _q(
        con,
        f"""SELECT count(a_id), count(b_id), count(*) FILTER (WHERE a_id IS NOT NULL AND b_id IS NOT NULL),
        count(*) FILTER (WHERE a_id IS NULL), count(*) FILTER (WHERE b_id IS NULL),
        count(*) FILTER (WHERE a_id IS NOT NULL AND b_id IS NOT NULL AND a_id <> b_id) FROM ({joined})""",
    )[0]
    pairs = con.sql(
        f"SELECT a_id, b_id FROM ({joined}) WHERE a_id IS NOT NULL AND b_id IS NOT NULL ORDER BY k"
    ).fetchnumpy()
    a = np.asarray(pairs["a_id"], dtype=np.int64)
    b = np.asarray(pairs["b_id"], dtype=np.int64)
    if a.size:
        rows, cols, counts = transition_matrix(a, b)
        transitions = {
            "from": [int(x) for x in rows],
            "to": [int(x) for x in cols],
            "counts": counts.tolist(),
        }
        ari, nm = adjusted_rand(a, b), nmi(a, b)
    else:
        transitions = {"from": [], "to": [], "counts": []}
        ari = nm = None
    sizes_b = {
        int(r[0]): (r[1], int(r[2]))
        for r in _q(
            con, f"SELECT segment_id, any_value(segment), count(*) FROM ({before_sql}) GROUP BY 1"
        )
    }
    sizes_a = {
        int(r[0]): (r[1], int(r[2]))
        for r in _q(
            con, f"SELECT segment_id, any_value(segment), count(*) FROM ({after_sql}) GROUP BY 1"
        )
    }
    sizes = []
    for sid in sorted(set(sizes_b) | set(sizes_a)):
        lb, nb = sizes_b.get(sid, (None, 0))
        la, na = sizes_a.get(sid, (None, 0))
        sizes.append(
            {
                "segment_id": sid,
                "label": la if la is not None else lb,
                "before": nb,
                "after": na,
                "delta": na - nb,
            }
        )
    ex = []
    if examples > 0:
        rows = _q(
            con,
            f"SELECT k, a_id, a_seg, b_id, b_seg FROM ({joined}) WHERE a_id <> b_id ORDER BY k LIMIT {int(examples)}",
        )
        for kv, aid, aseg, bid, bseg in rows:
            item = {
                "key": _py(kv),
                "from": {"segment_id": int(aid), "segment": aseg},
                "to": {"segment_id": int(bid), "segment": bseg},
                "text": None,
                "text_before": None,
            }
            if texts_after:
                t = _q(con, f"SELECT text FROM {texts_after} WHERE {k} = ?", [kv])
                item["text"] = t[0][0] if t else None
            if texts_before and texts_before != texts_after:
                t = _q(con, f"SELECT text FROM {texts_before} WHERE {k} = ?", [kv])
                item["text_before"] = t[0][0] if t else None
            ex.append(item)
    return {
        "name": name,
        "status": "compared",
        "users": {
            "before": int(before),
            "after": int(after),
            "both": int(both),
            "entered": int(entered),
            "left": int(left),
            "moved": int(moved),
        },
        "moved_share": (moved / both) if both else None,
        "ari": ari,
        "nmi": nm,
        "sizes": sizes,
        "transitions": transitions,
        "examples": ex,
    }


def _sizes_only(con, name: str, sql: str, side: str) -> list[dict]:
    rows = _q(
        con, f"SELECT segment_id, any_value(segment), count(*) FROM ({sql}) GROUP BY 1 ORDER BY 1"
    )
    return [
        {
            "segment_id": int(r[0]),
            "label": r[1],
            "before": int(r[2]) if side == "before" else 0,
            "after": int(r[2]) if side == "after" else 0,
            "delta": int(r[2]) if side == "after" else -int(r[2]),
        }
        for r in rows
    ]


def data_diff(
    project=None,
    *,
    from_run: int | None = None,
    to_run: int | None = None,
    base_db: str | Path | None = None,
    head_db: str | Path | None = None,
    segmentations: tuple[str, ...] = (),
    examples: int = 3,
) -> dict:
    """Compare segment assignments: two runs of one database (default: the last
    two runs that touched each segmentation), or two databases (`base_db` and
    `head_db`; default head: the project's). Read-only."""
    if head_db is None:
        if project is None:
            raise ProjectError(
                "no database to compare",
                hint="run inside a project, or pass --head-db (and --base-db)",
            )
        head_path = project.loaded.database_path
    else:
        head_path = Path(head_db)
    head_path = head_path.resolve() if head_path.exists() else head_path
    con = _connect_db(head_path, "head" if base_db else "the")
    try:
        head_cat = _q(con, "SELECT current_database()")[0][0]
        head = _Db(con, head_cat, head_path)
        mode = "runs"
        base = head
        if base_db is not None:
            mode = "databases"
            base_path = Path(base_db)
            base_path = base_path.resolve() if base_path.exists() else base_path
            if base_path != head_path:
                bcon = _connect_db(base_path, "base")  # checks it exists and has state
                bcon.close()
                con.execute(f"ATTACH {_lit(str(base_path))} AS __segtool_base (READ_ONLY)")
                base = _Db(con, "__segtool_base", base_path)
            else:
                base = _Db(con, head_cat, base_path)
            bp, hp = base.meta("project"), head.meta("project")
            if bp and hp and bp != hp:
                raise DataError(
                    f"the databases belong to different projects: {base_path} is '{bp}', {head_path} is '{hp}'",
                    hint="compare two databases of the same project (e.g. prod and a PR build)",
                )
        proj_name = head.meta("project")
        if project is not None and proj_name and project.name != proj_name:
            project = None  # another project's database: do not use this project's texts or key
        _check_run(base, from_run, "--from-run" if mode == "runs" else "--from-run (base)")
        _check_run(head, to_run, "--to-run" if mode == "runs" else "--to-run (head)")

        names = sorted(set(head.segmentations()) | set(base.segmentations()))
        if segmentations:
            for s in segmentations:
                if s not in names:
                    raise ProjectError(
                        f"no segment table for segmentation '{s}' in {head_path}",
                        hint=did_you_mean(s, names) or "run `segtool run` first",
                    )
            names = [n for n in names if n in segmentations]
        key_default = project.loaded.key if project is not None else None
        out_segs = []
        for name in names:
            out_segs.append(
                _diff_seg(
                    con, project, base, head, name, mode, from_run, to_run, examples, key_default
                )
            )
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "data_diff",
            "mode": mode,
            "project": proj_name,
            "base": {"database": str(base.path), "run": from_run},
            "head": {"database": str(head.path), "run": to_run},
            "segmentations": out_segs,
        }
    finally:
        con.close()


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _key_of(db: _Db, name: str, default: str | None) -> str:
    if default:
        return default
    return _q(db.con, f"SELECT column_name FROM (DESCRIBE {db.seg(name)}) LIMIT 1")[0][0]


def _diff_seg(
    con,
    project,
    base: _Db,
    head: _Db,
    name: str,
    mode: str,
    from_run,
    to_run,
    examples: int,
    key: str | None,
) -> dict:
    in_b = name in base.segmentations()
    in_h = name in head.segmentations()
    empty = {
        "users": None,
        "moved_share": None,
        "ari": None,
        "nmi": None,
        "sizes": [],
        "transitions": {"from": [], "to": [], "counts": []},
        "examples": [],
    }
    if mode == "databases":
        if not in_b or not in_h:
            db = head if in_h else base
            k = _key_of(db, name, key)
            side = "after" if in_h else "before"
            run = to_run if in_h else from_run
            if run is not None and name + "_history" not in db.tables("segments"):
                run = None
            sql = _assignment_sql(db, name, k, run)
            n = _q(con, f"SELECT count(*) FROM ({sql})")[0][0]
            users = {
                "before": 0 if in_h else int(n),
                "after": int(n) if in_h else 0,
                "both": 0,
                "entered": int(n) if in_h else 0,
                "left": 0 if in_h else int(n),
                "moved": 0,
            }
            return {
                **empty,
                "name": name,
                "status": "added" if in_h else "removed",
                "base_run": from_run,
                "head_run": to_run,
                "note": f"only in the {'head' if in_h else 'base'} database",
                "users": users,
                "sizes": _sizes_only(con, name, sql, side),
            }
        k = _key_of(head, name, key)
        for db, run in ((base, from_run), (head, to_run)):
            if run is not None and name + "_history" not in db.tables("segments"):
                raise DataError(
                    f"segmentation '{name}' has no history table in {db.path}",
                    hint="compare the current tables (drop --from-run/--to-run)",
                )
        before = _assignment_sql(base, name, k, from_run)
        after = _assignment_sql(head, name, k, to_run)
        res = _compare_one(
            con,
            name,
            k,
            before,
            after,
            examples,
            _text_table_for(project, base, name),
            _text_table_for(project, head, name),
        )
        res.update(base_run=from_run, head_run=to_run, note=None)
        return res
    # runs of one database
    k = _key_of(head, name, key)
    if name + "_history" not in head.tables("segments"):
        return {
            **empty,
            "name": name,
            "status": "no_history",
            "base_run": from_run,
            "head_run": to_run,
            "note": f"segments.{name}_history does not exist",
        }
    touched = _touched_runs(head, name)
    b_run, h_run = from_run, to_run
    if h_run is None:
        h_run = [r for r in touched if b_run is None or r > b_run][-1:] or [None]
        h_run = h_run[0] if touched else None
    if b_run is None:
        earlier = [r for r in touched if h_run is None or r < h_run]
        b_run = earlier[-1] if earlier else None
    if b_run is None or h_run is None:
        only = h_run if h_run is not None else (touched[-1] if touched else None)
        sql = (
            _assignment_sql(head, name, k, only)
            if only is not None
            else _assignment_sql(head, name, k, None)
        )
        n = _q(con, f"SELECT count(*) FROM ({sql})")[0][0]
        return {
            **empty,
            "name": name,
            "status": "single_run",
            "base_run": None,
            "head_run": only,
            "note": f"only one run ({only}) touched '{name}': nothing to compare yet",
            "users": {
                "before": 0,
                "after": int(n),
                "both": 0,
                "entered": int(n),
                "left": 0,
                "moved": 0,
            },
            "sizes": _sizes_only(con, name, sql, "after"),
        }
    before = _assignment_sql(head, name, k, b_run)
    after = _assignment_sql(head, name, k, h_run)
    tt = _text_table_for(project, head, name)
    res = _compare_one(con, name, k, before, after, examples, None, tt)
    res.update(
        base_run=b_run,
        head_run=h_run,
        note="example texts are the current ones" if tt and res["examples"] else None,
    )
    return res


# ============================================================================ thresholds

STATIC_METRICS = (
    "nodes_changed",
    "refits",
    "added",
    "removed",
    "changed",
    "re_render",
    "re_embed",
    "reassign",
    "texts_to_embed",
    "users_to_reassign",
)
DATA_METRICS = ("moved_share", "ari", "nmi", "entered", "left", "moved")
_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_EXPR = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")


@dataclass
class Threshold:
    expr: str
    metric: str
    op: str
    value: float


def parse_fail_on(exprs: tuple[str, ...] | list[str], *, data: bool) -> list[Threshold]:
    """`moved_share>0.2`, `ari<0.8`, `refits>0` (several with commas or repeated --fail-on)."""
    out = []
    valid = DATA_METRICS if data else STATIC_METRICS
    other = STATIC_METRICS if data else DATA_METRICS
    for raw in exprs:
        for part in (p for p in raw.split(",") if p.strip()):
            m = _EXPR.match(part)
            if not m:
                raise ProjectError(
                    f"--fail-on: cannot read '{part.strip()}'",
                    hint="write METRIC OP NUMBER, e.g. --fail-on 'moved_share>0.2' or 'ari<0.8'",
                )
            metric, op, value = m.group(1), m.group(2), float(m.group(3))
            if metric not in valid:
                if metric in other:
                    raise ProjectError(
                        f"--fail-on: '{metric}' is a metric of segtool diff {'without' if data else 'with'} --data",
                        hint="metrics here: " + ", ".join(valid),
                    )
                raise ProjectError(
                    f"--fail-on: unknown metric '{metric}'",
                    hint=did_you_mean(metric, valid) or "metrics: " + ", ".join(valid),
                )
            out.append(Threshold(part.strip(), metric, op, value))
    return out


def check_thresholds(result: dict, thresholds: list[Threshold]) -> list[dict]:
    """Evaluate thresholds; adds `thresholds` and `ok` to `result` and returns the checks."""
    checks = []
    for t in thresholds:
        if result["kind"] == "data_diff":
            for s in result["segmentations"]:
                v = (
                    s.get(t.metric)
                    if t.metric in ("moved_share", "ari", "nmi")
                    else (s.get("users") or {}).get(t.metric)
                )
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                checks.append(
                    {
                        "expr": t.expr,
                        "metric": t.metric,
                        "where": s["name"],
                        "value": v,
                        "violated": bool(_OPS[t.op](v, t.value)),
                    }
                )
        else:
            v = result["summary"].get(t.metric)
            if v is None:
                continue
            checks.append(
                {
                    "expr": t.expr,
                    "metric": t.metric,
                    "where": None,
                    "value": v,
                    "violated": bool(_OPS[t.op](v, t.value)),
                }
            )
    result["thresholds"] = checks
    result["ok"] = not any(c["violated"] for c in checks)
    return checks


def violation_message(checks: list[dict]) -> str | None:
    bad = [c for c in checks if c["violated"]]
    if not bad:
        return None
    parts = []
    for c in bad:
        v = c["value"]
        vs = f"{v:.4g}" if isinstance(v, float) else str(v)
        parts.append(
            f"{c['metric']} = {vs}"
            + (f" in {c['where']}" if c["where"] else "")
            + f" violates --fail-on '{c['expr']}'"
        )
    return "fail-on: " + "; ".join(parts)


# ============================================================================ formats


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _fmt_num(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{v:.1%}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return f"{v:,}"


def _side(v: dict) -> str:
    if v["kind"] == "git":
        return f"{v['label']} ({(v['commit'] or '')[:8]})"
    if v["kind"] == "worktree" and v["label"] == "working tree":
        return "working tree"
    return f"folder {v['label']}"


def format_diff(result: dict, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(result, indent=2, default=str)
    if result["kind"] == "data_diff":
        return _format_data_md(result) if fmt == "markdown" else _format_data_text(result)
    return _format_project_md(result) if fmt == "markdown" else _format_project_text(result)


def _impact_counts(i: dict) -> str:
    if i.get("planned") in ("unchanged", "metadata only"):
        return "already up to date in the database"
    return _counts_phrase(i["kind"], i.get("counts"), i["action"])


def _forces_text(e: dict, *, md: bool = False) -> str:
    parts = []
    for f in e["forces"]:
        if f["unique_id"] == e["unique_id"] and f["action"] in ("new", "metadata only"):
            continue
        uid = f"`{f['unique_id']}`" if md else f["unique_id"]
        parts.append(f"{f['action']} {uid}")
    return ", ".join(dict.fromkeys(parts))


def _format_project_text(r: dict) -> str:
    s = r["summary"]
    lines = [f"segtool diff: {_side(r['base'])} -> {_side(r['head'])}  (project {r['project']})"]
    if not r["changes"]:
        lines.append("no changes")
        return "\n".join(lines + _threshold_lines(r))
    lines.append(
        f"{s['nodes_changed']} node(s) changed: {s['added']} added, {s['removed']} removed, {s['changed']} changed; "
        f"{s['metadata_only']} metadata only; refits: {s['refits']}"
    )
    width = max(len(e["unique_id"]) for e in r["changes"])
    lines.append("")
    for e in r["changes"]:
        what = ", ".join(e["fields"])
        note = f"({e['note']})" if e.get("note") else ""
        lines.append(f"  {e['change']:<13} {e['unique_id']:<{width}}  {what or note}".rstrip())
        if what and note:
            lines.append(f"  {'':<13} {'':<{width}}  {note}")
        for dline in e.get("details") or []:
            lines.append(f"  {'':<13} {'':<{width}}  {dline}")
        forces = _forces_text(e)
        if forces:
            lines.append(f"  {'':<13} {'':<{width}}  forces: {forces}")
    imps = [i for i in r["impact"] if i["action"] != "metadata only"]
    db = r["database"]
    if imps:
        lines.append("")
        est = (
            f" (users estimated against {db['path']}, last run {db['last_run']})"
            if db.get("used")
            else ""
        )
        lines.append(f"impact{est}:")
        w = max(len(i["unique_id"]) for i in imps)
        for i in imps:
            c = _impact_counts(i)
            lines.append(
                f"  {i['action']:<13} {i['unique_id']:<{w}}  {i['reasons'][0]}"
                + (f" [{c}]" if c else "")
            )
            for extra in i["reasons"][1:]:
                lines.append(f"  {'':<13} {'':<{w}}  {extra}")
    else:
        lines.append("")
        lines.append("impact: nothing reruns")
    if db.get("note"):
        lines.append(f"note: {db['note']}")
    return "\n".join(lines + _threshold_lines(r))


def _format_project_md(r: dict) -> str:
    s = r["summary"]
    lines = [f"### segtool diff: `{_side(r['base'])}` → `{_side(r['head'])}`", ""]
    if not r["changes"]:
        lines.append("No changes to the project.")
        return "\n".join(lines + _threshold_md(r))
    extras = []
    for key, label in (
        ("texts_changed", "texts change"),
        ("texts_to_embed", "texts to embed"),
        ("users_to_reassign", "users to reassign"),
    ):
        if s.get(key):
            extras.append(f"{s[key]:,} {label}")
    lines.append(
        f"**{s['nodes_changed']} node(s) changed** ({s['added']} added, {s['removed']} removed, {s['changed']} changed), "
        f"{s['metadata_only']} metadata only · **refits: {s['refits']}**"
        + (" · " + " · ".join(extras) if extras else "")
    )
    lines += ["", "| change | node | what changed | forces |", "|---|---|---|---|"]
    for e in r["changes"]:
        what = " ".join(
            x
            for x in (
                "; ".join(e.get("details") or []) or ", ".join(e["fields"]),
                f"({e['note']})" if e.get("note") else "",
            )
            if x
        )
        lines.append(
            f"| {e['change']} | `{e['unique_id']}` | {_md(what)} | {_md(_forces_text(e, md=True))} |"
        )
    imps = [i for i in r["impact"] if i["action"] != "metadata only"]
    db = r["database"]
    lines.append("")
    if imps:
        est = (
            f" (users estimated against `{db['path']}`, last run {db['last_run']})"
            if db.get("used")
            else ""
        )
        lines += [
            f"#### What reruns{est}",
            "",
            "| action | node | why | users/texts |",
            "|---|---|---|---|",
        ]
        for i in imps:
            lines.append(
                f"| {i['action']} | `{i['unique_id']}` | {_md('; '.join(i['reasons']))} | {_md(_impact_counts(i))} |"
            )
    else:
        lines.append("Nothing reruns: metadata only.")
    if db.get("note"):
        lines += ["", f"> {_md(db['note'])}"]
    return "\n".join(lines + _threshold_md(r))


def _threshold_lines(r: dict) -> list[str]:
    bad = [c for c in r.get("thresholds", []) if c["violated"]]
    if not r.get("thresholds"):
        return []
    if not bad:
        return ["thresholds: ok"]
    return ["thresholds violated:"] + [
        f"  {c['expr']}"
        + (
            f" ({c['where']}: {c['value']:.4g})"
            if isinstance(c["value"], float)
            else f" ({c['where'] or 'value'}: {c['value']})"
        )
        for c in bad
    ]


def _threshold_md(r: dict) -> list[str]:
    if not r.get("thresholds"):
        return []
    bad = [c for c in r["thresholds"] if c["violated"]]
    if not bad:
        return [
            "",
            "✅ thresholds ok: " + ", ".join(sorted({f"`{c['expr']}`" for c in r["thresholds"]})),
        ]
    return ["", "❌ **thresholds violated**", ""] + [
        f"- `{c['expr']}`"
        + (f" in `{c['where']}`" if c["where"] else "")
        + f": {_fmt_num(c['value'])}"
        for c in bad
    ]


def _runs_label(s: dict, mode: str) -> str:
    if mode == "runs":
        return f"run {s.get('base_run')} → run {s.get('head_run')}"
    b = f"base run {s['base_run']}" if s.get("base_run") is not None else "base"
    h = f"head run {s['head_run']}" if s.get("head_run") is not None else "head"
    return f"{b} → {h}"


def _matrix_lines(t: dict, indent: str = "    ") -> list[str]:
    if not t["from"]:
        return []
    cols = [str(c) for c in t["to"]]
    w = max([len(c) for c in cols] + [len(str(v)) for row in t["counts"] for v in row] + [3])
    rw = max(len(str(x)) for x in t["from"] + ["from\\to"])
    out = [indent + "from\\to".rjust(rw) + " " + " ".join(c.rjust(w) for c in cols)]
    for rid, row in zip(t["from"], t["counts"], strict=True):
        out.append(indent + str(rid).rjust(rw) + " " + " ".join(str(v).rjust(w) for v in row))
    return out


def _format_data_text(r: dict) -> str:
    where = (
        r["head"]["database"]
        if r["mode"] == "runs"
        else f"{r['base']['database']} -> {r['head']['database']}"
    )
    lines = [f"segtool diff --data: {r['mode']} ({where})"]
    if not r["segmentations"]:
        lines.append("no segment tables to compare")
    for s in r["segmentations"]:
        lines.append("")
        u = s["users"]
        if s["status"] != "compared":
            lines.append(
                f"{s['name']}: {s['status'].replace('_', ' ')}"
                + (f" ({s['note']})" if s.get("note") else "")
            )
            for z in s["sizes"]:
                lines.append(
                    f"    {z['segment_id']:>4} {str(z['label'] or ''):<30} {z['before']:>8,} {z['after']:>8,}"
                )
            continue
        lines.append(
            f"{s['name']} ({_runs_label(s, r['mode'])}): {u['before']:,} -> {u['after']:,} users; {u['entered']:,} entered, {u['left']:,} left, "
            f"{u['moved']:,} moved ({_fmt_num(s['moved_share'], pct=True)} of {u['both']:,}); ARI {_fmt_num(s['ari'])}, NMI {_fmt_num(s['nmi'])}"
        )
        lines.append(f"    {'id':>4} {'segment':<30} {'before':>8} {'after':>8} {'delta':>7}")
        for z in s["sizes"]:
            lines.append(
                f"    {z['segment_id']:>4} {str(z['label'] or '')[:30]:<30} {z['before']:>8,} {z['after']:>8,} {z['delta']:>+7,}"
            )
        if s["transitions"]["from"]:
            lines.append("  transitions (users in both; rows: before, columns: after):")
            lines += _matrix_lines(s["transitions"])
        if s["examples"]:
            lines.append("  moved users (examples):")
            for e in s["examples"]:
                lines.append(
                    f"    {e['key']}: {e['from']['segment_id']} {e['from']['segment'] or ''} -> {e['to']['segment_id']} {e['to']['segment'] or ''}"
                )
                if e.get("text_before") and e["text_before"] != e.get("text"):
                    lines.append(f"      text before: {e['text_before']}")
                    lines.append(f"      text after:  {e.get('text')}")
                elif e.get("text"):
                    lines.append(f"      text: {e['text']}")
        if s.get("note"):
            lines.append(f"  note: {s['note']}")
    return "\n".join(lines + _threshold_lines(r))


def _format_data_md(r: dict) -> str:
    title = "runs of one database" if r["mode"] == "runs" else "two databases"
    lines = [f"### segtool diff --data: {title}", ""]
    if r["mode"] == "databases":
        lines += [f"base `{r['base']['database']}` → head `{r['head']['database']}`", ""]
    if not r["segmentations"]:
        lines.append("No segment tables to compare.")
    else:
        lines += [
            "| segmentation | compared | users before → after | entered | left | moved | ARI | NMI |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in r["segmentations"]:
            u = s["users"] or {}
            if s["status"] != "compared":
                lines.append(
                    f"| `{s['name']}` | {s['status'].replace('_', ' ')} | {u.get('before', 0):,} → {u.get('after', 0):,} | "
                    f"{u.get('entered', 0):,} | {u.get('left', 0):,} | | | |"
                )
                continue
            lines.append(
                f"| `{s['name']}` | {_runs_label(s, r['mode'])} | {u['before']:,} → {u['after']:,} | {u['entered']:,} | {u['left']:,} | "
                f"{u['moved']:,} ({_fmt_num(s['moved_share'], pct=True)}) | {_fmt_num(s['ari'])} | {_fmt_num(s['nmi'])} |"
            )
    for s in r["segmentations"]:
        u = s["users"] or {}
        if s["status"] != "compared" or not (u.get("moved") or u.get("entered") or u.get("left")):
            continue  # nothing moved: the summary row says it all
        lines += [
            "",
            f"<details><summary><b>{_md(s['name'])}</b>: sizes, transitions, examples</summary>",
            "",
            "| id | segment | before | after | delta |",
            "|---|---|---|---|---|",
        ]
        for z in s["sizes"]:
            lines.append(
                f"| {z['segment_id']} | {_md(z['label'] or '')} | {z['before']:,} | {z['after']:,} | {z['delta']:+,} |"
            )
        t = s["transitions"]
        if t["from"]:
            lines += [
                "",
                "Transitions (users in both; rows: before, columns: after)",
                "",
                "| from \\ to | " + " | ".join(str(c) for c in t["to"]) + " |",
                "|---|" + "---|" * len(t["to"]),
            ]
            for rid, row in zip(t["from"], t["counts"], strict=True):
                lines.append(f"| **{rid}** | " + " | ".join(str(v) for v in row) + " |")
        if s["examples"]:
            lines += ["", "Users who moved (examples):", ""]
            for e in s["examples"]:
                lines.append(
                    f"- `{_md(e['key'])}`: {e['from']['segment_id']} {_md(e['from']['segment'] or '')} → "
                    f"{e['to']['segment_id']} {_md(e['to']['segment'] or '')}"
                    + (
                        f" — before: _{_md(e['text_before'])}_ — after: _{_md(e.get('text'))}_"
                        if e.get("text_before") and e["text_before"] != e.get("text")
                        else (f" — _{_md(e['text'])}_" if e.get("text") else "")
                    )
                )
        lines += ["", "</details>"]
    return "\n".join(lines + _threshold_md(r))
