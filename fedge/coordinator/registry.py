"""Who is in the fleet and what each device was planned to do; whether it is alive is ``Liveness``'s to say."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.coordinator.liveness import Liveness
from fedge.coordinator.plans import DevicePlan, Pin
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
    last_update: str = ""  # the message id of the last update taken from it (a copy of it gets its receipt again)


class Registry:
    def __init__(self, liveness: Liveness) -> None:
        self.liveness = liveness
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

    def online(self) -> list[AgentRecord]:
        horizon = self.liveness.horizon()
        return [record for record in self._agents.values() if self.liveness.is_live(record.agent_id, horizon)]

    def planned(self) -> list[AgentRecord]:
        """Online agents with a plan: the ones a round assigns work to."""
        return [record for record in self.online() if record.plan is not None]

    def with_plans(self) -> list[AgentRecord]:
        """Every agent with a plan, online or not: a round's participants."""
        return [record for record in self._agents.values() if record.plan is not None]

    def all(self) -> list[AgentRecord]:
        return list(self._agents.values())
