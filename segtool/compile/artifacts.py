"""target/ artifacts: compiled SQL, manifest.json, run_results.json.

The manifest schema is versioned (`metadata.manifest_version`); `--state DIR`
reads an earlier one for `state:modified` selection and `segtool diff`."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segtool import __version__
from segtool.errors import ProjectError
from segtool.graph.dag import Graph
from segtool.project.loader import LoadedProject

MANIFEST_VERSION = 1


def manifest(proj: LoadedProject, graph: Graph) -> dict[str, Any]:
    return {
        "metadata": {
            "manifest_version": MANIFEST_VERSION,
            "segtool_version": __version__,
            "project": proj.name,
            "target": proj.target_name,
            "entity": proj.spec.entity.model_dump(),
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "vars": proj.vars,
        "nodes": {u: graph[u].to_manifest() for u in graph.order()},
    }


def write_json(path: Path, data: Any, secrets=None) -> Path:
    """Atomically (tmp + rename); secret values masked; no .tmp left on failure."""
    if secrets is not None:
        data = secrets.mask_obj(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two writers (runs on two targets, `compile` beside a
    # run) must not truncate or rename each other's file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_manifest(state_dir: Path | str) -> dict[str, Any]:
    p = Path(state_dir)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise ProjectError(
            f"no manifest at {p}",
            hint="--state takes the target/ folder of an earlier `segtool compile` or `run`",
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ProjectError(f"{p} is not valid JSON: {exc}") from exc
    version = data.get("metadata", {}).get("manifest_version")
    if version != MANIFEST_VERSION:
        raise ProjectError(
            f"{p} has manifest version {version}; this segtool reads version {MANIFEST_VERSION}"
        )
    return data
