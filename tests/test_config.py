import pytest

from fedge.coordinator.config import ConfigError, CoordinatorConfig


def test_pins_resolve_by_device_name_then_class():
    config = CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True, "devices": {"cpu": {"rank": 4, "depth": 2}, "jetson-orin-nano-8gb": {"rank": 8, "depth": 4, "quantization": "nf4"}}})
    assert config.pin_for("jetson-orin-nano-8gb", "jetson").rank == 8
    assert config.pin_for("cpu-8gb", "cpu").depth == 2
    assert config.pin_for("laptop", "cuda") is None


def test_planner_options_combine_the_run_level_keys_and_the_planner_section():
    config = CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True, "batch_size": 8, "local_steps": 3, "planner": {"max_depth": 6, "ranks": [4, 8]}})
    options = config.planner_options()
    assert (options.batch_size, options.local_steps, options.max_depth, options.ranks) == (8, 3, 6, (4, 8))


def test_every_error_is_reported_at_once_with_its_key():
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig.from_dict({"rounds": 0, "colour": "red", "devices": {"cpu": {"rank": 0, "depth": 2, "quantization": "int3"}}, "planner": {"batch_size": 4, "safety_margin": 2, "strategy": "magic", "speed": 1},
                                     "max_frame_kb": 1, "max_message_mb": 0, "max_weight_share": 1.5, "max_update_norm": -1})
    text = str(caught.value)
    for key in ("eval_data: required", "colour: unknown key", "enrolment: required", "max_frame_kb", "max_message_mb", "max_weight_share", "max_update_norm", "rounds: must be >= 1", "devices.cpu.rank: must be >= 1", "devices.cpu.quantization",
                "planner.batch_size: set it at the top level", "planner.safety_margin", "planner.strategy", "planner.speed: unknown key"):
        assert key in text


def test_the_task_comes_from_the_config_and_sets_the_token_budget():
    config = CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True, "task": {"labels": ["love", "work", "science"], "prompt": "Fortune: {text}\nTopic:", "max_tokens": 96}})
    assert config.task.kind == "classify" and config.task.labels == ("love", "work", "science")
    assert config.planner_options().seq_len == 96
    assert CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True}).task.labels[0] == "animal"  # the WordNet default


def test_task_errors_name_their_keys():
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True, "task": {"labels": ["x"], "prompt": "no slot", "colour": 1}, "planner": {"seq_len": 64}})
    text = str(caught.value)
    for key in ("task.colour: unknown key", "task.labels: between 2", "task.prompt: must contain {text}", "planner.seq_len: the token budget is the task's"):
        assert key in text


def test_round_mode_options_are_checked_and_groups_keep_the_synchronous_schedule():
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True, "round_mode": "async", "planner": {"groups": 2}, "buffer_size": -1, "max_staleness": 1.5, "staleness_exponent": -1, "aggregation_period_s": 0})
    for key in ("round_mode: HierFedLoRA groups", "buffer_size", "max_staleness", "staleness_exponent", "aggregation_period_s"):
        assert key in str(caught.value)
    with pytest.raises(ConfigError, match="round_mode: one of sync, async, semi-sync \\(got 'eventually'\\)"):
        CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True, "round_mode": "eventually"})
    assert CoordinatorConfig.from_dict({"eval_data": "t.jsonl", "insecure": True, "round_mode": "semi-sync"}).aggregation_period_s == 60.0


def test_the_server_optimizer_and_fedprox_are_checked_and_round_trip():
    from fedge.shell.trial.config import TrialConfig
    from fedge.strategies.server_optimizer import ServerOptimizer

    base = {"eval_data": "x.jsonl", "insecure": True}
    config = CoordinatorConfig.from_dict({**base, "server_optimizer": {"name": "fedyogi", "learning_rate": 0.01}})
    assert config.server_optimizer == ServerOptimizer("fedyogi", 0.01) and CoordinatorConfig.from_dict(config.to_dict()).server_optimizer == config.server_optimizer
    with pytest.raises(ConfigError) as error:
        CoordinatorConfig.from_dict({**base, "server_optimizer": {"name": "adamw", "momentum": 0.9, "tau": "small"}})
    for problem in ("server_optimizer.name: one of none, fedavgm, fedadam, fedyogi (got 'adamw')", "server_optimizer.momentum: unknown key", "server_optimizer.tau: expected a number (got 'small')"):
        assert problem in str(error.value)
    with pytest.raises(ConfigError, match="server_optimizer: flora keeps no global state"):
        CoordinatorConfig.from_dict({**base, "strategy": "flora", "server_optimizer": {"name": "fedadam"}})
    trial = TrialConfig.from_dict({"fleet": ["cpu-16gb", "cpu-8gb"], "strategies": ["hetlora", {"name": "hetlora", "server_optimizer": {"name": "fedavgm", "beta1": 0.5}, "proximal_mu": 0.01}]})
    assert [run.label for run in trial.strategies] == ["hetlora", "hetlora fedavgm beta1=0.5 fedprox μ=0.01"]
    with pytest.raises(ConfigError, match=r"strategies\[0\].proximal_mu: must be >= 0 \(got -1\): FedProx"):
        TrialConfig.from_dict({"fleet": ["cpu-16gb", "cpu-8gb"], "strategies": [{"name": "hetlora", "proximal_mu": -1}]})
    assert CoordinatorConfig.from_dict({**base, "proximal_mu": 0.01}).proximal_mu == 0.01
    with pytest.raises(ConfigError, match=r"proximal_mu: must be <= 100 \(got 1000000.0\)"):
        CoordinatorConfig.from_dict({**base, "proximal_mu": 1e6})
    with pytest.raises(ConfigError, match="server_optimizer: full keeps no global state"):
        CoordinatorConfig.from_dict({**base, "strategy": "full", "server_optimizer": {"name": "fedavgm"}})
    for strategy in ("flora", "fedex-lora", "full"):  # a site's one update cannot carry base changes, central or at the site
        for where in ({"sites": ["site-a"]}, {"upstream": "site.json"}):
            with pytest.raises(ConfigError, match=f"sites / upstream: {strategy} keeps part of its model as base changes"):
                CoordinatorConfig.from_dict({**base, "strategy": strategy, **where})
    assert CoordinatorConfig.from_dict({**base, "strategy": "flexlora", "sites": ["site-a"]}).sites == ("site-a",)
    with pytest.raises(ConfigError, match="privacy: clipping and noise would break what full's devices send"):
        CoordinatorConfig.from_dict({**base, "strategy": "full", "privacy": {"clip_norm": 2.0, "noise_multiplier": 0.05}})
    with pytest.raises(ConfigError, match=r"strategies\[1\].privacy: clipping and noise would break what full's devices send"):
        TrialConfig.from_dict({"fleet": ["cpu-16gb", "cpu-8gb"], "strategies": ["hetlora", "full"], "privacy": {"clip_norm": 2.0}})
    with pytest.raises(ConfigError, match=r"strategies\[0\].server_optimizer: ce-lora keeps no global state"):
        TrialConfig.from_dict({"fleet": ["cpu-16gb", "cpu-8gb"], "strategies": [{"name": "ce-lora", "server_optimizer": {"name": "fedyogi"}}]})
