"""A bundled architecture as a checkpoint with random weights and a word-level tokenizer over the WordNet task's words:
what a memory and speed measurement needs where no weights are installed (memory and time do not depend on the values;
nothing that claims to learn runs on it)."""

from __future__ import annotations

import re
from pathlib import Path

from fedge.profiles.model_shape import bundled_config_fields, bundled_models


def random_backbone(name: str, directory: Path, dtype: str = "bfloat16") -> Path:
    """``name`` (one of ``bundled_models()``) saved under ``directory`` with random weights in ``dtype``; reused when
    it is already there."""
    if (directory / "model.safetensors").exists():
        return directory
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from fedge.task.wordnet import LABELS, PROMPT

    if name not in bundled_models():
        raise ValueError(f"unknown architecture {name!r}; bundled: {', '.join(bundled_models())}")
    fields = bundled_config_fields(name)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    words = sorted(set(re.findall(r"\w+|[^\w\s]", PROMPT.format(text="")) + list(LABELS)))
    vocab = {"[UNK]": 0, "[PAD]": 1, **{word: index + 2 for index, word in enumerate(words)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size="64GB")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(directory)
    return directory
