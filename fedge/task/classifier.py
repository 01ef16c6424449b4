"""Topic classification with a causal LM: score one label word after a prompt.

The logits come from the final hidden state at the prompt's last token, multiplied by the (frozen) output
embeddings of the label words only, so the 49k-row vocabulary projection is never computed.

LoRA sits only on the top D layers, so everything below the lowest adapted layer is frozen and deterministic:
``FrozenPrefix`` runs those layers once per example and caches their output, and every training step or
evaluation afterwards runs only the adapted top of the network. This is exact, not an approximation, and it is what
makes a 30-layer model trainable on two CPU cores in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fedge.decoder import decoder_parts
from fedge.lora import build_lora_model
from fedge.task.wordnet import LABELS, Example
from fedge.wire import LoraSpec

PROMPT = "Definition: {text}\nCategory (animal, body, food, place, person, plant, substance or time):"


def label_token_ids(tokenizer) -> list[int]:
    """One token id per label word (with its leading space), all distinct."""
    ids = []
    for word in LABELS:
        tokens = tokenizer.encode(" " + word, add_special_tokens=False)
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError("label words must start with distinct tokens")
    return ids


@dataclass
class EncodedExamples:
    input_ids: torch.Tensor  # (n, t) right-padded
    lengths: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,)

    def to(self, device: str | torch.device) -> EncodedExamples:
        return EncodedExamples(self.input_ids.to(device), self.lengths.to(device), self.labels.to(device))


def encode(tokenizer, examples: list[Example], max_tokens: int = 48) -> EncodedExamples:
    rows = [tokenizer.encode(PROMPT.format(text=example.text), add_special_tokens=False) for example in examples]
    suffix = tokenizer.encode(PROMPT.format(text="").split("\n", 1)[1], add_special_tokens=False)
    # Truncate the definition, never the question after it.
    rows = [row if len(row) <= max_tokens else row[: max_tokens - len(suffix) - 1] + tokenizer.encode("\n", add_special_tokens=False) + suffix for row in rows]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
    return EncodedExamples(
        input_ids=input_ids,
        lengths=torch.tensor([len(row) for row in rows]),
        labels=torch.tensor([example.label for example in examples]),
    )


class FrozenPrefix:
    """Runs a causal LM's decoder split at ``start_layer``: a cached frozen bottom and a trainable top."""

    def __init__(self, model, label_ids: list[int], start_layer: int, gradient_checkpointing: bool = False):
        self.model = model
        self.gradient_checkpointing = gradient_checkpointing
        self.decoder = decoder_parts(model)
        self.start_layer = start_layer
        self.label_ids = torch.tensor(label_ids, device=self.decoder.output.weight.device)
        self.num_layers = len(self.decoder.layers)
        if not 0 <= start_layer < self.num_layers:
            raise ValueError(f"start_layer {start_layer} outside 0..{self.num_layers - 1}")

    @torch.no_grad()
    def cache(self, input_ids: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Hidden states entering ``start_layer`` for every row, computed once."""
        parts = []
        for begin in range(0, len(input_ids), batch_size):
            hidden = self.decoder.embed_tokens(input_ids[begin : begin + batch_size])
            parts.append(self.decoder.run_layers(hidden, 0, self.start_layer))
        return torch.cat(parts)

    def label_logits(self, prefix: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, num_labels) logits from cached prefix states, through the adapted top layers."""
        checkpointed = self.gradient_checkpointing and torch.is_grad_enabled()
        hidden = self.decoder.run_layers(prefix, self.start_layer, self.num_layers, checkpointed)
        last = hidden[torch.arange(len(lengths), device=hidden.device), lengths - 1]
        last = self.decoder.norm(last)
        output = self.decoder.output
        logits = last @ output.weight[self.label_ids].T.to(last.dtype)
        return logits if output.bias is None else logits + output.bias[self.label_ids].to(logits.dtype)


def lora_classifier(model, tokenizer, spec: LoraSpec, seed: int, gradient_checkpointing: bool = False) -> FrozenPrefix:
    """Wrap ``model`` with LoRA per ``spec`` and split it at the lowest adapted layer; ``.model`` is the peft model."""
    peft_model = build_lora_model(model, spec, seed=seed)
    return FrozenPrefix(peft_model, label_token_ids(tokenizer), min(spec.layers), gradient_checkpointing)


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float


@torch.no_grad()
def evaluate(runner: FrozenPrefix, prefix: torch.Tensor, data: EncodedExamples, batch_size: int = 64) -> Evaluation:
    was_training = runner.model.training
    runner.model.eval()
    correct, total_loss = 0, 0.0
    for begin in range(0, len(prefix), batch_size):
        rows = slice(begin, begin + batch_size)
        logits = runner.label_logits(prefix[rows], data.lengths[rows]).float()
        total_loss += F.cross_entropy(logits, data.labels[rows], reduction="sum").item()
        correct += (logits.argmax(-1) == data.labels[rows]).sum().item()
    runner.model.train(was_training)
    return Evaluation(accuracy=correct / len(prefix), loss=total_loss / len(prefix))
