"""An exclusive lock on a run directory, so two processes never train the same run at once.

``fcntl.flock`` on ``<run>/.breastgan.lock``: the kernel releases it when the holder exits, however it
exits (also SIGKILL), so a dead holder never blocks the next run. The file records the holder's PID,
host and start time: a second trainer is refused with that information, and a trainer that takes
over a lock file left by a holder that died without cleaning up says whose it was.
Only rank 0 (the only writer) takes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".breastgan.lock"


class RunLockedError(RuntimeError):
    """Another live process trains this run directory."""


class RunDirLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self.stale: dict | None = None  # the record a dead holder left behind, if any

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def acquire(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._read()
            raise RunLockedError(
                f"{self.path.parent}: already being trained by PID {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                f"(since {holder.get('started', '?')}; lock file {self.path}). Wait for it to finish or stop it first; "
                "two trainers on one run would overwrite each other's checkpoints") from None
        previous = self._read()
        if previous.get("pid"):
            self.stale = previous  # its holder died without releasing the file (the kernel released the lock)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file: released cleanly (a non-empty one marks a crash)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
