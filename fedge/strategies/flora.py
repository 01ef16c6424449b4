"""FLoRA: stacking. B_s = [p_1 s_1 B_1 … p_K s_K B_K], A_s = [A_1; …; A_K] give B_s·A_s = Σ p_i s_i B_i A_i exactly,
for any mix of ranks. Clients merge each round's stacked update into their frozen weights and start LoRA afresh
(A random, B = 0); the downlink grows with R = Σ r_i. The global LoRA stays at zero: everything learned lives in
the base changes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.strategies.base import A_SUFFIX, B_SUFFIX, ClientInfo, ClientRecipe, ClientUpdate, GlobalParts, State, Strategy, base_changes, lora_modules, product_terms, trained_modules
from fedge.strategies.base_change import changes_since, record_change
from fedge.strategies.factored import stack


class FLoRA(Strategy):
    name = "flora"
    recipe = ClientRecipe(reinit_each_round=True)
    supports_groups = False  # group-level base changes would split the frozen weights between groups
    forwards_through_sites = False  # its base changes would stay at the site
    coordinatewise = False  # each client's A is its own random draw: factors are compared only by norm
    carries_state = False  # the factors start afresh every round (the aggregate goes into the base)

    def initial_state(self, lora: State, base_weights: State) -> State:
        state = super().initial_state(lora, base_weights)
        for module in lora_modules(state):
            state[module + B_SUFFIX] = np.zeros_like(state[module + B_SUFFIX])
        return state

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, A_SUFFIX):
            record_change(merged, module, round_number, stack(product_terms(weighted, module)))
        return merged

    def client_view(self, state: State, client: ClientInfo) -> State:
        return changes_since(state, client)

    def update_start(self, state: State, client: ClientInfo) -> State:
        """LoRA starts afresh each round: B at zero, A a random draw counted as movement from zero."""
        return {}

    def global_parts(self, state: State) -> GlobalParts:
        lora = {key: value for key, value in state.items() if key.endswith((A_SUFFIX, B_SUFFIX))}
        return GlobalParts(lora=lora, base_changes=base_changes(state))
