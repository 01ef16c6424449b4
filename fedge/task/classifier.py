"""Classification with a causal LM: score each label after the task's prompt.

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
from fedge.task.data import Example
from fedge.wire import LoraSpec, TaskSpec


def label_token_ids(tokenizer, labels: tuple[str, ...]) -> list[int]:
    """The token each label starts with (after a space), one per label; labels must start with distinct tokens."""
    ids = [tokenizer.encode(" " + label, add_special_tokens=False)[0] for label in labels]
    if len(set(ids)) != len(ids):
        clashes = sorted({labels[i] for i, token in enumerate(ids) if ids.count(token) > 1})
        raise ValueError(f"labels {clashes} start with the same token; name the classes so each starts differently")
    return ids


@dataclass
class EncodedExamples:
    input_ids: torch.Tensor  # (n, t) right-padded
    lengths: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,)

    def to(self, device: str | torch.device) -> EncodedExamples:
        return EncodedExamples(self.input_ids.to(device), self.lengths.to(device), self.labels.to(device))


def encode(tokenizer, examples: list[Example], task: TaskSpec) -> EncodedExamples:
    """The examples in the task's prompt, cut to its token budget: the text is shortened, never the prompt after it."""
    head, tail = task.prompt.split("{text}", 1)
    head_ids = tokenizer.encode(head, add_special_tokens=False) if head else []
    tail_ids = tokenizer.encode(tail, add_special_tokens=False) if tail else []
    room = task.max_tokens - len(head_ids) - len(tail_ids)
    if room < 1:
        raise ValueError(f"the prompt takes {len(head_ids) + len(tail_ids)} tokens; task.max_tokens {task.max_tokens} leaves no room for the text")
    rows = []
    for example in examples:
        row = tokenizer.encode(task.prompt.format(text=example.text), add_special_tokens=False)
        if len(row) > task.max_tokens:
            row = head_ids + tokenizer.encode(example.text, add_special_tokens=False)[:room] + tail_ids
        rows.append(row)
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


def lora_classifier(model, tokenizer, spec: LoraSpec, labels: tuple[str, ...], seed: int, gradient_checkpointing: bool = False) -> FrozenPrefix:
    """Wrap ``model`` with LoRA per ``spec`` and split it at the lowest adapted layer; ``.model`` is the peft model."""
    peft_model = build_lora_model(model, spec, seed=seed)
    return FrozenPrefix(peft_model, label_token_ids(tokenizer, labels), min(spec.layers), gradient_checkpointing)


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    per_class_f1: tuple[float, ...] = ()  # in the task's label order; 0 for a class never predicted nor present

    @property
    def macro_f1(self) -> float:
        return sum(self.per_class_f1) / len(self.per_class_f1) if self.per_class_f1 else 0.0


@torch.no_grad()
def evaluate(runner: FrozenPrefix, prefix: torch.Tensor, data: EncodedExamples, batch_size: int = 64) -> Evaluation:
    was_training = runner.model.training
    runner.model.eval()
    total_loss, predictions = 0.0, []
    for begin in range(0, len(prefix), batch_size):
        rows = slice(begin, begin + batch_size)
        logits = runner.label_logits(prefix[rows], data.lengths[rows]).float()
        total_loss += F.cross_entropy(logits, data.labels[rows], reduction="sum").item()
        predictions.append(logits.argmax(-1))
    runner.model.train(was_training)
    predicted, truth = torch.cat(predictions).cpu(), data.labels.cpu()
    return Evaluation(accuracy=(predicted == truth).float().mean().item(), loss=total_loss / len(prefix), per_class_f1=per_class_f1(predicted, truth, len(runner.label_ids)))


def per_class_f1(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> tuple[float, ...]:
    """F1 of each class: 2·TP / (2·TP + FP + FN)."""
    scores = []
    for label in range(num_classes):
        true_positive = ((predicted == label) & (truth == label)).sum().item()
        wrong = ((predicted == label) != (truth == label)).sum().item()  # false positives and false negatives
        scores.append(2 * true_positive / (2 * true_positive + wrong) if true_positive + wrong else 0.0)
    return tuple(scores)
