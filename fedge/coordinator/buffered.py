"""Asynchronous (FedBuff) and semi-synchronous rounds: buffered aggregation of updates trained on older states.

``round_mode: sync`` is the default: every round, every planned device trains on the same global state and the
round waits (until its deadline) for all of them. The buffered modes stop the slowest device from setting the pace:

- Every planned device is sent work on the current global version v. Its accepted update enters a buffer, and the
  device waits there (it contributes at most once per version). A device whose update is too stale gets new work
  on the current version at once; one whose update was refused for another reason, or that refused its work, gets
  new work with the next aggregation (or after 5 s when nobody is training and the buffer is empty).
- **async**: as soon as the buffer holds ``buffer_size`` updates it is aggregated into version v + 1 (a "round" in
  the records), and its contributors are sent work on v + 1. Devices still training carry on with their version.
- **semi-sync**: the buffer is aggregated every ``aggregation_period_s`` seconds, once it holds ``buffer_size``.
- Either mode also aggregates when every live device is waiting in the buffer, so a fleet smaller than the buffer
  never stalls.

**Staleness.** An update trained on version τ and aggregated into v + 1 has staleness s = v − τ. One with
s > ``max_staleness`` is refused (``stale``). Each buffered update counts n_k · w(s_k) with the polynomial
discount w(s) = (1 + s)^(−a) (``staleness_exponent`` a, 0.5 by default, as FedBuff's): the strategy aggregates the
buffer with those weights into A, and the new state moves from the current one C by the buffer's mean discount,
C + λ(A − C) with λ = Σ n_k w(s_k) / Σ n_k. A buffer of fresh updates (λ = 1) gives exactly a synchronous round's
aggregate; a buffer of stale ones moves the model less.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.wire import AdapterUpdate

ROUND_MODES = ("sync", "async", "semi-sync")


def staleness_weight(staleness: int, exponent: float) -> float:
    """w(s) = (1 + s)^(−a)."""
    return (1.0 + staleness) ** -exponent


@dataclass
class UpdateBuffer:
    """Accepted updates waiting to be aggregated, each with its staleness."""

    size: int
    max_staleness: int
    exponent: float
    entries: dict[str, tuple[AdapterUpdate, int]] = field(default_factory=dict)

    def stale(self, trained_for: int, next_version: int) -> int | None:
        """The staleness of an update trained for ``trained_for`` and aggregated into ``next_version``, or None
        when it is beyond ``max_staleness``."""
        staleness = next_version - trained_for
        return staleness if staleness <= self.max_staleness else None

    def add(self, update: AdapterUpdate, staleness: int) -> None:
        self.entries[update.agent_id] = (update, staleness)

    def weights(self) -> list[float]:
        """n_k · w(s_k), in the order of ``entries``."""
        return [update.num_examples * staleness_weight(staleness, self.exponent) for update, staleness in self.entries.values()]

    def discount(self) -> float:
        """λ: the examples-weighted mean of w(s_k)."""
        examples = sum(update.num_examples for update, _ in self.entries.values())
        return sum(self.weights()) / examples if examples else 0.0

    def full(self) -> bool:
        return len(self.entries) >= self.size

    def take(self) -> list[tuple[AdapterUpdate, int]]:
        taken, self.entries = list(self.entries.values()), {}
        return taken


def moved_by(current: Mapping[str, np.ndarray], aggregated: Mapping[str, np.ndarray], discount: float) -> dict[str, np.ndarray]:
    """C + λ(A − C) for every tensor of A (a tensor C lacks is taken from A)."""
    if discount >= 1.0:
        return dict(aggregated)
    return {key: current[key] + discount * (value - current[key]) if key in current and current[key].shape == value.shape else value for key, value in aggregated.items()}
