"""Classification with a causal LM: score each label after the task's prompt.

The logits come from the final hidden state at the prompt's last token, multiplied by the (frozen) output
embeddings of the label words only, so the 49k-row vocabulary projection is never computed. Only the adapted top
of the network runs per step; the frozen bottom's output comes from a ``PrefixCache`` (``fedge.task.prefix``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedge.lora import build_lora_model
from fedge.task.data import Example
from fedge.task.prefix import EncodedRows, FrozenPrefix, PrefixCache
from fedge.wire import LoraSpec, TaskSpec


def label_token_ids(tokenizer, labels: tuple[str, ...]) -> list[int]:
    """The token each label starts with (after a space), one per label; labels must start with distinct tokens."""
    ids = [tokenizer.encode(" " + label, add_special_tokens=False)[0] for label in labels]
    if len(set(ids)) != len(ids):
        clashes = sorted({labels[i] for i, token in enumerate(ids) if ids.count(token) > 1})
        raise ValueError(f"labels {clashes} start with the same token; name the classes so each starts differently")
    return ids


@dataclass
class EncodedExamples(EncodedRows):
    labels: torch.Tensor  # (n,) class indices

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
    input_ids, lengths = pad_rows(rows, tokenizer)
    return EncodedExamples(input_ids, lengths, torch.tensor([example.label for example in examples]))


def pad_rows(rows: list[list[int]], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids right-padded with the tokenizer's pad token, lengths)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), max(len(row) for row in rows)), pad, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
    return input_ids, torch.tensor([len(row) for row in rows])


class Classifier:
    """Scores each label by the logit of its token after the prompt, from the adapted top of a split model."""

    def __init__(self, runner: FrozenPrefix, label_ids: list[int], tokenizer=None, spec: TaskSpec | None = None):
        self.runner = runner
        self.model = runner.model
        self.label_ids = torch.tensor(label_ids, device=runner.decoder.output.weight.device)
        self.tokenizer, self.spec = tokenizer, spec

    def encode(self, examples: list[Example]) -> EncodedExamples:
        return encode(self.tokenizer, examples, self.spec)

    def logits(self, cache: PrefixCache, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), num_labels) logits: the last token's final state times the label words' output rows only."""
        hidden = self.runner.top(cache.batch(rows))
        lengths = cache.data.lengths[rows].to(hidden.device)
        last = hidden[torch.arange(len(rows), device=hidden.device), lengths - 1]
        output = self.runner.decoder.output
        logits = last @ output.weight[self.label_ids].T.to(last.dtype)
        return logits if output.bias is None else logits + output.bias[self.label_ids].to(logits.dtype)

    def loss(self, cache: PrefixCache, rows: torch.Tensor) -> torch.Tensor:
        logits = self.logits(cache, rows)
        return F.cross_entropy(logits.float(), cache.data.labels[rows].to(logits.device))

    @torch.no_grad()
    def evaluate(self, cache: PrefixCache, batch_size: int = 64) -> Evaluation:
        was_training = self.model.training
        self.model.eval()
        total_loss, predictions = 0.0, []
        labels = cache.data.labels
        for begin in range(0, len(cache), batch_size):
            rows = torch.arange(begin, min(begin + batch_size, len(cache)))
            logits = self.logits(cache, rows).float()
            total_loss += F.cross_entropy(logits, labels[rows].to(logits.device), reduction="sum").item()
            predictions.append(logits.argmax(-1).cpu())
        self.model.train(was_training)
        predicted, truth = torch.cat(predictions), labels.cpu()
        return Evaluation(accuracy=(predicted == truth).float().mean().item(), loss=total_loss / len(cache), per_class_f1=per_class_f1(predicted, truth, len(self.label_ids)))


def classifier_for(runner: FrozenPrefix, tokenizer, spec: TaskSpec) -> Classifier:
    return Classifier(runner, label_token_ids(tokenizer, spec.labels), tokenizer, spec)


def lora_classifier(model, tokenizer, spec: LoraSpec, labels: tuple[str, ...], seed: int, gradient_checkpointing: bool = False) -> Classifier:
    """Wrap ``model`` with LoRA per ``spec``, split it at the lowest adapted layer and score ``labels``."""
    peft_model = build_lora_model(model, spec, seed=seed)
    return Classifier(FrozenPrefix(peft_model, min(spec.layers), gradient_checkpointing), label_token_ids(tokenizer, labels))


@dataclass(frozen=True)
class Evaluation:
    """A task's held-out result: ``accuracy`` is its headline score, named by ``metric`` (classify: accuracy;
    instruct: the answers' token F1 or exact match), ``loss`` the mean loss per scored token."""

    accuracy: float
    loss: float
    per_class_f1: tuple[float, ...] = ()  # classify, in the task's label order; 0 for a class never predicted nor present
    metric: str = "accuracy"
    perplexity: float = float("nan")  # instruct: exp(loss) over the answers' tokens

    @property
    def macro_f1(self) -> float:
        return sum(self.per_class_f1) / len(self.per_class_f1) if self.per_class_f1 else 0.0


def per_class_f1(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> tuple[float, ...]:
    """F1 of each class: 2·TP / (2·TP + FP + FN)."""
    scores = []
    for label in range(num_classes):
        true_positive = ((predicted == label) & (truth == label)).sum().item()
        wrong = ((predicted == label) != (truth == label)).sum().item()  # false positives and false negatives
        scores.append(2 * true_positive / (2 * true_positive + wrong) if true_positive + wrong else 0.0)
    return tuple(scores)
