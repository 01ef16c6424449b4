"""Full-weight averaging: clients fine-tune the target weights themselves (with GaLore's low-rank gradient
projection, so optimizer state stays small) and the server averages them, W = Σ p_i W_i per module over the clients
that trained it. d·k numbers per module each way: the heavy baseline LoRA is compared against.

GaLore's state (Adam's projected moments and each matrix's projector, refreshed every ``update_proj_gap`` steps)
lives on the device across rounds rather than restarting with every round's 8 or so steps. Full weights want their
own step size: ``learning_rate`` (0: the run's) and ``galore_scale`` (GaLore's α on the projected update) are this
strategy's options and travel in the assignment. The default 0.05 (× scale 0.25) comes from
``examples/trial-full.yaml``: at the LoRA strategies' 0.002 full weights barely move in five rounds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.strategies.base import FULL_SUFFIX, ClientInfo, ClientRecipe, ClientUpdate, GlobalParts, State, Strategy, StrategyError, lora_modules, trained_modules, weighted_sum
from fedge.wire import MAX_GALORE_SCALE


class FullWeights(Strategy):
    name = "full"
    recipe = ClientRecipe(adapter="full", trains=("W",), sends=("W",), optimizer="galore", keeps_optimizer=True)

    def __init__(self, seed: int = 0, learning_rate: float = 0.05, galore_scale: float = 0.25):
        super().__init__(seed)
        if not isinstance(learning_rate, (int, float)) or not 0 <= learning_rate <= 1:
            raise StrategyError(f"learning_rate: the devices' step size for full weights, in (0, 1] (0: the run's), not {learning_rate!r}")
        if not isinstance(galore_scale, (int, float)) or not 0 < galore_scale <= MAX_GALORE_SCALE:
            raise StrategyError(f"galore_scale: GaLore's scale on the projected update, in (0, {MAX_GALORE_SCALE:g}], not {galore_scale!r}")
        self.learning_rate, self.galore_scale = float(learning_rate), float(galore_scale)

    def device_learning_rate(self, run_rate: float) -> float:
        return self.learning_rate or run_rate

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
            merged[module + FULL_SUFFIX] = weighted_sum([(update.tensors[module + FULL_SUFFIX], weight) for update, weight in weighted])
        return merged

    def client_view(self, state: State, client: ClientInfo) -> State:
        return {module + FULL_SUFFIX: state[module + FULL_SUFFIX] for module in self._client_modules(state, client.spec)}

    def global_parts(self, state: State) -> GlobalParts:
        return GlobalParts(lora=None, weights={key[: -len(FULL_SUFFIX)]: value for key, value in state.items() if key.endswith(FULL_SUFFIX)})
