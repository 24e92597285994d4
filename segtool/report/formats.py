"""Output formats for validation results."""

from __future__ import annotations

import json

from segtool.errors import ProjectError
from segtool.words import counted


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
        out.append(counted(len(errors), "error") if errors else "segtool validate: ok")
        return "\n".join(out)
    if not errors:
        return f"ok: {n_nodes} nodes, no errors"
    lines = [e.format() for e in errors]
    lines.append(counted(len(errors), "error"))
    return "\n".join(lines)
