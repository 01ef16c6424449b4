"""What keeps one device from taking over, or poisoning, the global model: weight caps, norms, finiteness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def capped_weights(counts: Sequence[float], max_share: float) -> list[float]:
    """Example counts rescaled so that no device holds more than ``max_share`` of the total weight.

    Water-filling: devices over the cap are fixed at it and the rest keep their proportions, repeated until none is
    over (at most one pass per device). Devices at zero stay at zero (the robust rules may have taken a device's
    weight away); with fewer than ``1 / max_share`` devices above zero the cap cannot hold and each of them gets an
    equal share. The total is kept, so weights stay on the scale of example counts.
    """
    total = float(sum(counts))
    if not counts or total <= 0 or max_share >= 1.0:
        return [float(count) for count in counts]
    shares = np.asarray(counts, dtype=np.float64) / total
    weighed = shares > 0
    if max_share * weighed.sum() <= 1.0:
        return [total / weighed.sum() if weight else 0.0 for weight in weighed]
    capped = np.zeros(len(counts), dtype=bool)
    while True:
        over = (shares > max_share + 1e-12) & ~capped
        if not over.any():
            return [float(share * total) for share in shares]
        capped |= over
        shares[capped] = max_share
        free = ~capped & weighed
        shares[free] *= (1.0 - max_share * capped.sum()) / shares[free].sum()


def update_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all of an update's tensors together (computed in float64: fp16 squares overflow)."""
    return float(np.sqrt(sum(float(np.square(value, dtype=np.float64).sum()) for value in tensors.values())))


def all_finite(state: Mapping[str, np.ndarray]) -> bool:
    return all(np.isfinite(value).all() for value in state.values())
