"""The virtual clock: a planned fleet's rounds from its predicted step times and links, under each round mode."""

import pytest

from fedge.coordinator.plans import DevicePlan, FleetMember, PlannerOptions

from fedge.coordinator.planner import plan_fleet
from fedge.shell.trial.virtual import RoundSettings, simulate, virtual_members
from fedge.profiles import load_catalogue_profile
from fedge.profiles.model_shape import load_model_shape
from fedge.profiles.timing import transfer_seconds


def _plan(device_id: str, step_s: float, steps: int = 10, up: int = 10**6, down: int = 2 * 10**6) -> DevicePlan:
    return DevicePlan(device_id, "cpu-8gb", True, local_steps=steps, step_seconds=step_s, bytes_up=up, bytes_down=down, setup_seconds=30.0)


def test_sync_rounds_last_as_long_as_the_slowest_device():
    profile = load_catalogue_profile("cpu-8gb")
    plans = [_plan("fast", 0.1), _plan("slow", 1.0)]
    members = [FleetMember(plan.device_id, profile, 100) for plan in plans]
    run = simulate(plans, members, 3, RoundSettings("sync"))
    cycle = 10 * 1.0 + transfer_seconds(10**6, 2 * 10**6, profile)
    assert run.prepare_s == 30.0 and run.round_seconds == pytest.approx([cycle] * 3)
    assert run.rounds[-1].bytes_up == 2 * 10**6 and run.rounds[-1].contributors == 2


def test_async_versions_go_at_the_fast_devices_pace_and_the_slow_ones_updates_arrive_stale_or_refused():
    profile = load_catalogue_profile("cpu-8gb")
    plans = [_plan("fast-0", 0.1), _plan("fast-1", 0.1), _plan("slow", 1.0)]
    members = [FleetMember(plan.device_id, profile, 100) for plan in plans]
    fast = simulate(plans, members, 12, RoundSettings("async", buffer_size=2, max_staleness=10))
    sync = simulate(plans, members, 12, RoundSettings("sync"))
    assert fast.rounds[-1].ends_s < sync.rounds[-1].ends_s / 2
    assert any(r.mean_staleness > 0 for r in fast.rounds)  # the slow device's update counted, stale
    strict = simulate(plans, members, 12, RoundSettings("async", buffer_size=2, max_staleness=0))
    assert all(r.mean_staleness == 0 for r in strict.rounds)
    semi = simulate(plans, members, 3, RoundSettings("semi-sync", buffer_size=1, aggregation_period_s=50))
    assert [round(r.ends_s) for r in semi.rounds] == [80, 130, 180]  # a version every period at most, after 30 s of preparing


def test_a_thousand_catalogue_devices_are_planned_and_clocked_in_seconds():
    members = virtual_members([{"device": "cpu-8gb", "count": 400}, {"device": "jetson-orin-nano-8gb", "count": 400}, {"device": "laptop-rtx3060-6gb", "count": 200}])
    assert len(members) == 1000
    plan = plan_fleet(members, load_model_shape("smollm2-135m-instruct"), PlannerOptions(strategy="hetlora", max_depth=4, ranks=(4, 8, 16)))
    run = simulate(plan.devices, members, 5, RoundSettings("async", buffer_size=100))
    assert run.planned == len(plan.feasible()) > 0 and len(run.rounds) == 5
    assert all(r.bytes_up > 0 and r.contributors >= 100 for r in run.rounds)
