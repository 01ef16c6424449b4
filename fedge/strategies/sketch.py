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

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedge.strategies.base import A_SUFFIX, StrategyError, reading_wire_arrays, trained_modules
from fedge.strategies.factored import ThinSVD, stack, svd

if TYPE_CHECKING:
    import torch


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


def sketched_modules(state: dict[str, np.ndarray], updates, sketched: Callable[[int, int], bool], right_suffix: str = A_SUFFIX) -> tuple[int, int, int]:
    """(modules where ``sketched(Σ r_i, R)`` holds, modules trained, the largest stacked rank Σ r_i): the strategy's
    own test of when it leaves the exact path, applied to a round's updates (r_i: the rows of each update's
    ``right_suffix`` factor)."""
    stacked = [(sum(update.tensors[module + right_suffix].shape[0] for update, _ in weighted), state[module + A_SUFFIX].shape[0]) for module, weighted in trained_modules(state, updates, right_suffix)]
    return sum(sketched(total, rank) for total, rank in stacked), len(stacked), max((total for total, _ in stacked), default=0)


def sketch_settings(seed: int, power_iterations: object, oversampling: object) -> SketchSettings:
    """The range finder's settings from a strategy's options, checked."""
    for name, value, least in (("power_iterations", power_iterations, 0), ("oversampling", oversampling, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= 64:
            raise StrategyError(f"{name}: a whole number from {least} to 64, not {value!r}")
    return SketchSettings(oversampling=oversampling, power_iterations=power_iterations, seed=seed)


class StackBuffer:
    """Arrays reused from module to module of one aggregation, one per role (a fresh 40 MB array costs more in page
    faults than the copy into it); a role's array is replaced when a module needs another shape or dtype."""

    def __init__(self) -> None:
        self._held: dict[str, np.ndarray] = {}

    def array(self, role: str, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        held = self._held.get(role)
        if held is None or held.shape != shape or held.dtype != dtype:
            held = self._held[role] = np.empty(shape, dtype)
        return held


def join(blocks: Sequence[np.ndarray], axis: int, role: str, buffer: StackBuffer) -> torch.Tensor:
    """``blocks`` concatenated along ``axis`` into one of ``buffer``'s float32 arrays. Row blocks (axis 0) are
    widened as they are copied, each into one contiguous stretch. Column blocks land in strided rows, where widening
    on the way costs several times a plain copy: they are joined in the dtype most of them share (the wire's
    float16) and widened in one contiguous pass, blocks of a wider dtype then copied in exactly."""
    import torch  # only the server step needs torch: configs and strategies load without it

    shape = (blocks[0].shape[0], sum(block.shape[1] for block in blocks)) if axis == 1 else (sum(block.shape[0] for block in blocks), blocks[0].shape[1])
    out = torch.from_numpy(buffer.array(role, shape, np.dtype(np.float32)))
    with reading_wire_arrays():
        if axis == 0:
            return torch.cat([torch.from_numpy(block) for block in blocks], dim=0, out=out)
        common = Counter(block.dtype for block in blocks).most_common(1)[0][0]
        staging = out if common == np.float32 else torch.from_numpy(buffer.array(role + " as sent", shape, common))
        torch.cat([torch.from_numpy(block if block.dtype == common else block.astype(common)) for block in blocks], dim=1, out=staging)
        if staging is not out:
            out.copy_(staging)
            start = 0
            for block in blocks:
                if block.dtype != common:
                    out.narrow(1, start, block.shape[1]).copy_(torch.from_numpy(block))
                start += block.shape[1]
    return out


def stacked(terms: Sequence[tuple[float, np.ndarray, np.ndarray]], buffer: StackBuffer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B_s, A_s, c) = ([B_1 … B_K], [A_1; …; A_K], each stacked column's weight c_i) in float32, the factors copied
    into ``buffer`` as they are (the weights go on the small matrices instead, a copy rather than a multiply)."""
    import torch

    left = join([b for _, b, _ in terms], 1, "left", buffer)
    right = join([a for _, _, a in terms], 0, "right", buffer)
    weights = torch.cat([torch.full((b.shape[1],), weight, dtype=torch.float32) for weight, b, _ in terms])
    return left, right, weights


def leading_svd(terms: Sequence[tuple[float, np.ndarray, np.ndarray]], rank: int, settings: SketchSettings, buffer: StackBuffer,
                likely_rows: np.ndarray | None = None) -> ThinSVD:
    """The approximate top-``rank`` singular triplets of Σ c·B·A over ``(c, B, A)`` terms. ``likely_rows`` (m×k), where
    given, are directions the row space probably holds (the global A every client started from): they replace the
    first m Gaussian columns of Ω, a warm start for the subspace iteration.

    Computed with torch throughout (numpy's BLAS threads spinning between calls slow torch's copies several times
    over), and on the sketches' transposes: Ωᵀ·Mᵀ rather than M·Ω, each product then having the sketch's few rows as
    its rows, the layout these GEMMs run fastest in here (up to a quarter faster than the tall one)."""
    import torch

    left, right, weights = stacked(terms, buffer)
    width = min(rank + settings.oversampling, left.shape[1], right.shape[1])
    warm = likely_rows[: max(width - settings.oversampling, 0)] if likely_rows is not None else np.empty((0, right.shape[1]), np.float32)
    test = np.empty((width, right.shape[1]), np.float32)  # Ωᵀ
    test[: warm.shape[0]] = warm
    test[warm.shape[0] :] = np.random.default_rng(settings.seed).standard_normal((right.shape[1], width - warm.shape[0]), dtype=np.float32).T

    factors = (left, right, weights)
    basis = orthonormal_rows(times_m_transposed(torch.from_numpy(test), *factors))  # Qᵀ, width × d
    for _ in range(settings.power_iterations):
        basis = orthonormal_rows(times_m_transposed(orthonormal_rows(times_m(basis, *factors)), *factors))
    small = times_m(basis, *factors).double()  # Qᵀ·M, width × k
    gram_values, gram_vectors = torch.linalg.eigh(small @ small.T)
    order = torch.argsort(gram_values, descending=True)[:rank]
    values = gram_values[order].clamp(min=0.0).sqrt()
    vectors = gram_vectors[:, order]
    kept = values > values[0] * 1e-7 if values.numel() and values[0] > 0 else torch.zeros(values.shape, dtype=torch.bool)
    vt = (vectors[:, kept].T @ small) / values[kept, None]
    return ThinSVD((basis.double().T @ vectors[:, kept]).numpy(), values[kept].numpy(), vt.numpy())


def times_m(rows: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Xᵀ ↦ Xᵀ·M for M = left·diag(weights)·right, through the stacked factors (two products)."""
    return ((rows @ left) * weights) @ right


def times_m_transposed(rows: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Xᵀ ↦ Xᵀ·Mᵀ, through the stacked factors (two products)."""
    return ((rows @ right.T) * weights) @ left.T


def top_svd(terms: Sequence[tuple[float, np.ndarray, np.ndarray]], rank: int, settings: SketchSettings, buffer: StackBuffer,
            likely_rows: np.ndarray | None = None) -> ThinSVD:
    """At least the top ``rank`` singular triplets of Σ c·B·A: exact (every triplet) where the stacked rank is small,
    else the range finder's ``rank``."""
    stacked_rank = sum(b.shape[1] for _, b, _ in terms)
    if settings.worth_it(stacked_rank, rank):
        return leading_svd(terms, rank, settings, buffer, likely_rows)
    return svd(stack(terms))


def orthonormal_rows(matrix: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the rows of a wide ``matrix`` (float32 out), by Cholesky-QR twice in float64."""
    import torch

    basis = matrix.double()
    for _ in range(2):
        factor, info = torch.linalg.cholesky_ex(basis @ basis.T)
        if info.item():  # rank-deficient (fewer directions than rows): Householder copes
            return torch.linalg.qr(matrix.double().T)[0].T.contiguous().float()
        basis = torch.linalg.solve_triangular(factor, basis, upper=False)
    return basis.float()
