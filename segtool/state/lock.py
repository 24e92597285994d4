"""A run lock beside the database file, so a second run fails at once and says
who holds the database and since when. DuckDB's own file lock backs it up."""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from segtool.errors import LockError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(info: dict) -> str:
    cmd = info.get("command", "segtool")
    return f"`{cmd}` (pid {info.get('pid')} on {info.get('host')}, since {info.get('started_at')})"


class RunLock:
    def __init__(self, db_path: Path, command: str):
        self.path = Path(str(db_path) + ".lock")
        self.command = command
        self.held = False

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.read() or {}
                stale = holder.get("host") == socket.gethostname() and not _alive(
                    int(holder.get("pid", 0) or 0)
                )
                if stale or not holder:
                    self.path.unlink(missing_ok=True)  # the holder died without cleaning up
                    continue
                raise LockError(
                    f"database {self.path.with_suffix('')} is locked by {describe_holder(holder)}",
                    hint=f"wait for that run to finish; if it is gone, delete {self.path}",
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            return self
        raise LockError(f"cannot take the run lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
