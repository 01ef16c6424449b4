"""Kill the coordinator mid-run: restarted with --resume it continues from its last completed round (or version,
in asynchronous rounds)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from fedge.profiles import load_catalogue_profile
from fedge.task.data import write_jsonl
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import AdapterUpdate, Heartbeat, Hello, encode_message, topics
from fedge.wire.envelope import Signer
from tests.integration.helpers import credentials, credentials_args, enrolled_fleet, shard

pytestmark = pytest.mark.broker


def _cli(*args, log):
    return subprocess.Popen([sys.executable, "-m", "fedge.shell.cli", "--log-file", str(log), *args], stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("round_mode", ["sync", "async"])
def test_a_killed_coordinator_resumes_and_agents_rejoin(mosquitto, tiny_backbone, tmp_path, round_mode):
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    run = tmp_path / "run"
    config = {
        "run_id": "resume", "run_dir": str(run), "broker": mosquitto.url, "backbone": str(tiny_backbone),
        "enrolment": str(enrolled_fleet(tmp_path)), "eval_data": str(tmp_path / "test.jsonl"), "rounds": 6, "min_clients": 2, "expected_clients": 2,
        "local_steps": 2, "batch_size": 4, "registration_timeout_s": 60, "round_deadline_s": 60,
        "planner": {"max_depth": 2, "ranks": [2]}, "devices": {"cpu": {"rank": 2, "depth": 2}},
        "round_mode": round_mode, "buffer_size": 2,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    coordinator = _cli("coordinator", "--config", str(tmp_path / "c.yaml"), log=tmp_path / "c1.log")
    agents = []
    for index in range(2):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
        agents.append(_cli("agent", "--broker", mosquitto.url, "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", "cpu-8gb", "--heartbeat", "1", log=tmp_path / f"a{index}.log"))
    captured = _dead_device_traffic(tmp_path, "a5")
    replayer = MqttTransport(BrokerConfig.from_url(mosquitto.url), client_id="replayer")
    replayer.connect()
    try:
        deadline = time.time() + 120
        while not (run / "globals" / "round_001.safetensors").exists() and time.time() < deadline:
            time.sleep(0.2)
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
        rounds_before = [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
        # round 1 is committed: its record is written, or kept beside its state until it is scored (on resume if need be)
        assert rounds_before[1:2] == [1] or (run / "globals" / "round_001.json").exists()

        fresh = subprocess.run([sys.executable, "-m", "fedge.shell.cli", "coordinator", "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=60)
        assert fresh.returncode != 0 and "--resume" in fresh.stderr + fresh.stdout  # never silently overwrites a run

        resumed = _cli("coordinator", "--config", str(tmp_path / "c.yaml"), "--resume", log=tmp_path / "c2.log")
        deadline = time.time() + 180
        while resumed.poll() is None and time.time() < deadline:  # a dead device's traffic, captured before the restart,
            for topic, payload in captured:  # replayed again and again while the resumed run lasts (some of it after it subscribed)
                replayer.publish_raw(topic, payload)
            time.sleep(0.5)
        assert resumed.wait(timeout=5) == 0, (tmp_path / "c2.log").read_text()[-3000:]
        for agent in agents:
            assert agent.wait(timeout=60) == 0
    finally:
        replayer.close()
        for process in [coordinator, *agents]:
            process.kill()
    resumed_log = (tmp_path / "c2.log").read_text()
    assert "sealed before this receiver started" in resumed_log and "registered a5" not in resumed_log
    assert {sender for sender, _, _ in json.loads((run / "replay_counters.json").read_text())} == {"a0", "a1"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    completed = [r["round"] for r in records]
    assert completed[:2] == [0, 1] and completed[-2:] == [5, 6] and completed.count(1) == 1
    assert records[-1]["contributors"] == ["a0", "a1"]


def _dead_device_traffic(tmp_path, agent_id: str) -> list[tuple[str, bytes]]:
    """A hello, a heartbeat and a round-2 update of ``agent_id`` as it signed them (sealed now, before the restart)."""
    device = credentials(tmp_path, agent_id)
    signer = Signer(device.identity, device.signing_key())
    up, beat = topics.uplink(agent_id), topics.heartbeat(agent_id)
    hello = Hello(agent_id, load_catalogue_profile("cpu-8gb"), 50, ())
    update = AdapterUpdate("resume", 2, agent_id, 50, {"loss": 1.0}, {})
    return [(up, signer.seal(up, "", encode_message(hello))), (beat, signer.seal(beat, "", encode_message(Heartbeat(agent_id, "idle", 1.0)), "beat")),
            (up, signer.seal(up, "resume", encode_message(update)))]
