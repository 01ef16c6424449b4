"""Classification with a causal LM: score each label after the task's prompt.

Labels of one token each (label words) are scored by their logit at the prompt's last token: the final hidden state
times the (frozen) output embeddings of the label tokens only, so the vocabulary projection is never computed.
Labels of several tokens are scored by their full log-likelihood: each example becomes one sequence per label
(prompt, then the label's tokens), and a label's score is the sum of its tokens' log-probabilities. Either way the
loss is the cross-entropy over the labels' scores. Only the adapted top of the network runs per step; the frozen
bottom's output comes from a ``PrefixCache`` (``fedge.task.prefix``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedge.task.data import Example
from fedge.task.next_token import IGNORE, target_losses
from fedge.task.prefix import EncodedRows, FrozenPrefix, PrefixCache
from fedge.wire import TaskSpec


def label_tokens(tokenizer, labels: tuple[str, ...]) -> list[list[int]]:
    """Each label's tokens as it follows the prompt (after a space); labels must tokenize differently."""
    tokens = [tokenizer.encode(" " + label, add_special_tokens=False) for label in labels]
    seen: dict[tuple[int, ...], str] = {}
    for label, ids in zip(labels, tokens):
        if not ids or tuple(ids) in seen:
            raise ValueError(f"labels {seen.get(tuple(ids), '')!r} and {label!r} give the same tokens")
        seen[tuple(ids)] = label
    return tokens


def single_token(tokens: list[list[int]]) -> bool:
    return all(len(ids) == 1 for ids in tokens)


def scoring_cost(tokenizer, labels: tuple[str, ...]) -> tuple[int, float]:
    """What scoring ``labels`` costs per example: (sequences, label tokens per sequence); (1, 0) for label words."""
    tokens = label_tokens(tokenizer, labels)
    return (1, 0.0) if single_token(tokens) else (len(tokens), sum(map(len, tokens)) / len(tokens))


def label_token_ids(tokenizer, labels: tuple[str, ...]) -> list[int]:
    """The one token of each label (label words)."""
    tokens = label_tokens(tokenizer, labels)
    if not single_token(tokens):
        raise ValueError(f"labels {[label for label, ids in zip(labels, tokens) if len(ids) > 1]} take several tokens; they are scored by likelihood")
    return [ids[0] for ids in tokens]


@dataclass
class EncodedExamples(EncodedRows):
    labels: torch.Tensor  # (n,) class indices

    def to(self, device: str | torch.device) -> EncodedExamples:
        return EncodedExamples(self.input_ids.to(device), self.lengths.to(device), self.labels.to(device))


@dataclass
class EncodedChoices(EncodedRows):
    """Examples as one sequence per label (prompt, then the label's tokens): row ``r`` is sequences r·C … r·C+C−1."""

    targets: torch.Tensor  # (n·C, t): the label token each position predicts next, IGNORE elsewhere
    labels: torch.Tensor  # (n,) class indices
    choices: int

    def __len__(self) -> int:
        return len(self.labels)

    def sequences(self, rows: torch.Tensor | list[int]) -> list[int]:
        return [int(row) * self.choices + choice for row in rows for choice in range(self.choices)]

    def to(self, device: str | torch.device) -> EncodedChoices:
        return EncodedChoices(self.input_ids.to(device), self.lengths.to(device), self.targets.to(device), self.labels.to(device), self.choices)


def encode(tokenizer, examples: list[Example], task: TaskSpec) -> EncodedExamples:
    """The examples in the task's prompt, cut to its token budget: the text is shortened, never the prompt after it."""
    input_ids, lengths = pad_rows(_prompts(tokenizer, examples, task, 0), tokenizer)
    return EncodedExamples(input_ids, lengths, torch.tensor([example.label for example in examples]))


