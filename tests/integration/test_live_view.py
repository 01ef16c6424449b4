"""A real run seen live: the coordinator serves its fleet page, /api/status and /metrics while enrolled agents train
over Mosquitto, the agents' heartbeats carry their training progress, and `fedge status` shows the same fleet."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fedge.task.data import write_jsonl
from tests.integration.helpers import FLEET_SIZE, cli, credentials_args, fleet_config, shard

pytestmark = pytest.mark.broker
WIDE = {**os.environ, "COLUMNS": "200"}
WAIT_S = 300  # generous: the machine may be busy; every wait ends as soon as what it waits for is seen


def _wait_for(what, timeout_s: float = WAIT_S):
    """Poll ``what()`` until it returns something truthy (returned), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout_s} s")


def _status(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "api/status", timeout=5) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


def _samples(url: str) -> dict:
    with urllib.request.urlopen(url + "metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_running_fleet_is_visible_live(mosquitto, tiny_backbone, tmp_path):
    for index in range(2):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index, 24))
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    config = fleet_config(tmp_path, mosquitto.url, tiny_backbone, rounds=2, local_steps=12, planner={"max_depth": 1, "ranks": [2]}, final_eval_wait_s=120)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    coordinator = cli("coordinator", "--config", str(tmp_path / "c.yaml"), log=tmp_path / "coordinator.log")
    agents = [cli("agent", "--broker", mosquitto.url, "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", "cpu-8gb",
                  "--cache", str(tmp_path / f"cache{index}"), "--heartbeat", "0.2", "--slowdown", "40", log=tmp_path / f"a{index}.log") for index in range(2)]
    try:
        url = _wait_for(lambda: (run_dir / "live.json").exists() and json.loads((run_dir / "live.json").read_text())["url"])
        training = _wait_for(lambda: (status := _status(url)) and any(device["state"] == "training" and device["steps"] == 12 for device in status["devices"]) and status)
        assert training["phase"] == "training" and {device["agent_id"] for device in training["devices"]} == {"a0", "a1"}
        assert all(device["plan"].startswith("fp32 · rank 2 · 1 layers · 12 steps of 4") for device in training["devices"])
        shown = subprocess.run([sys.executable, "-m", "fedge.shell.cli", "status", str(run_dir), "--json"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and {device["agent_id"] for device in json.loads(shown.stdout)["devices"]} == {"a0", "a1"}
        finished = _wait_for(lambda: (samples := _samples(url)).get(("fedge_updates_accepted_total", ()), 0) == 4 and samples.get(("fedge_heldout", (("measure", "accuracy"),))) is not None and samples)
        assert finished[("fedge_devices", (("state", "enrolled"),))] == FLEET_SIZE and finished[("fedge_devices", (("state", "planned"),))] == 2
        assert finished[("fedge_bytes_total", (("direction", "up"),))] > 0 and finished[("fedge_bytes_total", (("direction", "down"),))] > 0
        assert finished[("fedge_message_wait_seconds_count", ())] > 0 and finished[("fedge_aggregation_seconds_count", ())] == 2
        assert finished[("fedge_evaluation_seconds_count", ())] >= 2 and finished[("fedge_round", ())] == 2
        table = subprocess.run([sys.executable, "-m", "fedge.shell.cli", "status", str(run_dir)], capture_output=True, text=True, timeout=60, env=WIDE)
        assert table.returncode == 0 and "a0" in table.stdout and "finishing" in table.stdout
    finally:
        for process in (coordinator, *agents):
            process.kill()  # the coordinator was holding the run open for evaluations that never come
            process.wait(timeout=60)
    gone = subprocess.run([sys.executable, "-m", "fedge.shell.cli", "status", str(run_dir)], capture_output=True, text=True, timeout=60, env=WIDE)
    assert gone.returncode == 1 and "no coordinator serves" in gone.stdout and "round 2" in gone.stdout  # its live.json is left, its address answers no more
