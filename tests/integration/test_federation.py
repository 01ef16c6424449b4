"""Coordinator and agents as separate processes through a real broker (Mosquitto and amqtt), tiny backbone."""

import json

import pytest
import yaml

from fedge.task.data import write_jsonl
from tests.integration.helpers import cli, credentials_args, enrolled_fleet, finish, shard

pytestmark = pytest.mark.broker


def test_heterogeneous_agents_complete_rounds_and_leave_a_loadable_adapter(any_broker, tiny_backbone, tmp_path):
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    config = {
        "run_id": "it", "run_dir": str(tmp_path / "run"), "broker": any_broker.url, "backbone": str(tiny_backbone),
        "enrolment": str(enrolled_fleet(tmp_path)), "eval_data": str(tmp_path / "test.jsonl"), "rounds": 2, "min_clients": 2, "expected_clients": 2,
        "local_steps": 2, "batch_size": 4, "registration_timeout_s": 60, "round_deadline_s": 60,
        "planner": {"max_depth": 3}, "devices": {"cpu-8gb": {"rank": 2, "depth": 1}, "jetson": {"rank": 4, "depth": 3, "quantization": "nf4"}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    coordinator = cli("coordinator", "--config", str(tmp_path / "c.yaml"), log=tmp_path / "coordinator.log")
    agents = []
    for index, device in enumerate(["cpu-8gb", "jetson-orin-nano-8gb"]):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
        agents.append(cli("agent", "--broker", any_broker.url, "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", device, "--cache", str(tmp_path / f"cache{index}"), log=tmp_path / f"a{index}.log"))
    finish(coordinator, agents)

    run = tmp_path / "run"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for record in rounds[1:]:
        assert record["contributors"] == ["a0", "a1"]
        assert record["bytes_up"]["a1"] > record["bytes_up"]["a0"] > 0  # rank 4 x 3 layers vs rank 2 x 1 layer
        assert set(record["client_metrics"]["a0"]) >= {"loss", "seconds_per_step", "peak_memory_bytes"}
    # agents prepared before round 1: backbone fetched and loaded, the rows of rounds 1 and 2 cached (2 rounds ×
    # 2 steps × 4 = 16 of 24), so neither round computes a prefix
    assert rounds[1]["prepare_s"] > 0 and "prepare_s" not in rounds[2]
    assert rounds[1]["client_metrics"]["a0"]["prefix_rows"] == rounds[2]["client_metrics"]["a0"]["prefix_rows"] == 0
    assert "ready for round 1 (16 prefix rows cached" in (tmp_path / "a0.log").read_text()
    assert (run / "metrics.png").stat().st_size > 1000
    assert (run / "updates" / "round_002" / "a1.safetensors").exists()
    # each agent started with an empty cache and received its backbone over MQTT, in the quantization it was assigned
    (fp32,), (nf4,) = [list((tmp_path / f"cache{index}").glob("*/.verified")) for index in (0, 1)]
    assert "quantization_config" not in json.loads((fp32.parent / "config.json").read_text())
    assert json.loads((nf4.parent / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_backbone), run / "adapter")
    lora_layers = {name.split(".layers.")[1].split(".")[0] for name, _ in loaded.named_parameters() if "lora_A" in name}
    assert lora_layers == {"1", "2", "3"}  # the union of both devices' top layers
