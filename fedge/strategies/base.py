"""The interface every aggregation strategy implements, and the key layout they share.

A strategy says three things: what the client trains and sends (``ClientRecipe``), how the server combines the
updates (``aggregate``), and what each client receives (``client_view``). Server state is a flat dict of float32
arrays (saved with safetensors every round, so a killed coordinator resumes from it) keyed by the adapted module's
peft name ``m`` (e.g. ``base_model.model.model.layers.29.self_attn.q_proj``) plus a suffix:

    m.lora_A.weight (R×k), m.lora_B.weight (d×R)   global LoRA factors, scaling folded into B (so s = 1)
    m.lora_C.weight (r×r)                          CE-LoRA's core (on the wire; per client on the server)
    m.full_change.left / .right (d×K, K×k)         a full-weight device's round change (on the wire only)
    m.base_delta.TTTT.left / .right                a factored change to the frozen weight made in round T

Scaling is explicit: client i trains with s_i = α/r_i, and every server-side combination folds s_i into B first.
Per-layer weights p_i are renormalised over the clients that trained that layer (LEGEND-style depths).
"""

from __future__ import annotations

import re
import warnings
import zlib
from abc import ABC, abstractmethod
from contextlib import contextmanager
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedge.wire import LoraSpec

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
C_SUFFIX = ".lora_C.weight"
CHANGE_LEFT_SUFFIX = ".full_change.left"  # a full-weight device's round change, factored: d×K (U·Σ)
CHANGE_RIGHT_SUFFIX = ".full_change.right"  # and K×k (Vᵀ), K = twice the layer's GaLore rank
_DELTA = re.compile(r"^(.*)\.base_delta\.(\d{4})\.(left|right)$")
_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")  # GPT-2 names its layer list h

State = dict[str, np.ndarray]


class StrategyError(ValueError):
    """A strategy cannot run with this configuration or these updates."""


@dataclass(frozen=True)
class ClientRecipe:
    """What a client does under a strategy.

    ``adapter``: "lora" (peft LoRA), "tri" (CE-LoRA's B·C·A) or "full" (the target weights themselves, trained with
    GaLore). ``trains``/``sends`` name factors among A, B, C, W (the weights), ΔW (their round change, factored). ``shared_a``: A starts from the run's shared seed
    (identical on every client and the server). ``reinit_each_round``: LoRA starts afresh (A random, B = 0) each round
    after the received base changes are merged (FLoRA).
    ``keeps_optimizer``: the optimizer is built once per run and its state lives on across rounds (full).
    ``privatisable``: false where clipping and noise would break the upload (full's orthonormal right factor); the
    coordinator refuses privacy for such a strategy and the agent refuses such an assignment.
    """

    adapter: str = "lora"
    trains: tuple[str, ...] = ("A", "B")
    sends: tuple[str, ...] = ("A", "B")
    shared_a: bool = False
    reinit_each_round: bool = False
    optimizer: str | None = None
    keeps_optimizer: bool = False  # the device's optimizer state (moments, GaLore's projectors) carries over from round to round
    privatisable: bool = True  # the upload stays meaningful clipped and noised as a vector (fedge.privacy)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's upload for one round, with what the server knows about how it was trained."""

    agent_id: str
    num_examples: int
    spec: LoraSpec
    tensors: dict[str, np.ndarray]
    label_histogram: tuple[int, ...] = ()
    trust: float = 1.0  # the robust rules' weight factor (fedge.coordinator.robust), already in num_examples


@dataclass(frozen=True)
class ClientInfo:
    """The receiver of a view: its adapter and the last round whose base changes it has merged."""

    agent_id: str
    spec: LoraSpec
    base_version: int = 0


@dataclass(frozen=True)
class GlobalParts:
    """What the server evaluates: LoRA factors at scaling 1 (or None) and frozen-weight changes (``base_delta``
    entries)."""

    lora: State | None
    base_changes: State = field(default_factory=dict)


def layer_index(module: str) -> int | None:
    """The decoder layer a module path sits in, or None outside the layer list."""
    match = _LAYER.search(module)
    return None if match is None else int(match.group(1))


def layer_of(module: str) -> int:
    layer = layer_index(module)
    if layer is None:
        raise ValueError(f"no layer index in {module!r}")
    return layer


def lora_modules(state: State) -> list[str]:
    return [key[: -len(A_SUFFIX)] for key in state if key.endswith(A_SUFFIX)]


def delta_key(module: str, round_number: int, part: str) -> str:
    return f"{module}.base_delta.{round_number:04d}.{part}"


def delta_round(key: str) -> int:
    """The round of a ``base_delta`` key."""
    match = _DELTA.match(key)
    if match is None:
        raise ValueError(f"not a base change key: {key!r}")
    return int(match.group(2))


