"""HierFedLoRA grouping: near-IID groups and each group's aggregation frequency and depth."""

from pathlib import Path

import numpy as np
import pytest

from fedge.coordinator.grouping import form_groups, label_distance
from fedge.coordinator.plans import FleetMember, PlannerOptions
from fedge.coordinator.planner import plan_fleet
from fedge.profiles import load_catalogue_profile
from fedge.profiles.model_shape import load_model_shape


def _skewed_histograms(devices: int = 12, labels: int = 8, seed: int = 0, alpha: float = 0.3) -> dict[str, tuple[int, ...]]:
    """Each device holds mostly a few labels (Dirichlet label skew)."""
    rng = np.random.default_rng(seed)
    return {f"d{i}": tuple(int(x) for x in rng.multinomial(200, rng.dirichlet([alpha] * labels))) for i in range(devices)}


@pytest.mark.parametrize("seed", range(5))
def test_groups_are_balanced_and_closer_to_the_fleet_mix_than_grouping_by_dominant_label(seed):
    histograms = _skewed_histograms(seed=seed)
    groups = form_groups(histograms, 3)
    assert sorted(len(g) for g in groups) == [4, 4, 4] and sorted(sum(groups, [])) == sorted(histograms)
    by_label = sorted(histograms, key=lambda d: int(np.argmax(histograms[d])))
    naive = [by_label[:4], by_label[4:8], by_label[8:]]
    greedy_distances = [label_distance(histograms, g) for g in groups]
    naive_distances = [label_distance(histograms, g) for g in naive]
    assert max(greedy_distances) < max(naive_distances) and np.mean(greedy_distances) < np.mean(naive_distances)


def test_more_groups_than_devices_gives_singletons():
    histograms = _skewed_histograms(devices=3)
    assert sorted(map(len, form_groups(histograms, 5))) == [1, 1, 1]


def test_every_feasible_device_lands_in_exactly_one_group():
    names = ["laptop-rtx4090-16gb", "laptop-rtx4060-8gb", "cpu-16gb", "cpu-8gb"]
    histograms = _skewed_histograms(devices=4)
    members = [FleetMember(f"d{i}", load_catalogue_profile(name), 300, histograms[f"d{i}"]) for i, name in enumerate(names)]
    options = PlannerOptions(groups=2, max_depth=8, straggler_bound=1000.0)  # plan each device at full capacity
    plan = plan_fleet(members, load_model_shape("smollm2-135m-instruct"), options)
    assert len(plan.groups) == 2 and sorted(sum((list(g.members) for g in plan.groups), [])) == ["d0", "d1", "d2", "d3"]
    for group in plan.groups:
        assert 1 <= group.frequency <= options.max_group_frequency and 1 <= group.depth <= 8
    depth_of = {device: group.depth for group in plan.groups for device in group.members}
    assert all(device.depth == depth_of[device.device_id] and device.memory.total <= device.budget_bytes for device in plan.feasible())


def test_fast_groups_aggregate_more_often_and_slow_groups_train_fewer_layers():
    names = ["laptop-rtx4090-16gb", "laptop-rtx4090-16gb", "cpu-8gb", "cpu-8gb"]
    histograms = {"d0": (100, 0), "d1": (0, 100), "d2": (100, 0), "d3": (0, 100)}
    members = [FleetMember(f"d{i}", load_catalogue_profile(name), 200, histograms[f"d{i}"]) for i, name in enumerate(names)]
    plan = plan_fleet(members, load_model_shape("smollm2-135m-instruct"), PlannerOptions(groups=2, max_depth=6, straggler_bound=1.25))
    # label balancing pairs each label-0 device with a label-1 device: the two GPUs, and the two CPUs
    gpus, cpus = sorted(plan.groups, key=lambda g: g.members)
    assert gpus.members == ("d0", "d1") and cpus.members == ("d2", "d3")
    assert gpus.label_distance == 0 and cpus.label_distance == 0
    assert gpus.frequency > cpus.frequency == 1
    assert cpus.depth < gpus.depth


def _ungrouped_round(members, options) -> float:
    from dataclasses import replace

    return max(plan.round_seconds for plan in plan_fleet(members, load_model_shape("smollm2-135m-instruct"), replace(options, groups=0)).feasible())


def test_gpu_laptops_are_not_grouped_with_a_raspberry_pi_and_a_grouped_round_is_no_slower():
    names = ["laptop-rtx4060-8gb", "laptop-rtx4060-8gb", "laptop-rtx3060-6gb", "raspberry-pi-5-8gb", "cpu-8gb", "cpu-16gb"]
    histograms = _skewed_histograms(devices=6, seed=3)
    members = [FleetMember(f"d{i}", load_catalogue_profile(name), 300, histograms[f"d{i}"]) for i, name in enumerate(names)]
    options = PlannerOptions(groups=2, max_depth=8)
    plan = plan_fleet(members, load_model_shape("smollm2-135m-instruct"), options)
    laptops, slow = sorted(plan.groups, key=lambda g: "d0" not in g.members)
    assert set(laptops.members) == {"d0", "d1", "d2"} and set(slow.members) == {"d3", "d4", "d5"}  # capability first
    assert max(group.round_seconds for group in plan.groups) <= _ungrouped_round(members, options) * (1 + 1e-9)
    assert laptops.depth > slow.depth and laptops.frequency * laptops.depth > slow.frequency * slow.depth


def test_the_example_fleets_grouped_round_is_no_slower_than_ungrouped():
    from fedge.coordinator.fleet import load_fleet

    fleet = load_fleet(Path(__file__).resolve().parent.parent / "examples" / "fleet.yaml")
    plan = plan_fleet(fleet.members, load_model_shape(fleet.model), fleet.options)
    assert len(plan.groups) == 2 and max(group.round_seconds for group in plan.groups) <= _ungrouped_round(fleet.members, fleet.options) * (1 + 1e-9)
    by_device = {plan.device_id: plan for plan in plan.feasible()}
    for group in plan.groups:  # every member trains its group's depth with the steps of its own plan
        assert all(by_device[member].depth == group.depth for member in group.members)
        speeds = [by_device[member].step_seconds / group.depth for member in group.members]
        assert max(speeds) / min(speeds) < 10  # no GPU beside a CPU-class device


@pytest.mark.parametrize("seed", range(3))
def test_devices_of_one_speed_are_still_balanced_by_label(seed):
    histograms = _skewed_histograms(devices=12, seed=seed)
    speeds = {device: 1.0 for device in histograms}
    traded = form_groups(histograms, 3, speeds)
    assert sorted(len(g) for g in traded) == [4, 4, 4] and sorted(sum(traded, [])) == sorted(histograms)
    order = sorted(histograms, key=lambda d: (-sum(histograms[d]), d))  # the tiers before any trade
    untraded = [order[:4], order[4:8], order[8:]]
    assert np.mean([label_distance(histograms, g) for g in traded]) < np.mean([label_distance(histograms, g) for g in untraded])
