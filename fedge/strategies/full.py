"""Full-weight averaging: clients fine-tune the target weights themselves (with GaLore's low-rank gradient
projection, so optimizer state stays small) and the server averages them, W = Σ p_i W_i per module over the clients
that trained it. d·k numbers per module each way: the heavy baseline LoRA is compared against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.strategies.base import FULL_SUFFIX, ClientInfo, ClientRecipe, ClientUpdate, GlobalParts, State, Strategy, lora_modules, trained_modules


class FullWeights(Strategy):
    name = "full"
    recipe = ClientRecipe(adapter="full", trains=("W",), sends=("W",), optimizer="galore")

    def initial_state(self, lora: State, base_weights: State) -> State:
        state = super().initial_state(lora, base_weights)
        for module in lora_modules(state):
            state[module + FULL_SUFFIX] = base_weights[module].astype(np.float32)
        return state

    def upload_shapes(self, state: State, spec) -> dict[str, tuple[int, ...]]:
        return {module + FULL_SUFFIX: state[module + FULL_SUFFIX].shape for module in self._client_modules(state, spec)}

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        for module, weighted in trained_modules(state, updates, FULL_SUFFIX):
            merged[module + FULL_SUFFIX] = sum(weight * update.tensors[module + FULL_SUFFIX].astype(np.float64) for update, weight in weighted).astype(np.float32)
        return merged

    def client_view(self, state: State, client: ClientInfo) -> State:
        return {module + FULL_SUFFIX: state[module + FULL_SUFFIX] for module in self._client_modules(state, client.spec)}

    def global_parts(self, state: State) -> GlobalParts:
        return GlobalParts(lora=None, weights={key[: -len(FULL_SUFFIX)]: value for key, value in state.items() if key.endswith(FULL_SUFFIX)})
