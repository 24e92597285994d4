"""The decisions of a plan, as pure functions of plain values.

Each takes what the stored state says about a node (`Stored`, or None when
the node was never built) and what the project and the data say now, and
returns (action, reason). No database, no files: the plan builder computes
the inputs, these rules decide, and a unit test can try every case.

Hashes (see plan/build.py):
    own_hash    the node's definition (SQL, template, settings)
    input_hash  own_hash + the input_hash of every parent + the data of sources
                (file sizes and times) and encoders (weights): equal means
                "nothing this node reads has changed"
    exec_hash   models only: the SQL as run (absolute paths), so a view is
                re-created when the project folder moves
"""

from __future__ import annotations

from dataclasses import dataclass

from segtool.words import counted, with_article


@dataclass(frozen=True)
class Stored:
    own_hash: str | None
    input_hash: str | None
    exec_hash: str | None = None
    run_id: int | None = None
    parts: dict | None = None  # a hash per part of the definition (None: not recorded)
    built: str | None = None  # incremental models: the token of the last build from scratch


def changed_parts(stored: Stored | None, now: dict[str, str]) -> list[str] | None:
    """The parts of a definition that differ from the stored ones, or None
    when the state has no parts to compare (written by an older segtool)."""
    if stored is None or stored.parts is None:
        return None
    return sorted(k for k in {*stored.parts, *now} if stored.parts.get(k) != now.get(k))


def model_action(
    *,
    materialized: str,
    exists_as: str | None,
    stored: Stored | None,
    own_hash: str,
    input_hash: str,
    exec_hash: str,
    volatile: bool,
    full_refresh: bool,
    may_rebuild: bool = True,
) -> tuple[str, str]:
    """`may_rebuild`: False for an incremental model configured
    full_refresh=false: its rows are kept across SQL changes and --full-refresh."""
    want = "view" if materialized == "view" else "table"
    if exists_as is None:
        return "create", (
            f"not built yet ({materialized})"
            if stored is None
            else f"missing from the database: built again ({materialized})"
        )
    if exists_as != want:
        return "rebuild", f"now {with_article(materialized)} (it was {with_article(exists_as)})"
    if materialized == "view":
        if stored is None or stored.own_hash != own_hash:
            return "rebuild", "SQL changed"
        if stored.exec_hash != exec_hash:
            return "rebuild", "source paths moved (the project folder changed)"
        if input_hash != stored.input_hash:
            return "skip", "view: reads its upstream at query time"
        return "skip", "SQL unchanged"
    if materialized == "incremental" and not may_rebuild:
        kept = " (full_refresh: false keeps its rows)"
        if stored is not None and stored.own_hash != own_hash:
            return "incremental", "SQL changed: new rows are merged with the new SQL" + kept
        if full_refresh:
            return "incremental", "--full-refresh: new rows are merged" + kept
        if stored is None:
            return "incremental", "not built by segtool before: new rows are merged" + kept
    if full_refresh:
        return "rebuild", "--full-refresh"
    if stored is None:
        return "rebuild", "not built by segtool before"
    if materialized == "incremental":
        if stored.own_hash != own_hash:
            # merging would leave the rows of the old SQL as they were
            return "rebuild", "SQL changed: rebuilt in full, so no row keeps the old SQL's values"
        if volatile:
            return (
                "incremental",
                "uses now()/random() or reads files directly: new rows merged every run",
            )
        if input_hash != stored.input_hash:
            return "incremental", "upstream data changed: new rows are merged"
        return "skip", "SQL and upstream data unchanged"
    if stored.own_hash != own_hash or stored.exec_hash != exec_hash:
        return "rebuild", "SQL or config changed"
    if volatile:
        return "rebuild", "uses now()/random() or reads files directly: rebuilt every run"
    if input_hash != stored.input_hash:
        return "rebuild", "upstream data changed"
    return "skip", "SQL and upstream data unchanged"