def base_changes(state: State) -> State:
    """The ``base_delta`` entries of a state, under their own keys."""
    return {key: value for key, value in state.items() if _DELTA.match(key)}


def base_deltas(state: State) -> dict[int, State]:
    """Round -> {module.left/.right: array} of every base change held in ``state`` (keys without the round)."""
    out: dict[int, State] = {}
    for key, value in state.items():
        match = _DELTA.match(key)
        if match:
            out.setdefault(int(match.group(2)), {})[f"{match.group(1)}.{match.group(3)}"] = value
    return dict(sorted(out.items()))


def shared_lora_a(module: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """A deterministic A (rows×cols) for ``module``: peft's Kaiming-uniform range, the same on every machine."""
    generator = np.random.default_rng([seed, zlib.crc32(module.encode())])
    bound = 1.0 / np.sqrt(cols)
    return generator.uniform(-bound, bound, size=(rows, cols)).astype(np.float32)


def layer_weights(updates: Sequence[ClientUpdate], module: str, suffix: str) -> list[tuple[ClientUpdate, float]]:
    """(update, p_i) over the clients that sent ``module + suffix``; p_i renormalised over them."""
    holders = [update for update in updates if module + suffix in update.tensors]
    total = sum(update.num_examples for update in holders)
    return [(update, update.num_examples / total) for update in holders]


def trained_modules(state: State, updates: Sequence[ClientUpdate], suffix: str = A_SUFFIX) -> Iterator[tuple[str, list[tuple[ClientUpdate, float]]]]:
    """(module, [(update, p_i)]) for every module of ``state`` that some update sent ``suffix`` for; modules nobody
    trained are skipped, so they keep their value."""
    for module in lora_modules(state):
        weighted = layer_weights(updates, module, suffix)
        if weighted:
            yield module, weighted


def pad_rows(matrix: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, matrix.shape[1]), dtype=np.float64)
    out[: matrix.shape[0]] = matrix
    return out


def pad_cols(matrix: np.ndarray, cols: int) -> np.ndarray:
    out = np.zeros((matrix.shape[0], cols), dtype=np.float64)
    out[:, : matrix.shape[1]] = matrix
    return out


class Strategy(ABC):
    """Base class: defaults serve the strategies whose global state is LoRA factors cut per client."""

    name: ClassVar[str]
    recipe: ClassVar[ClientRecipe] = ClientRecipe()
    mixed_ranks: ClassVar[bool] = True  # False: every client must train a layer at the same rank
    has_global_model: ClassVar[bool] = True  # False: personalised, only the devices' own models can be evaluated
    supports_groups: ClassVar[bool] = True  # HierFedLoRA: group states can be combined like clients of the global rank
    needs_label_histograms: ClassVar[bool] = False  # True: devices are asked for their label counts (privacy: only then)
    coordinatewise: ClassVar[bool] = True  # the sent tensors' coordinates mean the same on every client (robust combiners apply)
    carries_state: ClassVar[bool] = True  # its global tensors carry over from round to round (a server optimiser can step them)
    forwards_through_sites: ClassVar[bool] = True  # a site's aggregate is one upload of this strategy (not so where base changes hold part of the model)

    galore_scale: float = 0.25  # what devices multiply GaLore's projected update by (full-weight training only)

    def __init__(self, seed: int = 0):
        self.seed = seed

    def device_learning_rate(self, run_rate: float) -> float:
        """The learning rate devices train with under this strategy (the run's, unless the strategy has its own)."""
        return run_rate

    def check_ranks(self, specs: Sequence[LoraSpec]) -> None:
        """Raise ``StrategyError`` if these adapters cannot be combined (e.g. mixed ranks for FedIT)."""
        if self.mixed_ranks:
            return
        seen: dict[int, int] = {}
        for spec in specs:
            for layer, rank in spec.layer_ranks.items():
                if seen.setdefault(layer, rank) != rank:
                    raise StrategyError(f"{self.name} averages factors of one rank, but layer {layer} has ranks {seen[layer]} and {rank}; use hetlora, flexlora or flora for mixed ranks")

    def initial_state(self, lora: State, base_weights: State) -> State:
        """The round-0 state from peft's initial factors (rank R on every adaptable layer) and the frozen weights."""
        return {key: value.astype(np.float32) for key, value in lora.items()}

    def upload_shapes(self, state: State, spec: LoraSpec) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor a client with ``spec`` must send."""
        shapes = {}
        for module in self._client_modules(state, spec):
            rank, (rows, cols) = spec.layer_ranks[layer_of(module)], self._module_shape(state, module)
            if "A" in self.recipe.sends:
                shapes[module + A_SUFFIX] = (rank, cols)
            if "B" in self.recipe.sends:
                shapes[module + B_SUFFIX] = (rows, rank)
        return shapes

    @abstractmethod
    def aggregate(self, state: State, updates: Sequence[ClientUpdate], round_number: int) -> State:
        """The next state; a module no update touched keeps its value."""

    def notes(self, state: State, updates: Sequence[ClientUpdate]) -> dict[str, str]:
        """What ``aggregate`` approximates or leaves out on these updates, for the round's record (none: exact as
        documented)."""
        return {}

    def client_view(self, state: State, client: ClientInfo) -> State:
        """The factors a client starts from: its own layers, cut to its ranks, B divided by its scaling."""
        view = {}
        for module in self._client_modules(state, client.spec):
            rank = client.spec.layer_ranks[layer_of(module)]
            if "A" in self.recipe.trains and not self.recipe.shared_a:
                view[module + A_SUFFIX] = state[module + A_SUFFIX][:rank].copy()
            view[module + B_SUFFIX] = state[module + B_SUFFIX][:, :rank] / client.spec.scaling
        return view

    def update_start(self, state: State, client: ClientInfo) -> State:
        """The tensors a client's upload started from, by key (keys absent start at zero): its view."""
        return self.client_view(state, client)

    def view_key(self, client: ClientInfo) -> Hashable:
        """Clients with equal keys get the same view of a state (so it is encoded and signed once for them all):
        here, the same adapter and the same merged base changes."""
        return client.spec, client.base_version

    def global_parts(self, state: State) -> GlobalParts | None:
        """What the server evaluates; None where no global model exists (personalised strategies)."""
        return GlobalParts(lora={key: value for key, value in state.items() if key.endswith((A_SUFFIX, B_SUFFIX))})

    # --- helpers ---
    @staticmethod
    def _client_modules(state: State, spec: LoraSpec) -> list[str]:
        layers = spec.layer_ranks
        return [module for module in lora_modules(state) if layer_of(module) in layers]

    @staticmethod
    def _module_shape(state: State, module: str) -> tuple[int, int]:
        return state[module + B_SUFFIX].shape[0], state[module + A_SUFFIX].shape[1]


