"""LoRA adapters in peft's own vocabulary, and their conversion to and from wire arrays.

Heterogeneity is data: each device gets a rank, an alpha, target modules and the layer indices it adapts
(``layers_to_transform``); peft builds the adapter from exactly that. Adapter tensors move only through
``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` and keep peft's key names on the wire.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")
_LAYER_KEY = re.compile(r"\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def build_lora_model(model, rank: int, alpha: float, target_modules: list[str], layers: list[int], seed: int = 0):
    """Wrap ``model`` with a LoRA adapter on ``target_modules`` of ``layers`` only (peft ``layers_to_transform``)."""
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        layers_to_transform=sorted(layers),
        lora_dropout=0.0,
        bias="none",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def parse_adapter_key(key: str) -> tuple[int, str, str]:
    """``(layer, module path, 'A' or 'B')`` of a peft LoRA key, e.g. ``(29, 'self_attn.q_proj', 'A')``."""
    match = _LAYER_KEY.search(key)
    if match is None:
        raise ValueError(f"not a per-layer LoRA key: {key!r}")
    return int(match.group(1)), match.group(2), match.group(3)


def adapter_arrays(peft_model) -> dict[str, np.ndarray]:
    """The adapter's tensors as float32 numpy arrays keyed by peft's state-dict names."""
    state = get_peft_model_state_dict(peft_model)
    return {key: value.detach().float().cpu().numpy() for key, value in state.items()}


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
