"""The trial's compromised device rewrites its movement m = x − x⁰ as each attack says, in the dtype it sends."""

import numpy as np
import pytest

from fedge.shell.trial.insider import ATTACKS, poison


def test_each_attack_rewrites_the_movement_from_the_start():
    start = {"k": np.zeros((4, 8), np.float32)}
    move = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
    sent = {"k": (start["k"] + move).astype(np.float16)}
    rms = float(np.sqrt(np.mean(np.square(move))))
    out = {attack: poison(attack, sent, {"k": start["k"]}, seed=3)["k"].astype(np.float32) for attack in ATTACKS}
    np.testing.assert_allclose(out["sign_flip"], -move, atol=1e-3)
    np.testing.assert_allclose(out["scale"], -200 * move, rtol=1e-3, atol=0.1)
    assert np.allclose(np.abs(out["constant"]), 5 * rms, rtol=1e-2)  # a fixed ± direction at 5× the RMS
    assert np.array_equal(np.sign(out["constant"]), np.sign(poison("constant", sent, {"k": start["k"]}, seed=3)["k"]))
    np.testing.assert_allclose(np.abs(out["bias"] - move), 0.5 * rms, rtol=1e-2, atol=2e-3)
    assert all(value["k"].dtype == np.float16 for value in (poison(attack, sent, {"k": start["k"]}, 3) for attack in ATTACKS))
    with pytest.raises(ValueError, match="unknown attack"):
        poison("virus", sent, {}, 3)
