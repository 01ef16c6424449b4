"""The planner live over a real broker: plans reach the agents, agents check them, predictions meet measurements."""

import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from safetensors.numpy import load_file

from fedge.coordinator.boundary import FleetKeys, coordinator_codec
from fedge.trust.enrolment import coordinator_credentials
from fedge.task.data import write_jsonl
from fedge.task.wordnet import WORDNET_TASK
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import Assignment, BackboneSpec, GlobalState, Hello, Limits, LoraSpec, Reject, TaskSpec, topics
from fedge.lora import parse_adapter_key
from tests.integration.helpers import cli, credentials_args, enrolled_fleet, finish, shard

pytestmark = pytest.mark.broker


def _agent(url: str, agent_id: str, device: str, tmp_path: Path) -> subprocess.Popen:
    write_jsonl(tmp_path / f"{agent_id}.jsonl", shard(len(agent_id)))
    return cli("agent", "--broker", url, "--data", str(tmp_path / f"{agent_id}.jsonl"), *credentials_args(tmp_path, agent_id), "--device-profile", device, "--heartbeat", "2", log=tmp_path / f"{agent_id}.log")


def _config(url: str, backbone: Path, tmp_path: Path, **overrides) -> Path:
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    config = {
        "run_id": "plan", "run_dir": str(tmp_path / "run"), "broker": url, "backbone": str(backbone), "enrolment": str(enrolled_fleet(tmp_path, ("gpu", "cpu", "small"))),
        "eval_data": str(tmp_path / "test.jsonl"), "rounds": 1, "min_clients": 2, "expected_clients": 2,
        "local_steps": 2, "batch_size": 4, "registration_timeout_s": 60, "round_deadline_s": 60,
        "planner": {"max_depth": 3, "ranks": [2, 4]}, "task": {"max_tokens": 24}, **overrides,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_planner_assigns_each_device_and_predictions_meet_measurements(mosquitto, tiny_backbone, tmp_path):
    coordinator = cli("coordinator", "--config", str(_config(mosquitto.url, tiny_backbone, tmp_path)), log=tmp_path / "coordinator.log")
    agents = [_agent(mosquitto.url, "gpu", "jetson-orin-nano-8gb", tmp_path), _agent(mosquitto.url, "cpu", "cpu-8gb", tmp_path)]
    finish(coordinator, agents)
    run = tmp_path / "run"
    plan = {device["device_id"]: device for device in json.loads((run / "plan.json").read_text())["devices"]}
    assert set(plan) == {"gpu", "cpu"} and all(device["feasible"] for device in plan.values())
    for agent_id, device in plan.items():  # the update each agent sent has exactly its planned layers and ranks
        update = load_file(run / "updates" / "round_001" / f"{agent_id}.safetensors")
        ranks = {parse_adapter_key(key)[0]: value.shape[0] for key, value in update.items() if key.endswith("lora_A.weight")}
        assert ranks == dict(zip(device["layers"], device["ranks"]))
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    for agent_id in ("gpu", "cpu"):
        capacity = record["capacity"][agent_id]
        assert capacity["predicted_peak_bytes"] == plan[agent_id]["memory"]["total"]
        assert capacity["measured_peak_bytes"] > 100 * 2**20  # a whole Python + torch process, measured
        assert capacity["measured_step_seconds"] > 0 and capacity["predicted_step_seconds"] > 0


def test_a_device_the_planner_cannot_fit_is_refused_and_its_agent_says_why(mosquitto, tiny_backbone, tmp_path):
    config = _config(mosquitto.url, tiny_backbone, tmp_path, min_clients=1, expected_clients=1, planner={"safety_margin": 0.01})
    coordinator = cli("coordinator", "--config", str(config), log=tmp_path / "coordinator.log")
    agent = _agent(mosquitto.url, "small", "cpu-8gb", tmp_path)
    try:
        assert agent.wait(timeout=120) == 2
        assert "refused this device (infeasible): out of memory" in (tmp_path / "small.log").read_text()
        assert coordinator.wait(timeout=60) == 1
    finally:
        for process in (coordinator, agent):
            process.kill()
    device = json.loads((tmp_path / "run" / "plan.json").read_text())["devices"][0]
    assert not device["feasible"] and device["reason"].startswith("out of memory")
    assert "only 0 agents can train" in (tmp_path / "coordinator.log").read_text()


def test_an_agent_refuses_a_plan_bigger_than_its_free_memory_or_an_invalid_task(mosquitto, tiny_backbone, tmp_path):
    fleet = enrolled_fleet(tmp_path, ("tight",))  # a hand-driven coordinator signing with the fleet's coordinator key
    codec = coordinator_codec(FleetKeys(fleet), coordinator_credentials(fleet), "run", Limits())
    coordinator = MqttTransport(BrokerConfig.from_url(mosquitto.url), "fake-coordinator", codec=codec)
    coordinator.subscribe(topics.uplink("tight"))
    coordinator.connect()
    agent = _agent(mosquitto.url, "tight", "cpu-8gb", tmp_path)
    try:
        def next_message(kind):
            deadline = time.time() + 60
            while time.time() < deadline:
                received = coordinator.receive(timeout_s=0.5)
                if received is not None and isinstance(received.message, kind):
                    return received.message
            raise AssertionError(f"no {kind.__name__} from the agent")

        next_message(Hello)
        assignment = Assignment(
            "run", 1, "tight", BackboneSpec(str(tiny_backbone), "0" * 64, "fp32"), LoraSpec(("q_proj",), (3,), (2,), 2.0),
            WORDNET_TASK, 2, 4, 1e-3, time.time() + 60, 0, predicted_peak_bytes=2**50, predicted_step_seconds=0.1,
        )
        coordinator.publish(topics.downlink("tight"), assignment)
        coordinator.publish(topics.downlink("tight"), GlobalState("run", 1, "tight", False, {}, {}))
        reject = next_message(Reject)
        assert reject.reason == "insufficient_memory" and reject.round == 1 and reject.ref == assignment.message_id
        assert "1048576.00 GiB" in reject.detail and "free" in reject.detail

        forged_task = TaskSpec("classify", ("only-one",), "no placeholder", 48)  # the network's word is checked, not trusted
        bad = replace(assignment, round=2, task=forged_task, predicted_peak_bytes=0, message_id="task-check")
        coordinator.publish(topics.downlink("tight"), bad)
        coordinator.publish(topics.downlink("tight"), GlobalState("run", 2, "tight", False, {}, {}))
        reject = next_message(Reject)
        assert reject.reason == "cannot_train" and reject.round == 2 and "the assigned task is invalid" in reject.detail
        for round_number, change, reason in [
            (3, {"task": TaskSpec("os.system")}, "'os.system' is not a task kind here"),  # a name, never code to import
            (4, {"prefix_cache_bytes": -1}, "prefix_cache_bytes is negative"),
            (5, {"strategy": "full", "clip_norm": 1.0}, "privacy is not available under full"),
        ]:
            forged = replace(assignment, round=round_number, predicted_peak_bytes=0, message_id=f"check-{round_number}", **change)
            coordinator.publish(topics.downlink("tight"), forged)
            coordinator.publish(topics.downlink("tight"), GlobalState("run", round_number, "tight", False, {}, {}))
            reject = next_message(Reject)
            assert reject.reason == "cannot_train" and reject.round == round_number and reason in reject.detail
    finally:
        agent.kill()
        coordinator.close()
