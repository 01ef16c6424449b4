"""CE-LoRA: a tri-factor adapter ΔW = s·B·C·A with a small dense core C (r×r). Clients train A, B and C (with B = 0
at the start, C alone would get no gradient) and send only C: r² numbers per module each way. A starts from the
run's shared seed on every client, so cores live in comparable coordinates.

The server personalises: C_i = Σ_j w_ij C_j. The paper's weight formula is not public; fedge uses
    sim_ij = β·param_ij + (1 − β)·data_ij,   w_ij ∝ p_j·exp(sim_ij / T)   (over the clients j that sent the module)
where param_ij is the cosine between the learned parts of the cores (C − I, padded to a common size, averaged over
the modules both sent) and data_ij = 1 − ½‖h_i − h_j‖₁ the overlap of the clients' normalised label histograms
(shared in their hello; never raw data). Defaults β = 0.5, T = 0.1. That softmax is the exact minimiser of
    w_i = argmin over the simplex of Σ_j w_ij·(1 − sim_ij) + T·KL(w_i ‖ p),
the weights each client would learn by trading dissimilarity against the data-size prior p, so no iterative solver
is needed. Where a device sent no label histogram the data term drops out (β = 1) and the round's record says so
(``notes``). Mixed ranks: cores are zero-padded and each client takes its top-left r_i×r_i block. There is no
global model: accuracy is measured on the clients.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from fedge.strategies.base import A_SUFFIX, B_SUFFIX, C_SUFFIX, ClientInfo, ClientRecipe, ClientUpdate, State, Strategy, StrategyError, layer_of, lora_modules, shared_lora_a


def personal_key(module: str, agent_id: str) -> str:
    return f"{module}{C_SUFFIX}/{agent_id}"


class CELoRA(Strategy):
    name = "ce-lora"
    recipe = ClientRecipe(adapter="tri", trains=("A", "B", "C"), sends=("C",), shared_a=True)
    has_global_model = False
    supports_groups = False  # personalised cores have no group state
    carries_state = False  # each device's core is mixed for it: no one global state to step
    needs_label_histograms = True  # the cores are mixed by label-distribution similarity

    def __init__(self, seed: int = 0, beta: float = 0.5, temperature: float = 0.1):
        super().__init__(seed)
        if not 0 <= beta <= 1 or temperature <= 0:
            raise StrategyError("ce-lora needs 0 <= beta <= 1 and temperature > 0")
        self.beta, self.temperature = beta, temperature

    def initial_state(self, lora: State, base_weights: State) -> State:
        state = super().initial_state(lora, base_weights)
        for module in lora_modules(state):
            rows, cols = state[module + A_SUFFIX].shape
            state[module + A_SUFFIX] = shared_lora_a(module, rows, cols, self.seed)
            state[module + B_SUFFIX] = np.zeros_like(state[module + B_SUFFIX])
        return state

    def upload_shapes(self, state: State, spec) -> dict[str, tuple[int, ...]]:
        return {module + C_SUFFIX: (spec.layer_ranks[layer_of(module)],) * 2 for module in self._client_modules(state, spec)}

    def similarity(self, updates: Sequence[ClientUpdate]) -> np.ndarray:
        """sim_ij over the clients of this round (see the module docstring)."""
        count = len(updates)
        param = np.zeros((count, count))
        for i, mine in enumerate(updates):
            for j, theirs in enumerate(updates):
                shared = sorted(set(mine.tensors) & set(theirs.tensors))
                param[i, j] = np.mean([_cosine(_learned(mine.tensors[key]), _learned(theirs.tensors[key])) for key in shared]) if shared else 0.0
        histograms = [np.asarray(update.label_histogram, dtype=np.float64) for update in updates]
        data = np.zeros((count, count))
        if all(h.size and h.sum() > 0 for h in histograms) and len({h.size for h in histograms}) == 1:
            shares = [h / h.sum() for h in histograms]
            data = np.array([[1 - 0.5 * np.abs(a - b).sum() for b in shares] for a in shares])
            return self.beta * param + (1 - self.beta) * data
        return param

    def notes(self, state: State, updates: Sequence[ClientUpdate]) -> dict[str, str]:
        """The data term drops out when any device sent no label histogram (an instruct task, or a device that
        declined) or their label sets differ: said in the record, not silently."""
        histograms = [np.asarray(update.label_histogram, dtype=np.float64) for update in updates]
        if all(h.size and h.sum() > 0 for h in histograms) and len({h.size for h in histograms}) <= 1:
            return {}
        without = [update.agent_id for update, h in zip(updates, histograms) if not (h.size and h.sum() > 0)]
        why = f"no label histogram from {', '.join(without)}" if without else "the devices' label histograms differ in length"
        return {"data_term": f"missing: {why}; the cores were mixed by parameter similarity alone (β = 1 instead of {self.beta:g})"}

    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        merged = dict(state)
        sims = self.similarity(updates)
        sizes = np.array([update.num_examples for update in updates], dtype=np.float64)
        for module in lora_modules(state):
            key = module + C_SUFFIX
            holders = [index for index, update in enumerate(updates) if key in update.tensors]
            if not holders:
                continue
            size = max(updates[index].tensors[key].shape[0] for index in holders)
            cores = np.stack([_pad_square(updates[index].tensors[key], size) for index in holders])
            for i in holders:
                logits = sims[i, holders] / self.temperature
                weights = sizes[holders] * np.exp(logits - logits.max())
                weights /= weights.sum()
                rank = updates[i].tensors[key].shape[0]
                merged[personal_key(module, updates[i].agent_id)] = np.tensordot(weights, cores, axes=1)[:rank, :rank].astype(np.float32)
        return merged

    def view_key(self, client: ClientInfo) -> Hashable:
        """Every client's cores are its own."""
        return client.agent_id, client.spec

    def client_view(self, state: State, client: ClientInfo) -> State:
        view = {}
        for module in self._client_modules(state, client.spec):
            core = state.get(personal_key(module, client.agent_id))
            if core is not None and core.shape[0] == client.spec.layer_ranks[layer_of(module)]:
                view[module + C_SUFFIX] = core.copy()
        return view

    def update_start(self, state: State, client: ClientInfo) -> State:
        """Cores start from the personal core sent, or the identity (the device's initial core)."""
        view = self.client_view(state, client)
        for module in self._client_modules(state, client.spec):
            rank = client.spec.layer_ranks[layer_of(module)]
            view.setdefault(module + C_SUFFIX, np.eye(rank, dtype=np.float32))
        return view

    def global_parts(self, state: State) -> None:
        return None


def _learned(core: np.ndarray) -> np.ndarray:
    return core.astype(np.float64) - np.eye(core.shape[0])


def _pad_square(core: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, size))
    out[: core.shape[0], : core.shape[1]] = core
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    size = max(a.shape[0], b.shape[0])
    a, b = _pad_square(a, size).ravel(), _pad_square(b, size).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0
