"""Every strategy end to end over Mosquitto: coordinator and two agents of mixed rank and depth, in threads of one
process (the tiny random backbone: plumbing and wire contents, never learning claims)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.edge_agent.agent import EdgeAgent
from fedge.strategies import STRATEGIES, recipe_for
from fedge.strategies.base import base_deltas
from fedge.task.data import write_jsonl
from fedge.transport import BrokerConfig
from fedge.profiles import load_catalogue_profile
from tests.integration.helpers import credentials, enrolled_fleet, rows, shard

pytestmark = pytest.mark.broker


def _run(strategy: str, broker_url: str, backbone: Path, tmp_path: Path, evaluate_on_agents: bool = False, **settings) -> tuple[Coordinator, list[EdgeAgent]]:
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    same_rank = not STRATEGIES[strategy].mixed_ranks
    config = CoordinatorConfig.from_dict({
        "run_id": strategy, "run_dir": str(tmp_path / "run"), "broker": broker_url, "backbone": str(backbone),
        "enrolment": str(enrolled_fleet(tmp_path)), "eval_data": str(tmp_path / "test.jsonl"), "rounds": 2, "min_clients": 2, "expected_clients": 2,
        "local_steps": 3, "batch_size": 4, "registration_timeout_s": 60, "round_deadline_s": 60, "strategy": strategy,
        "final_eval_wait_s": 30 if evaluate_on_agents else 0,
        "planner": {"max_depth": 3, "ranks": [4] if same_rank else [2, 4], "rank_profile": "uniform" if same_rank else "legend"},
        "devices": {"cpu-8gb": {"rank": 4 if same_rank else 2, "depth": 1}, "cpu-16gb": {"rank": 4, "depth": 3}},
        **settings,
    })
    coordinator = Coordinator(config)
    held_out = rows(shard(5, 16)) if evaluate_on_agents else None
    agents = [EdgeAgent(f"a{i}", BrokerConfig.from_url(broker_url), rows(shard(i)), load_catalogue_profile(device), heartbeat_s=2, eval_data=held_out, credentials=credentials(tmp_path, f"a{i}")) for i, device in enumerate(["cpu-8gb", "cpu-16gb"])]
    _federate(coordinator, agents)
    return coordinator, agents


def _federate(coordinator: Coordinator, agents: list[EdgeAgent]) -> list[dict]:
    """Run the coordinator here and every agent in a thread until the run ends; the round records."""
    threads = [threading.Thread(target=agent.run, daemon=True) for agent in agents]
    for thread in threads:
        thread.start()
    summary = coordinator.run()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert [r["round"] for r in summary.rounds] == list(range(coordinator.config.rounds + 1))
    return summary.rounds


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_runs_and_sends_only_what_it_should(strategy, mosquitto, tiny_backbone, tmp_path):
    torch.manual_seed(0)
    coordinator, agents = _run(strategy, mosquitto.url, tiny_backbone, tmp_path)
    rounds = coordinator.run_dir.rounds()
    for record in rounds[1:]:
        assert record["contributors"] == ["a0", "a1"], record.get("rejected")
        assert record["strategy"] == strategy
    recipe = recipe_for(strategy)
    suffixes = {"A": {".lora_A.weight"}, "B": {".lora_B.weight"}, "C": {".lora_C.weight"}, "ΔW": {".full_change.left", ".full_change.right"}}
    for agent, layers in (("a0", {3}), ("a1", {1, 2, 3})):
        sent = load_file(tmp_path / "run" / "updates" / "round_002" / f"{agent}.safetensors")
        assert {key[key.index(".lora_") if ".lora_" in key else key.index(".full"):] for key in sent} == set().union(*(suffixes[f] for f in recipe.sends))
        assert {int(key.split(".layers.")[1].split(".")[0]) for key in sent} == layers
    accuracy = rounds[-1]["accuracy"]
    assert np.isnan(accuracy) if strategy == "ce-lora" else 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize("strategy", ["flora", "fedex-lora"])
def test_base_changes_reach_every_agent_including_layers_it_does_not_adapt(strategy, mosquitto, tiny_backbone, tmp_path):
    from transformers import AutoModelForCausalLM

    coordinator, agents = _run(strategy, mosquitto.url, tiny_backbone, tmp_path)
    state = load_file(tmp_path / "run" / "globals" / "round_002.safetensors")
    changes = base_deltas(state)
    assert sorted(changes) == [1, 2]
    pristine = dict(AutoModelForCausalLM.from_pretrained(tiny_backbone).named_parameters())
    name = "base_model.model.model.layers.1.self_attn.q_proj"  # adapted by a1 only; a0 (depth 1) must merge it too
    expected = pristine["model.layers.1.self_attn.q_proj.weight"].detach().numpy() + sum(part[name + ".left"] @ part[name + ".right"] for part in changes.values())
    for agent in agents:
        assert agent._base_version() == 2
        params = dict(agent._session.model.named_parameters())
        weight = params.get(name + ".base_layer.weight", params.get(name + ".weight"))  # LoRA-wrapped on a1, plain on a0
        assert np.allclose(weight.detach().numpy(), expected, atol=1e-5)


def test_agents_report_their_own_accuracy_where_there_is_no_global_model(mosquitto, tiny_backbone, tmp_path):
    coordinator, _ = _run("ce-lora", mosquitto.url, tiny_backbone, tmp_path, evaluate_on_agents=True)
    reported = sorted((record["round"], record["agent"]) for record in coordinator.run_dir.client_evals())
    assert reported == [(1, "a0"), (1, "a1"), (2, "a0"), (2, "a1")]  # after round 1 (taken in round 2) and the final state
    assert all(0 <= record["accuracy"] <= 1 and record["examples"] == 16 for record in coordinator.run_dir.client_evals())


def test_hierfedlora_groups_exchange_at_their_own_frequency_and_combine(mosquitto, tiny_backbone, tmp_path):
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    config = CoordinatorConfig.from_dict({
        "run_id": "groups", "run_dir": str(tmp_path / "run"), "broker": mosquitto.url, "backbone": str(tiny_backbone),
        "enrolment": str(enrolled_fleet(tmp_path)), "eval_data": str(tmp_path / "test.jsonl"), "rounds": 2, "min_clients": 1, "expected_clients": 4,
        "local_steps": 2, "batch_size": 4, "registration_timeout_s": 60, "round_deadline_s": 120, "strategy": "flexlora",
        "planner": {"max_depth": 3, "ranks": [2, 4], "groups": 2, "max_group_frequency": 3, "straggler_bound": 10},
    })
    slow_board = replace(load_catalogue_profile("cpu-8gb"), name="slow-board", gflops=0.1)  # a tiny model is latency-bound on any real device: a board this slow makes two speeds
    profiles = [load_catalogue_profile("laptop-rtx4090-16gb")] * 2 + [slow_board] * 2
    coordinator = Coordinator(config)
    # a0, a2 hold labels 0-3 and a1, a3 labels 4-7: label balancing pairs the two GPUs and the two CPUs
    halves = [[example for example in shard(0, 48) if (example.label < 4) == (i % 2 == 0)] for i in range(4)]
    agents = [EdgeAgent(f"a{i}", BrokerConfig.from_url(mosquitto.url), rows(halves[i]), profile, heartbeat_s=2, credentials=credentials(tmp_path, f"a{i}")) for i, profile in enumerate(profiles)]
    rounds = _federate(coordinator, agents)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert len(plan["groups"]) == 2
    depth_of = {member: group["depth"] for group in plan["groups"] for member in group["members"]}
    assert all(len(device["layers"]) == depth_of[device["device_id"]] for device in plan["devices"])  # members train D_g
    for record in rounds[1:]:
        assert record["contributors"] == ["a0", "a1", "a2", "a3"], record["rejected"]
        by_index = {group["index"]: group for group in record["groups"]}
        for group in plan["groups"]:
            assert by_index[group["index"]]["exchanges"] == group["frequency"]  # each group ran its own τ_g
    assert max(group["frequency"] for group in plan["groups"]) > 1
    # every exchange is its own wire round: the frequent group's inner updates are all on disk
    frequent = max(plan["groups"], key=lambda group: group["frequency"])
    stored = sorted(path.parent.name for path in (tmp_path / "run" / "updates").glob(f"*/{frequent['members'][0]}.safetensors"))
    assert len(stored) == 2 * frequent["frequency"]


def test_a_server_optimizer_steps_each_rounds_aggregate_and_commits_its_moments(mosquitto, tiny_backbone, tmp_path, caplog):
    """FedAdam at η = 1e-4: after one round |m| / (√v + τ) < 1, so no coordinate of the global moves more than η
    (the plain aggregate moves them far more), and the moments are saved beside every committed global. FedProx's
    μ reaches the devices with their work."""
    caplog.set_level(logging.INFO, logger="fedge.edge_agent.agent")
    coordinator, _ = _run("hetlora", mosquitto.url, tiny_backbone, tmp_path, server_optimizer={"name": "fedadam", "learning_rate": 1e-4}, proximal_mu=0.05)
    assert sum("FedProx μ = 0.05" in record.getMessage() for record in caplog.records) == 4  # two devices, two rounds
    run_dir = coordinator.run_dir
    start, first = run_dir.load_global(0), run_dir.load_global(1)
    moved = max(float(np.abs(first[key].astype(np.float64) - start[key]).max()) for key in start)
    assert 0 < moved <= 1.01e-4
    for round_number in (1, 2):
        moments = load_file(run_dir.path / "globals" / f"moments_{round_number:03d}.safetensors")
        assert {name for name in moments} == {f"{kind}::{key}" for key in start for kind in ("m", "v")}


def test_full_weights_train_with_their_own_settings_and_keep_their_optimizer_through_the_run(mosquitto, tiny_backbone, tmp_path):
    coordinator, agents = _run("full", mosquitto.url, tiny_backbone, tmp_path, strategy_options={"learning_rate": 5e-3, "galore_scale": 1.0})
    for agent in agents:
        assert agent._assignment.learning_rate == 5e-3 and agent._assignment.galore_scale == 1.0  # the strategy's, not the run's 2e-3
        kept = agent._session.step_rule
        assert {group["scale"] for group in kept.param_groups} == {1.0}
        assert {int(state["step"]) for state in kept.state.values()} == {2 * 3}  # both rounds' 3 steps on one optimizer
