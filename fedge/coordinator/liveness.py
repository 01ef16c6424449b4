"""Whether a device is alive, judged only by what arrived and when.

Every authenticated message a device sends (its heartbeat thread signs one every few seconds, whatever it is
doing) is stamped with its arrival time on the network thread; the receiver records the newest stamp per device.
A device is silent when nothing from it arrived within ``grace_s`` before the *read horizon*: the arrival time of the
oldest frame the coordinator has not handled yet (now, when it has handled everything). A coordinator that fell
behind therefore never takes the messages it has not read for silence: silence is measured up to what it has read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Liveness:
    """When each device was last heard from (its newest authenticated arrival); safe across threads."""

    def __init__(self, grace_s: float, unread_since: Callable[[], float | None] = lambda: None, max_devices: int = 1_000_000):
        """``unread_since``: when the oldest unhandled frame arrived (the transport's), or None; ``max_devices``
        bounds the table (an insecure run's topics name anyone)."""
        self.grace_s = grace_s
        self._unread_since = unread_since
        self._max_devices = max_devices
        self._heard: dict[str, float] = {}
        self._lock = threading.Lock()

    def heard(self, agent_id: str, arrived: float) -> None:
        with self._lock:
            if agent_id in self._heard or len(self._heard) < self._max_devices:
                self._heard[agent_id] = max(arrived, self._heard.get(agent_id, 0.0))

    def forget(self, agent_id: str) -> None:
        with self._lock:
            self._heard.pop(agent_id, None)

    def last_heard(self, agent_id: str) -> float | None:
        with self._lock:
            return self._heard.get(agent_id)

    def horizon(self, now: float | None = None) -> float:
        """The time up to which everything that arrived has been read."""
        now = time.time() if now is None else now
        unread = self._unread_since()
        return now if unread is None else min(now, unread)

    def is_live(self, agent_id: str, horizon: float | None = None) -> bool:
        heard = self.last_heard(agent_id)
        return heard is not None and (self.horizon() if horizon is None else horizon) - heard < self.grace_s

    def silence(self, agent_id: str) -> str:
        """Why a device counts as silent, for the round record."""
        heard = self.last_heard(agent_id)
        if heard is None:
            return "silent: never heard from"
        return f"silent: nothing arrived for {self.horizon() - heard:.0f} s (last at {time.strftime('%H:%M:%S', time.localtime(heard))}; grace {self.grace_s:g} s)"
