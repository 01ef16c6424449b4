"""Tiny random-initialised checkpoints (Llama, or another decoder family) with a word-level tokenizer, for fast
plumbing tests; nothing that claims to learn runs on them."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from fedge.task.wordnet import LABELS, PROMPT


def build_tiny_backbone(directory: Path, layers: int = 4, family: str = "llama", text: str = "") -> Path:
    """``text``: more words for the vocabulary (another task's prompt and labels)."""
    words = sorted(set(re.findall(r"\w+|[^\w\s]", PROMPT.format(text="") + " " + text) + list(LABELS)))
    vocab = {"[UNK]": 0, "[PAD]": 1, **{word: index + 2 for index, word in enumerate(words)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    if family == "gpt2":
        config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=layers, n_head=4, n_positions=256, pad_token_id=1, bos_token_id=1, eos_token_id=1)
    else:
        config = LlamaConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
            pad_token_id=1,
        )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
