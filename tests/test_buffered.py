"""The buffered rounds' policy: the staleness discount, the bound, and how far a buffer moves the state."""

import numpy as np
import pytest

from fedge.coordinator.buffered import UpdateBuffer, moved_by, staleness_weight
from fedge.wire import AdapterUpdate


def _update(agent: str, examples: int) -> AdapterUpdate:
    return AdapterUpdate("run", 1, agent, examples, {}, {})


def test_the_discount_is_polynomial_in_staleness_and_a_fresh_buffer_moves_the_state_all_the_way():
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)
    assert staleness_weight(3, 0.0) == 1.0  # exponent 0: staleness ignored
    buffer = UpdateBuffer(size=2, max_staleness=4, exponent=0.5)
    buffer.add(_update("a", 100), 0)
    assert not buffer.full() and buffer.discount() == 1.0
    buffer.add(_update("b", 300), 3)
    assert buffer.full() and buffer.weights() == [100.0, pytest.approx(150.0)]
    assert buffer.discount() == pytest.approx(250 / 400)
    assert len(buffer.take()) == 2 and not buffer.entries


def test_updates_beyond_the_bound_are_refused_and_the_state_moves_by_the_discount():
    buffer = UpdateBuffer(size=1, max_staleness=2, exponent=0.5)
    assert buffer.stale(trained_for=3, next_version=5) == 2
    assert buffer.stale(trained_for=2, next_version=5) is None
    current, aggregated = {"w": np.zeros(3), "kept": np.ones(2)}, {"w": np.full(3, 4.0), "new": np.ones(1)}
    moved = moved_by(current, aggregated, 0.25)
    np.testing.assert_array_equal(moved["w"], np.full(3, 1.0))
    assert set(moved) == {"w", "new"}
    assert moved_by(current, aggregated, 1.0) == aggregated
