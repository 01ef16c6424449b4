"""Differential privacy of what a device sends: per-update norm clipping and Gaussian noise, and the privacy budget.

On the device (``privatise``): the change its round made to the tensors it sends, Δ = sent − received, is clipped to
L2 norm ``clip_norm`` (C) and Gaussian noise N(0, (z·C)²) is added to every entry before it leaves the device, so the
guarantee holds against the network and the coordinator alike (local DP, device-level: the unit is the device's
whole dataset). Any two clipped changes differ by at most 2C, so one round is the Gaussian mechanism with
sensitivity 2C and noise σ = z·C, i.e. noise multiplier z/2.

Accounting (``epsilon``), Rényi-DP of the Gaussian mechanism (Mironov 2017): RDP(α) = α / (2 (z/2)²) per round,
T rounds compose to T times that, and the conversion to (ε, δ) is the one Opacus uses (Balle et al. 2020):
ε = min over α of [T·RDP(α) + log((α − 1)/α) − (log δ + log α)/(α − 1)].
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

DEFAULT_DELTA = 1e-5
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256])


def privatise(sent: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], clip_norm: float, noise_multiplier: float, rng: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray], float]:
    """``received`` plus the clipped, noised change; returns the tensors to send (in ``sent``'s dtypes) and the
    change's norm before clipping. ``rng`` defaults to fresh OS entropy: the noise must not be reproducible."""
    rng = rng or np.random.default_rng()
    delta = {key: np.asarray(sent[key], dtype=np.float64) - np.asarray(received[key], dtype=np.float64) for key in sent}
    norm = math.sqrt(sum(float(np.square(value).sum()) for value in delta.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    sigma = noise_multiplier * clip_norm
    out = {}
    for key, change in delta.items():
        noisy = np.asarray(received[key], dtype=np.float64) + change * scale + rng.normal(0.0, sigma, size=change.shape)
        out[key] = noisy.astype(np.asarray(sent[key]).dtype)
    return out, norm


def epsilon(rounds: int, noise_multiplier: float, delta: float) -> float:
    """The (ε, δ) budget a device has spent after taking part in ``rounds`` rounds (inf without noise)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    effective = noise_multiplier / 2  # sensitivity 2C against noise z·C
    best = math.inf
    for order in ORDERS:
        rdp = rounds * order / (2 * effective**2)
        eps = rdp + math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)
        best = min(best, eps)
    return max(best, 0.0)
