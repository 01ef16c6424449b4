from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.coordinator.plans import FleetMember, PlannerOptions

from fedge.coordinator.planner import plan_fleet
from fedge.coordinator.validation import Expectation, UpdateRejected, profile_problems, validate_update
from fedge.wire import AdapterUpdate, Hello
from fedge.profiles import catalogue_names, load_catalogue_profile
from fedge.profiles.model_shape import load_model_shape

SHAPE = load_model_shape("smollm2-135m-instruct")

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


RIGHT = "base_model.model.model.layers.3.self_attn.q_proj.full_change.right"


def _right_factor(rows: np.ndarray) -> AdapterUpdate:
    return _update(tensors={KEY: np.zeros((4, 8), np.float16), RIGHT: rows.astype(np.float16)})


def test_a_full_change_right_factor_must_have_orthonormal_or_zero_rows():
    """Its rows carry directions only: a right factor that carries size would slip past the norm bound."""
    expect = replace(EXPECT, shapes={KEY: (4, 8), RIGHT: (4, 512)})
    rows = np.linalg.qr(np.random.default_rng(0).normal(size=(512, 3)))[0].T
    padded = np.vstack([rows, np.zeros((1, 512))])  # a change below K's rank pads with zero rows
    validate_update(_right_factor(padded), expect, already_received=False, now=0.0)
    for forged in (2 * padded, padded + 0.05, np.vstack([rows, rows[:1]])):  # scaled, skewed, a row twice
        with pytest.raises(UpdateRejected) as caught:
            validate_update(_right_factor(forged), expect, already_received=False, now=0.0)
        assert caught.value.reason == "not_orthonormal"


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(width=16), min_size=4 * 64, max_size=4 * 64))
def test_any_right_factor_passes_or_is_refused_with_a_reason(values):
    expect = replace(EXPECT, shapes={KEY: (4, 8), RIGHT: (4, 64)})
    try:
        validate_update(_right_factor(np.asarray(values, np.float16).reshape(4, 64)), expect, already_received=False, now=0.0)
    except UpdateRejected as refused:
        assert refused.reason in ("not_finite", "not_orthonormal")


_numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**62), 2**62))


@settings(max_examples=200, deadline=None)
@given(
    gflops=_numbers, ram=st.integers(-(2**62), 2**62), available=st.integers(-(2**62), 2**62), cores=st.integers(-5, 10_000),
    fraction=st.floats(allow_nan=True, allow_infinity=True), uplink=_numbers, cuda_total=st.one_of(st.none(), st.integers(-5, 2**52)), examples=st.integers(-5, 2**40),
)
def test_any_hello_is_either_refused_with_reasons_or_planned_without_error(gflops, ram, available, cores, fraction, uplink, cuda_total, examples):
    """The planner never sees a profile it cannot cost: validation refuses it first (``gflops: null`` once ended a run)."""
    profile = replace(
        load_catalogue_profile("cpu-8gb"), gflops=gflops, ram_total_bytes=ram, ram_available_bytes=available, cpu_cores=cores,
        usable_memory_fraction=fraction, uplink_mbps=uplink, cuda_total_bytes=cuda_total, cuda_free_bytes=cuda_total,
    )
    hello = Hello("d", profile, examples)
    if profile_problems(hello, 8):
        return
    plan = plan_fleet([FleetMember("d", profile, examples)], SHAPE, PlannerOptions(max_depth=2))
    assert plan.devices[0].feasible or plan.devices[0].reason


def test_a_hello_without_a_throughput_figure_is_refused_by_name():
    hello = Hello("d", replace(load_catalogue_profile("cpu-8gb"), gflops=None), 10, {"9" * 5000: 1})
    assert "gflops: missing" in profile_problems(hello, 8)


def test_every_catalogue_device_may_say_hello_and_a_discrete_gpu_must_state_its_memory():
    for name in catalogue_names():  # Jetsons state no GPU memory of their own: theirs is the host's RAM
        assert profile_problems(Hello("d", load_catalogue_profile(name), 100), 8) == [], name
    laptop = replace(load_catalogue_profile("laptop-rtx4060-8gb"), cuda_total_bytes=None)
    assert "cuda_total_bytes: missing for a discrete CUDA device" in profile_problems(Hello("d", laptop, 100), 8)
