import pytest

from coordinator.config import ConfigError, CoordinatorConfig


def test_valid_config_resolves_device_plans():
    config = CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "devices": {"cpu": {"rank": 4, "depth": 2}, "jetson-orin-nano-8gb": {"rank": 8, "depth": 4, "quantization": "nf4"}}})
    assert config.plan_for("jetson-orin-nano-8gb", "jetson").rank == 8
    assert config.plan_for("cpu-8gb", "cpu").lora_alpha == 8.0
    assert config.plan_for("laptop", "cuda") is None


def test_every_error_is_reported_at_once_with_its_key():
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig.from_dict({"rounds": 0, "colour": "red", "devices": {"cpu": {"rank": 0, "depth": 2, "quantization": "int3"}}})
    text = str(caught.value)
    for key in ("eval_data: required", "colour: unknown key", "rounds: must be a positive integer", "devices.cpu: rank and depth", "devices.cpu.quantization"):
        assert key in text
