"""A decoder's dimensions, read with transformers ``AutoConfig`` (no weights needed).

Planning for a model needs only its config: a checkpoint directory, a ``config.json``, a fedge backbone name, or
one of the architectures in ``models.yaml`` (so an operator can ask "which devices can train a 7B?" on a machine
that has never downloaded one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from types import SimpleNamespace

import yaml

from fedge.profiles.architecture import FAMILIES, Family, UnsupportedModel, family_of

MODELS_FILE = Path(__file__).with_name("models.yaml")


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str  # a key of ``fedge.profiles.architecture.FAMILIES``
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    position_embeddings: int = 0  # rows of a learned absolute position table (GPT-2), else 0

    @property
    def architecture(self) -> Family:
        return FAMILIES[self.family]

    @property
    def linear_modules(self) -> tuple[str, ...]:
        return self.architecture.linear_modules

    @property
    def default_targets(self) -> tuple[str, ...]:
        return self.architecture.default_targets

    def module_dims(self, module: str) -> tuple[int, int]:
        """``(out_features, in_features)`` of a per-layer linear module, as ``nn.Linear.weight`` lays them out."""
        role = self.architecture.modules.get(module)
        if role is None:
            raise UnsupportedModel(f"{self.family} has no per-layer module {module!r}; expected one of {', '.join(self.linear_modules)}")
        return self._dims_by_role[role]

    @cached_property
    def _dims_by_role(self) -> dict[str, tuple[int, int]]:
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {"q": (q, h), "kv": (kv, h), "qkv": (q + 2 * kv, h), "o": (h, q), "up": (i, h), "gate_up": (2 * i, h), "down": (h, i)}

    @cached_property
    def linear_params_per_layer(self) -> int:
        return sum(out * inp for out, inp in map(self.module_dims, self.linear_modules))

    @property
    def other_params(self) -> int:
        """Embeddings, the output head when untied, norms and biases: never quantized by bitsandbytes."""
        family = self.architecture
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2) + self.position_embeddings * self.hidden_size
        norms = (2 * self.num_layers + 1) * self.hidden_size * (2 if family.layer_norm else 1)
        biases = self.num_layers * sum(self.module_dims(module)[0] for module, role in family.modules.items() if role in family.biased_roles)
        return embeddings + norms + biases

    @property
    def total_params(self) -> int:
        return self.num_layers * self.linear_params_per_layer + self.other_params


@cache
def _bundled() -> dict[str, dict]:
    return yaml.safe_load(MODELS_FILE.read_text())


def bundled_models() -> list[str]:
    return sorted(_bundled())


def bundled_config_fields(name: str) -> dict:
    """A bundled architecture's ``models.yaml`` fields (``model_type`` and the transformers config's own keys)."""
    return dict(_bundled()[name])


def shape_from_config(config, name: str) -> ModelShape:
    """The ``ModelShape`` of a transformers ``PretrainedConfig`` (GPT-2's ``n_embd``/``n_layer``/``n_head`` reach it
    through the config's own attribute map)."""
    family = family_of(getattr(config, "model_type", None) or type(config).__name__)
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in required if getattr(config, key, None) is None]
    if missing:
        raise UnsupportedModel(f"{name}: {type(config).__name__} lacks {', '.join(missing)}")
    hidden, heads = config.hidden_size, config.num_attention_heads
    return ModelShape(
        name=name,
        family=family.name,
        hidden_size=hidden,
        intermediate_size=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads,
        vocab_size=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        position_embeddings=(getattr(config, "n_positions", None) or 0) if family.learned_positions else 0,
    )


_GPT2_NAMES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads"}


def _bundled_shape(name: str) -> ModelShape:
    """A bundled architecture's shape straight from its ``models.yaml`` fields, without importing transformers (which
    takes seconds): the fields are exactly what ``shape_from_config`` reads, GPT-2's under their own names (a test
    checks every entry against ``AutoConfig``)."""
    fields = {_GPT2_NAMES.get(key, key): value for key, value in _bundled()[name].items()}
    return shape_from_config(SimpleNamespace(**fields), name)


def load_model_shape(path_or_name: str) -> ModelShape:
    """Read a model's shape from a directory, a ``config.json``, a bundled architecture or a fedge backbone name."""
    if path_or_name in _bundled():
        return _bundled_shape(path_or_name)
    from transformers import AutoConfig

    path = Path(path_or_name)
    if path.is_file():
        return shape_from_config(AutoConfig.from_pretrained(path.parent), path.parent.name)
    if path.is_dir():
        return shape_from_config(AutoConfig.from_pretrained(path), path.name)
    raise UnsupportedModel(f"no model {path_or_name!r}: give a checkpoint directory, a config.json, or one of {', '.join(bundled_models())}")
