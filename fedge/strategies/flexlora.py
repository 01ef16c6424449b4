"""FlexLoRA: W_g = Σ p_i s_i B_i A_i, and client i gets its best rank-r_i approximation (truncated SVD). The SVD runs
in factored form (``factored.svd``): one SVD per layer serves every client rank. The server keeps W_g's top-R
singular triplets as (U_R·Σ_R, V_Rᵀ), so cutting the first r_i columns/rows is exactly the rank-r_i truncation."""

from __future__ import annotations

from collections.abc import Sequence

from fedge.strategies.base import A_SUFFIX, ClientUpdate, State, Strategy, pad_cols, pad_rows, product_terms, trained_modules, with_factors
from fedge.strategies.factored import stack, svd


class FlexLoRA(Strategy):
    name = "flexlora"

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            rank = state[module + A_SUFFIX].shape[0]
            top = svd(stack(product_terms(weighted, module))).truncated(rank)
            b, a = top.left, top.right
            if b.shape[1] < rank:  # fewer singular values than R (only low-rank clients trained it): pad with zeros
                b, a = pad_cols(b, rank), pad_rows(a, rank)
            with_factors(merged, module, b, a)
        return merged
