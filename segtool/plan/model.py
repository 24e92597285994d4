"""What a run will do: a frozen `Plan` of one `Step` per selected node.

The same value is printed by `run --dry-run`, executed by `run`, compared by
`diff`, and its steps are the rows of `target/run_results.json`: a step and a
run result share `unique_id`, `kind`, `action`, `reason` and `detail`.

Actions (one vocabulary for plan, run results, diff and docs):

    create       nothing stored yet: built, rendered, embedded or fitted from scratch
    rebuild      recomputed in full: a model rebuilt, every user's text re-rendered
    incremental  only what is new or changed: rows merged into an incremental
                 model, new and changed users rendered, texts without a cached
                 vector embedded
    refit        a segmentation fitted again on every user (ids matched to the old ones)
    assign       new and changed users assigned with the stored model, users who
                 left removed; rule segments re-evaluated
    skip         nothing to do: definition and data unchanged (sources, encoders
                 and feature sets are declarations: they are always `skip`)

A step's `detail` holds the counts it will touch, with the same keys the run
reports: texts `users`/`new`/`changed`/`removed`/`unchanged`, embeddings
`texts`/`embedded`/`cached`, segmentations `users`/`assigned`/`removed`, models
`rows`. A data-dependent policy is written as `detail["policy"]`, e.g.
`refit if drift > 0.25`: the one decision a run takes while it executes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

ACTIONS = ("create", "rebuild", "incremental", "refit", "assign", "skip")
DECLARATIONS = ("source", "encoder", "features")
SCHEMA_VERSION = 2


def _freeze(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class Step:
    unique_id: str
    kind: str
    action: str
    reason: str
    detail: Mapping[str, Any] = field(default_factory=lambda: _freeze({}))

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        object.__setattr__(self, "detail", _freeze(self.detail))

    @property
    def name(self) -> str:
        return self.unique_id.split(".", 1)[1]

    def to_dict(self) -> dict:
        return {
            "unique_id": self.unique_id,
            "kind": self.kind,
            "action": self.action,
            "reason": self.reason,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class Plan:
    project: str
    target: str
    database: str
    last_run: int | None  # the last successful run of the stored state, if any
    options: Mapping[str, Any]
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    # what the run would warn about: a selection reading an unselected node
    # that is out of date (the run prints these as `warning:`)
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, int]:
        """Steps per action; declarations (sources, encoders, feature sets),
        which never run anything, are not counted."""
        out = {a: 0 for a in ACTIONS}
        for s in self.steps:
            if s.kind not in DECLARATIONS:
                out[s.action] += 1
        return {a: n for a, n in out.items() if n}

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "plan",
            "project": self.project,
            "target": self.target,
            "database": self.database,
            "last_run": self.last_run,
            "options": dict(self.options),
            "summary": self.summary(),
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)
