"""A tiny random-initialised Llama checkpoint with a word-level tokenizer, for fast tests."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedge.task.classifier import PROMPT
from fedge.task.wordnet import LABELS


def build_tiny_backbone(directory: Path, layers: int = 4) -> Path:
    words = sorted(set(re.findall(r"\w+|[^\w\s]", PROMPT.format(text="")) + list(LABELS)))
    vocab = {"[UNK]": 0, "[PAD]": 1, **{word: index + 2 for index, word in enumerate(words)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
