"""LoRA-FAIR: FedIT's (B̄, Ā) plus a server-side correction ΔB so that (B̄ + ΔB)·Ā comes as close as possible to the
exact aggregate ΔW = Σ p_i s_i B_i A_i; clients start from A = Ā, B = B̄ + ΔB at no extra wire cost.

Two solvers: ``ridge`` (default), the closed form ΔB = (ΔW − B̄Ā)Āᵀ(ĀĀᵀ + λI)⁻¹, and ``cosine``, the paper's
objective — maximise cos(ΔW, (B̄ + ΔB)Ā) − λ‖ΔB‖_F by Adam steps, keeping the best iterate. Both use ΔW only through products with Ā
(ΔW·Āᵀ = B_s·(A_s·Āᵀ)), so nothing d×k is formed. Scaling is folded into B (global s = 1), so ΔW/s is ΔW here.
Mixed ranks are zero-padded as in HetLoRA."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.strategies.base import A_SUFFIX, ClientUpdate, State, Strategy, StrategyError, average_factors, product_terms, trained_modules, with_factors
from fedge.strategies.factored import LowRank, stack

SOLVERS = ("ridge", "cosine")


class LoRAFAIR(Strategy):
    name = "lora-fair"

    def __init__(self, seed: int = 0, solver: str = "ridge", lam: float = 0.01, steps: int = 200, learning_rate: float = 1e-3):
        super().__init__(seed)
        if solver not in SOLVERS:
            raise StrategyError(f"lora-fair solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
        if lam < 0 or steps < 1:
            raise StrategyError("lora-fair needs lam >= 0 and steps >= 1")
        self.solver, self.lam, self.steps, self.learning_rate = solver, lam, steps, learning_rate

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            b_bar, a_bar = average_factors(state, module, weighted)
            exact = stack(product_terms(weighted, module))
            correction = self.ridge(exact, b_bar, a_bar) if self.solver == "ridge" else self.cosine(exact, b_bar, a_bar)
            with_factors(merged, module, b_bar + correction, a_bar)
        return merged

    def ridge(self, exact: LowRank, b_bar: np.ndarray, a_bar: np.ndarray) -> np.ndarray:
        gram = a_bar @ a_bar.T
        target = exact.left @ (exact.right @ a_bar.T) - b_bar @ gram
        return np.linalg.solve(gram + self.lam * np.eye(len(gram)), target.T).T

    def cosine(self, exact: LowRank, b_bar: np.ndarray, a_bar: np.ndarray) -> np.ndarray:
        import torch  # autograd for the paper's objective; only this solver needs it (configs load without torch)

        left, cross = torch.from_numpy(exact.left), torch.from_numpy(exact.right @ a_bar.T)  # ΔW·Āᵀ = left·cross
        gram = torch.from_numpy(a_bar @ a_bar.T)
        base = torch.from_numpy(b_bar)
        target_norm = torch.sqrt(((left.T @ left) * torch.from_numpy(exact.right @ exact.right.T)).sum())
        correction = torch.zeros_like(base, requires_grad=True)
        optimiser = torch.optim.Adam([correction], lr=self.learning_rate)
        best_loss, best = float("inf"), correction.detach().clone()
        for _ in range(self.steps):
            corrected = base + correction
            inner = ((left @ cross) * corrected).sum()  # ⟨ΔW, (B̄+ΔB)Ā⟩ = Σ (ΔW Āᵀ) ∘ (B̄+ΔB)
            norm = torch.sqrt(((corrected.T @ corrected) * gram).sum()).clamp_min(1e-12)
            loss = -inner / (norm * target_norm.clamp_min(1e-12)) + self.lam * correction.norm()
            if loss.item() < best_loss:  # Adam may step past the optimum: keep the best iterate (ΔB = 0 included)
                best_loss, best = loss.item(), correction.detach().clone()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return best.numpy()
