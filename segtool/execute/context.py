"""What a stage receives and what it gives back.

Stages (execute/sql.py, render.py, embed.py, segment/) get a typed
`RunContext` and a planned `Step`, and return a `StepResult`; they never
reach back into the runner or re-decide the step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segtool.plan.model import Step


@dataclass(frozen=True)
class RunOptions:
    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    state_dir: str | None = None
    full_refresh: bool = False
    refit: bool = False
    threads: int | None = None
    device: str | None = None


@dataclass
class RunContext:
    project: Any  # segtool.api.Project
    con: Any  # duckdb connection
    run_id: int | None
    options: RunOptions
    reporter: Any  # report.console.Reporter
    encoders: Any  # encoders.builder.Encoders
    workspace: Any  # execute.workspace.Workspace
    planner: Any  # plan.build.Planner

    @property
    def loaded(self):
        return self.project.loaded

    @property
    def graph(self):
        return self.project.graph().graph


@dataclass
class StepResult:
    """One row of run_results.json `results[]`: the planned step, what it did."""

    unique_id: str
    kind: str
    action: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    status: str = "success"  # success | error
    seconds: float = 0.0
    message: str = ""

    @classmethod
    def of(cls, step: Step, seconds: float = 0.0, **detail) -> StepResult:
        return cls(
            step.unique_id,
            step.kind,
            step.action,
            step.reason,
            {**step.detail, **detail},
            seconds=round(seconds, 3),
        )

    def to_dict(self) -> dict:
        return {
            "unique_id": self.unique_id,
            "kind": self.kind,
            "action": self.action,
            "reason": self.reason,
            "detail": self.detail,
            "status": self.status,
            "seconds": self.seconds,
            "message": self.message,
        }
