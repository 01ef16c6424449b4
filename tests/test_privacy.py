"""Differential privacy on the device: the round's change is clipped and noised; the budget composes over rounds."""

import math

import numpy as np
import pytest

from fedge.coordinator.config import ConfigError, CoordinatorConfig
from fedge.privacy import epsilon, privatise


def _pair(scale: float):
    rng = np.random.default_rng(0)
    received = {"a": rng.normal(size=(4, 8)).astype(np.float16), "b": rng.normal(size=(8, 4)).astype(np.float16)}
    sent = {key: (value.astype(np.float32) + scale * rng.normal(size=value.shape)).astype(np.float16) for key, value in received.items()}
    return sent, received


def _change_norm(sent, received) -> float:
    return math.sqrt(sum(float(np.square(sent[k].astype(np.float64) - received[k].astype(np.float64)).sum()) for k in sent))


def test_a_change_larger_than_the_clip_norm_is_scaled_down_to_it_and_a_smaller_one_kept():
    sent, received = _pair(1.0)
    out, norm = privatise(sent, received, clip_norm=0.5, noise_multiplier=0.0)
    assert norm == pytest.approx(_change_norm(sent, received)) and norm > 0.5
    assert _change_norm(out, received) == pytest.approx(0.5, rel=1e-2)
    assert all(out[key].dtype == np.float16 for key in out)
    kept, _ = privatise(sent, received, clip_norm=100.0, noise_multiplier=0.0)
    assert all(np.array_equal(kept[key], sent[key]) for key in sent)


def test_the_noise_has_the_promised_scale_and_is_fresh_each_time():
    sent, received = _pair(0.0)
    first, _ = privatise(sent, received, clip_norm=0.1, noise_multiplier=2.0)
    second, _ = privatise(sent, received, clip_norm=0.1, noise_multiplier=2.0)
    noise = np.concatenate([(first[k].astype(np.float64) - received[k]).ravel() for k in first])
    assert noise.std() == pytest.approx(0.2, rel=0.25)
    assert not all(np.array_equal(first[k], second[k]) for k in first)


def test_the_budget_grows_with_rounds_shrinks_with_noise_and_is_infinite_without_it():
    assert epsilon(0, 1.0, 1e-5) == 0.0 and epsilon(3, 0.0, 1e-5) == math.inf
    by_rounds = [epsilon(t, 2.0, 1e-5) for t in (1, 2, 5, 20)]
    assert by_rounds == sorted(by_rounds) and by_rounds[-1] < 20 * by_rounds[0]  # RDP composes better than ε adds up
    assert epsilon(5, 8.0, 1e-5) < epsilon(5, 2.0, 1e-5) < epsilon(5, 1.0, 1e-5)
    assert epsilon(5, 2.0, 1e-3) < epsilon(5, 2.0, 1e-6)


def test_privacy_settings_are_checked():
    base = {"eval_data": "t.jsonl", "insecure": True}
    assert CoordinatorConfig.from_dict({**base, "privacy": {"clip_norm": 1.0, "noise_multiplier": 0.8}}).privacy["clip_norm"] == 1.0
    with pytest.raises(ConfigError) as error:
        CoordinatorConfig.from_dict({**base, "privacy": {"noise_multiplier": -1, "delta": 2, "epsilon": 3}})
    for text in ("privacy.clip_norm", "privacy.noise_multiplier", "privacy.delta", "privacy.epsilon: unknown key"):
        assert text in str(error.value)
