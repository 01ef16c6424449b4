"""The coordinator's ears: frames in, verified messages out, on a thread of their own.

The receiver reads the transport (reassembly, signature and replay checks, decoding) whatever the round engine is
doing — evaluating, aggregating or sending — so no message waits on it. Each authenticated message refreshes its
device's ``Liveness`` with the time its last frame arrived. Refused messages are counted and logged by the
``RefusalLog`` here and go no further, as do a device's hellos and heartbeats beyond their rate
(``fedge.coordinator.rate_limit``). Heartbeats keep only each device's newest (what it is doing now); everything
else queues, in arrival order, for the engine (``next``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from fedge.coordinator.boundary import RefusalLog
from fedge.coordinator.liveness import Liveness
from fedge.coordinator.rate_limit import HEARTBEAT_RATE, HELLO_RATE, RateLimiter
from fedge.transport import MqttTransport
from fedge.wire import Heartbeat, Hello, Message, topics

log = logging.getLogger(__name__)

POLL_S = 0.2  # how long one wait for a frame lasts, so the thread notices ``stop``


@dataclass(frozen=True)
class Arrival:
    """A verified message from an enrolled device, when it arrived and its size on the wire."""

    agent_id: str
    message: Message
    size: int
    arrived: float


class Receiver:
    def __init__(self, transport: MqttTransport, liveness: Liveness, refusals: RefusalLog, max_waiting: int = 100_000):
        """``max_waiting``: messages (heartbeats aside) that may wait for the engine; beyond it the receiver stops
        reading, and the transport's bounded inbox holds or drops frames."""
        self.transport = transport
        self.liveness = liveness
        self.refusals = refusals
        self._messages: queue.Queue[Arrival] = queue.Queue(max_waiting)
        self._beats: dict[str, Arrival] = {}
        self._beats_lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedge-receiver", daemon=True)
        self._losses_seen = (0, 0)  # the transport's dropped frames and incomplete messages at the last take_losses
        self._rates = RateLimiter({Hello: HELLO_RATE, Heartbeat: HEARTBEAT_RATE})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def take_losses(self) -> dict[str, int]:
        """What was lost on the way in since the last call: frames dropped on arrival (a full inbox, a topic not
        accepted) and chunked messages that never completed."""
        now = (self.transport.dropped_frames, self.transport.incomplete_messages)
        before, self._losses_seen = self._losses_seen, now
        return {"frames_dropped": now[0] - before[0], "incomplete_messages": now[1] - before[1]}

    def replay_counters(self) -> list[tuple[str, str, int]]:
        """The verifier's last counter per device and stream (none without signatures)."""
        verifier = getattr(self.transport.codec, "verifier", None)
        return verifier.counters() if verifier is not None else []

    def restore_replay_counters(self, counters: list[tuple[str, str, int]]) -> None:
        verifier = getattr(self.transport.codec, "verifier", None)
        if verifier is not None:
            verifier.restore(counters)

    def next(self, timeout_s: float) -> Arrival | None:
        """The oldest message waiting for the engine (heartbeats aside), or None after ``timeout_s``."""
        try:
            return self._messages.get(timeout=max(timeout_s, 0.0)) if timeout_s > 0 else self._messages.get_nowait()
        except queue.Empty:
            return None

    def heartbeats(self) -> list[Arrival]:
        """Each device's newest heartbeat since the last call."""
        with self._beats_lock:
            beats, self._beats = list(self._beats.values()), {}
        return beats

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._read_one()
            except Exception:  # a bug must cost one message, never the coordinator its ears
                log.exception("the receiver could not handle a message")

    def _read_one(self) -> None:
        received = self.transport.receive(timeout_s=POLL_S)
        if received is None:
            return
        if received.error is not None:  # unreadable, unauthenticated or replayed: counted and logged, never answered
            return self.refusals.refuse(received.error.reason, str(received.error), received.topic)
        agent_id = topics.agent_of(received.topic)
        message = received.message
        if agent_id is None or getattr(message, "agent_id", None) != agent_id:  # the signed codec checks this too
            return self.refusals.refuse("agent_mismatch", f"{type(message).__name__} naming {getattr(message, 'agent_id', None)!r}", received.topic)
        self.liveness.heard(agent_id, received.arrived)  # authentic: a sign of life, even when over its rate
        if not self._rates.allow(agent_id, type(message), received.arrived):
            return self.refusals.refuse("rate_limited", f"{agent_id} sends {type(message).__name__} messages faster than they are acted on", received.topic)
        arrival = Arrival(agent_id, message, received.size, received.arrived)
        if isinstance(message, Heartbeat):
            with self._beats_lock:
                self._beats[agent_id] = arrival
            return
        while not self._stopped.is_set():
            try:
                return self._messages.put(arrival, timeout=POLL_S)
            except queue.Full:
                continue


def waited_s(arrival: Arrival) -> float:
    """How long a message waited between arriving and being handled."""
    return max(time.time() - arrival.arrived, 0.0)
