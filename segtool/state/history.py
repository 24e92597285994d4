"""Reading a segmentation's history table (segments.NAME_history: one spell
per user and segment, valid_from_run .. valid_to_run). `segtool diff --data`
and the report read it the same way, through these."""

from __future__ import annotations


def open_at(run) -> str:
    """SQL condition: the spell was open at `run` (a run id, a column or `?`)."""
    return f"valid_from_run <= {run} AND (valid_to_run IS NULL OR valid_to_run > {run})"


def changed_runs(con, hist: str) -> list[int]:
    """The runs at which some user's spell in `hist` began or ended: the runs
    that changed the assignment (a run that left it as it was is not one)."""
    rows = con.execute(
        f"SELECT DISTINCT r FROM (SELECT valid_from_run AS r FROM {hist} UNION "
        f"SELECT valid_to_run FROM {hist}) WHERE r IS NOT NULL ORDER BY r"
    ).fetchall()
    return [int(r[0]) for r in rows]
