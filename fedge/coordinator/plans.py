"""What the capacity planner takes and gives: options, fleet members, pins, and each device's plan."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from fedge.coordinator.grouping import GroupPlan
from fedge.profiles.memory import MemoryBreakdown
from fedge.profiles.model_shape import ModelShape
from fedge.profiles.timing import WIRE_STRATEGIES
from fedge.wire import DeviceProfile


@dataclass(frozen=True)
class Pin:
    """An operator's fixed choice for a device: uniform rank on the top ``depth`` layers of a ``quantization`` base."""

    rank: int
    depth: int
    quantization: str = "fp32"


@dataclass(frozen=True)
class FleetMember:
    device_id: str
    profile: DeviceProfile
    num_examples: int
    label_histogram: tuple[int, ...] = ()
    pin: Pin | None = None


RANK_PROFILES = ("legend", "uniform")


@dataclass(frozen=True)
class PlannerOptions:
    strategy: str = "fedit"
    target_modules: tuple[str, ...] = ()  # empty: the model family's default (``fedge.profiles.architecture``)
    seq_len: int = 48
    ranks: tuple[int, ...] = (4, 8, 16, 32)
    max_depth: int = 0  # 0: every layer
    batch_size: int = 16
    local_steps: int = 10
    optimizer: str = "adamw"
    scaling: float = 2.0
    safety_margin: float = 0.85
    straggler_bound: float = 1.25
    rank_profile: str = "legend"  # legend: r, r/2, r/4 by thirds, highest nearest the output; uniform: r everywhere
    groups: int = 0  # HierFedLoRA near-IID groups; 0 = none
    max_group_frequency: int = 4
    prefix_cache_mib: int = 1024  # the most a device's frozen-prefix cache may hold; the rest is recomputed
    answer_share: float = 0.0  # the share of tokens the full-vocabulary loss runs on (instruct's answers, multi-token labels)
    sequences_per_example: int = 1  # classify with labels of several tokens: one sequence per label
    min_devices: int = 1  # the straggler rule refuses no device that would leave fewer than this many able to train

    def for_model(self, shape: ModelShape) -> PlannerOptions:
        """These options with the target modules resolved for ``shape``; ``ValueError`` if it lacks one of them."""
        targets = self.target_modules or shape.default_targets
        unknown = [module for module in targets if module not in shape.linear_modules]
        if unknown:
            raise ValueError(f"target_modules: {shape.name} ({shape.family}) has no {', '.join(unknown)}; its per-layer modules are {', '.join(shape.linear_modules)}")
        return replace(self, target_modules=tuple(targets))

    def depth_cap(self, shape: ModelShape) -> int:
        """The most layers an adapter may cover on ``shape``: ``max_depth``, or every layer."""
        return min(self.max_depth or shape.num_layers, shape.num_layers)

    def problems(self) -> list[str]:
        """Every invalid option, each naming its key."""
        found = []
        if self.strategy not in WIRE_STRATEGIES:
            found.append(f"strategy: one of {', '.join(WIRE_STRATEGIES)}")
        if self.rank_profile not in RANK_PROFILES:
            found.append(f"rank_profile: one of {', '.join(RANK_PROFILES)}")
        if not self.ranks or min(self.ranks) < 1:
            found.append("ranks: positive integers")
        for key in ("seq_len", "batch_size", "local_steps", "max_group_frequency", "prefix_cache_mib", "sequences_per_example", "min_devices"):
            if getattr(self, key) < 1:
                found.append(f"{key}: must be >= 1")
        if self.max_depth < 0 or self.groups < 0:
            found.append("max_depth and groups: must be >= 0")
        if not 0 <= self.answer_share <= 1:
            found.append("answer_share: in [0, 1]")
        if not 0 < self.safety_margin <= 1:
            found.append("safety_margin: in (0, 1]")
        if self.straggler_bound < 1:
            found.append("straggler_bound: must be >= 1")
        return found


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    profile_name: str
    feasible: bool
    reason: str = ""
    quantization: str = ""
    layers: tuple[int, ...] = ()
    ranks: tuple[int, ...] = ()
    batch_size: int = 0
    local_steps: int = 0
    gradient_checkpointing: bool = False
    memory: MemoryBreakdown | None = None
    budget_bytes: int = 0
    available_bytes: int = 0
    step_seconds: float = 0.0
    setup_seconds: float = 0.0  # preparing for the first round: the backbone's download and the prefix of the rows of the first two rounds
    round_seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    calibrated: bool = True
    simulated: bool = False  # a catalogue device standing in on another machine (its profile's source)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        out = {key: getattr(self, key) for key in self.__dataclass_fields__ if key != "memory"}
        out["memory"] = self.memory.to_dict() if self.memory else None
        return out


@dataclass(frozen=True)
class FleetPlan:
    model: str
    options: PlannerOptions
    devices: list[DevicePlan]
    groups: list[GroupPlan] = field(default_factory=list)

    def feasible(self) -> list[DevicePlan]:
        return [plan for plan in self.devices if plan.feasible]

    @property
    def median_round_seconds(self) -> float:
        times = [plan.round_seconds for plan in self.feasible()]
        return statistics.median(times) if times else 0.0
