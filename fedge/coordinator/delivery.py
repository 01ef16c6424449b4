"""The coordinator's backbone server: answers agents' backbone requests with manifest and chunk messages.

It runs on its own MQTT connection and thread, so transfers never wait behind the round loop and the round loop
never waits behind them. Requests are served in arrival order, at most ``max_window`` chunks each, so agents
fetching at once share the link; chunks are published without waiting for each acknowledgement in turn (at most
``max_in_flight`` unacknowledged). Only agents the coordinator has assigned a package may fetch it, and with a signed
codec only their signed requests are read; parts are sealed on their own counter stream (``backbone``), so they may
interleave with the round loop's messages on a downlink.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from fedge.coordinator.boundary import RefusalLog
from fedge.delivery import read_chunk
from fedge.transport import BrokerConfig, MqttTransport, TransportError, acknowledged
from fedge.wire import BackbonePart, BackboneRequest, Limits, topics
from fedge.wire.sealing import Codec
from fedge.quantization.package import BackbonePackage

log = logging.getLogger(__name__)


class BackboneServer:
    def __init__(self, broker: BrokerConfig, client_id: str, codec: Codec | None = None, accept: Callable[[str], bool] | None = None, max_window: int = 64, max_in_flight: int = 32):
        self.transport = MqttTransport(broker, client_id=client_id, limits=Limits(max_message_bytes=64 * 1024), codec=codec, accept=accept)
        self.max_window = max_window
        self.max_in_flight = max_in_flight
        self._packages: dict[str, BackbonePackage] = {}
        self._allowed: dict[str, set[str]] = {}  # agent id -> digests it was assigned
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="backbone-server", daemon=True)
        self._in_flight: deque = deque()
        self.bytes_sent = 0
        self.refusals = RefusalLog()

    def offer(self, package: BackbonePackage) -> None:
        with self._lock:
            self._packages[package.digest] = package

    def allow(self, agent_id: str, digest: str) -> None:
        with self._lock:
            self._allowed.setdefault(agent_id, set()).add(digest)

    def start(self) -> None:
        self.transport.subscribe(topics.all_fetches())
        self.transport.connect()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.transport.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            received = self.transport.receive(timeout_s=0.5)
            if received is None:
                continue
            agent_id = topics.agent_of(received.topic)
            request = received.message
            if received.error is not None:
                self.refusals.refuse(received.error.reason, str(received.error), received.topic)
                continue
            if agent_id is None or not isinstance(request, BackboneRequest):
                self.refusals.refuse("unexpected_type", f"{type(request).__name__} is not a backbone request", received.topic)
                continue
            try:
                self._answer(agent_id, request)
            except TransportError as error:
                log.warning("backbone server: could not answer %s: %s", agent_id, error)

    def _answer(self, agent_id: str, request: BackboneRequest) -> None:
        with self._lock:
            package = self._packages.get(request.digest)
            allowed = request.digest in self._allowed.get(agent_id, ())
        if request.agent_id != agent_id or package is None or not allowed:
            log.warning("backbone server: %s asked for %s…, which it was not assigned", agent_id, request.digest[:12])
            return
        downlink = topics.downlink(agent_id)
        if request.first == -1:
            self._send(downlink, BackbonePart(request.digest, -1, package.manifest_bytes))
            return
        manifest = package.manifest
        if not (0 <= request.first < manifest.chunk_count and 1 <= request.count <= self.max_window):
            log.warning("backbone server: %s asked for chunks %d+%d of %d", agent_id, request.first, request.count, manifest.chunk_count)
            return
        for index in range(request.first, min(request.first + request.count, manifest.chunk_count)):
            self._send(downlink, BackbonePart(request.digest, index, read_chunk(package.directory, manifest, index)))

    def _send(self, topic: str, part: BackbonePart) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            oldest = self._in_flight.popleft()
            if not acknowledged(oldest):
                try:
                    oldest.wait_for_publish(timeout=30)
                except (RuntimeError, ValueError):
                    pass  # dropped with the connection: the agent asks again for what it misses
        self._in_flight.extend(self.transport.enqueue(topic, part, stream="backbone").handles)
        self.bytes_sent += len(part.data)
