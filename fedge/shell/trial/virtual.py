"""Round times and bytes of a fleet larger than this machine, on a virtual clock.

A trial's ``virtual_fleet`` (say 1,000 catalogue devices) is planned as the coordinator would plan it, with the
run's strategy and planner options. Nothing of it trains: each planned device's time comes from its plan and its
profile. Preparing takes its ``setup_seconds`` (the backbone over its downlink, and the frozen prefix of the rows
its first rounds train on); every round it downloads its state, trains ``local_steps`` × the predicted step time and
uploads its update, each transfer over its own link (``fedge.profiles.timing``). The trial's real ``fleet`` trains for
real beside it, so the report has the accuracy of a sample and the times and bytes of the whole fleet.

The clock replays the coordinator's rules. ``sync``: a round ends when its slowest device's update is in. ``async``
and ``semi-sync`` (``fedge.coordinator.buffered``): updates join a buffer as they arrive, the buffer becomes a version when
it holds ``buffer_size`` (semi-sync: not before ``aggregation_period_s`` after the last version), contributors
start again on the new version, and an update more than ``max_staleness`` versions old is refused and its device
starts again at once. The coordinator's own time per round is not modelled (``benchmarks/fleet_load.py`` measures
it: about a second at 1,000 devices).
"""

from __future__ import annotations

import heapq
import statistics
from dataclasses import dataclass

from fedge.coordinator.plans import DevicePlan, FleetMember
from fedge.profiles import load_catalogue_profile
from fedge.profiles.timing import transfer_seconds


@dataclass(frozen=True)
class RoundSettings:
    mode: str = "sync"
    buffer_size: int = 0  # 0: half the planned fleet
    max_staleness: int = 4
    aggregation_period_s: float = 60.0


@dataclass(frozen=True)
class VirtualRound:
    round: int
    ends_s: float  # virtual seconds since the fleet began preparing
    contributors: int
    mean_staleness: float
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True)
class VirtualRun:
    devices: int
    planned: int
    prepare_s: float
    rounds: list[VirtualRound]

    @property
    def round_seconds(self) -> list[float]:
        starts = [self.prepare_s] + [r.ends_s for r in self.rounds[:-1]]
        return [r.ends_s - start for r, start in zip(self.rounds, starts)]


@dataclass(frozen=True)
class _Device:
    down_s: float
    train_s: float
    up_s: float
    bytes_up: int
    bytes_down: int

    @property
    def cycle_s(self) -> float:
        return self.down_s + self.train_s + self.up_s


def _devices(plans: list[DevicePlan], members: list[FleetMember]) -> list[_Device]:
    profile_of = {member.device_id: member.profile for member in members}
    return [
        _Device(transfer_seconds(0, plan.bytes_down, profile_of[plan.device_id]), plan.local_steps * plan.step_seconds, transfer_seconds(plan.bytes_up, 0, profile_of[plan.device_id]), plan.bytes_up, plan.bytes_down)
        for plan in plans if plan.feasible
    ]


def virtual_members(entries: list[dict]) -> list[FleetMember]:
    """``[{device, count, examples}]`` (catalogue names; examples default 500) as fleet members."""
    return [FleetMember(f"{entry['device']}-{copy}", load_catalogue_profile(entry["device"]), int(entry.get("examples", 500))) for entry in entries for copy in range(int(entry.get("count", 1)))]


def simulate(plans: list[DevicePlan], members: list[FleetMember], rounds: int, settings: RoundSettings) -> VirtualRun:
    """The fleet's rounds on the virtual clock (see the module docstring)."""
    devices = _devices(plans, members)
    prepare_s = max((plan.setup_seconds for plan in plans if plan.feasible), default=0.0)
    if not devices:
        return VirtualRun(len(plans), 0, prepare_s, [])
    if settings.mode == "sync":
        out, now = [], prepare_s
        for number in range(1, rounds + 1):
            now += max(device.cycle_s for device in devices)
            out.append(VirtualRound(number, now, len(devices), 0.0, sum(d.bytes_up for d in devices), sum(d.bytes_down for d in devices)))
        return VirtualRun(len(plans), len(devices), prepare_s, out)
    return VirtualRun(len(plans), len(devices), prepare_s, _buffered(devices, prepare_s, rounds, settings))


def _buffered(devices: list[_Device], start_s: float, rounds: int, settings: RoundSettings) -> list[VirtualRound]:
    size = settings.buffer_size or max(1, -(-len(devices) // 2))
    arrivals: list[tuple[float, int, int]] = []  # (when, device, version trained on)
    version, buffer, out = 0, [], []
    sent_up = sent_down = 0
    last_version_s = start_s

    def give_work(at: float, index: int) -> None:
        nonlocal sent_down
        heapq.heappush(arrivals, (at + devices[index].cycle_s, index, version))
        sent_down += devices[index].bytes_down

    def arrive() -> float:
        """The next update in: buffered, or refused as too stale (its device starts again at once); when it came."""
        nonlocal sent_up
        when, index, trained_on = heapq.heappop(arrivals)
        sent_up += devices[index].bytes_up
        if version - trained_on > settings.max_staleness:
            give_work(when, index)
        else:
            buffer.append((index, version - trained_on))
        return when

    def flush(at: float) -> None:
        nonlocal version, buffer, sent_up, sent_down, last_version_s
        version += 1
        out.append(VirtualRound(version, at, len(buffer), statistics.fmean(s for _, s in buffer), sent_up, sent_down))
        contributors, buffer, last_version_s, sent_up, sent_down = buffer, [], at, 0, 0
        for index, _ in contributors:
            give_work(at, index)

    for index in range(len(devices)):
        give_work(start_s, index)
    while version < rounds and arrivals:
        when = arrive()
        if len(buffer) < size and arrivals:
            continue
        at = when if settings.mode == "async" else max(when, last_version_s + settings.aggregation_period_s)
        while settings.mode != "async" and arrivals and arrivals[0][0] <= at:  # the period's later arrivals join
            arrive()
        flush(at)
    return out
