"""The parts of a causal LM's decoder stack that fedge runs layer by layer, found for every supported family.

Llama, Qwen2, Mistral, Gemma and Phi-3 keep them under ``model`` (``embed_tokens``, ``layers``, ``norm``,
``rotary_emb``), GPT-2 under ``transformer`` (``wte`` plus the learned positions ``wpe``, ``h``, ``ln_f``) and
GPT-NeoX under ``gpt_neox`` (``embed_in``, ``layers``, ``final_layer_norm``, ``rotary_emb``). The model's own
``base_model_prefix`` and input/output embedding accessors find them; only the names of the layer list and the
final norm differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

_LAYER_LISTS = ("layers", "h")
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm")


@dataclass
class DecoderParts:
    embed: torch.nn.Module
    layers: torch.nn.ModuleList
    norm: torch.nn.Module
    output: torch.nn.Module  # the output projection (tied to ``embed`` in many models)
    rotary: torch.nn.Module | None  # rotary position embeddings, computed once per forward
    positions: torch.nn.Module | None  # learned absolute positions added to the token embeddings (GPT-2)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The hidden states entering layer 0."""
        hidden = self.embed(input_ids)
        if self.positions is not None:
            hidden = hidden + self.positions(torch.arange(input_ids.shape[1], device=input_ids.device)).to(hidden.dtype)
        return hidden

    def run_layers(self, hidden: torch.Tensor, first: int, last: int, checkpointed: bool = False) -> torch.Tensor:
        """Layers ``first .. last-1`` on right-padded rows; with ``checkpointed`` each layer keeps only its input and
        recomputes its activations during backward."""
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        extra = {}
        if self.rotary is not None:
            extra = {"position_ids": positions, "position_embeddings": self.rotary(hidden, positions)}
        for layer in self.layers[first:last]:
            if checkpointed:
                hidden = checkpoint(_layer_forward, layer, hidden, extra, use_reentrant=False)
            else:
                hidden = _layer_forward(layer, hidden, extra)
        return hidden


def _layer_forward(layer: torch.nn.Module, hidden: torch.Tensor, extra: dict) -> torch.Tensor:
    # No mask: sdpa attention is then causal, and right padding never reaches a real token.
    out = layer(hidden, attention_mask=None, **extra)
    return out[0] if isinstance(out, tuple) else out


def decoder_parts(model) -> DecoderParts:
    """The decoder parts of a causal LM, under any peft wrapping."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = getattr(base, base.base_model_prefix)
    layers = next((getattr(stack, name) for name in _LAYER_LISTS if isinstance(getattr(stack, name, None), torch.nn.ModuleList)), None)
    norm = next((getattr(stack, name) for name in _FINAL_NORMS if hasattr(stack, name)), None)
    if layers is None or norm is None:
        raise ValueError(f"{type(base).__name__}: no decoder layer list ({', '.join(_LAYER_LISTS)}) or final norm ({', '.join(_FINAL_NORMS)}) under {base.base_model_prefix!r}")
    return DecoderParts(
        embed=stack.get_input_embeddings(),
        layers=layers,
        norm=norm,
        output=base.get_output_embeddings(),
        rotary=getattr(stack, "rotary_emb", None),
        positions=getattr(stack, "wpe", None),
    )
