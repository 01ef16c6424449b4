"""The coordinator's Prometheus metrics (``prometheus_client``), on a registry of the run's own.

Gauges follow the fleet snapshot (``fleet_status.RunStatus``); counters and histograms follow each round's record as
it is written, and the wait of every message as it is handled. Reasons become labels through ``reason_label``,
which keeps at most ``MAX_REASONS`` distinct values per metric, so a device cannot grow the series without bound.
"""

from __future__ import annotations

import math
import threading

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram

from fedge.coordinator.fleet_status import RunStatus

PHASES = ("starting", "registering", "planning", "preparing", "training", "aggregating", "finishing", "finished")
MAX_REASONS = 24
OTHER_REASON = "other"
SECOND_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class ReasonLabels:
    """Short, bounded label values from free-text reasons ("late: no update before ..." -> "late")."""

    def __init__(self, limit: int = MAX_REASONS):
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, reason: str) -> str:
        label = str(reason).split(":")[0].split("(")[0].strip().lower()[:40] or OTHER_REASON
        with self._lock:
            if label in self._seen or len(self._seen) < self.limit:
                self._seen.add(label)
                return label
        return OTHER_REASON


class FleetMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.devices = Gauge("fedge_devices", "Devices by state: enrolled, online, planned, refused (no feasible plan), quarantined", ["state"], registry=registry)
        self.round = Gauge("fedge_round", "The round the coordinator is in (0: before the first)", registry=registry)
        self.rounds = Gauge("fedge_rounds_planned", "The rounds this run will run", registry=registry)
        self.phase = Enum("fedge_phase", "What the coordinator is doing", states=list(PHASES), registry=registry)
        self.round_updates = Gauge("fedge_round_updates", "The open round's updates: in (accepted so far) and expected", ["kind"], registry=registry)
        self.updates_accepted = Counter("fedge_updates_accepted", "Updates that counted in a committed round", registry=registry)
        self.updates_refused = Counter("fedge_updates_refused", "Updates (or work) refused in a committed round, by reason", ["reason"], registry=registry)
        self.messages_refused = Counter("fedge_messages_refused", "Messages refused before any handler saw them (unsigned, forged, replayed, malformed), by reason", ["reason"], registry=registry)
        self.left_out = Counter("fedge_devices_left_out", "Planned devices that did not contribute to a committed round, by reason", ["reason"], registry=registry)
        self.bytes = Counter("fedge_bytes", "Bytes of updates received (up) and of work and states sent (down), in committed rounds", ["direction"], registry=registry)
        self.aggregation = Histogram("fedge_aggregation_seconds", "Server time aggregating one round", buckets=SECOND_BUCKETS, registry=registry)
        self.evaluation = Histogram("fedge_evaluation_seconds", "Held-out evaluation time of one round's state", buckets=SECOND_BUCKETS, registry=registry)
        self.message_wait = Histogram("fedge_message_wait_seconds", "From a message's arrival to its handling", buckets=SECOND_BUCKETS, registry=registry)
        self.heldout = Gauge("fedge_heldout", "The latest scored round's held-out metric and loss", ["measure"], registry=registry)
        self._update_reasons, self._message_reasons, self._left_out_reasons = ReasonLabels(), ReasonLabels(), ReasonLabels()

    def follow_status(self, status: RunStatus) -> None:
        states = [device.state for device in status.devices]
        planned = sum(1 for device in status.devices if not device.plan.startswith(("refused", "not planned")))
        for state, count in (("online", sum(state not in ("silent", "refused", "quarantined") for state in states)), ("planned", planned),
                             ("refused", states.count("refused")), ("quarantined", states.count("quarantined"))):
            self.devices.labels(state).set(count)
        if status.enrolled is not None:
            self.devices.labels("enrolled").set(status.enrolled)
        self.round.set(status.round)
        self.rounds.set(status.rounds)
        self.phase.state(status.phase)
        self.round_updates.labels("in").set(status.updates_in)
        self.round_updates.labels("expected").set(status.updates_expected)

    def follow_record(self, record: dict) -> None:
        """A committed round's record, once written (scored)."""
        self.updates_accepted.inc(len(record.get("contributors", ())))
        for reason in record.get("rejected", {}).values():
            self.updates_refused.labels(self._update_reasons(reason)).inc()
        for reason, count in record.get("refused_messages", {}).items():
            self.messages_refused.labels(self._message_reasons(reason)).inc(count)
        for reason in record.get("left_out", {}).values():
            self.left_out.labels(self._left_out_reasons(reason)).inc()
        self.bytes.labels("up").inc(sum(record.get("bytes_up", {}).values()))
        self.bytes.labels("down").inc(sum(record.get("bytes_down", {}).values()))
        if "server_aggregate_s" in record:
            self.aggregation.observe(record["server_aggregate_s"])
        if "evaluation_s" in record:
            self.evaluation.observe(record["evaluation_s"])
        if math.isfinite(record.get("accuracy", math.nan)):
            self.heldout.labels(record.get("metric", "accuracy")).set(record["accuracy"])
            self.heldout.labels("loss").set(record["loss"])
