"""Frames waiting between paho's network thread and the transport's owner, each stamped with its arrival time."""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable


class Inbox:
    """Frames waiting for the owner thread, each with its arrival time (taken on the network thread). Data frames
    queue in arrival order. On ``latest_only`` topics (telemetry such as heartbeats) a topic holds only its newest
    frame, in the place and with the age of the first one waiting; such a frame is served when no data frame waits
    or, once it has waited ``max_wait_s``, in turn with data frames: telemetry never queues ahead of updates, and
    never starves under them. Both parts hold at most ``max_frames``; everything waiting at most ``max_bytes``, and
    the frames of one sender (``sender_of(topic)``) at most ``max_sender_bytes``. A frame that finds a bound reached
    is refused (the transport counts it): a flooding sender loses its own frames, not another's."""

    def __init__(self, max_frames: int, max_wait_s: float = 1.0, max_bytes: int = 1 << 30, max_sender_bytes: int | None = None, sender_of: Callable[[str], str | None] | None = None):
        self.max_frames = max_frames
        self.max_wait_s = max_wait_s
        self.max_bytes = max_bytes
        self.max_sender_bytes = max_sender_bytes if max_sender_bytes is not None else max_bytes
        self._sender_of = sender_of or (lambda topic: topic)
        self._data: deque[tuple[str, bytes, float]] = deque()
        self._latest: OrderedDict[str, tuple[float, float, bytes]] = OrderedDict()  # topic -> (first arrival, newest arrival, newest frame)
        self._bytes = 0
        self._sender_bytes: Counter[str] = Counter()
        self._ready = threading.Condition()
        self._latest_served_last = False

    def __len__(self) -> int:
        return len(self._data) + len(self._latest)

    @property
    def waiting_bytes(self) -> int:
        return self._bytes

    def put(self, topic: str, payload: bytes, latest_only: bool) -> bool:
        arrived = time.time()
        sender = self._sender_of(topic) or topic
        with self._ready:
            replaced = len(self._latest[topic][2]) if latest_only and topic in self._latest else 0
            grows = len(payload) - replaced
            if self._bytes + grows > self.max_bytes or self._sender_bytes[sender] + grows > self.max_sender_bytes:
                return False
            if replaced or (latest_only and topic in self._latest):
                self._latest[topic] = (self._latest[topic][0], arrived, payload)
            elif latest_only and len(self._latest) < self.max_frames:
                self._latest[topic] = (arrived, arrived, payload)
            elif not latest_only and len(self._data) < self.max_frames:
                self._data.append((topic, payload, arrived))
            else:
                return False
            self._account(sender, grows)
            self._ready.notify()
            return True

    def _account(self, sender: str, size: int) -> None:
        self._bytes += size
        self._sender_bytes[sender] += size
        if self._sender_bytes[sender] <= 0:
            del self._sender_bytes[sender]

    def oldest(self) -> float | None:
        """When the longest-waiting frame arrived (None when nothing waits)."""
        with self._ready:
            waiting = [self._data[0][2]] if self._data else []
            if self._latest:
                waiting.append(next(iter(self._latest.values()))[0])
            return min(waiting, default=None)

    def get(self, timeout_s: float | None) -> tuple[str, bytes, float] | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._ready:
            while not self._data and not self._latest:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready.wait(remaining)
            if self._latest and (not self._data or (not self._latest_served_last and time.time() - next(iter(self._latest.values()))[0] >= self.max_wait_s)):
                topic, (_, arrived, payload) = self._latest.popitem(last=False)
                self._latest_served_last = True
            else:
                self._latest_served_last = False
                topic, payload, arrived = self._data.popleft()
            self._account(self._sender_of(topic) or topic, -len(payload))
            return topic, payload, arrived
