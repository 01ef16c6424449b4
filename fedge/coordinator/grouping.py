"""HierFedLoRA: near-IID device groups, each with its own aggregation frequency and depth.

**Grouping.** Devices are placed one at a time, largest dataset first, into the group whose label mix after adding
the device is closest (L1 distance) to the whole fleet's mix; group sizes stay within one device of each other.

**Schedule.** All members of a group train the same top-D_g layers, so one group round takes
t_g(D) = max over members of local_steps × step_time(D). The global round gets T = straggler_bound × the median
over groups of t_g at each group's deepest depth that fits every member's memory. Each group then takes the
(τ_g, D_g) with τ_g · t_g(D_g) ≤ T that does the most layer-rounds of work τ_g · D_g (ties go to the deeper
adapter): fast groups aggregate internally several times per global round, slow groups once, on fewer layers.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np


@dataclass(frozen=True)
class GroupPlan:
    index: int
    members: tuple[str, ...]
    label_distance: float  # L1 between the group's label mix and the fleet's
    depth: int
    frequency: int  # group aggregations per global round (τ_g)
    round_seconds: float  # τ_g · t_g(D_g)


def _mix(histogram: np.ndarray) -> np.ndarray:
    total = histogram.sum()
    return histogram / total if total > 0 else histogram


def form_groups(histograms: dict[str, tuple[int, ...]], num_groups: int) -> list[list[str]]:
    """Near-IID groups of device ids by greedy label balancing (see the module docstring)."""
    if num_groups < 1:
        raise ValueError("num_groups must be >= 1")
    width = max((len(h) for h in histograms.values()), default=0)
    counts = {device: np.pad(np.asarray(h, dtype=float), (0, width - len(h))) for device, h in histograms.items()}
    target = _mix(sum(counts.values(), np.zeros(width)))
    groups: list[list[str]] = [[] for _ in range(min(num_groups, len(counts)))]
    sums = [np.zeros(width) for _ in groups]
    capacity = -(-len(counts) // max(len(groups), 1))
    for device in sorted(counts, key=lambda d: (-counts[d].sum(), d)):
        open_groups = [g for g in range(len(groups)) if len(groups[g]) < capacity]
        best = min(open_groups, key=lambda g: (np.abs(_mix(sums[g] + counts[device]) - target).sum(), len(groups[g]), g))
        groups[best].append(device)
        sums[best] += counts[device]
    return [group for group in groups if group]


def label_distance(histograms: dict[str, tuple[int, ...]], group: list[str]) -> float:
    width = max(len(h) for h in histograms.values())
    padded = {d: np.pad(np.asarray(h, dtype=float), (0, width - len(h))) for d, h in histograms.items()}
    fleet = _mix(sum(padded.values(), np.zeros(width)))
    return float(np.abs(_mix(sum((padded[d] for d in group), np.zeros(width))) - fleet).sum())


@dataclass(frozen=True)
class GroupSchedule:
    """What scheduling groups needs from the planner: how many groups, the time budget's straggler bound, the most
    exchanges a group may run per global round, a group member's round seconds at a depth, and the deepest depth
    that fits a member's memory."""

    num_groups: int
    straggler_bound: float
    max_frequency: int
    member_seconds: Callable[[str, int], float]
    deepest: Callable[[str], int]


def plan_groups(histograms: dict[str, tuple[int, ...]], schedule: GroupSchedule) -> list[GroupPlan]:
    """Groups over the devices with label histograms (the feasible ones), each with its (τ_g, D_g); see the module
    docstring."""
    if not histograms:
        return []
    groups = form_groups(histograms, schedule.num_groups)

    def group_seconds(group: list[str], depth: int) -> float:
        return max(schedule.member_seconds(device_id, depth) for device_id in group)

    depth_caps = [min(schedule.deepest(d) for d in group) for group in groups]
    budget = schedule.straggler_bound * statistics.median(group_seconds(g, cap) for g, cap in zip(groups, depth_caps))
    result = []
    for index, (group, cap) in enumerate(zip(groups, depth_caps)):
        best = (1, 1, group_seconds(group, 1))  # (frequency, depth, seconds): the floor when nothing fits T
        for depth in range(1, cap + 1):
            seconds = group_seconds(group, depth)
            frequency = min(schedule.max_frequency, int(budget // seconds))
            if frequency >= 1 and (frequency * depth, depth) >= (best[0] * best[1], best[1]):
                best = (frequency, depth, frequency * seconds)
        result.append(GroupPlan(index, tuple(group), round(label_distance(histograms, group), 4), best[1], best[0], best[2]))
    return result
