"""The live view's source. The coordinator tells it the phase it enters, what its devices' heartbeats say and each
round's record as it is written; ``snapshot`` (on the coordinator's thread, at most every ``REFRESH_S``) turns that
and the registry into a ``RunStatus`` for the fleet page, ``fedge status`` and the Prometheus gauges."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedge.coordinator.fleet_status import RunStatus, TrainingProgress, checked_progress, device_status
from fedge.coordinator.metrics import FleetMetrics
from fedge.coordinator.plans import DevicePlan
from fedge.coordinator.registry import Registry

REFRESH_S = 2.0  # the page polls as often; a snapshot of 10,000 devices costs about 30 ms of the coordinator's thread


@dataclass(frozen=True)
class RunFacts:
    """What a run's status says of the run itself."""

    run_id: str
    rounds: int
    metric: str
    enrolled: Callable[[], int | None]  # active enrolled devices (None: an insecure run)


class RunMonitor:
    def __init__(self, facts: RunFacts):
        self.facts = facts
        self.metrics = FleetMetrics()
        self.phase, self.round = "starting", 0
        self._beats: dict[str, str] = {}  # registered devices' last heartbeat state
        self._progress: dict[str, TrainingProgress] = {}
        self._curve: list[tuple[int, float]] = []
        self._status: RunStatus | None = None
        self._lock = threading.Lock()
        self._next_snapshot = 0.0

    def enter(self, phase: str, round_number: int | None = None) -> None:
        self.phase = phase
        if round_number is not None:
            self.round = round_number
        self._next_snapshot = 0.0

    def heartbeat(self, agent_id: str, state: str, round_number: int, step: int, steps: int, sent_unix: float) -> None:
        """A registered device's heartbeat (its progress only shown, never trusted)."""
        self._beats[agent_id] = state
        progress = checked_progress(round_number, step, steps, sent_unix) if state == "training" else None
        if progress is None:
            self._progress.pop(agent_id, None)
        else:
            self._progress[agent_id] = progress

    def on_record(self, record: dict) -> None:
        """A committed round's record as written (the writer's thread)."""
        self.metrics.follow_record(record)
        if math.isfinite(record.get("accuracy", math.nan)):
            with self._lock:
                self._curve = sorted([point for point in self._curve if point[0] != record["round"]] + [(record["round"], round(record["accuracy"], 4))])

    def due(self) -> bool:
        return time.monotonic() >= self._next_snapshot

    def snapshot(self, registry: Registry, plans: dict[str, DevicePlan], quarantined: set[str], updates_in: int, updates_expected: int) -> RunStatus:
        """The fleet now, kept for the page and set on the gauges."""
        self._next_snapshot = time.monotonic() + REFRESH_S
        now, horizon = time.time(), registry.liveness.horizon()
        devices = tuple(device_status(record, registry, plans, self._beats, self._progress, quarantined, now, horizon) for record in sorted(registry.all(), key=lambda r: r.agent_id))
        with self._lock:
            curve = tuple(self._curve)
        status = RunStatus(self.facts.run_id, self.phase, self.round, self.facts.rounds, self.facts.metric, curve, devices, self.facts.enrolled(), updates_in, updates_expected, now)
        self.metrics.follow_status(status)
        with self._lock:
            self._status = status
        return status

    def status(self) -> RunStatus | None:
        """The latest snapshot (any thread)."""
        with self._lock:
            return self._status
