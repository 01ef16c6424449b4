"""Every file under examples/ loads with the loader its users will feed it to."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_every_example_is_covered_here():
    assert sorted(p.name for p in EXAMPLES.iterdir()) == ["arms.yaml", "coordinator.yaml", "fleet.yaml", "trial-async.yaml", "trial-chatterbot.yaml", "trial-fortunes.yaml", "trial-full.yaml", "trial-groups.yaml", "trial-optimizers.yaml", "trial-private.yaml", "trial.yaml"]


def test_coordinator_example_is_a_valid_config():
    from fedge.coordinator.config import CoordinatorConfig

    config = CoordinatorConfig.from_yaml(EXAMPLES / "coordinator.yaml")
    assert config.strategy == "hetlora" and config.devices["laptop-rtx3060-6gb"].quantization == "nf4"
    config.planner_options()


def test_arms_example_is_a_field_trial_for_the_coordinator_example():
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.shell.trial.field import FieldTrial, arm_config

    config = CoordinatorConfig.from_yaml(EXAMPLES / "coordinator.yaml")
    trial = FieldTrial.from_yaml(EXAMPLES / "arms.yaml", config)
    assert [run.label for run in trial.strategies] == ["hetlora", "flexlora", "hetlora fedavgm", "hetlora fedprox μ=0.01"] and trial.seeds == (0, 1, 2)
    momentum = arm_config(config, trial, trial.strategies[2], 1, Path("runs/field/seed_1/hetlora_fedavgm"))
    assert momentum.server_optimizer.name == "fedavgm" and momentum.seed == 1 and momentum.run_id == "field-hetlora_fedavgm-1" and momentum.rounds == config.rounds


def test_fleet_example_loads_and_plans():
    from fedge.coordinator.fleet import load_fleet
    from fedge.coordinator.planner import plan_fleet
    from fedge.profiles.model_shape import load_model_shape

    fleet = load_fleet(EXAMPLES / "fleet.yaml")
    assert plan_fleet(fleet.members, load_model_shape(fleet.model), fleet.options).feasible()


def test_trial_example_loads():
    from fedge.shell.trial.config import TrialConfig

    trial = TrialConfig.from_yaml(EXAMPLES / "trial.yaml")
    assert len(trial.strategies) == 9 and trial.seeds == (0, 1, 2) and trial.centralised and trial.baseline == "centralised"
    private = TrialConfig.from_yaml(EXAMPLES / "trial-private.yaml")
    assert private.privacy["noise_multiplier"] > 0 and private.fleet == trial.fleet and private.data == trial.data
    modes = TrialConfig.from_yaml(EXAMPLES / "trial-async.yaml")
    assert [run.rounds.get("round_mode", "sync") for run in modes.strategies] == ["sync", "async", "semi-sync"] and modes.slowdown == {"cpu-8gb": 10}
    optimizers = TrialConfig.from_yaml(EXAMPLES / "trial-optimizers.yaml")
    assert {run.server_optimizer.get("name", "none") for run in optimizers.strategies} == {"none", "fedavgm", "fedadam", "fedyogi"} and any(run.proximal_mu for run in optimizers.strategies)
    assert optimizers.fleet == trial.fleet and optimizers.data == trial.data and optimizers.seeds == (0, 1, 2)
    full = TrialConfig.from_yaml(EXAMPLES / "trial-full.yaml")
    assert [run.name for run in full.strategies] == ["hetlora"] * 2 + ["full"] * 5 and full.fleet == trial.fleet and full.data == trial.data and full.seeds == (0, 1, 2)
    assert len({(run.name, tuple(sorted(run.options.items()))) for run in full.strategies}) == 6 and full.strategies[1].learning_rate == 0.01  # five step sizes of full beside HetLoRA at two
    assert full.centralised
    groups = TrialConfig.from_yaml(EXAMPLES / "trial-groups.yaml")
    assert [run.groups for run in groups.strategies] == [None, 2] and "groups" not in groups.planner and groups.fleet == trial.fleet and groups.data == trial.data


def test_task_trial_examples_load_with_their_data(tmp_path):
    from fedge.shell.trial.config import TrialConfig
    from fedge.shell.trial.data import prepare_data
    from fedge.shell.trial.runner import agent_ids

    fortunes = TrialConfig.from_yaml(EXAMPLES / "trial-fortunes.yaml")
    split = prepare_data(fortunes.data, fortunes.task_spec, agent_ids(fortunes), 0, tmp_path / "fortunes")
    assert fortunes.task_spec.kind == "classify" and fortunes.centralised and len(split["labels"]) == 9 and split["test_examples"] == 9 * 25
    chatterbot = TrialConfig.from_yaml(EXAMPLES / "trial-chatterbot.yaml")
    split = prepare_data(chatterbot.data, chatterbot.task_spec, agent_ids(chatterbot), 0, tmp_path / "chatterbot")
    assert chatterbot.metric == "token_f1" and len(split["agents"]) == 4 and all(split["agents"].values())  # every device holds some topics


@pytest.mark.parametrize("path", sorted(EXAMPLES.iterdir()), ids=lambda p: p.name)
def test_examples_are_valid_yaml(path):
    import yaml

    assert isinstance(yaml.safe_load(path.read_text()), dict)
