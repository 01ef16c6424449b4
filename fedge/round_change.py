"""A full-weight device's round change in factored form.

GaLore steps a weight only inside its projector's span (weight decay off), so the change one round makes has rank r,
or 2r where a projector refresh falls inside the round: d×2r and 2r×k factors carry it exactly, against d·k numbers
dense. The factors come from a randomized range finder over the change (its rank is known, so a Gaussian sketch a
few columns wider spans it), then the small SVD puts them in (U·Σ, Vᵀ) form: the right factor has orthonormal rows,
the left carries the change's size. What the factors miss is measured, never assumed: a change of higher rank (an
optimizer that does not project) is sent as its best rank-K approximation and says by how much it fell short.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUMERICAL_RANK_RTOL = 1e-6  # directions under this share of the largest are float32 rounding of the weights, not change


@dataclass(frozen=True)
class FactoredChange:
    """``left`` (d×K, U·Σ) times ``right`` (K×k, Vᵀ) is the change up to ``missed``, ‖ΔW − left·right‖ / ‖ΔW‖."""

    left: torch.Tensor
    right: torch.Tensor
    missed: float


def factored_change(before: torch.Tensor, after: torch.Tensor, rank: int, oversampling: int = 8, seed: int = 0) -> FactoredChange:
    """``after − before`` as ``rank`` factors in float32; columns and rows beyond the change's numerical rank are
    zero."""
    change = after.detach().float() - before.detach().float().to(after.device)
    rows, cols = change.shape
    width = min(rank + oversampling, rows, cols)
    generator = torch.Generator(device=change.device).manual_seed(seed)
    sketch = change @ torch.randn(cols, width, generator=generator, device=change.device)
    basis = torch.linalg.qr(sketch.double())[0]
    u, values, vt = torch.linalg.svd(basis.T @ change.double(), full_matrices=False)
    kept = min(rank, int((values > NUMERICAL_RANK_RTOL * values[0]).sum()) if values.numel() else 0)
    left = torch.zeros(rows, rank, dtype=torch.float32, device=change.device)
    right = torch.zeros(rank, cols, dtype=torch.float32, device=change.device)
    left[:, :kept] = ((basis @ u[:, :kept]) * values[:kept]).float()
    right[:kept] = vt[:kept].float()
    size = torch.linalg.norm(change)
    missed = float(torch.linalg.norm(change - left @ right) / size) if size > 0 else 0.0
    return FactoredChange(left, right, missed)
