"""FlexLoRA: W_g = Σ p_i s_i B_i A_i, and client i gets its best rank-r_i approximation (truncated SVD). One SVD per
layer serves every client rank: the server keeps W_g's top-R singular triplets as (U_R·Σ_R, V_Rᵀ), so cutting the
first r_i columns/rows is exactly the rank-r_i truncation. The SVD is exact and factored (``factored.svd``) for
small fleets; where the stacked rank Σ r_i is far above R, a randomized range finder (``sketch``) warm-started from
the global A every client began the round from finds the top R directions."""

from __future__ import annotations

from collections.abc import Sequence

from fedge.strategies.base import A_SUFFIX, ClientUpdate, State, Strategy, pad_cols, pad_rows, product_terms, trained_modules, with_factors
from fedge.strategies.sketch import StackBuffer, sketch_settings, sketched_modules, top_svd


class FlexLoRA(Strategy):
    name = "flexlora"

    def __init__(self, seed: int = 0, power_iterations: int = 0, oversampling: int = 10):
        super().__init__(seed)
        self.sketch = sketch_settings(seed, power_iterations, oversampling)

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        buffer = StackBuffer()
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            start = state[module + A_SUFFIX]
            top = top_svd(product_terms(weighted, module), start.shape[0], self.sketch, buffer, likely_rows=start).truncated(start.shape[0])
            b, a = top.left, top.right
            if b.shape[1] < start.shape[0]:  # fewer singular values than R (only low-rank clients trained it): pad with zeros
                b, a = pad_cols(b, start.shape[0]), pad_rows(a, start.shape[0])
            with_factors(merged, module, b, a)
        return merged

    def notes(self, state: State, updates: Sequence[ClientUpdate]) -> dict[str, str]:
        sketched, modules, largest = sketched_modules(state, updates, self.sketch.worth_it)
        return {"svd": f"randomized range finder on {sketched} of {modules} modules (stacked rank up to {largest})"} if sketched else {}

