"""Starting fedge commands as child processes with their own log files (demo and trials), stopping every one of them
on any exit, and following the JSON-lines files they write."""

from __future__ import annotations

import ctypes
import json
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the parent dies, even by SIGKILL (no orphans)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's own cleanup still stops it
        pass


def spawn(args: list[str], log_path: Path, program: tuple[str, ...] = ("fedge.shell.cli",)) -> subprocess.Popen:
    """``python -m fedge.shell.cli --log-file LOG ARGS…`` (``program``: another module and its leading arguments);
    stderr goes to LOG with an ``.err`` suffix."""
    with log_path.with_suffix(".err").open("w") as errors:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", *program, "--log-file", str(log_path), *args], stdout=subprocess.DEVNULL, stderr=errors, preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def stop(workers: list[subprocess.Popen], timeout_s: float = 30) -> None:
    """Wait for each worker to end by itself, killing those that do not within ``timeout_s``."""
    for worker in workers:
        try:
            worker.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def terminate(workers: list[subprocess.Popen], timeout_s: float = 10) -> None:
    """Ask every worker still running to stop (SIGTERM), then kill those that have not within ``timeout_s``."""
    running = [worker for worker in workers if worker.poll() is None]
    for worker in running:
        worker.terminate()
    stop(running, timeout_s)


class _Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that cleanup runs."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated(128 + signum)


@contextmanager
def children() -> Iterator[list[subprocess.Popen]]:
    """A list to add spawned processes to; whatever ends the block (success, an error, Ctrl-C or SIGTERM), every
    child still running is terminated before it is left."""
    spawned: list[subprocess.Popen] = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        yield spawned
    finally:
        if any(worker.poll() is None for worker in spawned):
            log.info("stopping %d child processes", sum(worker.poll() is None for worker in spawned))
        terminate(spawned)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


class JsonLines:
    """New records of a JSON-lines file another process appends to: only complete lines are parsed (a line still
    being written waits for its newline), each record once."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_records(self) -> list[dict]:
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        return [json.loads(line) for line in complete if line.strip()]
