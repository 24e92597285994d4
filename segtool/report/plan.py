"""How a plan and a run read: one line per step, the same words for
`run --dry-run` and `run`, and the plan as text, JSON or Markdown."""

from __future__ import annotations

import json
from typing import Any

from segtool.errors import ProjectError
from segtool.report.console import markdown_table, md_escape
from segtool.words import counted


def counts(kind: str, detail: dict[str, Any]) -> str:
    """The counts of a step (or result) as a short phrase."""
    d = detail
    if kind == "model":
        rows = d.get("rows")
        out = counted(rows, "row") if rows is not None else ""
        if d.get("deleted") is not None:
            out += f", {d['deleted']:,} deleted"
        return out
    if kind == "text" and "users" in d:
        out = (
            f"{counted(d['users'], 'user')}: {d['new']:,} new, {d['changed']:,} changed, "
            f"{d['removed']:,} removed, {d['unchanged']:,} unchanged"
        )
        if d.get("texts_changed") is not None:
            differ = "differs" if d["texts_changed"] == 1 else "differ"
            out += f" ({counted(d['texts_changed'], 'text')} {differ})"
        return out
    if kind == "embedding" and "texts" in d:
        out = f"{counted(d['texts'], 'distinct text')}: {d['embedded']:,} to embed, {d['cached']:,} cached"
        if d.get("texts_per_s"):
            out = (
                f"{counted(d['texts'], 'distinct text')}: {d['embedded']:,} embedded, {d['cached']:,} cached; "
                f"{d['texts_per_s']:,.0f} texts/s on {d.get('device')}"
            )
        return out
    if kind == "segmentation" and "users" in d:
        out = f"{counted(d['users'], 'user')}: {d['assigned']:,} assigned, {d['removed']:,} removed"
        if d.get("moved") is not None:
            out += f", {d['moved']:,} moved"
            if d.get("segments") is not None:
                out += f", {counted(d['segments'], 'segment')}"
        if d.get("policy"):
            out += f"; {d['policy']}"
        return out
    return ""


def step_line(step, width: int = 34, gap: str = " ") -> str:
    """`  incremental  text.story  template and model data ... [counts]`;
    `gap` goes between the node and the reason."""
    c = counts(step.kind, dict(step.detail))
    secs = getattr(step, "seconds", None)
    tail = f" in {secs:.2f}s" if secs and step.action != "skip" else ""
    body = step.reason + (f" [{c}]" if c else "")
    return f"  {step.action:<11} {step.unique_id:<{width}}{gap}{body}{tail}"


def steps_markdown(steps) -> str:
    """Steps as a Markdown table: action, node, why, counts."""
    return markdown_table(
        ["action", "node", "why", "counts"],
        [[s.action, f"`{s.unique_id}`", s.reason, counts(s.kind, dict(s.detail))] for s in steps],
    )


def format_plan(plan, fmt: str = "text", *, declarations: bool = False) -> str:
    if fmt == "json":
        return json.dumps(plan.to_dict(), indent=2, default=str)
    steps = [
        s for s in plan.steps if declarations or s.kind not in ("source", "encoder", "features")
    ]
    summary = ", ".join(f"{n} {a}" for a, n in plan.summary().items()) or "nothing selected"
    where = plan.database + (f", last run {plan.last_run}" if plan.last_run else "")
    if fmt == "markdown":
        lines = [
            f"### segtool plan: `{plan.project}` (target `{plan.target}`)",
            "",
            f"Compared with {md_escape(where)}. {summary}. Nothing was written.",
            "",
            steps_markdown(steps),
        ]
        lines += [f"\n> **warning:** {md_escape(w)}" for w in plan.warnings]
        lines += [f"\n> note: {md_escape(n)}" for n in plan.notes]
        return "\n".join(lines)
    if fmt != "text":
        raise ProjectError(f"unknown format '{fmt}'", hint="text, json or markdown")
    width = max([len(s.unique_id) for s in steps] + [10])
    lines = [
        f"plan for {plan.project} (target {plan.target}, {where}); dry run: nothing is written"
    ]
    lines += [step_line(s, width) for s in steps]
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"summary: {summary}")
    return "\n".join(lines)


def run_summary(result) -> str:
    """The last line of `segtool run`."""
    actions = result.summary.get("actions", {})  # declarations are not counted
    parts = ", ".join(f"{n} {a}" for a, n in actions.items() if a != "skip")
    skipped = actions.get("skip", 0)
    tail = (parts or "nothing to do") + (f"; {skipped} up to date" if skipped else "")
    return f"run {result.run_id}: {result.status} in {result.seconds:.1f}s ({tail})"
