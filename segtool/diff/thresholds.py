"""`--fail-on`: thresholds over a diff's metrics, for CI."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from segtool.errors import ProjectError, did_you_mean

STATIC_METRICS = (
    "nodes_changed",
    "refits",
    "added",
    "removed",
    "changed",
    "rebuilds",
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
                if s.get("status") == "single_run":
                    # nothing compared: every user counts as 'entered', which
                    # failed `entered>0` on a segmentation's first run while
                    # the note said there was nothing to compare yet
                    continue
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
