"""A decoder's dimensions, read with transformers ``AutoConfig`` (no weights needed).

Planning for a model needs only its config: a checkpoint directory, a ``config.json``, a fedge backbone name, or
one of the architectures in ``models.yaml`` (so an operator can ask "which devices can train a 7B?" on a machine
that has never downloaded one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

MODELS_FILE = Path(__file__).with_name("models.yaml")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")


class UnsupportedModel(ValueError):
    """The config is not a Llama-style decoder (attention q/k/v/o + gated MLP) the cost model knows."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool

    def module_dims(self, module: str) -> tuple[int, int]:
        """``(out_features, in_features)`` of a per-layer linear module, as ``nn.Linear.weight`` lays them out."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        dims = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
        if module not in dims:
            raise UnsupportedModel(f"unknown target module {module!r}; expected one of {', '.join(LINEAR_MODULES)}")
        return dims[module]

    @property
    def linear_params_per_layer(self) -> int:
        return sum(out * inp for out, inp in map(self.module_dims, LINEAR_MODULES))

    @property
    def other_params(self) -> int:
        """Embeddings, the output head when untied, and the RMSNorm weights: never quantized by bitsandbytes."""
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return embeddings + (2 * self.num_layers + 1) * self.hidden_size

    @property
    def total_params(self) -> int:
        return self.num_layers * self.linear_params_per_layer + self.other_params


@cache
def _bundled() -> dict[str, dict]:
    return yaml.safe_load(MODELS_FILE.read_text())


def bundled_models() -> list[str]:
    return sorted(_bundled())


def shape_from_config(config, name: str) -> ModelShape:
    """The ``ModelShape`` of a transformers ``PretrainedConfig``."""
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in required if getattr(config, key, None) is None]
    if missing:
        raise UnsupportedModel(f"{name}: {type(config).__name__} lacks {', '.join(missing)}; fedge plans Llama-style decoders")
    heads = config.num_attention_heads
    return ModelShape(
        name=name,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab_size=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def load_model_shape(path_or_name: str) -> ModelShape:
    """Read a model's shape from a directory, a ``config.json``, a bundled architecture or a fedge backbone name."""
    from transformers import AutoConfig

    path = Path(path_or_name)
    if path.is_file():
        return shape_from_config(AutoConfig.from_pretrained(path.parent), path.parent.name)
    if path.is_dir():
        return shape_from_config(AutoConfig.from_pretrained(path), path.name)
    if path_or_name in _bundled():
        fields = dict(_bundled()[path_or_name])
        return shape_from_config(AutoConfig.for_model(fields.pop("model_type"), **fields), path_or_name)
    raise UnsupportedModel(f"no model {path_or_name!r}: give a checkpoint directory, a config.json, or one of {', '.join(bundled_models())}")
