"""What segtool keeps once per machine, under `$SEGTOOL_CACHE` (default
`~/.cache/segtool`): distilled static models, and the content hashes of
large model files.

Hashing a model's weights is what makes an encoder's fingerprint honest (the
same files give the same fingerprint anywhere), but reading 90 MB on every
run costs ~0.1 s per model. Hashes of files of 1 MB and more are therefore
remembered by (path, size, mtime_ns), as make and rsync decide whether a file
changed; a file rewritten in place gets a new mtime and is hashed again.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

PERSIST_MIN_BYTES = 1 << 20
_HASHES_FILE = "file-hashes.json"
_MAX_ENTRIES = 2000


def cache_root() -> Path:
    """Where segtool keeps what it builds once per machine."""
    env = os.environ.get("SEGTOOL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "segtool"


def _hashes_path() -> Path:
    return cache_root() / _HASHES_FILE


def _read() -> dict:
    try:
        data = json.loads(_hashes_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered_hash(path: str, size: int, mtime_ns: int) -> str | None:
    entry = _read().get(path)
    if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [size, mtime_ns]:
        return str(entry[2])
    return None


def remember_hash(path: str, size: int, mtime_ns: int, digest: str) -> None:
    """Best effort: a read-only or full cache folder only costs the next run
    a re-hash. Written to a temporary file and renamed, so a reader never
    sees half a file; two writers at once lose one entry, not the file."""
    try:
        data = _read()
        data.pop(path, None)
        data[path] = [size, mtime_ns, digest]
        if len(data) > _MAX_ENTRIES:  # oldest first (insertion order)
            data = dict(list(data.items())[-_MAX_ENTRIES:])
        target = _hashes_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, target)
    except OSError:
        pass
