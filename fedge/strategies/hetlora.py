"""HetLoRA: ranks differ per client; factors are zero-padded to the largest rank and weighted by the size of each
client's update, S_i = ‖s_i B_i A_i‖_F / Σ_j ‖s_j B_j A_j‖_F (norms from r×r Gram matrices, never d×k). A client
gets the first r_i rows/columns back. Not exact. Where every update is zero (nothing trained yet) S_i falls back to
p_i. Each norm is scaled by the update's ``trust`` (the robust rules' weight factor, 1 unless they distrust it): S_i
ignores example counts, so without it a distrusted device would keep its full share, and the larger for having
its values clamped to the edge of the honest range. Rank self-pruning on the client is not implemented."""

from __future__ import annotations

from collections.abc import Sequence

from fedge.strategies.base import A_SUFFIX, ClientUpdate, State, Strategy, average_factors, folded, trained_modules, with_factors
from fedge.strategies.factored import LowRank, frobenius


class HetLoRA(Strategy):
    name = "hetlora"

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            norms = [update.trust * frobenius(LowRank(*folded(update, module))) for update, _ in weighted]
            total = sum(norms)
            if total > 0:
                weighted = [(update, norm / total) for (update, _), norm in zip(weighted, norms)]
            with_factors(merged, module, *average_factors(state, module, weighted))
        return merged
