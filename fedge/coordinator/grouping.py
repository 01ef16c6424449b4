"""HierFedLoRA: near-IID, capability-compatible device groups, each with its own aggregation frequency and depth.

**Grouping.** Capability first: devices sorted by seconds per local step at depth 1 are cut into tiers of equal
size (±1), so a GPU laptop does not share a group, and with it a depth and a pace, with a Raspberry Pi. Then label
balance: two devices near a tier boundary (``SWAP_WINDOW`` on each side) trade groups wherever that lowers the two
groups' L1 distance from the fleet's label mix plus ``CAPABILITY_WEIGHT`` × the spread (standard deviation) of
their members' log₂ seconds per step; trades between devices of similar speed cost little and mix labels freely.

**Schedule.** All members of a group train the same top-D_g layers, each with its own planned batch and local
steps, so one group exchange takes t_g(D) = max over members of their round time at depth D. The budget T is the
ungrouped plan's global round (its slowest planned device), so a grouped global round is never slower than an
ungrouped one: every member's own planned depth already fits T, and depth 1 fits at worst. Each group takes the
(τ_g, D_g) with τ_g · t_g(D_g) ≤ T that does the most layer-exchanges τ_g · D_g (ties go to the deeper adapter):
fast groups aggregate several times per global round, slow groups once, on fewer layers.
"""

from __future__ import annotations

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


CAPABILITY_WEIGHT = 0.5  # label-L1 units (0..2) per unit of a group's spread in log₂ seconds per step
SWAP_WINDOW = 32  # devices on each side of a tier boundary that may trade places
SWAP_PASSES = 4


def form_groups(histograms: dict[str, tuple[int, ...]], num_groups: int, step_seconds: dict[str, float] | None = None) -> list[list[str]]:
    """Near-IID groups of device ids (see the module docstring). Without ``step_seconds`` (each device's seconds per
    local step), by label balance alone: largest dataset first into the group whose mix comes closest to the
    fleet's. With them, capability first: speed tiers, then label balance by trades across tier boundaries."""
    if num_groups < 1:
        raise ValueError("num_groups must be >= 1")
    width = max((len(h) for h in histograms.values()), default=0)
    counts = {device: np.pad(np.asarray(h, dtype=float), (0, width - len(h))) for device, h in histograms.items()}
    if step_seconds is not None:
        return _tiers_then_trades(counts, min(num_groups, len(counts)), step_seconds)
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


class _Group:
    """A group's label counts and the first two moments of its members' log₂ seconds per step."""

    def __init__(self, members: list[str], counts: dict[str, np.ndarray], speed: dict[str, float]):
        self.members = members
        self.labels = sum((counts[d] for d in members), np.zeros_like(next(iter(counts.values()))))
        self.speed_sum = sum(speed[d] for d in members)
        self.speed_squares = sum(speed[d] ** 2 for d in members)

    def cost(self, target: np.ndarray, labels: np.ndarray, speed_sum: float, speed_squares: float) -> float:
        size = len(self.members)
        spread = np.sqrt(max(speed_squares / size - (speed_sum / size) ** 2, 0.0))
        return float(np.abs(_mix(labels) - target).sum()) + CAPABILITY_WEIGHT * spread

    def trade_cost(self, target: np.ndarray, out: str, into: str, counts: dict[str, np.ndarray], speed: dict[str, float]) -> float:
        return self.cost(target, self.labels - counts[out] + counts[into], self.speed_sum - speed[out] + speed[into], self.speed_squares - speed[out] ** 2 + speed[into] ** 2)

    def current_cost(self, target: np.ndarray) -> float:
        return self.cost(target, self.labels, self.speed_sum, self.speed_squares)

    def trade(self, out: str, into: str, counts: dict[str, np.ndarray], speed: dict[str, float]) -> None:
        self.members[self.members.index(out)] = into
        self.labels = self.labels - counts[out] + counts[into]
        self.speed_sum += speed[into] - speed[out]
        self.speed_squares += speed[into] ** 2 - speed[out] ** 2


def _tiers_then_trades(counts: dict[str, np.ndarray], num_groups: int, step_seconds: dict[str, float]) -> list[list[str]]:
    """Consecutive speed tiers of equal size (±1), then trades of two devices across a tier boundary (within
    ``SWAP_WINDOW`` of it) wherever they lower the two groups' label distance plus capability spread."""
    speed = {device: float(np.log2(max(step_seconds[device], 1e-9))) for device in counts}
    order = sorted(counts, key=lambda d: (speed[d], -counts[d].sum(), d))
    sizes = [len(order) // num_groups + (index < len(order) % num_groups) for index in range(num_groups)]
    bounds = np.cumsum([0] + sizes)
    groups = [_Group(order[bounds[g]:bounds[g + 1]], counts, speed) for g in range(num_groups)]
    target = _mix(sum(counts.values(), np.zeros_like(next(iter(counts.values())))))
    for _ in range(SWAP_PASSES):
        traded = False
        for left, right in zip(groups, groups[1:]):
            for out in left.members[-SWAP_WINDOW:]:
                before = left.current_cost(target) + right.current_cost(target)
                gains = [(before - left.trade_cost(target, out, into, counts, speed) - right.trade_cost(target, into, out, counts, speed), into) for into in right.members[:SWAP_WINDOW]]
                gain, into = max(gains, default=(0.0, None))
                if gain > 1e-9:
                    left.trade(out, into, counts, speed)
                    right.trade(into, out, counts, speed)
                    traded = True
        if not traded:
            break
    return [group.members for group in groups if group.members]


def label_distance(histograms: dict[str, tuple[int, ...]], group: list[str]) -> float:
    width = max(len(h) for h in histograms.values())
    padded = {d: np.pad(np.asarray(h, dtype=float), (0, width - len(h))) for d, h in histograms.items()}
    fleet = _mix(sum(padded.values(), np.zeros(width)))
    return float(np.abs(_mix(sum((padded[d] for d in group), np.zeros(width))) - fleet).sum())


@dataclass(frozen=True)
class GroupSchedule:
    """What scheduling groups needs from the planner: how many groups, the ungrouped plan's global round (the
    budget), the most exchanges a group may run per global round, a member's round seconds at a depth with its
    planned batch and steps, and the deepest depth that fits a member's memory."""

    num_groups: int
    budget_seconds: float
    max_frequency: int
    member_seconds: Callable[[str, int], float]
    deepest: Callable[[str], int]
    local_steps: Callable[[str], int]


def plan_groups(histograms: dict[str, tuple[int, ...]], schedule: GroupSchedule) -> list[GroupPlan]:
    """Groups over the devices with label histograms (the feasible ones), each with its (τ_g, D_g); see the module
    docstring."""
    if not histograms:
        return []
    speed = {device: schedule.member_seconds(device, 1) / max(schedule.local_steps(device), 1) for device in histograms}
    groups = form_groups(histograms, schedule.num_groups, speed)

    def group_seconds(group: list[str], depth: int) -> float:
        return max(schedule.member_seconds(device_id, depth) for device_id in group)

    depth_caps = [min(schedule.deepest(d) for d in group) for group in groups]
    budget = schedule.budget_seconds
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
