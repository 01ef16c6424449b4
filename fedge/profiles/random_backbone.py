"""A bundled architecture as a checkpoint with random weights and a byte-level BPE tokenizer over the WordNet task's
words (each word one token, as GPT-2-style and Qwen tokenizers read it):
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
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from fedge.task.wordnet import LABELS, PROMPT

    if name not in bundled_models():
        raise ValueError(f"unknown architecture {name!r}; bundled: {', '.join(bundled_models())}")
    fields = bundled_config_fields(name)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    words = sorted(set(re.findall(r"\w+|[^\w\s]", PROMPT.format(text="")) + list(LABELS)))
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=4096, min_frequency=1, special_tokens=["[UNK]", "[PAD]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([f"{word} {word}" for word in words], trainer)  # merges up to the whole word, with and without its space
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, max_shard_size="64GB")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(directory)
    return directory
