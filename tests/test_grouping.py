"""HierFedLoRA grouping: near-IID groups and each group's aggregation frequency and depth."""

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
    assert cpus.depth < gpus.depth == 6
