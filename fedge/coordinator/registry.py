"""Who is in the fleet, what each device was planned to do, and whether it is alive.

Liveness comes only from authenticated messages: every message a device signs (its heartbeat thread sends one
every few seconds, whatever it is doing) refreshes ``last_seen``; a device silent for ``liveness_s`` is offline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fedge.coordinator.planner import DevicePlan, Pin
from fedge.wire import DeviceProfile


@dataclass
class AgentRecord:
    agent_id: str
    profile: DeviceProfile
    num_examples: int
    label_histogram: tuple[int, ...]
    pin: Pin | None = None
    plan: DevicePlan | None = None  # set by the planner; None until the fleet is planned
    base_version: int = 0  # the last round of frozen-weight changes the agent reported merged
    last_seen: float = field(default_factory=time.time)


class Registry:
    def __init__(self, liveness_s: float = 30.0) -> None:
        self.liveness_s = liveness_s
        self._agents: dict[str, AgentRecord] = {}

    def register(self, record: AgentRecord) -> bool:
        """Add or refresh an agent; True when it is new."""
        is_new = record.agent_id not in self._agents
        self._agents[record.agent_id] = record
        return is_new

    def remove(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)

    def get(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    def seen(self, agent_id: str) -> None:
        record = self._agents.get(agent_id)
        if record is not None:
            record.last_seen = time.time()

    def is_online(self, record: AgentRecord, now: float | None = None) -> bool:
        return (now or time.time()) - record.last_seen < self.liveness_s

    def online(self) -> list[AgentRecord]:
        now = time.time()
        return [record for record in self._agents.values() if self.is_online(record, now)]

    def planned(self) -> list[AgentRecord]:
        """Online agents with a plan: the ones a round assigns work to."""
        return [record for record in self.online() if record.plan is not None]

    def all(self) -> list[AgentRecord]:
        return list(self._agents.values())