def folded(update: ClientUpdate, module: str) -> tuple[np.ndarray, np.ndarray]:
    """(s_i·B_i, A_i) of one client on one module, in float64."""
    b = update.tensors[module + B_SUFFIX].astype(np.float64) * update.spec.scaling
    return b, update.tensors[module + A_SUFFIX].astype(np.float64)


@contextmanager
def reading_wire_arrays() -> Iterator[None]:
    """Around torch.from_numpy on arrays decoded from the wire: they are read-only and torch only reads them, so its
    warning that writes through the tensor would fail says nothing here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def average_factors(state: State, module: str, weighted: Sequence[tuple[ClientUpdate, float]], dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(B̄, Ā) = (Σ w_i pad(s_i B_i), Σ w_i pad(A_i)) at the state's rank R (HetLoRA zero-padding), summed in
    ``dtype``: float32 halves the memory traffic where nothing downstream needs float64 (the global is stored in
    float32; a hundred fp16 factors lose under 1e-6 relative). The sums run in torch: its mixed-precision adds of
    the wire's float16 are three times quicker than numpy's casting loops."""
    import torch  # only aggregation needs it: configs and strategies load without torch

    rows, rank = state[module + B_SUFFIX].shape
    cols = state[module + A_SUFFIX].shape[1]
    b_sum, a_sum = np.zeros((rows, rank), dtype), np.zeros((rank, cols), dtype)
    b_total, a_total = torch.from_numpy(b_sum), torch.from_numpy(a_sum)
    with reading_wire_arrays():
        for update, weight in weighted:
            b, a = update.tensors[module + B_SUFFIX], update.tensors[module + A_SUFFIX]
            if a.shape[0] > rank:
                raise StrategyError(f"{update.agent_id} sent rank {a.shape[0]} on {module}; the global adapter holds rank {rank}")
            b_total[:, : b.shape[1]].add_(torch.from_numpy(b), alpha=weight * update.spec.scaling)  # zero-padded to rank R
            a_total[: a.shape[0]].add_(torch.from_numpy(a), alpha=weight)
    return b_sum, a_sum


def product_terms(updates: Sequence[tuple[ClientUpdate, float]], module: str) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(p_i·s_i, B_i, A_i) terms whose Σ p_i s_i B_i A_i is the exact aggregate (the factors as sent, not copied)."""
    return [(weight * update.spec.scaling, update.tensors[module + B_SUFFIX], update.tensors[module + A_SUFFIX]) for update, weight in updates]


def with_factors(state: State, module: str, b: np.ndarray, a: np.ndarray) -> None:
    state[module + B_SUFFIX] = b.astype(np.float32)
    state[module + A_SUFFIX] = a.astype(np.float32)
