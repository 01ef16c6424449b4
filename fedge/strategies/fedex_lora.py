"""FedEx-LoRA: clients get FedIT's (B̄, Ā) plus the residual Σ p_i s_i B_i A_i − B̄Ā folded into their frozen
weights, which makes the aggregate exact. The residual is built factored, [p_1 s_1 B_1 … p_K s_K B_K, −B̄]·[A_1; …;
A_K; Ā], and cut to its numerical rank; it is d×k in W0's own (out×in) layout for every layer shape (the reference
code transposes it, which only works for square layers). Mixed ranks are zero-padded as in HetLoRA.

A large fleet's residual has a stacked rank far above anything worth sending (Σ r_i + R, thousands at 100 devices
of a 7B model). Above ``exact_residual_rank`` the server sends the residual's top R directions only, found by the
randomized range finder (``sketch``): exactness gives way to the best rank-R correction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.strategies.base import A_SUFFIX, B_SUFFIX, ClientInfo, ClientUpdate, GlobalParts, State, Strategy, StrategyError, average_factors, base_changes, product_terms, trained_modules, with_factors
from fedge.strategies.base_change import changes_since, record_change
from fedge.strategies.factored import compress, stack
from fedge.strategies.sketch import StackBuffer, leading_svd, sketch_settings, sketched_modules


class FedExLoRA(Strategy):
    name = "fedex-lora"
    supports_groups = False  # group-level base changes would split the frozen weights between groups
    forwards_through_sites = False  # its base changes would stay at the site

    def __init__(self, seed: int = 0, exact_residual_rank: int = 512, power_iterations: int = 0, oversampling: int = 10):
        super().__init__(seed)
        if not isinstance(exact_residual_rank, int) or isinstance(exact_residual_rank, bool) or exact_residual_rank < 1:
            raise StrategyError(f"exact_residual_rank: a positive whole number, not {exact_residual_rank!r}")
        self.exact_residual_rank = exact_residual_rank
        self.sketch = sketch_settings(seed, power_iterations, oversampling)

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        buffer = StackBuffer()
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            b_bar, a_bar = average_factors(state, module, weighted, np.float32)  # the residual is taken against these very factors
            terms = product_terms(weighted, module) + [(-1.0, b_bar, a_bar)]
            if not self.cuts(sum(b.shape[1] for _, b, _ in terms[:-1]), a_bar.shape[0]):
                residual = compress(stack(terms))
            else:
                residual = leading_svd(terms, a_bar.shape[0], self.sketch, buffer, likely_rows=state[module + A_SUFFIX]).truncated(a_bar.shape[0])
            record_change(merged, module, round_number, residual)
            with_factors(merged, module, b_bar, a_bar)
        return merged

    def cuts(self, stacked_rank: int, rank: int) -> bool:
        """Whether a module's residual (stacked rank Σ r_i + R) is cut to its top R directions, not sent exactly."""
        return stacked_rank + rank > self.exact_residual_rank

    def notes(self, state: State, updates: Sequence[ClientUpdate]) -> dict[str, str]:
        cut, modules, largest = sketched_modules(state, updates, self.cuts)
        return {"residual": f"not exact on {cut} of {modules} modules: cut to its top R directions (stacked rank up to {largest} + R, over exact_residual_rank {self.exact_residual_rank})"} if cut else {}

    def client_view(self, state: State, client: ClientInfo) -> State:
        return {**changes_since(state, client), **super().client_view(state, client)}

    def global_parts(self, state: State) -> GlobalParts:
        lora = {key: value for key, value in state.items() if key.endswith((A_SUFFIX, B_SUFFIX))}
        return GlobalParts(lora=lora, base_changes=base_changes(state))
