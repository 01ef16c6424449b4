"""A fleet on a GPT-2 backbone (Conv1D weights, layer list ``h``, learned positions) through a real broker."""

import json

import pytest

from fedge.task.data import write_jsonl
from tests.integration.helpers import fleet_config, run_fleet, shard
from tests.tiny_model import build_tiny_backbone

pytestmark = pytest.mark.broker


def test_a_gpt2_backbone_federates_with_its_own_target_modules(mosquitto, tmp_path):
    backbone = build_tiny_backbone(tmp_path / "tiny-gpt2", family="gpt2")
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    for index in range(2):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
    config = fleet_config(tmp_path, mosquitto.url, backbone, strategy="fedex-lora", planner={"max_depth": 2, "ranks": [2], "rank_profile": "uniform"})
    rounds = run_fleet(tmp_path, config, agents=2)
    run = tmp_path / "run"
    assert rounds[-1]["round"] == 1 and rounds[-1]["contributors"] == ["a0", "a1"]
    assert json.loads((run / "plan.json").read_text())["options"]["target_modules"] == ["c_attn"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone), run / "adapter")
    adapted = {name.split(".h.")[1].split(".")[0] for name, _ in loaded.named_parameters() if "lora_A" in name and "c_attn" in name}
    assert adapted == {"2", "3"}
