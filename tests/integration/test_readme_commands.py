"""The README's "Running the pieces yourself" commands, run as written (in a scratch copy of the repository's
examples, with the demo's evaluation file where the example config expects it)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedge.task.data import write_jsonl
from tests.integration.helpers import shard

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.broker, pytest.mark.slow]


def readme_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Running the pieces yourself", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.startswith("fedge ")]


def _run(command: str, cwd: Path, log: Path) -> subprocess.Popen:
    words = shlex.split(command.replace("[--json]", "").replace("[--device-profile NAME]", "--device-profile jetson-orin-nano-8gb"))
    return subprocess.Popen([sys.executable, "-m", "fedge.shell.cli", "--log-file", str(log), *words[1:]], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_readme_commands_run_as_written(tmp_path):
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["profile", "profile", "enroll", "broker", "coordinator", "agent"]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    write_jsonl(tmp_path / "runs/demo/data/test.jsonl", shard(3, 16))
    write_jsonl(tmp_path / "shard.jsonl", shard(0))
    for command in commands[:2]:
        process = _run(command, tmp_path, tmp_path / "profile.log")
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and b"ram" in out, err.decode()[-2000:]
    enroll = _run(commands[2], tmp_path, tmp_path / "enroll.log")
    assert enroll.wait(timeout=60) == 0, enroll.stderr.read().decode()[-2000:]
    broker = _run(commands[3], tmp_path, tmp_path / "broker.log")
    time.sleep(2)
    coordinator = _run(commands[4], tmp_path, tmp_path / "coordinator.log")
    agent = _run(commands[5], tmp_path, tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "registered jetson-01" not in _text(tmp_path / "coordinator.log"):
            assert coordinator.poll() is None, coordinator.stderr.read().decode()[-2000:]
            time.sleep(1)
        assert "registered jetson-01" in _text(tmp_path / "coordinator.log")
        assert "announced as jetson-orin-nano-8gb" in _text(tmp_path / "agent.log")
    finally:
        for process in (agent, coordinator, broker):
            process.kill()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
