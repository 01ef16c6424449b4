"""What one round's record reports: who took part, who contributed, and why everyone else did not.

Every participant — every device with a plan when the round began — either contributed or has a reason in
``left_out``: refused (and why), refused its work, silent (since when), its work not yet delivered, or late. The
ledger also gathers the bytes each way, the accepted updates' norms, the time the server spent aggregating and how
long messages waited between arriving and being handled (heartbeats aside: they are read after updates on purpose,
and liveness counts them from their arrival whenever they are read).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedge.wire import AdapterUpdate

MAX_LATENCIES = 100_000  # samples of arrival-to-handling waits kept per round


@dataclass
class AggregationLog:
    """The server's aggregations in a round: their time, the ones refused (not finite), and what the strategy
    approximated or left out in each (``Strategy.notes``)."""

    seconds: float = 0.0
    refused: list[str] = field(default_factory=list)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_record(self) -> dict:
        return {"server_aggregate_s": round(self.seconds, 4), **({"aggregate_refused": list(self.refused)} if self.refused else {}),
                **({"strategy_notes": dict(self.notes)} if self.notes else {})}


@dataclass
class RoundLedger:
    participants: list[str]
    contributed: dict[str, AdapterUpdate] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # updates refused, or work the device refused
    left_out: dict[str, str] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    aggregations: AggregationLog = field(default_factory=AggregationLog)
    waits: list[float] = field(default_factory=list)
    robust: dict[str, dict] = field(default_factory=dict)  # what the robust rules did, per aggregation
    outliers: set[str] = field(default_factory=set)
    trust: dict[str, float] = field(default_factory=dict)  # each contributor's weight factor after the robust rules
    agreement: dict[str, float] = field(default_factory=dict)  # each contributor's agreement this round (its cosine with the judges')

    def accept(self, update: AdapterUpdate, size: int, norm: float) -> None:
        self.contributed[update.agent_id] = update
        self.norms[update.agent_id] = norm
        self.refused.pop(update.agent_id, None)
        self.left_out.pop(update.agent_id, None)
        self.add_bytes(self.bytes_up, update.agent_id, size)

    def withdraw(self, agent_id: str, reason: str) -> None:
        """An accepted update that will not count after all (buffered rounds: too stale)."""
        self.contributed.pop(agent_id, None)
        self.norms.pop(agent_id, None)
        self.refuse(agent_id, reason)

    def refuse(self, agent_id: str, reason: str) -> None:
        self.refused[agent_id] = reason
        self.left_out[agent_id] = reason

    def leave_out(self, agent_id: str, reason: str) -> None:
        """A reason for a device that did not contribute, unless it already has one."""
        if agent_id not in self.contributed:
            self.left_out.setdefault(agent_id, reason)

    @staticmethod
    def add_bytes(counts: dict[str, int], agent_id: str, size: int) -> None:
        counts[agent_id] = counts.get(agent_id, 0) + size

    def waited(self, seconds: float) -> None:
        if len(self.waits) < MAX_LATENCIES:
            self.waits.append(seconds)

    def unexplained(self) -> list[str]:
        """Participants that neither contributed nor have a reason (the engine gives each one before the record)."""
        return sorted(set(self.participants) - set(self.contributed) - set(self.left_out))

    def to_record(self) -> dict:
        waits = np.asarray(self.waits) if self.waits else np.zeros(1)
        return {
            "participants": sorted(self.participants),
            "contributors": sorted(self.contributed),
            "rejected": dict(self.refused),
            "left_out": {agent: self.left_out[agent] for agent in sorted(self.left_out) if agent not in self.contributed},
            "update_norms": {agent: round(norm, 4) for agent, norm in sorted(self.norms.items())},
            "robust": {"outliers": sorted(self.outliers), "trust": {agent: round(value, 4) for agent, value in sorted(self.trust.items())},
                       "agreement": {agent: round(value, 4) for agent, value in sorted(self.agreement.items())}, "aggregations": self.robust},
            **self.aggregations.to_record(),
            "bytes_up": dict(self.bytes_up),
            "bytes_down": dict(self.bytes_down),
            "client_metrics": {agent: update.metrics for agent, update in self.contributed.items()},
            "message_wait_s": {"p50": round(float(np.percentile(waits, 50)), 4), "p99": round(float(np.percentile(waits, 99)), 4), "max": round(float(waits.max()), 4), "messages": len(self.waits)},
        }
