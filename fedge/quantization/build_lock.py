"""Building a shared cache entry (a converted backbone, a quantized package) once, whoever asks first: processes
that start together (a trial's agents, a coordinator beside them) take an exclusive ``flock`` on the entry's lock
file; the first builds into a directory of its own and renames it into place, the others wait, then find it built.
The kernel drops a dead builder's lock, and its half-written directory is never the entry."""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def build_once(target: Path, built: Callable[[Path], bool], build: Callable[[Path], None], what: str) -> None:
    """Make ``target`` with ``build(scratch)`` unless ``built(target)``; concurrent callers build it once."""
    if built(target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s", what)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if built(target):
            return
        scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".partial", dir=target.parent))
        started = time.monotonic()
        try:
            build(scratch)
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
            log.info("built %s in %.0f s (kept in %s)", what, time.monotonic() - started, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
