"""FedEx-LoRA: clients get FedIT's (B̄, Ā) plus the residual Σ p_i s_i B_i A_i − B̄Ā folded into their frozen
weights, which makes the aggregate exact. The residual is built factored, [p_1 s_1 B_1 … p_K s_K B_K, −B̄]·[A_1; …;
A_K; Ā], and cut to its numerical rank; it is d×k in W0's own (out×in) layout for every layer shape (the reference
code transposes it, which only works for square layers). Mixed ranks are zero-padded as in HetLoRA."""

from __future__ import annotations

from collections.abc import Sequence

from fedge.strategies.base import A_SUFFIX, B_SUFFIX, ClientInfo, ClientUpdate, GlobalParts, State, Strategy, average_factors, base_changes, product_terms, trained_modules, with_factors
from fedge.strategies.base_change import changes_since, record_change
from fedge.strategies.factored import compress, stack


class FedExLoRA(Strategy):
    name = "fedex-lora"
    supports_groups = False  # group-level base changes would split the frozen weights between groups

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            b_bar, a_bar = average_factors(state, module, weighted)
            residual = compress(stack(product_terms(weighted, module) + [(-1.0, b_bar, a_bar)]))
            record_change(merged, module, round_number, residual)
            with_factors(merged, module, b_bar, a_bar)
        return merged

    def client_view(self, state: State, client: ClientInfo) -> State:
        return {**changes_since(state, client), **super().client_view(state, client)}

    def global_parts(self, state: State) -> GlobalParts:
        lora = {key: value for key, value in state.items() if key.endswith((A_SUFFIX, B_SUFFIX))}
        return GlobalParts(lora=lora, base_changes=base_changes(state))