def text_action(
    *,
    exists: bool,
    stored: Stored | None,
    own_hash: str,
    input_hash: str,
    full_refresh: bool,
) -> tuple[str, str]:
    if not exists:
        return "create", "no rendered texts yet: every user is rendered"
    if full_refresh:
        return "rebuild", "--full-refresh: every user is rendered again"
    if stored is None or stored.own_hash != own_hash:
        return "rebuild", "template or text settings changed: every user is rendered again"
    if stored.input_hash == input_hash:
        return "skip", "template and model data unchanged"
    return "incremental", "model data changed: new and changed users are rendered"


def embedding_needs_check(*, stored: Stored | None, input_hash: str, has_vectors: bool) -> bool:
    """False when the cache is known complete: the last run embedded every
    text of these very inputs (a killed run never records the step)."""
    return not (has_vectors and stored is not None and stored.input_hash == input_hash)


def embedding_action(*, has_vectors: bool, to_embed: int) -> tuple[str, str]:
    if not has_vectors:
        return "create", f"no vectors for this encoder yet: {to_embed:,} texts to embed"
    if to_embed:
        return "incremental", (
            f"{counted(to_embed, 'new or changed text', verb=('has', 'have'))} no cached vector"
        )
    return "skip", "every text has a cached vector"


@dataclass(frozen=True)
class FitFacts:
    """What a clustering's refit decision reads."""

    has_fit: bool
    tables_present: bool  # the segment table and the stored input hashes
    fit_changed: list[str]  # what changed in the fitted space ([] = nothing)
    refit_flag: bool
    policy: str  # never | always | on_drift
    drift_threshold: float


def clustering_refit(f: FitFacts) -> tuple[str, str] | None:
    """(action, reason) when the segmentation must be fitted on every user,
    else None (then: skip or assign, by its data)."""
    if not f.has_fit:
        return "create", "first fit on every user"
    if not f.tables_present:
        return "refit", "the segment table or its stored inputs are missing: refit on every user"
    if f.fit_changed:
        return "refit", ", ".join(f.fit_changed) + " changed: refit on every user"
    if f.refit_flag:
        return "refit", "--refit: refit on every user"
    return None


def kept_fit_note(name: str, changed: list[str] | None) -> str:
    """What a changed definition that leaves the fitted space alone means, as
    a prefix of the step's reason. `changed`: the parts that differ (None:
    the state did not record parts, so say what it may be)."""
    relabel = f"apply at the next refit (segtool run --refit -s {name} relabels now)"
    if changed is None:
        return f"definition changed (population, labels or vars): the stored model is kept, labels {relabel}; "
    notes = []
    if {"population", "vars"} & set(changed):
        # a var the population reads (--vars); an edited predicate refits
        notes.append(
            "population changed (a var it reads): users who leave it are removed, "
            "users who join are assigned with the stored model"
        )
    if "labels" in changed:
        notes.append(f"labels changed: they {relabel}")
    other = sorted(set(changed) - {"population", "vars", "labels"})
    if other:
        notes.append(", ".join(other) + " changed: the stored model is kept")
    return "".join(n + "; " for n in notes)


def clustering_update(f: FitFacts, *, n_changed: int, n_removed: int) -> tuple[str, str, dict]:
    """After counting: (action, reason, extra detail) for a segmentation that
    keeps its fitted model unless the policy says otherwise."""
    if f.policy == "always" and (n_changed or n_removed):
        return "refit", "policy update.refit: always, and users changed", {}
    if not n_changed and not n_removed:
        return "skip", "inputs unchanged for every user", {}
    extra = {}
    if f.policy == "on_drift":
        extra["policy"] = f"refit if drift > {f.drift_threshold}"
    return (
        "assign",
        f"{n_changed:,} new or changed users are assigned with the stored model"
        + (f", {n_removed:,} leave" if n_removed else ""),
        extra,
    )


def rules_action(*, exists: bool, stored: Stored | None, input_hash: str) -> tuple[str, str]:
    if not exists:
        return "create", "rule segments evaluated for the first time"
    if stored is not None and stored.input_hash == input_hash:
        return "skip", "rules and model data unchanged"
    if stored is None or stored.own_hash is None:
        return "assign", "every user is evaluated again"
    return "assign", "rules or model data changed: every user is evaluated again"
