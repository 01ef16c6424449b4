"""FedIT aggregation of LoRA factors across heterogeneous ranks and depths.

Global factors are kept at the fleet's largest rank R with the scaling folded into B (effective alpha = R, so
s = 1): a client with rank r_il on layer l and scaling s_i = alpha / r (one value for all its layers) contributes
p_i * pad(A_il) and p_i * s_i * pad(B_il), zero-padded to R (HetLoRA padding); a client's rank on a layer is read
from its A factor's rows, so LEGEND-style rank profiles need nothing special. p_i is renormalised per layer over
the clients that trained that layer, so a layer only a few deep devices adapt is not diluted by devices that never
touched it. Client j gets back the first r_jl rows/columns, with s_j divided out of B again (``client_view``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.lora import parse_adapter_key

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


@dataclass(frozen=True)
class ClientFactors:
    agent_id: str
    num_examples: int
    scaling: float
    tensors: dict[str, np.ndarray]


def fedit(global_arrays: dict[str, np.ndarray], updates: list[ClientFactors]) -> dict[str, np.ndarray]:
    """New global factors; a layer no update touched keeps its previous value."""
    merged = dict(global_arrays)
    for a_key in (key for key in global_arrays if key.endswith(A_SUFFIX)):
        b_key = a_key[: -len(A_SUFFIX)] + B_SUFFIX
        contributors = [update for update in updates if a_key in update.tensors]
        if not contributors:
            continue
        total = sum(update.num_examples for update in contributors)
        a_sum = np.zeros_like(global_arrays[a_key], dtype=np.float32)
        b_sum = np.zeros_like(global_arrays[b_key], dtype=np.float32)
        for update in contributors:
            weight = update.num_examples / total
            rank = update.tensors[a_key].shape[0]
            a_sum[:rank] += weight * update.tensors[a_key].astype(np.float32)
            b_sum[:, :rank] += weight * update.scaling * update.tensors[b_key].astype(np.float32)
        merged[a_key] = a_sum
        merged[b_key] = b_sum
    return merged


def _rank_for(key: str, layer_ranks: dict[int, int]) -> int:
    return layer_ranks[parse_adapter_key(key)[0]]


def client_view(global_arrays: dict[str, np.ndarray], layer_ranks: dict[int, int], scaling: float) -> dict[str, np.ndarray]:
    """The global factors a client starts from: its own layers, each cut to the client's rank there, B divided by s."""
    view = {}
    for key in adapter_keys(global_arrays, layer_ranks):
        value, rank = global_arrays[key], _rank_for(key, layer_ranks)
        view[key] = value[:rank].copy() if key.endswith(A_SUFFIX) else value[:, :rank] / scaling
    return view


def expected_shapes(global_arrays: dict[str, np.ndarray], layer_ranks: dict[int, int]) -> dict[str, tuple[int, int]]:
    """The shape each of a client's adapter tensors must have."""
    shapes = {}
    for key in adapter_keys(global_arrays, layer_ranks):
        (rows, cols), rank = global_arrays[key].shape, _rank_for(key, layer_ranks)
        shapes[key] = (rank, cols) if key.endswith(A_SUFFIX) else (rows, rank)
    return shapes


def adapter_keys(global_arrays: dict[str, np.ndarray], layer_ranks: dict[int, int]) -> list[str]:
    """The global adapter's keys on the layers a client adapts."""
    return [key for key in global_arrays if parse_adapter_key(key)[0] in layer_ranks]
