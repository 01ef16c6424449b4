"""One coordinator per run directory: an exclusive lock (``flock``) on ``RUN_DIR/coordinator.lock`` for as long as
the coordinator runs. A second coordinator started for the same run would otherwise take over the first one's MQTT
session (same client id) and write the same records; it is refused with the holder's process id instead. The
kernel drops the lock when the holder exits, killed or not, so a crash never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "coordinator.lock"


class RunInUse(RuntimeError):
    """Another coordinator holds this run directory."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def acquire(self, run_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunInUse(f"run {run_id!r} is already being coordinated from {self.path.parent} (process {holder}); stop that coordinator first, "
                           "or give this run its own run_id and run_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
