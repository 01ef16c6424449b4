"""Full-weight training: clients fine-tune the target weights themselves with GaLore's low-rank gradient
projection (optimizer state stays small) and the server averages the weights, W = Σ p_i W_i per module over the
clients that trained it (2410.23111's direct weight averaging).

Devices send the round's change, not the weights: GaLore steps a weight only inside its projector's span, so one
round changes it by rank r (2r where a projector refresh falls inside the round; ``update_proj_gap`` is at least
the round's steps, so never more), and d×2r, 2r×k factors carry it exactly (``fedge.round_change``).
The server's average of the changes, Σ p_i L_i R_i, is recorded as the round's base change, as FedEx-LoRA records its
residual: exact (cut to its numerical rank) while the stacked rank Σ 2r_i is at most ``exact_change_rank``, its top
max 2r_i directions by the randomized range finder (``sketch``) beyond. Every device then holds W0 plus the base
changes since its version, which is the averaged weight.

GaLore's state (Adam's projected moments and each matrix's projector, refreshed every ``update_proj_gap`` steps)
lives on the device across rounds. Full weights want their own step size: ``learning_rate`` (0: the run's) and
``galore_scale`` (GaLore's α on the projected update) are this strategy's options and travel in the assignment. The
default 0.05 (× scale 0.25) comes from ``examples/trial-full.yaml``: at the LoRA strategies' 0.002 full weights
barely move in five rounds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.strategies.base import CHANGE_LEFT_SUFFIX, CHANGE_RIGHT_SUFFIX, ClientInfo, ClientRecipe, ClientUpdate, GlobalParts, State, Strategy, StrategyError, base_changes, base_deltas, layer_of, trained_modules
from fedge.strategies.base_change import changes_since, record_change
from fedge.strategies.factored import compress, stack
from fedge.strategies.sketch import StackBuffer, leading_svd, sketch_settings, sketched_modules
from fedge.wire import MAX_GALORE_SCALE


class FullWeights(Strategy):
    name = "full"
    recipe = ClientRecipe(adapter="full", trains=("W",), sends=("ΔW",), optimizer="galore", keeps_optimizer=True, privatisable=False)  # noise would break the right factor's orthonormal rows
    coordinatewise = False  # each device's factors are in its own basis
    carries_state = False  # the state is the history of base changes: nothing for a server optimiser to step
    supports_groups = False  # group-level base changes would split the weights between groups
    forwards_through_sites = False  # its base changes would stay at the site

    def __init__(self, seed: int = 0, learning_rate: float = 0.05, galore_scale: float = 0.25, exact_change_rank: int = 512, power_iterations: int = 0, oversampling: int = 10):
        super().__init__(seed)
        if not isinstance(learning_rate, (int, float)) or not 0 <= learning_rate <= 1:
            raise StrategyError(f"learning_rate: the devices' step size for full weights, in (0, 1] (0: the run's), not {learning_rate!r}")
        if not isinstance(galore_scale, (int, float)) or not 0 < galore_scale <= MAX_GALORE_SCALE:
            raise StrategyError(f"galore_scale: GaLore's scale on the projected update, in (0, {MAX_GALORE_SCALE:g}], not {galore_scale!r}")
        if not isinstance(exact_change_rank, int) or isinstance(exact_change_rank, bool) or exact_change_rank < 1:
            raise StrategyError(f"exact_change_rank: a positive whole number, not {exact_change_rank!r}")
        self.learning_rate, self.galore_scale, self.exact_change_rank = float(learning_rate), float(galore_scale), exact_change_rank
        self.sketch = sketch_settings(seed, power_iterations, oversampling)

    def device_learning_rate(self, run_rate: float) -> float:
        return self.learning_rate or run_rate

    def upload_shapes(self, state: State, spec) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for module in self._client_modules(state, spec):
            (rows, cols), width = self._module_shape(state, module), change_rank(spec.layer_ranks[layer_of(module)])
            shapes[module + CHANGE_LEFT_SUFFIX], shapes[module + CHANGE_RIGHT_SUFFIX] = (rows, width), (width, cols)
        return shapes

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        buffer = StackBuffer()
        warm_starts = latest_change_rows(state)
        for module, weighted in trained_modules(state, updates, CHANGE_LEFT_SUFFIX):
            terms = [(weight, update.tensors[module + CHANGE_LEFT_SUFFIX], update.tensors[module + CHANGE_RIGHT_SUFFIX]) for update, weight in weighted]
            width = max(left.shape[1] for _, left, _ in terms)
            if not self.cuts(sum(left.shape[1] for _, left, _ in terms), width):
                change = compress(stack(terms))
            else:
                change = leading_svd(terms, width, self.sketch, buffer, likely_rows=warm_starts.get(module)).truncated(width)
            record_change(merged, module, round_number, change)
        return merged

    def cuts(self, stacked_rank: int, width: int) -> bool:
        """Whether a module's averaged change (stacked rank Σ 2r_i) is cut to its top ``width`` directions."""
        return stacked_rank > self.exact_change_rank

    def notes(self, state: State, updates: Sequence[ClientUpdate]) -> dict[str, str]:
        cut, modules, largest = sketched_modules(state, updates, self.cuts, CHANGE_RIGHT_SUFFIX)
        return {"change": f"not exact on {cut} of {modules} modules: cut to its top directions (stacked rank up to {largest}, over exact_change_rank {self.exact_change_rank})"} if cut else {}

    def client_view(self, state: State, client: ClientInfo) -> State:
        return changes_since(state, client)

    def update_start(self, state: State, client: ClientInfo) -> State:
        return {}  # the upload is the change itself

    def global_parts(self, state: State) -> GlobalParts:
        return GlobalParts(lora=None, base_changes=base_changes(state))


def latest_change_rows(state: State) -> dict[str, np.ndarray]:
    """Module → the row factor of the last base change recorded for it (modules without one are absent): the range
    finder's warm start, as a device's projector, and so the row space of its changes, lasts several rounds. One pass
    over the state, whatever the length of its history."""
    rows = {}
    for changes in base_deltas(state).values():  # in round order: a later change replaces an earlier one
        rows.update({key.removesuffix(".right"): value for key, value in changes.items() if key.endswith(".right")})
    return rows


def change_rank(galore_rank: int) -> int:
    """K, the columns a device's factored round change is sent in: two projector spans."""
    return 2 * galore_rank
