"""The shell's child processes: stopped on any exit, never orphaned, and their JSON-lines files read whole lines only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedge.shell.processes import JsonLines, children


def _gone(pid: int, timeout_s: float = 60) -> bool:
    """Whether ``pid`` has exited (or is a zombie) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_half_written_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    follower = JsonLines(path)
    assert follower.new_records() == []  # not there yet
    path.write_text(json.dumps({"round": 0}) + "\n" + '{"round": 1, "accura')
    assert follower.new_records() == [{"round": 0}]
    assert follower.new_records() == []
    with path.open("a") as handle:
        handle.write('cy": 0.5}\n')
    assert follower.new_records() == [{"round": 1, "accuracy": 0.5}]


def test_every_child_is_stopped_when_the_block_fails():
    with pytest.raises(RuntimeError), children() as running:
        running.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        raise RuntimeError("the demo failed")
    assert running[0].poll() is not None


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")
def test_children_die_with_a_killed_parent(tmp_path):
    """A demo killed with SIGKILL runs no cleanup; its children still end (no orphans)."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from fedge.shell.processes import _die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], preexec_fn=_die_with_parent)
        print(child.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(child_pid)


def test_sigterm_to_the_shell_stops_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    shell = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from fedge.shell.processes import children
        with children() as running:
            running.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
            open({str(pid_file)!r}, "w").write(str(running[0].pid))
            time.sleep(600)
    """)])
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    shell.send_signal(signal.SIGTERM)
    assert shell.wait(timeout=120) == 128 + signal.SIGTERM
    assert _gone(int(pid_file.read_text()))
