"""The capacity planner: which quantization, rank profile, depth, batch and local steps each device gets.

A pure function of the fleet (profiles, data sizes), the model's shape and the options:

1. **Budget.** A device may use ``safety_margin`` × its usable memory (GPU memory on a discrete GPU; host memory
   on CPU-only and unified-memory devices).
2. **Quantization.** The most precise base the backend runs (CPU: fp32; CUDA: bf16, or fp16 before Ampere; then
   NF4 where bitsandbytes works, on CPU or CUDA) whose weights and overhead leave at least half the budget for training; failing
   that, the smallest base that still fits anything. INT8 is never chosen on its own: bitsandbytes' LLM.int8()
   matmuls train several times slower than NF4 for more memory, so it is only used where an operator pins it.
   Full-weight training (``full``) keeps a 16/32-bit base, fp32 on GPUs without bf16.
3. **Capacity.** The deepest adapter, then the highest top rank, at the configured batch size, that fits the
   budget, switching gradient checkpointing on before giving up depth; the batch is halved only when nothing else
   fits. Ranks follow a LEGEND-style profile: the top rank on the third of the adapted layers nearest the output,
   half of it on the next third, a quarter below (never under the smallest allowed rank).
4. **Stragglers.** While the slowest device's predicted round time exceeds ``straggler_bound`` × the fleet's
   median, it gets less work: fewer layers first, then fewer local steps. A device still too slow at depth 1 and one
   local step is refused, with the figures, unless that would leave fewer than ``min_devices`` able to train (the
   coordinator's ``min_clients``): then it trains at that lightest workload, and the round waits for it.

A device that cannot take part gets ``feasible=False`` and a reason; it is never planned over its memory. An
operator may pin a device's quantization, rank and depth: the pin is checked against what the device can run
(``quantization_problem``), costed and checked against the budget like any other setup, and never lightened, but
it counts in the median.
"""

from __future__ import annotations

import bisect
import heapq
import statistics
from collections import Counter
from functools import lru_cache
from dataclasses import dataclass, field, replace

from fedge.coordinator.grouping import GroupPlan, GroupSchedule, plan_groups
from fedge.wire import PREPARED_ROUNDS, DeviceProfile
from fedge.profiles.calibration import Calibration, load_calibration
from fedge.profiles.memory import ACTIVATION_BYTES, MemoryBreakdown, TrainingSetup, base_weight_bytes, predict_memory
from fedge.profiles.model_shape import ModelShape
from fedge.profiles.timing import FLEET_RANK_SUM_STRATEGIES, WIRE_STRATEGIES, device_gflops, predict_prefix_seconds, predict_round_bytes, predict_step_seconds, transfer_seconds


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


