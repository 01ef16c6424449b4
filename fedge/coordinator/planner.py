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
from collections import Counter
from dataclasses import replace

from fedge.coordinator.costing import DeviceCosting, default_calibrations, lighter
from fedge.coordinator.grouping import GroupPlan, GroupSchedule, plan_groups
from fedge.coordinator.plans import DevicePlan, FleetMember, FleetPlan, PlannerOptions
from fedge.profiles.calibration import Calibration
from fedge.profiles.memory import TrainingSetup
from fedge.profiles.model_shape import ModelShape
from fedge.profiles.timing import FLEET_RANK_SUM_STRATEGIES


def plan_fleet(members: list[FleetMember], shape: ModelShape, options: PlannerOptions | None = None, calibrations: dict[str, Calibration] | None = None) -> FleetPlan:
    """Plan every member; see the module docstring for the rules.

    Members with the same profile, dataset size and pin are one kind, costed once. Kinds whose chosen workloads
    take the same time on the same hardware (they differ only in how many rows they cache, all of them) are
    balanced as one class; each kind's final plan is then costed with its own dataset."""
    options = _checked(options, shape)
    calibrations = calibrations or default_calibrations()
    max_depth = options.depth_cap(shape)
    kind_index: dict[tuple, int] = {}
    kinds: list[DeviceCosting] = []
    kind_of: list[int] = []
    for member in members:
        index = kind_index.setdefault((member.profile, member.num_examples, member.pin), len(kinds))
        if index == len(kinds):
            kinds.append(DeviceCosting(member.profile, member.num_examples, member.pin, shape, options, calibrations))
        kind_of.append(index)
    class_index: dict[tuple, int] = {}
    class_of: dict[int, int] = {}  # kind -> balancing class
    setups: dict[int, tuple[TrainingSetup, int]] = {}
    representatives: list[DeviceCosting] = []
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
    device = DeviceCosting(member.profile, member.num_examples, member.pin, shape, options, calibrations or default_calibrations())
    chosen = device.chosen_setup(options.depth_cap(shape))
    if isinstance(chosen, str):
        return device.refuse(chosen, member.device_id)
    workload = (chosen, options.local_steps)
    while True:
        plan = device.plan(*workload, fleet_rank_sum + max(workload[0].ranks))
        if not median_round_seconds or member.pin is not None or plan.round_seconds <= options.straggler_bound * median_round_seconds:
            return replace(plan, device_id=member.device_id)
        workload = lighter(device, plan)
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


def _grouping_inputs(fleet: FleetPlan, members: list[FleetMember], devices: dict[str, DeviceCosting], options: PlannerOptions) -> tuple[dict[str, tuple[int, ...]], GroupSchedule]:
    """The feasible devices' label histograms, and their round times at each depth, for ``plan_groups``."""
    plans = {plan.device_id: plan for plan in fleet.feasible()}
    histograms = {m.device_id: m.label_histogram for m in members if m.device_id in plans and m.label_histogram}

    def member_seconds(device_id: str, depth: int) -> float:
        return plans[device_id].local_steps * devices[device_id].step_seconds(_setup_at_depth(devices[device_id], plans[device_id], depth))

    def deepest(device_id: str) -> int:
        return devices[device_id].largest_setup(options.depth_cap(devices[device_id].shape)).depth

    ungrouped_round = max((plans[device_id].round_seconds for device_id in histograms), default=0.0)
    return histograms, GroupSchedule(options.groups, ungrouped_round, options.max_group_frequency, member_seconds, deepest, lambda device_id: plans[device_id].local_steps)


def _setup_at_depth(device: DeviceCosting, plan: DevicePlan, depth: int) -> TrainingSetup:
    """The device's planned workload at another depth, with gradient checkpointing only where it must."""
    setup = device.setup(plan.quantization, depth, max(plan.ranks), plan.batch_size, False)
    return setup if device.fits(setup) else device.setup(plan.quantization, depth, max(plan.ranks), plan.batch_size, True)


def _at_group_depths(fleet: FleetPlan, groups: list[GroupPlan], devices: dict[str, DeviceCosting], options: PlannerOptions) -> list[DevicePlan]:
    """Every grouped device re-planned at its group's depth D_g, with the batch and local steps of its own plan (as
    the schedule assumed)."""
    depth_of = {device_id: group.depth for group in groups for device_id in group.members}
    rank_sum = sum(max(plan.ranks) for plan in fleet.feasible())
    out = []
    for plan in fleet.devices:
        if plan.device_id not in depth_of:
            out.append(plan)
            continue
        device = devices[plan.device_id]
        setup = _setup_at_depth(device, plan, depth_of[plan.device_id])
        out.append(replace(device.plan(setup, plan.local_steps, rank_sum), device_id=plan.device_id))
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


def _balance(kinds: list[DeviceCosting], count: Counter[int], setups: dict[int, tuple[TrainingSetup, int]], refused: dict[int, str], options: PlannerOptions) -> dict[int, DevicePlan]:
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
            easier = lighter(kinds[index], slowest)
            if easier is not None:
                setups[index] = easier
                plans[index] = kinds[index].plan(*easier, rank_sum)
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
