"""What the open round waits for: each device's expectation, the updates accepted and not yet aggregated, the
devices still expected, and the round's ledger. A plain state object: the round engines open and close it, the
message handlers feed it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedge.coordinator.ledger import RoundLedger
from fedge.coordinator.plans import DevicePlan
from fedge.coordinator.validation import Expectation
from fedge.wire import AdapterUpdate, LoraSpec


@dataclass(frozen=True)
class Expected:
    """One device's work in the open round, and the state it was built from (what its update moved away from)."""

    expectation: Expectation
    spec: LoraSpec
    plan: DevicePlan
    started_from: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Collection:
    ledger: RoundLedger
    expected: dict[str, Expected] = field(default_factory=dict)
    received: dict[str, AdapterUpdate] = field(default_factory=dict)  # accepted, not yet aggregated
    waiting_sets: dict[str, set[str]] = field(default_factory=dict)  # each expected device's exchange's set of devices still expected
    arrivals: list[str] = field(default_factory=list)  # accepted since the buffered loop last looked
    given_up: list[str] = field(default_factory=list)  # refused or refusing since then
    settled: set[str] = field(default_factory=set)  # devices whose current work ended: update accepted, or given up

    def expect(self, agent_id: str, expected: Expected, waiting: set[str] | None = None) -> None:
        """Await ``agent_id``'s update; ``waiting``: the set of its exchange that shrinks when it answers."""
        self.expected[agent_id] = expected
        self.received.pop(agent_id, None)
        self.settled.discard(agent_id)
        if waiting is not None:
            waiting.add(agent_id)
            self.waiting_sets[agent_id] = waiting

    def expected_round(self, agent_id: str) -> int | None:
        expected = self.expected.get(agent_id)
        return expected.expectation.round if expected is not None else None

    def accept(self, update: AdapterUpdate, size: int, norm: float) -> None:
        self.received[update.agent_id] = update
        self.settled.add(update.agent_id)
        self.waiting_sets.pop(update.agent_id, set()).discard(update.agent_id)
        self.arrivals.append(update.agent_id)
        self.ledger.accept(update, size, norm)

    def give_up(self, agent_id: str, reason: str) -> None:
        """This round gets nothing from the device: record why; its exchange stops waiting for it."""
        self.ledger.refuse(agent_id, reason)
        self.settled.add(agent_id)
        self.waiting_sets.pop(agent_id, set()).discard(agent_id)
        self.given_up.append(agent_id)

    def stop_waiting(self, agent_id: str, reason: str) -> None:
        """The device went silent: its exchange stops waiting for it (it may still send, and count)."""
        self.ledger.leave_out(agent_id, reason)
        self.waiting_sets.pop(agent_id, set()).discard(agent_id)

    def still_out(self, agent_id: str) -> bool:
        """Whether the round still waits for this device's current work: no update accepted, not given up."""
        return agent_id in self.expected and agent_id not in self.settled

    def take_news(self) -> tuple[list[str], list[str]]:
        """Devices accepted, and devices given up, since the last call."""
        news = (self.arrivals, self.given_up)
        self.arrivals, self.given_up = [], []
        return news
