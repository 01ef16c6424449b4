"""Sums of low-rank products without ever forming the d×k matrix.

Σ_i c_i·B_i·A_i equals B_s·A_s with B_s = [c_1 B_1 … c_K B_K] (d×R) and A_s = [A_1; …; A_K] (R×k), R = Σ r_i.
Its SVD comes from two thin QRs and one R×R SVD: B_s = Q_b R_b, A_sᵀ = Q_a R_a, R_b R_aᵀ = U' Σ V'ᵀ, so
B_s A_s = (Q_b U') Σ (Q_a V')ᵀ. Cost O((d+k)R² + R³) instead of O(d·k·min(d, k)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LowRank:
    """``left @ right`` kept factored: left (d×q), right (q×k)."""

    left: np.ndarray
    right: np.ndarray

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def dense(self) -> np.ndarray:
        return self.left @ self.right


@dataclass(frozen=True)
class ThinSVD:
    """U (d×q), singular values S (q, descending), Vt (q×k)."""

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray

    def truncated(self, rank: int) -> LowRank:
        """The best rank-``rank`` approximation as (U_r·Σ_r, V_rᵀ)."""
        return LowRank(self.u[:, :rank] * self.s[:rank], self.vt[:rank])


def stack(terms: list[tuple[float, np.ndarray, np.ndarray]]) -> LowRank:
    """Σ c·B·A over ``(c, B, A)`` terms as one factored product (the FLoRA stacking)."""
    if not terms:
        raise ValueError("nothing to stack")
    left = np.concatenate([np.float64(c) * b.astype(np.float64) for c, b, _ in terms], axis=1)
    right = np.concatenate([a.astype(np.float64) for _, _, a in terms], axis=0)
    return LowRank(left, right)


def svd(product: LowRank) -> ThinSVD:
    """SVD of ``left @ right`` in factored form (see the module docstring)."""
    q_b, r_b = np.linalg.qr(product.left)
    q_a, r_a = np.linalg.qr(product.right.T)
    u, s, vt = np.linalg.svd(r_b @ r_a.T)
    return ThinSVD(q_b @ u, s, (q_a @ vt.T).T)


def compress(product: LowRank, rtol: float = 1e-9) -> LowRank:
    """The same matrix with its factors cut to the numerical rank (singular values above ``rtol``·σ_max)."""
    decomposition = svd(product)
    if decomposition.s.size == 0 or decomposition.s[0] == 0:
        return LowRank(product.left[:, :0], product.right[:0])
    keep = int((decomposition.s > rtol * decomposition.s[0]).sum())
    return decomposition.truncated(keep)


def frobenius(product: LowRank) -> float:
    """‖left·right‖_F from r×r Gram matrices: trace(LᵀL · RRᵀ)."""
    return float(np.sqrt(max(np.sum((product.left.T @ product.left) * (product.right @ product.right.T)), 0.0)))