def encode_choices(tokenizer, examples: list[Example], task: TaskSpec) -> EncodedChoices:
    """Each example once per label, the prompt cut so that the longest label still fits the token budget."""
    tokens = label_tokens(tokenizer, task.labels)
    rows, targets = [], []
    for prompt in _prompts(tokenizer, examples, task, max(len(ids) for ids in tokens)):
        for ids in tokens:
            rows.append(prompt + ids)
            targets.append([IGNORE] * (len(prompt) - 1) + ids + [IGNORE])
    input_ids, lengths = pad_rows(rows, tokenizer)
    target_ids = torch.full_like(input_ids, IGNORE)
    for index, row in enumerate(targets):
        target_ids[index, : len(row)] = torch.tensor(row)
    return EncodedChoices(input_ids, lengths, target_ids, torch.tensor([example.label for example in examples]), len(tokens))


MAX_CHARS_PER_TOKEN = 64  # more characters than any one token of a real vocabulary spans


def _prompts(tokenizer, examples: list[Example], task: TaskSpec, reserve: int) -> list[list[int]]:
    """Each example's prompt tokens within ``task.max_tokens - reserve``: the text is cut, never the prompt."""
    head, tail = task.prompt.split("{text}", 1)
    head_ids = tokenizer.encode(head, add_special_tokens=False) if head else []
    tail_ids = tokenizer.encode(tail, add_special_tokens=False) if tail else []
    budget = task.max_tokens - reserve
    room = budget - len(head_ids) - len(tail_ids)
    if room < 1:
        raise ValueError(f"the prompt takes {len(head_ids) + len(tail_ids)} tokens{f' and the longest label {reserve}' if reserve else ''}; task.max_tokens {task.max_tokens} leaves no room for the text")
    rows = []
    for example in examples:
        text = example.text[: room * MAX_CHARS_PER_TOKEN]  # a long text is cut before it is tokenized, not after
        row = tokenizer.encode(task.prompt.format(text=text), add_special_tokens=False)
        if len(row) > budget:
            row = head_ids + tokenizer.encode(text, add_special_tokens=False)[:room] + tail_ids
        rows.append(row)
    return rows


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
        self.num_labels = len(label_ids)
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
        return Evaluation(accuracy=(predicted == truth).float().mean().item(), loss=total_loss / len(cache), per_class_f1=per_class_f1(predicted, truth, self.num_labels))


class LikelihoodClassifier(Classifier):
    """Scores each label by the summed log-probability of its tokens after the prompt (labels of several tokens)."""

    def __init__(self, runner: FrozenPrefix, tokenizer, spec: TaskSpec):
        self.runner = runner
        self.model = runner.model
        self.num_labels = len(spec.labels)
        self.tokenizer, self.spec = tokenizer, spec

    def encode(self, examples: list[Example]) -> EncodedChoices:
        return encode_choices(self.tokenizer, examples, self.spec)

    def logits(self, cache: PrefixCache, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), num_labels) label log-likelihoods."""
        hidden = self.runner.top(cache.batch(rows))
        return choice_scores(hidden, cache.data.targets[cache.data.sequences(rows), : hidden.shape[1]], self.runner.decoder.output, len(rows))


def choice_scores(hidden: torch.Tensor, targets: torch.Tensor, output: torch.nn.Module, rows: int) -> torch.Tensor:
    """(rows, choices) sums of the target tokens' log-probabilities of each sequence (``rows`` × choices of them)."""
    targets = targets.to(hidden.device)
    log_probs = -target_losses(hidden, targets, output)
    owner = torch.arange(len(targets), device=hidden.device).unsqueeze(1).expand_as(targets)[targets != IGNORE]
    return torch.zeros(len(targets), device=hidden.device, dtype=log_probs.dtype).index_add(0, owner, log_probs).view(rows, -1)


def classifier_for(runner: FrozenPrefix, tokenizer, spec: TaskSpec) -> Classifier:
    """The fast classifier for label words, the likelihood classifier where a label takes several tokens."""
    tokens = label_tokens(tokenizer, spec.labels)
    if single_token(tokens):
        return Classifier(runner, [ids[0] for ids in tokens], tokenizer, spec)
    return LikelihoodClassifier(runner, tokenizer, spec)


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
