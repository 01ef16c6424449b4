"""FedIT aggregation of LoRA factors across heterogeneous ranks and depths.

Global factors are kept at the fleet's largest rank R with the scaling folded into B (effective alpha = R, so
s = 1): a client of rank r_i and scaling s_i = alpha_i / r_i contributes p_i * pad(A_i) and p_i * s_i * pad(B_i),
zero-padded to R (HetLoRA padding). p_i is renormalised per layer over the clients that trained that layer, so a
layer only a few deep devices adapt is not diluted by devices that never touched it. Client j gets back the first
r_j rows/columns, with s_j divided out of B again (``client_view``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


@dataclass(frozen=True)
class ClientFactors:
    agent_id: str
    num_examples: int
    rank: int
    alpha: float
    tensors: dict[str, np.ndarray]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


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
            rank = update.rank
            a_sum[:rank] += weight * update.tensors[a_key].astype(np.float32)
            b_sum[:, :rank] += weight * update.scaling * update.tensors[b_key].astype(np.float32)
        merged[a_key] = a_sum
        merged[b_key] = b_sum
    return merged


def client_view(global_arrays: dict[str, np.ndarray], keys: list[str], rank: int, alpha: float) -> dict[str, np.ndarray]:
    """The global factors a client of ``rank``/``alpha`` starts from, restricted to its own adapter ``keys``."""
    scaling = alpha / rank
    view = {}
    for key in keys:
        value = global_arrays[key]
        view[key] = value[:rank].copy() if key.endswith(A_SUFFIX) else value[:, :rank] / scaling
    return view


def expected_shapes(global_arrays: dict[str, np.ndarray], keys: list[str], rank: int) -> dict[str, tuple[int, int]]:
    """The shape each of a client's adapter tensors must have."""
    shapes = {}
    for key in keys:
        rows, cols = global_arrays[key].shape
        shapes[key] = (rank, cols) if key.endswith(A_SUFFIX) else (rows, rank)
    return shapes
