"""A fleet on a GPT-2 backbone (Conv1D weights, layer list ``h``, learned positions) through a real broker."""

import json

import pytest
import yaml

from fedge.task.data import write_jsonl
from tests.integration.helpers import cli, finish, shard
from tests.tiny_model import build_tiny_backbone

pytestmark = pytest.mark.broker


def test_a_gpt2_backbone_federates_with_its_own_target_modules(mosquitto, tmp_path):
    backbone = build_tiny_backbone(tmp_path / "tiny-gpt2", family="gpt2")
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    config = {
        "run_id": "gpt2", "run_dir": str(tmp_path / "run"), "broker": mosquitto.url, "backbone": str(backbone),
        "eval_data": str(tmp_path / "test.jsonl"), "rounds": 1, "min_clients": 2, "expected_clients": 2,
        "local_steps": 2, "batch_size": 4, "registration_timeout_s": 60, "round_deadline_s": 60,
        "strategy": "fedex-lora", "planner": {"max_depth": 2, "ranks": [2], "rank_profile": "uniform"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    coordinator = cli("coordinator", "--config", str(tmp_path / "c.yaml"), log=tmp_path / "coordinator.log")
    agents = []
    for index in range(2):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
        agents.append(cli("agent", "--broker", mosquitto.url, "--data", str(tmp_path / f"a{index}.jsonl"), "--id", f"a{index}", "--device-profile", "cpu-8gb", "--cache", str(tmp_path / "cache"), log=tmp_path / f"a{index}.log"))
    finish(coordinator, agents)
    run = tmp_path / "run"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds[-1]["round"] == 1 and rounds[-1]["contributors"] == ["a0", "a1"]
    assert json.loads((run / "plan.json").read_text())["options"]["target_modules"] == ["c_attn"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone), run / "adapter")
    adapted = {name.split(".h.")[1].split(".")[0] for name, _ in loaded.named_parameters() if "lora_A" in name and "c_attn" in name}
    assert adapted == {"2", "3"}
