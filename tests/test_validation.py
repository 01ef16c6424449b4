import numpy as np
import pytest

from coordinator.validation import Expectation, UpdateRejected, validate_update
from fedge.wire import AdapterUpdate

KEY = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
EXPECT = Expectation("run", 2, deadline_unix=1000.0, shapes={KEY: (4, 8)}, scaling=2.0)


def _update(**overrides):
    fields = {"run_id": "run", "round": 2, "agent_id": "a", "num_examples": 10, "metrics": {}, "tensors": {KEY: np.zeros((4, 8), np.float16)}}
    return AdapterUpdate(**{**fields, **overrides})


def test_a_good_update_passes():
    validate_update(_update(), EXPECT, already_received=False, now=999.0)


@pytest.mark.parametrize(
    "update, expectation, duplicate, now, reason",
    [
        (_update(), None, False, 0.0, "unknown_agent"),
        (_update(run_id="other"), EXPECT, False, 0.0, "wrong_run"),
        (_update(round=1), EXPECT, False, 0.0, "wrong_round"),
        (_update(), EXPECT, True, 0.0, "duplicate"),
        (_update(), EXPECT, False, 1001.0, "late"),
        (_update(num_examples=0), EXPECT, False, 0.0, "bad_count"),
        (_update(tensors={}), EXPECT, False, 0.0, "bad_keys"),
        (_update(tensors={KEY: np.zeros((4, 8)), "extra": np.zeros(1)}), EXPECT, False, 0.0, "bad_keys"),
        (_update(tensors={KEY: np.zeros((8, 4))}), EXPECT, False, 0.0, "bad_shape"),
        (_update(tensors={KEY: np.full((4, 8), np.nan)}), EXPECT, False, 0.0, "not_finite"),
        (_update(tensors={KEY: np.full((4, 8), np.inf)}), EXPECT, False, 0.0, "not_finite"),
    ],
)
def test_bad_updates_are_refused_with_their_reason(update, expectation, duplicate, now, reason):
    with pytest.raises(UpdateRejected) as caught:
        validate_update(update, expectation, duplicate, now)
    assert caught.value.reason == reason
