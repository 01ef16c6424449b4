"""One coordinator per run: a second one started for a running run is refused with a clear message, at once."""

import subprocess
import sys
import time

import pytest
import yaml

from fedge.coordinator.run_lock import RunInUse, RunLock
from fedge.task.data import write_jsonl
from tests.integration.helpers import fleet_config, shard


def test_the_lock_is_exclusive_names_its_holder_and_frees_on_release(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire("r")
    with pytest.raises(RunInUse, match=r"run 'r' is already being coordinated from .* \(process \d+\)"):
        second.acquire("r")
    first.release()
    second.acquire("r")
    second.release()


@pytest.mark.broker
def test_a_second_coordinator_for_a_running_run_refuses_to_start(mosquitto, tiny_backbone, tmp_path):
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(fleet_config(tmp_path, mosquitto.url, tiny_backbone, registration_timeout_s=120)))
    command = [sys.executable, "-m", "fedge.shell.cli", "coordinator", "--config", str(tmp_path / "c.yaml")]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "coordinator.lock").exists() or not (tmp_path / "run" / "coordinator.lock").read_text().strip():
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read() if first.poll() is not None else "no lock"
            time.sleep(0.2)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and f"already being coordinated from {tmp_path / 'run'} (process {first.pid})" in second.stdout + second.stderr
        assert first.poll() is None  # the first goes on waiting for its devices
    finally:
        first.kill()
