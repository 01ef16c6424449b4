"""Decoder families fedge can fine-tune: their per-layer linear modules, what LoRA targets by default, and the
shape facts the cost model needs. No torch here: the planner reads this from a config alone.

Each module is named as peft matches it (a suffix of the module's path) and given a role:

* ``q``/``kv``/``qkv``: attention input projections (query; key or value; fused query-key-value), input h;
* ``o``: the attention output projection, input q_dim;
* ``up``/``gate_up``: MLP input projections (one of gate/up; both fused), input h;
* ``down``: the MLP output projection, input i.

A family is a layout, not a brand: Qwen2, Mistral and Gemma lay their layers out as Llama does.
"""

from __future__ import annotations

from dataclasses import dataclass

_LLAMA_MODULES = {
    "q_proj": "q", "k_proj": "kv", "v_proj": "kv", "o_proj": "o", "gate_proj": "up", "up_proj": "up", "down_proj": "down",
}


@dataclass(frozen=True)
class Family:
    name: str
    modules: dict[str, str]  # module name (as peft matches it) -> role
    default_targets: tuple[str, ...]  # LoRA on the attention input projections, as the LoRA paper does
    gated_mlp: bool  # SwiGLU/GeGLU: gate and up (3 matrices) rather than fc (2)
    layer_norm: bool  # LayerNorm (weight and bias) rather than RMSNorm (weight)
    biased_roles: frozenset[str] = frozenset()  # roles whose linears carry a bias
    learned_positions: bool = False  # GPT-2's absolute position embeddings (wpe)

    @property
    def linear_modules(self) -> tuple[str, ...]:
        return tuple(self.modules)


FAMILIES = {
    "llama": Family("llama", _LLAMA_MODULES, ("q_proj", "v_proj"), gated_mlp=True, layer_norm=False),
    "mistral": Family("mistral", _LLAMA_MODULES, ("q_proj", "v_proj"), gated_mlp=True, layer_norm=False),
    "gemma": Family("gemma", _LLAMA_MODULES, ("q_proj", "v_proj"), gated_mlp=True, layer_norm=False),
    "qwen2": Family("qwen2", _LLAMA_MODULES, ("q_proj", "v_proj"), gated_mlp=True, layer_norm=False, biased_roles=frozenset({"q", "kv"})),
    "phi3": Family(
        "phi3", {"qkv_proj": "qkv", "o_proj": "o", "gate_up_proj": "gate_up", "down_proj": "down"}, ("qkv_proj",),
        gated_mlp=True, layer_norm=False,
    ),
    "gpt2": Family(
        "gpt2", {"c_attn": "qkv", "attn.c_proj": "o", "c_fc": "up", "mlp.c_proj": "down"}, ("c_attn",),
        gated_mlp=False, layer_norm=True, biased_roles=frozenset({"qkv", "o", "up", "down"}), learned_positions=True,
    ),
    "gpt_neox": Family(
        "gpt_neox", {"query_key_value": "qkv", "attention.dense": "o", "dense_h_to_4h": "up", "dense_4h_to_h": "down"},
        ("query_key_value",), gated_mlp=False, layer_norm=True, biased_roles=frozenset({"qkv", "o", "up", "down"}),
    ),
}
ATTENTION_INPUT_ROLES = frozenset({"q", "kv", "qkv"})
MLP_INPUT_ROLES = frozenset({"up", "gate_up"})


class UnsupportedModel(ValueError):
    """A model whose layer layout fedge does not know."""


def family_of(model_type: str) -> Family:
    """The family of a transformers ``model_type``; ``UnsupportedModel`` names the ones fedge knows."""
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedModel(f"model type {model_type!r} is not supported; fedge knows {', '.join(FAMILIES)}")
    return family
