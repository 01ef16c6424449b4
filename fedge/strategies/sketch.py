"""The leading singular triplets of Σ c_i·B_i·A_i by a randomized range finder, for fleets whose stacked rank
R = Σ r_i is far above the rank the server keeps.

The exact factored SVD (``factored.svd``) costs O((d + k)·R²): about 8 s for one 4096×4096 module at 100 devices of
ranks 4–64 (R ≈ 2,500). Only the top ``rank`` directions are ever kept or sent back, so Halko, Martinsson & Tropp
(2011), Algorithm 4.4, suffices: Y = M·Ω for a Gaussian k×(rank + p) test matrix Ω, q power iterations
Y ← M·Mᵀ·Y (re-orthonormalised each half step), Q = orth(Y), then the small SVD of Qᵀ·M gives U = Q·Û, Σ, Vᵀ.
M is applied through its factors, never formed: O((d + k)·R·(rank + p)) per pass, 2q + 2 passes. The factors are
stacked once per module in float32 (the wire carries fp16, so float32 holds them exactly); the small matrices are
orthonormalised in float64 by Cholesky-QR twice (Householder QR where Y is rank-deficient). Ω comes from a fixed
seed, so the same updates always give the same global (a resumed run repeats its round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedge.strategies.base import A_SUFFIX, StrategyError, trained_modules
from fedge.strategies.factored import ThinSVD, stack, svd


@dataclass(frozen=True)
class SketchSettings:
    """``oversampling`` p extra columns beyond the kept rank, ``power_iterations`` q, the test matrix's ``seed``, and
    ``exact_below``: a stacked rank R at or below ``exact_below``·(rank + p) takes the exact factored SVD instead
    (cheaper there, and exact)."""

    oversampling: int = 10
    power_iterations: int = 0
    seed: int = 0
    exact_below: int = 4

    def worth_it(self, stacked_rank: int, rank: int) -> bool:
        return stacked_rank > self.exact_below * (rank + self.oversampling)


def sketched_modules(state: dict[str, np.ndarray], updates, sketched: Callable[[int, int], bool]) -> tuple[int, int, int]:
    """(modules where ``sketched(Σ r_i, R)`` holds, modules trained, the largest stacked rank Σ r_i): the strategy's
    own test of when it leaves the exact path, applied to a round's updates."""
    stacked = [(sum(update.tensors[module + A_SUFFIX].shape[0] for update, _ in weighted), state[module + A_SUFFIX].shape[0]) for module, weighted in trained_modules(state, updates, A_SUFFIX)]
    return sum(sketched(total, rank) for total, rank in stacked), len(stacked), max((total for total, _ in stacked), default=0)


def sketch_settings(seed: int, power_iterations: object, oversampling: object) -> SketchSettings:
    """The range finder's settings from a strategy's options, checked."""
    for name, value, least in (("power_iterations", power_iterations, 0), ("oversampling", oversampling, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= 64:
            raise StrategyError(f"{name}: a whole number from {least} to 64, not {value!r}")
    return SketchSettings(oversampling=oversampling, power_iterations=power_iterations, seed=seed)


class StackBuffer:
    """Two float32 arrays reused from module to module of one aggregation: a fresh 40 MB array costs more in page
    faults than the copy into it."""

    def __init__(self) -> None:
        self._left = np.empty((0, 0), np.float32)
        self._right = np.empty((0, 0), np.float32)

    def views(self, rows: int, total: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        if self._left.shape[0] != rows or self._left.shape[1] < total:
            self._left = np.empty((rows, total), np.float32)
        if self._right.shape[1] != cols or self._right.shape[0] < total:
            self._right = np.empty((total, cols), np.float32)
        return self._left[:, :total], self._right[:total]


def stacked(terms: Sequence[tuple[float, np.ndarray, np.ndarray]], buffer: StackBuffer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B_s, A_s, c) = ([B_1 … B_K], [A_1; …; A_K], each stacked column's weight c_i) in float32, the factors copied
    into ``buffer`` as they are (the weights go on the small matrices instead, a copy rather than a multiply)."""
    rows, cols = terms[0][1].shape[0], terms[0][2].shape[1]
    left, right = buffer.views(rows, sum(b.shape[1] for _, b, _ in terms), cols)
    np.concatenate([b for _, b, _ in terms], axis=1, out=left, casting="same_kind")
    np.concatenate([a for _, _, a in terms], axis=0, out=right, casting="same_kind")
    weights = np.concatenate([np.full(b.shape[1], weight, np.float32) for weight, b, _ in terms])
    return left, right, weights


def leading_svd(terms: Sequence[tuple[float, np.ndarray, np.ndarray]], rank: int, settings: SketchSettings, buffer: StackBuffer,
                likely_rows: np.ndarray | None = None) -> ThinSVD:
    """The approximate top-``rank`` singular triplets of Σ c·B·A over ``(c, B, A)`` terms. ``likely_rows`` (m×k), where
    given, are directions the row space probably holds (the global A every client started from): they replace the
    first m Gaussian columns of Ω, a warm start for the subspace iteration."""
    left, right, weights = stacked(terms, buffer)
    column = weights[:, None]
    width = min(rank + settings.oversampling, left.shape[1], right.shape[1])
    warm = likely_rows[: max(width - settings.oversampling, 0)] if likely_rows is not None else np.empty((0, right.shape[1]), np.float32)
    test = np.empty((right.shape[1], width), np.float32)
    test[:, : warm.shape[0]] = warm.T
    test[:, warm.shape[0] :] = np.random.default_rng(settings.seed).standard_normal((right.shape[1], width - warm.shape[0]), dtype=np.float32)
    basis = orthonormal(left @ ((right @ test) * column))
    for _ in range(settings.power_iterations):
        basis = orthonormal(left @ ((right @ orthonormal(right.T @ ((left.T @ basis) * column))) * column))
    small = (((basis.T @ left) * weights) @ right).astype(np.float64)  # width × k
    gram_values, gram_vectors = np.linalg.eigh(small @ small.T)
    order = np.argsort(gram_values)[::-1][:rank]
    values = np.sqrt(np.clip(gram_values[order], 0.0, None))
    vectors = gram_vectors[:, order]
    kept = values > values[0] * 1e-7 if values.size and values[0] > 0 else np.zeros(values.shape, bool)
    vt = (vectors[:, kept].T @ small) / values[kept, None]
    return ThinSVD(basis.astype(np.float64) @ vectors[:, kept], values[kept], vt)


def top_svd(terms: Sequence[tuple[float, np.ndarray, np.ndarray]], rank: int, settings: SketchSettings, buffer: StackBuffer,
            likely_rows: np.ndarray | None = None) -> ThinSVD:
    """At least the top ``rank`` singular triplets of Σ c·B·A: exact (every triplet) where the stacked rank is small,
    else the range finder's ``rank``."""
    stacked_rank = sum(b.shape[1] for _, b, _ in terms)
    if settings.worth_it(stacked_rank, rank):
        return leading_svd(terms, rank, settings, buffer, likely_rows)
    return svd(stack(terms))


def orthonormal(matrix: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of a tall ``matrix`` (float32 out), by Cholesky-QR twice in float64."""
    basis = matrix.astype(np.float64)
    try:
        for _ in range(2):
            basis = basis @ np.linalg.inv(np.linalg.cholesky(basis.T @ basis)).T
    except np.linalg.LinAlgError:  # rank-deficient (fewer directions than columns): Householder copes
        basis = np.linalg.qr(matrix.astype(np.float64))[0]
    return basis.astype(np.float32)
