"""docs/tutorial.md, run exactly as written: every bash block in order, in one shell, with HOME in a scratch
directory (the tutorial works under ~/fedge-tutorial) and the model cache where the other tests keep it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
pytestmark = [pytest.mark.broker, pytest.mark.slow]


def tutorial_commands() -> list[str]:
    """The tutorial's bash blocks, in order."""
    return re.findall(r"```bash\n(.*?)```", TUTORIAL.read_text(), re.S)


def test_the_tutorial_runs_as_written(tmp_path):
    blocks = tutorial_commands()
    assert blocks[0].startswith("source .venv/bin/activate") and any("fedge export" in block for block in blocks)
    cache = os.environ.get("FEDGE_CACHE", str(Path.home() / ".cache" / "fedge"))
    shell = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + "\n".join(blocks)], cwd=ROOT, env={**os.environ, "HOME": str(tmp_path), "FEDGE_CACHE": cache},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = shell.communicate(timeout=1800)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)  # what a failed step left running (the broker, say)
    work = tmp_path / "fedge-tutorial"
    logs = "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in sorted(work.glob("*.log")))
    assert shell.returncode == 0, f"{stdout[-2000:]}\n{stderr[-2000:]}\n{logs}"
    records = [json.loads(line) for line in (work / "runs" / "my-first-run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["round"] for record in records] == [0, 1, 2]
    assert sorted(records[2]["contributors"]) == ["jetson-01", "laptop-01"] and not records[2]["left_out"]
    assert (work / "export" / "model.onnx").exists() and "accuracy" in stdout
    assert "live fleet page: http://127.0.0.1:" in (work / "coordinator.log").read_text()
