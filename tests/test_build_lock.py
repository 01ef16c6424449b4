"""Shared cache entries (a converted backbone, a quantized package) are built once when processes ask together."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys, time
from pathlib import Path
from fedge.quantization.build_lock import build_once

target, log = Path(sys.argv[1]), Path(sys.argv[2])

def build(scratch):
    with log.open("a") as handle:
        handle.write("built\\n")
    time.sleep(1.0)  # long enough for the other process to arrive while this one builds
    (scratch / "config.json").write_text("{}")

build_once(target, lambda path: (path / "config.json").exists(), build, "a test entry")
print("ready", (target / "config.json").read_text())
"""


def test_two_processes_asking_at_once_build_the_entry_once(tmp_path):
    target, log = tmp_path / "cache" / "entry", tmp_path / "builds.log"
    processes = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(target), str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-1000:] for _, err in outputs]
    assert all(out.strip() == "ready {}" for out, _ in outputs)
    assert log.read_text() == "built\n"  # once, whoever came second waited and found it built
    assert sorted(path.name for path in target.parent.iterdir()) == ["entry", "entry.lock"]  # no half-written directory left


def test_a_failed_build_leaves_no_entry_behind(tmp_path):
    import pytest

    from fedge.quantization.build_lock import build_once

    def broken(scratch):
        (scratch / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(tmp_path / "entry", lambda path: (path / "config.json").exists(), broken, "a test entry")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["entry.lock"]
