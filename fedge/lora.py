"""LoRA adapters in peft's own vocabulary, and their conversion to and from wire arrays.

Heterogeneity is data: each device gets target modules, the layer indices it adapts (``layers_to_transform``), a
rank per layer (``rank_pattern``) and one scaling alpha / r (``alpha_pattern``); peft builds the adapter from exactly
that. Adapter tensors move only through
``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` and keep peft's key names on the wire.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from fedge.wire import LoraSpec

_LAYER_KEY = re.compile(r"\.(?:layers|h)\.(\d+)\.(.+)\.lora_([AB])\.weight$")  # GPT-2 names its layer list h


def uniform_spec(rank: int, scaling: float, target_modules, layers) -> LoraSpec:
    """A ``LoraSpec`` with the same rank on every layer."""
    layers = tuple(sorted(layers))
    return LoraSpec(tuple(target_modules), layers, (rank,) * len(layers), scaling)


def build_lora_model(model, spec: LoraSpec, seed: int = 0):
    """Wrap ``model`` with a LoRA adapter on ``spec.target_modules`` of ``spec.layers`` only, each layer at its own
    rank; every layer gets lora_alpha = scaling * rank, so s = alpha / r is the same everywhere."""
    if len(spec.ranks) != len(spec.layers) or not spec.layers:
        raise ValueError(f"LoraSpec needs one rank per layer: {len(spec.layers)} layers, {len(spec.ranks)} ranks")
    if min(spec.ranks) < 1 or not spec.scaling > 0:
        raise ValueError(f"ranks must be >= 1 and scaling > 0, got ranks {spec.ranks} and scaling {spec.scaling}")
    top = max(spec.ranks)
    config = LoraConfig(
        r=top,
        lora_alpha=spec.scaling * top,
        rank_pattern={_layer_pattern(layer): rank for layer, rank in spec.layer_ranks.items() if rank != top},
        alpha_pattern={_layer_pattern(layer): spec.scaling * rank for layer, rank in spec.layer_ranks.items() if rank != top},
        target_modules=list(spec.target_modules),
        layers_to_transform=sorted(spec.layers),
        lora_dropout=0.0,
        bias="none",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def _layer_pattern(layer: int) -> str:
    """A peft pattern key for every module of one layer (peft matches it as ``(.*\\.)?(pattern)$``)."""
    return rf"(?:layers|h)\.{layer}\..*"


def parse_adapter_key(key: str) -> tuple[int, str, str]:
    """``(layer, module path, 'A' or 'B')`` of a peft LoRA key, e.g. ``(29, 'self_attn.q_proj', 'A')``."""
    match = _LAYER_KEY.search(key)
    if match is None:
        raise ValueError(f"not a per-layer LoRA key: {key!r}")
    return int(match.group(1)), match.group(2), match.group(3)


def adapter_arrays(peft_model) -> dict[str, np.ndarray]:
    """The adapter's tensors as float32 numpy arrays keyed by peft's state-dict names (copies: an fp32 CPU tensor's
    ``numpy()`` would share the live parameter's memory and change with the next step or load)."""
    state = get_peft_model_state_dict(peft_model)
    return {key: value.detach().float().cpu().numpy().copy() for key, value in state.items()}


def load_adapter_arrays(peft_model, arrays: dict[str, np.ndarray]) -> None:
    """Set adapter weights from wire arrays; every adapter key must be present with its exact shape."""
    current = get_peft_model_state_dict(peft_model)
    missing = sorted(set(current) - set(arrays))
    extra = sorted(set(arrays) - set(current))
    if missing or extra:
        raise ValueError(f"adapter keys differ: missing {missing[:3]}, unexpected {extra[:3]}")
    state = {}
    for key, value in current.items():
        if tuple(arrays[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: shape {arrays[key].shape} != {tuple(value.shape)}")
        state[key] = torch.from_numpy(np.asarray(arrays[key], dtype=np.float32)).to(value.dtype)
    result = set_peft_model_state_dict(peft_model, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"peft did not take keys {result.unexpected_keys[:3]}")
