"""The broker goes away mid-run and comes back: nothing crashes and the run finishes."""

import json
import subprocess
import sys
import time

import pytest
import yaml

from fedge.task.data import write_jsonl
from tests.conftest import MOSQUITTO, Mosquitto
from tests.integration.helpers import credentials_args, enrolled_fleet, shard

pytestmark = pytest.mark.broker


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
def test_run_survives_a_broker_restart(tiny_backbone, tmp_path):
    broker = Mosquitto(tmp_path).start()
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    run = tmp_path / "run"
    config = {
        "run_id": "outage", "run_dir": str(run), "broker": broker.url, "backbone": str(tiny_backbone), "eval_data": str(tmp_path / "test.jsonl"),
        "enrolment": str(enrolled_fleet(tmp_path)), "rounds": 4, "min_clients": 1, "expected_clients": 2, "local_steps": 2, "batch_size": 4,
        "registration_timeout_s": 60, "round_deadline_s": 15, "planner": {"max_depth": 2, "ranks": [2]}, "devices": {"cpu": {"rank": 2, "depth": 2}},
    }
    processes = []
    try:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        cli = [sys.executable, "-m", "fedge.shell.cli", "--log-file"]
        processes.append(subprocess.Popen([*cli, str(tmp_path / "c.log"), "coordinator", "--config", str(tmp_path / "c.yaml")], stderr=subprocess.DEVNULL))
        for index in range(2):
            write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
            processes.append(subprocess.Popen([*cli, str(tmp_path / f"a{index}.log"), "agent", "--broker", broker.url, "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", "cpu-8gb", "--heartbeat", "1"], stderr=subprocess.DEVNULL))
        deadline = time.time() + 120
        while not (run / "globals" / "round_001.safetensors").exists() and time.time() < deadline:
            time.sleep(0.1)
        broker.restart()
        assert processes[0].wait(timeout=180) == 0
        for agent in processes[1:]:
            assert agent.wait(timeout=60) == 0
    finally:
        for process in processes:
            process.kill()
        broker.stop()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    assert records[-1]["contributors"] == ["a0", "a1"]  # both agents came back

