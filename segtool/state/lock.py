"""The run lock: one `segtool run` per database at a time.

An OS file lock (the `filelock` package: flock on POSIX, LockFileEx on
Windows) on `<database>.lock` decides who holds the database: it is atomic,
and the operating system releases it when the holder dies, however it dies,
so there is no stale lock to take over and no race between two processes that
find a lock file at once. Beside it, `<database>.lock.json` names the holder
(pid, host, command, start time) so a refused run can say who holds the
database and since when; it is written after the lock is taken and only read
for that message. DuckDB's own file lock backs this up against other clients.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

import filelock

from segtool.errors import LockError


def describe_holder(info: dict) -> str:
    cmd = info.get("command", "segtool")
    return f"`{cmd}` (pid {info.get('pid')} on {info.get('host')}, since {info.get('started_at')})"


class RunLock:
    def __init__(self, db_path: Path, command: str):
        self.db_path = Path(db_path)
        self.path = Path(str(db_path) + ".lock")
        self.info_path = Path(str(db_path) + ".lock.json")
        self.command = command
        self._lock = filelock.FileLock(str(self.path), timeout=0, thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def read(self) -> dict | None:
        """Who holds (or last held) the lock, as written by the holder."""
        try:
            return json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            holder = self.read()
            who = describe_holder(holder) if holder else "another process"
            raise LockError(
                f"database {self.db_path} is locked by {who}",
                hint="wait for that run to finish (the lock is released when its process ends)",
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
        }
        tmp = self.info_path.with_name(self.info_path.name + f".{os.getpid()}")
        try:
            tmp.write_text(json.dumps(info))
            tmp.replace(self.info_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # the holder's name is a courtesy, not the lock
        return self

    def release(self) -> None:
        if self.held:
            info = self.read()
            if info and info.get("pid") == os.getpid():
                self.info_path.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
