"""How often one device's messages of a kind are acted on: a token bucket per device and kind, timed by arrival.

A device gets ``burst`` messages at once, then one per ``every_s`` (measured between arrival stamps, so a busy
coordinator that reads a backlog late does not count it as a flood). The excess is refused and counted, never
acted on. State is one bucket per enrolled device that sent the kind: bounded by the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    burst: int
    every_s: float


HELLO_RATE = Rate(burst=3, every_s=10.0)  # a hello registers, and may plan, a device: costly, and rarely needed
HEARTBEAT_RATE = Rate(burst=8, every_s=0.25)  # agents beat every few seconds (tests: every half second)


class RateLimiter:
    def __init__(self, rates: dict[type, Rate]):
        self.rates = rates
        self._buckets: dict[tuple[str, type], tuple[float, float]] = {}  # (device, kind) -> (tokens, at arrival time)

    def allow(self, agent_id: str, kind: type, arrived: float) -> bool:
        """Whether this message (arrived at ``arrived``, wall-clock seconds) is within its device's rate."""
        rate = self.rates.get(kind)
        if rate is None:
            return True
        tokens, stamp = self._buckets.get((agent_id, kind), (float(rate.burst), arrived))
        tokens = min(float(rate.burst), tokens + max(arrived - stamp, 0.0) / rate.every_s)
        allowed = tokens >= 1.0
        self._buckets[(agent_id, kind)] = (tokens - 1.0 if allowed else tokens, max(arrived, stamp))
        return allowed
