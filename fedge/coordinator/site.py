"""The site aggregator (``fedge coordinator --role site``): HierFedLoRA's group level, on a site's own broker.

Toward its devices it is a coordinator: its own enrolment, plan, backbone server and run directory, on the site's
Mosquitto. Toward the central coordinator it is one device: the site's identity in the central fleet (``upstream``:
its credentials file), which says hello with the sum of its planned devices (``device_class: site``) and whose
messages the site broker's bridge carries (``fedge enroll --mosquitto DIR --bridge-to URL --bridge-credentials
FILE`` writes it: only the site's own topics cross). The central coordinator lists it in ``sites:`` and gives it the
global rank on every layer at scaling 1, so the state it sends is the group state in the global convention.

Each central round, that state is the site's devices' starting point: the site runs one synchronous round with them
(finishing before the central deadline) and forwards their aggregate as one update, carrying the examples behind
it. The central link carries one update per site per round, whatever the site's size. The site's rounds are
recorded in its own run directory, evaluated on its own held-out data.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque

import numpy as np

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.registry import AgentRecord
from fedge.coordinator.server import Coordinator, RunSummary
from fedge.coordinator.validation import SITE_CLASS
from fedge.trust.downlink import DownlinkCodec
from fedge.heartbeat import start_heartbeat
from fedge.transport import MqttTransport
from fedge.trust.enrolment import Credentials
from fedge.wire import AdapterUpdate, Assignment, DeviceProfile, GlobalState, Heartbeat, Hello, Reject, topics

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0


def site_profile(identity: str, records: list[AgentRecord]) -> DeviceProfile:
    """The site as one device: the sum of its planned devices' memory, cores and throughput."""
    profiles = [record.profile for record in records]
    return DeviceProfile(
        name=f"site {identity}", source="site", device_class=SITE_CLASS,
        ram_total_bytes=sum(p.ram_total_bytes for p in profiles), ram_available_bytes=sum(p.ram_available_bytes for p in profiles),
        cpu_cores=sum(p.cpu_cores for p in profiles), gflops=sum(p.gflops or 0.0 for p in profiles) or 1.0,
        source_note=f"{len(profiles)} devices",
    )


class SiteAggregator:
    def __init__(self, config: CoordinatorConfig):
        if not config.upstream:
            raise ValueError("--role site needs upstream: the site's credentials file in the central fleet")
        self.credentials = Credentials.load(config.upstream)
        self.identity = self.credentials.identity
        self.local = Coordinator(config)
        status = topics.status(self.identity)
        self.upstream = MqttTransport(self.local.transport.config, f"fedge-site-{self.identity}", codec=DownlinkCodec(self.credentials), will=(status, b"offline"), birth=(status, b"online"))
        self._assignment: Assignment | None = None
        self._state = "idle"
        self._stopped = threading.Event()
        self._handled: deque[str] = deque(maxlen=64)  # ids of central states already acted on

    def run(self) -> RunSummary:
        local = self.local
        local.open()
        local.register_and_plan()
        self.upstream.subscribe(topics.downlink(self.identity))
        self.upstream.connect()
        self._hello()
        start_heartbeat(self.upstream, self.identity, HEARTBEAT_S, self._stopped, self._status)
        try:
            while not self._stopped.is_set():
                received = self.upstream.receive(timeout_s=0.2)
                if received is not None and received.message is not None:
                    self._dispatch(received.message)
                elif received is not None:
                    log.warning("site %s: dropped a message from upstream: %s", self.identity, received.error)
                if not self._stopped.is_set():
                    local.pump(0.3)  # the site's devices' heartbeats keep them alive while the centre is busy
        finally:
            self._stopped.set()
            self.upstream.close()
        return RunSummary(run_dir=str(local.run_dir.path), rounds=local.run_dir.rounds())

    def _hello(self) -> None:
        planned = self.local.registry.planned()
        self._send(Hello(self.identity, site_profile(self.identity, planned), sum(record.num_examples for record in planned)))
        log.info("site %s: said hello upstream for %d devices", self.identity, len(planned))

    def _status(self) -> tuple[str, int, int, int]:
        """A site's heartbeat: its state and round (its devices' progress is on its own live page)."""
        return self._state, self._assignment.round if self._assignment is not None else 0, 0, 0

    def _send(self, message) -> None:
        self.upstream.publish(topics.uplink(self.identity), message)

    def _dispatch(self, message) -> None:
        if isinstance(message, Assignment):
            self._assignment = message
            self.upstream.codec.run = message.run_id
            if message.prepare_only:
                self._state = "preparing"
                self.local.prepare(message.round)
                self._state = "ready"
                self._send(Heartbeat(self.identity, "ready", time.time(), message.round))
        elif isinstance(message, GlobalState) and message.final:
            self.local.finish({key: value.astype(np.float32) for key, value in message.tensors.items()})
            self._stopped.set()
        elif isinstance(message, GlobalState) and self._assignment is not None and message.round == self._assignment.round and message.message_id not in self._handled:
            self._handled.append(message.message_id)  # a state the broker delivers twice is one round
            self._round(self._assignment, message)
        elif isinstance(message, Reject) and message.reason in ("unknown_agent", "label_counts_wanted"):
            self._hello()  # without label counts: a site does not send its devices'
        elif isinstance(message, Reject) and message.reason in ("infeasible", "bad_profile"):
            raise RuntimeError(f"the central coordinator refused site {self.identity}: {message.detail}")
        elif isinstance(message, Reject):
            log.warning("site %s: the central coordinator rejected round %s: %s (%s)", self.identity, message.round, message.reason, message.detail)

    def _round(self, assignment: Assignment, state: GlobalState) -> None:
        """One round with the site's devices from the central state; their aggregate goes upstream as one update."""
        self._state = "training"
        arrays = self.local.run_round(assignment.round, {key: value.astype(np.float32) for key, value in state.tensors.items()}, assignment.work_until(time.time()))
        contributed = self.local.contributions()
        self._state = "idle"
        if not contributed:
            return self._send(Reject(self.identity, "cannot_train", "no device of the site contributed to this round", assignment.round, assignment.message_id))
        tensors = {key: arrays[key] for key in self.local.strategy.upload_shapes(arrays, assignment.lora)}
        metrics = {"loss": statistics.fmean(update.metrics.get("loss", float("nan")) for update in contributed.values()), "devices": float(len(contributed))}
        self._send(AdapterUpdate(assignment.run_id, assignment.round, self.identity, sum(update.num_examples for update in contributed.values()), metrics, tensors))
        log.info("site %s: round %d sent upstream (%d devices)", self.identity, assignment.round, len(contributed))
