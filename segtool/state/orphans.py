"""What the database holds for models, texts and segmentations the project
no longer defines (renamed, removed, disabled).

A run never touches them: `segments.value_tiers` stayed as its last run left
it after the segmentation was renamed `tiers`, and a dashboard reading it saw
frozen segments with nothing said. Runs and dry runs now warn about them;
`segtool clean --orphans` drops them (state/db.py keeps the schema)."""

from __future__ import annotations

from dataclasses import dataclass

from segtool.state import tables
from segtool.state.db import relation_exists
from segtool.state.result import table_exists

# node kinds whose output is a relation in the database (the others, e.g.
# features and encoders, are hashes only; cached vectors go with clean --cache)
_KINDS = ("model", "text", "segmentation")
# rows that belong to one segmentation, by its name
_SEGMENTATION_ROWS = (tables.FITTED, tables.CATALOG, tables.EVENTS, f"{tables.STATE}.drivers")


@dataclass(frozen=True)
class Orphan:
    unique_id: str
    kind: str
    name: str
    relations: tuple[tuple[str, str, str], ...]  # (schema, name, 'table' | 'view')
    run_id: int | None  # the last run that wrote it

    @property
    def shown(self) -> str:
        return ", ".join(f"{s}.{n}" for s, n, _ in self.relations)

    def warning(self) -> str:
        when = f"run {self.run_id}" if self.run_id is not None else "its last run"
        them = "them" if len(self.relations) > 1 else "it"
        return (
            f"{self.kind} '{self.name}' is no longer in the project (renamed, removed or "
            f"disabled): {self.shown} hold{'' if len(self.relations) > 1 else 's'} what {when} "
            f"wrote and no run updates {them} (`segtool clean --orphans` drops {them})"
        )


def _relations(kind: str, name: str) -> list[tuple[str, str]]:
    if kind == "model":
        return [(tables.MODELS, name)]
    if kind == "text":
        return [(tables.STATE, tables.texts_name(name))]
    return [
        (tables.RESULTS, name),
        (tables.RESULTS, tables.history_name(name)),
        (tables.STATE, tables.inputs_name(name)),
    ]


def find_orphans(con, defined: set[str]) -> list[Orphan]:
    """Nodes a run recorded that are not in `defined` (the project's unique
    ids) and whose tables are still in the database."""
    if not table_exists(con, tables.STATE, "nodes"):
        return []
    found = []
    for uid, kind, run_id in con.execute(
        f"SELECT unique_id, kind, run_id FROM {tables.NODES} ORDER BY unique_id"
    ).fetchall():
        if uid in defined or kind not in _KINDS:
            continue
        name = uid.split(".", 1)[1]
        rels = []
        for schema, rel in _relations(kind, name):
            what = relation_exists(con, schema, rel)
            if what:
                rels.append((schema, rel, what))
        if rels:
            found.append(Orphan(uid, kind, name, tuple(rels), run_id))
    return found


def drop_orphans(con, orphans: list[Orphan]) -> None:
    """Drop their relations and forget them, in the caller's transaction."""
    for o in orphans:
        for schema, rel, what in o.relations:
            con.execute(f"DROP {what.upper()} IF EXISTS {tables.quote(schema)}.{tables.quote(rel)}")
        if o.kind == "segmentation":
            for table in _SEGMENTATION_ROWS:
                schema, name = table.split(".", 1)
                if table_exists(con, schema, name):
                    con.execute(f"DELETE FROM {table} WHERE segmentation = ?", [o.name])
        con.execute(f"DELETE FROM {tables.NODES} WHERE unique_id = ?", [o.unique_id])
