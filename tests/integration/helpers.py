"""Shared pieces of the broker integration tests: a small labelled shard and a fedge command as a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedge.task.data import Example, Row


def shard(seed: int, size: int = 24) -> list[Example]:
    """``size`` two-word examples over the eight labels, shifted by ``seed``."""
    words = ["animal", "food", "plant", "time", "place", "body", "person", "substance"]
    return [Example(f"{words[(i + seed) % 8]} of {words[(i * 3) % 8]}", (i + seed) % 8) for i in range(size)]


def cli(*args: str, log: Path) -> subprocess.Popen:
    """``python -m fedge.cli --log-file LOG ARGS…`` with stderr kept for the failure message."""
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", "--log-file", str(log), *args], stderr=subprocess.PIPE)


def finish(coordinator: subprocess.Popen, agents: list[subprocess.Popen], timeout_s: float = 240) -> None:
    """Wait for the coordinator to end the run and every agent to stop cleanly; kill whatever is left."""
    try:
        assert coordinator.wait(timeout=timeout_s) == 0, coordinator.stderr.read().decode()[-2000:]
        for agent in agents:
            assert agent.wait(timeout=60) == 0  # the final global state ends each agent cleanly
    finally:
        for process in [coordinator, *agents]:
            process.kill()


def rows(examples: list[Example]) -> list[Row]:
    """Examples as an agent reads them from a file (labels as class indices)."""
    return [Row(example.text, example.label, line) for line, example in enumerate(examples, 1)]
