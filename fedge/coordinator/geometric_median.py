"""The geometric median of movements of mixed ranks (Weiszfeld's iteration), for the ``geometric_median`` combiner
of ``fedge.coordinator.robust``: movements are compared zero-padded to the largest shape of each key."""

from __future__ import annotations

import numpy as np

from fedge.strategies.base import State

WEISZFELD_ITERATIONS = 20


def median_distances(moved: list[State], weights: list[float]) -> list[float]:
    """‖m_i − z‖ for z the weighted geometric median of the movements (Weiszfeld), zero-padded to common shapes."""
    shapes = {key: tuple(max(m[key].shape[axis] for m in moved if key in m) for axis in range(next(m[key].ndim for m in moved if key in m))) for key in {key for m in moved for key in m}}
    padded = [{key: _padded(m.get(key), shape) for key, shape in shapes.items()} for m in moved]
    median = {key: sum(w * p[key] for w, p in zip(weights, padded)) / sum(weights) for key in shapes}
    for _ in range(WEISZFELD_ITERATIONS):
        distances = [_distance(p, median) for p in padded]
        floor = 1e-9 + 1e-6 * max(distances)
        pulls = [w / max(d, floor) for w, d in zip(weights, distances)]
        median = {key: sum(pull * p[key] for pull, p in zip(pulls, padded)) / sum(pulls) for key in shapes}
    return [_distance(p, median) for p in padded]


def _padded(value: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    if value is not None:
        out[tuple(slice(0, extent) for extent in value.shape)] = value
    return out


def _distance(a: State, b: State) -> float:
    return float(np.sqrt(sum(float(np.square(a[key] - b[key], dtype=np.float64).sum()) for key in a)))
