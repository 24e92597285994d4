"""Output formats for validation results and run summaries."""

from __future__ import annotations

import json

from segtool.errors import ProjectError


def _escape_github(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def format_validation(errors: list[ProjectError], fmt: str, n_nodes: int | None) -> str:
    if fmt == "json":
        return json.dumps({"ok": not errors, "errors": [e.to_dict() for e in errors]}, indent=2)
    if fmt == "github":
        out = []
        for e in errors:
            parts = [f"file={e.path}"] if e.path else []
            if e.line:
                parts.append(f"line={e.line}")
            if e.col:
                parts.append(f"col={e.col}")
            msg = e.message + (f" ({e.hint})" if e.hint else "")
            out.append(f"::error {','.join(parts)}::{_escape_github(msg)}")
        out.append(f"{len(errors)} error(s)" if errors else "segtool validate: ok")
        return "\n".join(out)
    if not errors:
        return f"ok: {n_nodes} nodes, no errors"
    lines = [e.format() for e in errors]
    lines.append(f"{len(errors)} error(s)")
    return "\n".join(lines)


def run_summary(result) -> str:
    s = result.summary
    parts = [f"run {result.run_id}: {result.status} in {result.seconds:.1f}s"]
    if "models" in s:
        parts.append(f"{s['models']} model(s)")
    for name, t in s.get("texts", {}).items():
        parts.append(
            f"text {name}: {t['users']:,} users, {t['new']:,} new, {t['changed']:,} changed, {t['removed']:,} removed"
        )
    for name, e in s.get("embeddings", {}).items():
        speed = f" at {e['texts_per_s']:,} texts/s on {e['device']}" if e["embedded"] else ""
        parts.append(f"embed {name}: {e['cached']:,} cached, {e['embedded']:,} embedded{speed}")
    for name, g in s.get("segmentations", {}).items():
        parts.append(
            f"segments {name}: {g.get('action')} ({g.get('reason')}), {g.get('assigned', 0):,} assigned, {g.get('moved', 0):,} moved"
        )
    return "\n".join(parts)
