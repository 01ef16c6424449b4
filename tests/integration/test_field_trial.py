"""A field trial on a real fleet: the coordinator runs a trial's arms one after another over agents that are separate
processes with their own data and credentials, started with their usual command, and writes the trial report."""

import json

import pytest
import yaml

from fedge.coordinator.config import ConfigError, CoordinatorConfig
from fedge.shell.trial.field import FieldTrial
from fedge.task.data import write_jsonl
from tests.integration.helpers import cli, credentials_args, finish, fleet_config, shard

pytestmark = pytest.mark.broker


def test_the_coordinator_runs_every_arm_over_the_same_connected_agents(mosquitto, tiny_backbone, tmp_path):
    for index in range(2):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index, 24))  # each device its own shard
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    config = fleet_config(tmp_path, mosquitto.url, tiny_backbone, planner={"max_depth": 1, "ranks": [2]}, registration_timeout_s=60)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    arms = {"name": "field", "strategies": ["hetlora", "flexlora"], "seeds": [0, 1], "baseline": "hetlora", "target_accuracy": 0.9}
    (tmp_path / "arms.yaml").write_text(yaml.safe_dump(arms))
    out = tmp_path / "out"
    coordinator = cli("coordinator", "--config", str(tmp_path / "c.yaml"), "--arms", str(tmp_path / "arms.yaml"), "--out", str(out), log=tmp_path / "coordinator.log")
    agents = [cli("agent", "--broker", mosquitto.url, "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", "cpu-8gb",
                  "--cache", str(tmp_path / f"cache{index}"), "--heartbeat", "1", log=tmp_path / f"a{index}.log") for index in range(2)]
    finish(coordinator, agents, timeout_s=400)  # the last arm's final state ends the agents cleanly
    report = json.loads((out / "report.json").read_text())
    assert {row["strategy"] for row in report["rows"]} == {"hetlora", "flexlora"} and all(run["exit"] == 0 for run in report["runs"])
    assert [(run["seed"], run["strategy"]) for run in report["runs"]] == [(0, "hetlora"), (0, "flexlora"), (1, "hetlora"), (1, "flexlora")]
    for run in report["runs"]:
        run_dir = out / f"seed_{run['seed']}" / run["strategy"] / "coordinator"
        recorded = json.loads((run_dir / "config.json").read_text())
        assert recorded["strategy"] == run["strategy"] and recorded["seed"] == run["seed"]
        assert sorted(device["device_id"] for device in json.loads((run_dir / "plan.json").read_text())["devices"]) == ["a0", "a1"]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [record["round"] for record in records] == [0, 1] and sorted(records[1]["participants"]) == ["a0", "a1"]
    starts = {run["seed"]: [] for run in report["runs"]}
    for run in report["runs"]:
        starts[run["seed"]].append(json.loads((out / f"seed_{run['seed']}" / run["strategy"] / "coordinator" / "metrics.jsonl").read_text().splitlines()[0])["loss"])
    assert all(len(set(losses)) == 1 for losses in starts.values())  # every arm of a seed starts from the same model
    assert [c["strategy"] for c in report["comparisons"]] == ["flexlora"] and report["comparisons"][0]["difference"]["count"] == 2
    markdown = (out / "report.md").read_text()
    assert "## Against the baseline: hetlora" in markdown and "Every device trained on its own data" in markdown and "a0 (cpu-8gb)" in markdown
    assert "planner {'ranks': [2], 'max_depth': 1}" in markdown
    for index in range(2):
        assert (tmp_path / f"a{index}.log").read_text().count("staying for the next run") == 3  # one process through four arms


def test_an_arms_file_is_checked_before_anything_runs(tmp_path):
    config = CoordinatorConfig.from_dict({"eval_data": "test.jsonl", "insecure": True})
    (tmp_path / "arms.yaml").write_text(yaml.safe_dump({"strategies": ["hetlora", {"name": "flexlora", "colour": 1}], "seeds": [0, 0], "rounds": 3, "baseline": "fedit", "target_accuracy": 2}))
    with pytest.raises(ConfigError) as error:
        FieldTrial.from_yaml(tmp_path / "arms.yaml", config)
    text = str(error.value)
    for problem in ("strategies[1].colour: unknown key", "rounds: unknown key (known: strategies, name, seeds, baseline, target_accuracy)", "target_accuracy: must be <= 1 (got 2)"):
        assert problem in text, text
    (tmp_path / "arms.yaml").write_text(yaml.safe_dump({"strategies": ["hetlora", {"name": "flexlora", "options": {"colour": 1}}], "seeds": [0, 0], "baseline": "fedit"}))
    with pytest.raises(ConfigError) as error:
        FieldTrial.from_yaml(tmp_path / "arms.yaml", config)
    for problem in ("strategies[1].options: flexlora:", "seeds: each seed once", "baseline: 'fedit' is not one of"):
        assert problem in str(error.value), str(error.value)
