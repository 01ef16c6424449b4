"""FedIT: FedAvg of the LoRA factors, Ā = Σ p_i A_i, B̄ = Σ p_i s_i B_i. Not exact (B̄Ā ≠ Σ p_i s_i B_i A_i); one
rank per layer across clients. The baseline every report compares against."""

from __future__ import annotations

from collections.abc import Sequence

from fedge.strategies.base import A_SUFFIX, ClientUpdate, State, Strategy, average_factors, trained_modules, with_factors


class FedIT(Strategy):
    name = "fedit"
    mixed_ranks = False

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            with_factors(merged, module, *average_factors(state, module, weighted))
        return merged
