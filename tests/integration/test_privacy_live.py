"""A run with differential privacy on: devices clip and noise their changes, the coordinator reports each device's
budget per round, label counts stay on the devices when the strategy does not need them, and no secret is recorded."""

import pytest

from fedge.privacy import epsilon
from fedge.task.data import write_jsonl
from tests.integration.helpers import fleet_config, run_fleet, shard

pytestmark = pytest.mark.broker


def test_devices_clip_and_noise_and_the_budget_is_reported_per_round(mosquitto, tiny_backbone, tmp_path):
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    for index in range(2):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
    url = mosquitto.url.replace("mqtt://", "mqtt://operator:hunter2@")  # a password in the URL must not be recorded
    config = fleet_config(tmp_path, url, tiny_backbone, rounds=2, planner={"max_depth": 2, "ranks": [2]}, privacy={"clip_norm": 0.05, "noise_multiplier": 1.0, "delta": 1e-5})
    records = run_fleet(tmp_path, config, agents=2)
    for record in records[1:]:
        assert record["contributors"] == ["a0", "a1"]
        assert record["privacy"]["epsilon"] == {agent: round(epsilon(record["round"], 1.0, 1e-5), 4) for agent in ("a0", "a1")}
        assert all(metrics["update_norm"] > 0 for metrics in record["client_metrics"].values())
    for agent in ("a0", "a1"):
        assert "label counts" not in (tmp_path / f"{agent}.log").read_text()  # hetlora without groups never asks
    recorded = [tmp_path / "run" / "config.json", *tmp_path.glob("*.log")]
    assert not any("hunter2" in path.read_text() for path in recorded)
    assert "operator:***@" in (tmp_path / "run" / "config.json").read_text()
