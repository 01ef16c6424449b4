"""Server optimisers against their formulas (Hsu et al. 2019; Reddi et al. 2021, Algorithm 2)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.config_schema import validated
from fedge.coordinator.config_schema import ServerOptimizerSection
from fedge.strategies.base import delta_key
from fedge.strategies.server_optimizer import RULE_DEFAULTS, ServerMoments, ServerOptimizer

KEY = "model.layers.0.self_attn.q_proj.lora_A.weight"


def trajectory(rng: np.random.Generator, rounds: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A start and the aggregate change of each round (the strategy's aggregate is start + change)."""
    return rng.normal(size=(4, 6)), [rng.normal(size=(4, 6)) * 0.01 * (index + 1) for index in range(rounds)]


def stepped(optimizer: ServerOptimizer, start: np.ndarray, changes: list[np.ndarray]) -> list[np.ndarray]:
    moments, state, out = ServerMoments(optimizer), {KEY: start.astype(np.float32)}, []
    for change in changes:
        state = moments.step(state, {KEY: (state[KEY] + change).astype(np.float32)})
        out.append(state[KEY].astype(np.float64))
    return out


def by_formula(optimizer: ServerOptimizer, start: np.ndarray, changes: list[np.ndarray]) -> list[np.ndarray]:
    eta, beta1, beta2, tau = optimizer.rate, optimizer.momentum, optimizer.beta2, optimizer.tau
    x, m, v, out = start.astype(np.float32).astype(np.float64), np.zeros_like(start), np.full_like(start, tau**2), []
    for change in changes:
        delta = (x.astype(np.float32) + change).astype(np.float32).astype(np.float64) - x
        if optimizer.name == "fedavgm":
            m = beta1 * m + delta
            x = x + eta * m
        else:
            m = beta1 * m + (1 - beta1) * delta
            v = beta2 * v + (1 - beta2) * delta**2 if optimizer.name == "fedadam" else v - (1 - beta2) * delta**2 * np.sign(v - delta**2)
            x = x + eta * m / (np.sqrt(v) + tau)
        x = x.astype(np.float32).astype(np.float64)
        out.append(x)
    return out


@pytest.mark.parametrize("optimizer", [ServerOptimizer("fedavgm", 0.7, beta1=0.9), ServerOptimizer("fedadam", 0.01, tau=1e-3), ServerOptimizer("fedyogi", 0.01, beta2=0.9, tau=1e-2)])
def test_each_rule_follows_its_formula_round_after_round(optimizer: ServerOptimizer) -> None:
    start, changes = trajectory(np.random.default_rng(1), 4)
    for got, want in zip(stepped(optimizer, start, changes), by_formula(optimizer, start, changes)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fedavgm_without_momentum_at_unit_rate_is_the_aggregate_and_none_changes_nothing() -> None:
    start, changes = trajectory(np.random.default_rng(2), 3)
    plain = [start + sum(changes[: index + 1]) for index in range(3)]
    for got, want in zip(stepped(ServerOptimizer("fedavgm", 1.0, beta1=0.0), start, changes), plain):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    aggregated = {KEY: np.ones((2, 2), np.float32)}
    assert ServerMoments(ServerOptimizer()).step({KEY: np.zeros((2, 2), np.float32)}, aggregated) is aggregated


def test_momentum_carries_a_step_into_a_round_without_change() -> None:
    (after_move, after_rest) = stepped(ServerOptimizer("fedavgm", 1.0, beta1=0.5), np.zeros((4, 6)), [np.ones((4, 6)), np.zeros((4, 6))])
    np.testing.assert_allclose(after_move, 1.0)
    np.testing.assert_allclose(after_rest, 1.5)  # v = 0.5·1 + 0


def test_history_and_reshaped_tensors_are_taken_as_aggregated_and_reshaping_restarts_the_moments() -> None:
    moments = ServerMoments(ServerOptimizer("fedadam", 0.1))
    history = delta_key("model.layers.0.self_attn.q_proj", 1, "left")
    start = {KEY: np.zeros((2, 3), np.float32), history: np.zeros((2, 1), np.float32)}
    first = moments.step(start, {KEY: np.full((2, 3), 0.5, np.float32), history: np.ones((2, 1), np.float32)})
    assert np.array_equal(first[history], np.ones((2, 1))) and not np.array_equal(first[KEY], np.full((2, 3), 0.5))
    assert KEY in moments.first and history not in moments.first
    grown = {KEY: np.ones((4, 3), np.float32)}  # the global rank grew
    assert moments.step(first, grown)[KEY] is grown[KEY] and KEY not in moments.first and KEY not in moments.second


def test_moments_saved_and_restored_continue_the_same_trajectory() -> None:
    optimizer = ServerOptimizer("fedyogi", 0.02)
    start, changes = trajectory(np.random.default_rng(3), 4)
    whole = stepped(optimizer, start, changes)
    moments, state = ServerMoments(optimizer), {KEY: start.astype(np.float32)}
    for change in changes[:2]:
        state = moments.step(state, {KEY: (state[KEY] + change).astype(np.float32)})
    resumed = ServerMoments(optimizer, moments.to_tensors())  # as a resumed coordinator reads them back
    for change, want in zip(changes[2:], whole[2:]):
        state = resumed.step(state, {KEY: (state[KEY] + change).astype(np.float32)})
        np.testing.assert_allclose(state[KEY], want, rtol=1e-6)


def test_bad_settings_are_named() -> None:
    section, problems = validated(ServerOptimizerSection, {"name": "adamw", "learning_rate": 0, "beta1": 1.0, "beta2": -0.1, "tau": 0})
    assert section is None and len(problems) == 5 and problems[0] == "name: one of none, fedavgm, fedadam, fedyogi (got 'adamw')"
    assert validated(ServerOptimizerSection, {"name": "fedadam", "learning_rate": 0.01})[1] == [] and ServerOptimizer("fedadam", 0.01).rate == 0.01
    assert (ServerOptimizer("fedyogi").rate, ServerOptimizer("fedyogi").momentum) == RULE_DEFAULTS["fedyogi"] and (ServerOptimizer("fedavgm").rate, ServerOptimizer("fedavgm").momentum) == RULE_DEFAULTS["fedavgm"]
    assert ServerOptimizer("fedavgm", beta1=0.0).momentum == 0.0
