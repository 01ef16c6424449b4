"""FFA-LoRA: A stays at a shared random init (same seed everywhere, never sent); only B trains and travels.
B̄ = Σ p_i s_i pad(B_i) is exact: B̄·A = Σ p_i s_i B_i A_i[:r_i] because every client's A is the first r_i rows of
the same A. A client of rank r_i gets the first r_i columns back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.strategies.base import A_SUFFIX, B_SUFFIX, ClientRecipe, ClientUpdate, State, Strategy, lora_modules, pad_cols, shared_lora_a, trained_modules


class FFALoRA(Strategy):
    name = "ffa-lora"
    recipe = ClientRecipe(trains=("B",), sends=("B",), shared_a=True)

    def initial_state(self, lora: State, base_weights: State) -> State:
        state = super().initial_state(lora, base_weights)
        for module in lora_modules(state):
            rows, cols = state[module + A_SUFFIX].shape
            state[module + A_SUFFIX] = shared_lora_a(module, rows, cols, self.seed)
        return state

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, B_SUFFIX):
            rank = state[module + B_SUFFIX].shape[1]
            total = sum(weight * update.spec.scaling * pad_cols(update.tensors[module + B_SUFFIX].astype(np.float64), rank) for update, weight in weighted)
            merged[module + B_SUFFIX] = total.astype(np.float32)
        return merged
