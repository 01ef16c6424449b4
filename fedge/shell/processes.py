"""Starting fedge commands as child processes with their own log files (demo and trials)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    """``python -m fedge.shell.cli --log-file LOG ARGS…``; stderr goes to LOG with an ``.err`` suffix."""
    with log_path.with_suffix(".err").open("w") as errors:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", "fedge.shell.cli", "--log-file", str(log_path), *args], stdout=subprocess.DEVNULL, stderr=errors)


def stop(workers: list[subprocess.Popen], timeout_s: float = 30) -> None:
    """Wait for each worker to end by itself, killing those that do not within ``timeout_s``."""
    for worker in workers:
        try:
            worker.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            worker.kill()