@lru_cache(maxsize=4096)
def rank_profile(depth: int, top_rank: int, floor: int) -> tuple[int, ...]:
    """Per-layer ranks from the lowest adapted layer up: thirds at r/4, r/2, r nearest the output."""
    from_top = [max(floor, top_rank >> (3 * distance // depth)) for distance in range(depth)]
    return tuple(reversed(from_top))


def _ampere(profile: DeviceProfile) -> bool:
    return profile.cuda_capability is not None and float(profile.cuda_capability) >= 8.0


def quantization_problem(profile: DeviceProfile, quantization: str, strategy: str) -> str | None:
    """Why this device cannot train on a ``quantization`` base under ``strategy``, or None when it can."""
    cuda = bool(profile.cuda_device_name)
    if quantization in ("nf4", "int8"):
        if strategy == "full":
            return f"full-weight training needs a 16/32-bit base, not {quantization}"
        if not profile.bitsandbytes_usable:
            return f"{quantization} needs bitsandbytes, which does not load on this device"
    if quantization == "bf16" and cuda and not _ampere(profile):
        return f"bf16 needs an Ampere or newer GPU (compute capability {profile.cuda_capability}); use fp16"
    if quantization == "fp16" and not cuda:
        return "fp16 training needs a CUDA GPU; CPUs train fp32, bf16 or nf4"
    if quantization == "fp16" and strategy == "full":
        return "full-weight training cannot loss-scale fp16 weights (no fp32 master copy); use fp32"
    return None


def quantization_choices(profile: DeviceProfile, strategy: str = "fedit") -> list[str]:
    """Bases this device can train on under ``strategy``, most precise first: the backend's natural precision
    (CPU fp32; CUDA bf16, or fp16 before Ampere), then NF4 (bitsandbytes runs it on CPUs as well as on CUDA).
    Full-weight training keeps a 16/32-bit base: fp32 where the GPU has no bf16."""
    if not profile.cuda_device_name:
        preferred = ["fp32", "nf4"]
    elif _ampere(profile):
        preferred = ["bf16", "nf4"]
    else:
        preferred = ["fp32"] if strategy == "full" else ["fp16", "nf4"]
    return [q for q in preferred if quantization_problem(profile, q, strategy) is None]


def usable_memory_bytes(profile: DeviceProfile) -> int:
    """Memory training may occupy: GPU memory on a discrete GPU, host memory otherwise, after the usable share."""
    if profile.cuda_device_name and not profile.unified_memory:
        free = profile.cuda_free_bytes if profile.cuda_free_bytes is not None else profile.cuda_total_bytes or 0
    else:
        free = profile.ram_available_bytes
    return int(free * profile.usable_memory_fraction)


class _Device:
    """The cost model of one kind of device: a profile with a dataset size and a pin. Fleet members that share all
    three share one, so each distinct setup is costed once however many devices run it."""

    def __init__(self, profile: DeviceProfile, num_examples: int, pin: Pin | None, shape: ModelShape, options: PlannerOptions, calibrations: dict[str, Calibration]):
        self.profile = profile
        self.num_examples = num_examples
        self.pin = pin
        self.shape = shape
        self.options = options
        self.backend = "cuda" if profile.cuda_device_name else "cpu"
        self.calibration = calibrations[self.backend]
        self.host = calibrations["cpu"] if self.backend == "cuda" and profile.unified_memory else None
        self.available = usable_memory_bytes(profile)
        self.budget = int(self.available * options.safety_margin)
        self._memory: dict[TrainingSetup, MemoryBreakdown] = {}
        self._step: dict[TrainingSetup, float] = {}
        self._plans: dict[tuple[TrainingSetup, int, int], DevicePlan] = {}
        self._largest: dict[int, TrainingSetup | str] = {}

    def setup(self, quantization: str, depth: int, top_rank: int, batch: int, checkpointing: bool, uniform: bool = False) -> TrainingSetup:
        layers = tuple(range(self.shape.num_layers - depth, self.shape.num_layers))
        uniform = uniform or self.options.rank_profile == "uniform"
        ranks = (top_rank,) * depth if uniform else rank_profile(depth, top_rank, min(self.options.ranks))
        cached = self.cached_rows(quantization, batch)
        return TrainingSetup(quantization, layers, ranks, self.options.target_modules, batch, self.options.seq_len, self.options.optimizer, checkpointing, cached, self.num_examples, self.options.answer_share, self.options.sequences_per_example)

    def cached_rows(self, quantization: str, batch: int) -> int:
        """The examples whose frozen-prefix states fit the cache's bound (at least a batch)."""
        row_bytes = self.options.sequences_per_example * self.options.seq_len * self.shape.hidden_size * ACTIVATION_BYTES[quantization]
        return min(self.num_examples, max(batch, self.options.prefix_cache_mib * 2**20 // row_bytes))

    def memory(self, setup: TrainingSetup) -> MemoryBreakdown:
        found = self._memory.get(setup)
        if found is None:
            found = self._memory[setup] = predict_memory(self.shape, setup, self.calibration, self.host)
        return found

    def fits(self, setup: TrainingSetup) -> bool:
        return self.memory(setup).total <= self.budget

    def step_seconds(self, setup: TrainingSetup) -> float:
        found = self._step.get(setup)
        if found is None:
            found = self._step[setup] = predict_step_seconds(self.shape, setup, device_gflops(self.profile, setup.quantization), self.calibration)
        return found

    def plan(self, setup: TrainingSetup, local_steps: int, fleet_rank_sum: int) -> DevicePlan:
        """This kind's plan for ``setup`` (``device_id`` left empty for the caller to fill in)."""
        key = (setup, local_steps, fleet_rank_sum)
        found = self._plans.get(key)
        if found is None:
            found = self._plans[key] = self._cost(setup, local_steps, fleet_rank_sum)
        return found

    def _cost(self, setup: TrainingSetup, local_steps: int, fleet_rank_sum: int) -> DevicePlan:
        profile = self.profile
        step = self.step_seconds(setup)
        up, down = predict_round_bytes(self.options.strategy, self.shape, setup, fleet_rank_sum)
        return DevicePlan(
            device_id="",
            profile_name=profile.name,
            feasible=True,
            quantization=setup.quantization,
            layers=setup.layers,
            ranks=setup.ranks,
            batch_size=setup.batch_size,
            local_steps=local_steps,
            gradient_checkpointing=setup.gradient_checkpointing,
            memory=self.memory(setup),
            budget_bytes=self.budget,
            available_bytes=self.available,
            step_seconds=step,
            setup_seconds=predict_prefix_seconds(self.shape, setup, min(setup.examples, PREPARED_ROUNDS * local_steps * setup.batch_size), device_gflops(profile, setup.quantization), self.calibration)
            + transfer_seconds(0, int(base_weight_bytes(self.shape, setup.quantization)), profile),
            round_seconds=local_steps * step + transfer_seconds(up, down, profile),
            bytes_up=up,
            bytes_down=down,
            calibrated=self.calibration.measured,
            simulated=profile.source == "simulated",
        )

    def refuse(self, reason: str, device_id: str = "") -> DevicePlan:
        return DevicePlan(device_id, self.profile.name, False, reason, budget_bytes=self.budget, available_bytes=self.available, calibrated=self.calibration.measured)

    def chosen_setup(self, max_depth: int) -> TrainingSetup | str:
        """The pinned setup if there is a pin, else the largest that fits; or why none does."""
        return self.pinned_setup(self.pin) if self.pin else self.largest_setup(max_depth)

    def pinned_setup(self, pin: Pin) -> TrainingSetup | str:
        """The operator's pin, with gradient checkpointing if that is what makes it fit, or why it cannot fit."""
        if pin.depth > self.shape.num_layers:
            return f"pinned depth {pin.depth} exceeds the model's {self.shape.num_layers} layers"
        problem = quantization_problem(self.profile, pin.quantization, self.options.strategy)
        if problem:
            return f"the pinned base cannot run here: {problem}"
        for checkpointing in (False, True):
            setup = self.setup(pin.quantization, pin.depth, pin.rank, self.options.batch_size, checkpointing, uniform=True)
            if self.fits(setup):
                return setup
        need = self.memory(setup).total
        return f"out of memory: the pinned {pin.quantization} rank {pin.rank} depth {pin.depth} needs {need / 2**30:.2f} GiB; the budget is {self.budget / 2**30:.2f} GiB"

    def largest_setup(self, max_depth: int) -> TrainingSetup | str:
        """The highest-capacity setup that fits the budget, or why none does: the deepest adapter (found by bisection,
        memory growing with depth), then at that depth the highest rank, without checkpointing if possible."""
        if max_depth not in self._largest:
            self._largest[max_depth] = self._search_largest(max_depth)
        return self._largest[max_depth]

    def _search_largest(self, max_depth: int) -> TrainingSetup | str:
        choices = quantization_choices(self.profile, self.options.strategy)
        roomy = [q for q in choices if base_weight_bytes(self.shape, q) + self.calibration.overhead_bytes <= self.budget / 2]
        variants = [(top_rank, checkpointing) for top_rank in sorted(self.options.ranks, reverse=True) for checkpointing in (False, True)]
        for quantization in dict.fromkeys(roomy[:1] + choices[-1:]):  # the most precise roomy base, else the smallest
            batch = self.options.batch_size
            while batch >= 1:

                def first_fit(depth: int) -> TrainingSetup | None:
                    setups = (self.setup(quantization, depth, top_rank, batch, checkpointing) for top_rank, checkpointing in variants)
                    return next((setup for setup in setups if self.fits(setup)), None)

                if first_fit(1) is not None:
                    shallow, deep = 1, max_depth  # first_fit(shallow) holds; find the deepest depth where it does
                    while shallow < deep:
                        middle = (shallow + deep + 1) // 2
                        shallow, deep = (middle, deep) if first_fit(middle) is not None else (shallow, middle - 1)
                    return first_fit(shallow)
                batch //= 2
        smallest = self.setup(choices[-1], 1, min(self.options.ranks), 1, True)
        need = self.memory(smallest).total
        return f"out of memory: even {choices[-1]}, depth 1, rank {min(self.options.ranks)}, batch 1 needs {need / 2**30:.2f} GiB; the budget is {self.budget / 2**30:.2f} GiB ({self.options.safety_margin:.0%} of {self.available / 2**30:.2f} GiB usable)"


def _lighter(device: _Device, plan: DevicePlan) -> tuple[TrainingSetup, int] | None:
    """The next smaller workload for a straggler: one layer fewer, then fewer local steps; None at the floor."""
    if plan.depth > 1:
        return device.setup(plan.quantization, plan.depth - 1, max(plan.ranks), plan.batch_size, plan.gradient_checkpointing), plan.local_steps
    if plan.local_steps > 1:
        setup = device.setup(plan.quantization, 1, max(plan.ranks), plan.batch_size, plan.gradient_checkpointing)
        return setup, max(1, plan.local_steps * 3 // 4)
    return None


def default_calibrations() -> dict[str, Calibration]:
    """The bundled CPU and CUDA calibrations."""
    return {backend: load_calibration(backend) for backend in ("cpu", "cuda")}


def plan_fleet(members: list[FleetMember], shape: ModelShape, options: PlannerOptions | None = None, calibrations: dict[str, Calibration] | None = None) -> FleetPlan:
    """Plan every member; see the module docstring for the rules.

    Members with the same profile, dataset size and pin are one kind, costed once. Kinds whose chosen workloads
    take the same time on the same hardware (they differ only in how many rows they cache, all of them) are
    balanced as one class; each kind's final plan is then costed with its own dataset."""
    options = _checked(options, shape)
    calibrations = calibrations or default_calibrations()
    max_depth = options.depth_cap(shape)
    kind_index: dict[tuple, int] = {}
    kinds: list[_Device] = []
    kind_of: list[int] = []
    for member in members:
        index = kind_index.setdefault((member.profile, member.num_examples, member.pin), len(kinds))
        if index == len(kinds):
            kinds.append(_Device(member.profile, member.num_examples, member.pin, shape, options, calibrations))
        kind_of.append(index)
    class_index: dict[tuple, int] = {}
    class_of: dict[int, int] = {}  # kind -> balancing class
    setups: dict[int, tuple[TrainingSetup, int]] = {}
    representatives: list[_Device] = []
    refused: dict[int, str] = {}  # kind -> why
    for index, device in enumerate(kinds):
        chosen = device.chosen_setup(max_depth)
        if isinstance(chosen, str):
            refused[index] = chosen
            continue
        key = (device.profile, device.pin, replace(chosen, cached_examples=0, examples=0), chosen.uncached_fraction)
        class_of[index] = class_index.setdefault(key, len(class_index))
        if class_of[index] == len(representatives):
            representatives.append(device)
            setups[class_of[index]] = (chosen, options.local_steps)
    count = Counter(class_of[index] for index in kind_of if index in class_of)
    too_slow: dict[int, str] = {}
    balanced = _balance(representatives, count, setups, too_slow, options)
    rank_sum = sum(max(plan.ranks) * count[index] for index, plan in balanced.items())
    plans: dict[int, DevicePlan] = {}
    for index, device in enumerate(kinds):
        group = class_of.get(index)
        if group in too_slow:
            refused[index] = too_slow[group]
        elif group is not None:
            workload = balanced[group]
            setup = replace(setups[group][0], cached_examples=device.cached_rows(workload.quantization, workload.batch_size), examples=device.num_examples)
            plans[index] = device.plan(setup, workload.local_steps, rank_sum)
    ordered = [replace(plans[index], device_id=member.device_id) if index in plans else kinds[index].refuse(refused[index], member.device_id) for member, index in zip(members, kind_of)]
    fleet = FleetPlan(shape.name, options, ordered)
    if options.groups:
        devices = {member.device_id: kinds[index] for member, index in zip(members, kind_of)}
        groups = plan_groups(*_grouping_inputs(fleet, members, devices, options))
        fleet = replace(fleet, devices=_at_group_depths(fleet, groups, devices, options), groups=groups)
    return fleet


def plan_joiner(member: FleetMember, shape: ModelShape, options: PlannerOptions, median_round_seconds: float, fleet_rank_sum: int, calibrations: dict[str, Calibration] | None = None) -> DevicePlan:
    """Plan one device joining a planned fleet without touching anyone else's plan: its largest (or pinned) setup,
    lightened as a straggler would be until its round time is within the straggler bound of the fleet's median
    ``median_round_seconds`` (0: an empty fleet), or refused. ``fleet_rank_sum`` is Σ top ranks of the others."""
    options = _checked(options, shape)
    device = _Device(member.profile, member.num_examples, member.pin, shape, options, calibrations or default_calibrations())
    chosen = device.chosen_setup(options.depth_cap(shape))
    if isinstance(chosen, str):
        return device.refuse(chosen, member.device_id)
    workload = (chosen, options.local_steps)
    while True:
        plan = device.plan(*workload, fleet_rank_sum + max(workload[0].ranks))
        if not median_round_seconds or member.pin is not None or plan.round_seconds <= options.straggler_bound * median_round_seconds:
            return replace(plan, device_id=member.device_id)
        workload = _lighter(device, plan)
        if workload is None:
            return device.refuse(_too_slow(plan, median_round_seconds, options), member.device_id)


def _checked(options: PlannerOptions | None, shape: ModelShape) -> PlannerOptions:
    options = (options or PlannerOptions()).for_model(shape)
    problems = options.problems()
    if problems:
        raise ValueError("invalid planner options: " + "; ".join(problems))
    return options


def _too_slow(plan: DevicePlan, median: float, options: PlannerOptions) -> str:
    return f"too slow: {plan.round_seconds:.1f} s per round at depth 1 and 1 local step, more than {options.straggler_bound}× the fleet median {median:.1f} s"


def _grouping_inputs(fleet: FleetPlan, members: list[FleetMember], devices: dict[str, _Device], options: PlannerOptions) -> tuple[dict[str, tuple[int, ...]], GroupSchedule]:
    """The feasible devices' label histograms, and their round times at each depth, for ``plan_groups``."""
    plans = {plan.device_id: plan for plan in fleet.feasible()}
    histograms = {m.device_id: m.label_histogram for m in members if m.device_id in plans and m.label_histogram}

    def member_seconds(device_id: str, depth: int) -> float:
        return options.local_steps * devices[device_id].step_seconds(_setup_at_depth(devices[device_id], plans[device_id], depth))

    def deepest(device_id: str) -> int:
        return devices[device_id].largest_setup(options.depth_cap(devices[device_id].shape)).depth

    return histograms, GroupSchedule(options.groups, options.straggler_bound, options.max_group_frequency, member_seconds, deepest)


def _setup_at_depth(device: _Device, plan: DevicePlan, depth: int) -> TrainingSetup:
    """The device's planned workload at another depth, with gradient checkpointing only where it must."""
    setup = device.setup(plan.quantization, depth, max(plan.ranks), plan.batch_size, False)
    return setup if device.fits(setup) else device.setup(plan.quantization, depth, max(plan.ranks), plan.batch_size, True)


def _at_group_depths(fleet: FleetPlan, groups: list[GroupPlan], devices: dict[str, _Device], options: PlannerOptions) -> list[DevicePlan]:
    """Every grouped device re-planned at its group's depth D_g (with the full local steps the schedule assumed)."""
    depth_of = {device_id: group.depth for group in groups for device_id in group.members}
    rank_sum = sum(max(plan.ranks) for plan in fleet.feasible())
    out = []
    for plan in fleet.devices:
        if plan.device_id not in depth_of:
            out.append(plan)
            continue
        device = devices[plan.device_id]
        setup = _setup_at_depth(device, plan, depth_of[plan.device_id])
        out.append(replace(device.plan(setup, options.local_steps, rank_sum), device_id=plan.device_id))
    return out


class _Times:
    """Every feasible device's predicted round time, sorted, for the fleet's median as kinds of devices move."""

    def __init__(self, times: list[float]):
        self.sorted = sorted(times)

    def move(self, old: float | None, new: float | None, count: int) -> None:
        if old is not None:
            at = bisect.bisect_left(self.sorted, old)
            del self.sorted[at:at + count]
        if new is not None:
            at = bisect.bisect_left(self.sorted, new)
            self.sorted[at:at] = [new] * count

    def median(self) -> float:
        size = len(self.sorted)
        middle = size // 2
        return self.sorted[middle] if size % 2 else (self.sorted[middle - 1] + self.sorted[middle]) / 2


def _balance(kinds: list[_Device], count: Counter[int], setups: dict[int, tuple[TrainingSetup, int]], refused: dict[int, str], options: PlannerOptions) -> dict[int, DevicePlan]:
    """Lighten the slowest unpinned kind of device until it is within the straggler bound of the median, refusing
    hopeless ones unless that would leave fewer than ``min_devices`` (then it keeps its lightest workload). The slowest comes off a heap and the median from a sorted list of times, so a step costs one
    plan of one kind, not a re-plan of the fleet; only refusals under a strategy whose downlink grows with the
    fleet's rank sum (FLoRA, FedEx-LoRA) re-cost every kind."""
    while True:
        rank_sum = sum(max(setup.ranks) * count[index] for index, (setup, _) in setups.items())
        plans = {index: kinds[index].plan(setup, steps, rank_sum) for index, (setup, steps) in setups.items()}
        times = _Times([plans[index].round_seconds for index in plans for _ in range(count[index])])
        heap = [(-plan.round_seconds, index) for index, plan in plans.items() if kinds[index].pin is None]
        heapq.heapify(heap)
        while heap and len(times.sorted) >= 2:
            index = heap[0][1]
            slowest, median = plans[index], times.median()
            if slowest.round_seconds <= options.straggler_bound * median:
                return plans
            heapq.heappop(heap)
            lighter = _lighter(kinds[index], slowest)
            if lighter is not None:
                setups[index] = lighter
                plans[index] = kinds[index].plan(*lighter, rank_sum)
                times.move(slowest.round_seconds, plans[index].round_seconds, count[index])
                heapq.heappush(heap, (-plans[index].round_seconds, index))
                continue
            if len(times.sorted) - count[index] < options.min_devices:
                continue  # refusing it would leave the run too few devices: it trains at its lightest workload
            refused[index] = _too_slow(slowest, median, options)
            del setups[index], plans[index]
            times.move(slowest.round_seconds, None, count[index])
            if options.strategy in FLEET_RANK_SUM_STRATEGIES:
                break  # everyone's downlink shrank: cost the fleet again at the new rank sum
        else:
            return plans
