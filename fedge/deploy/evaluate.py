"""A task's held-out evaluation on a deployed model (onnxruntime or torch), from full-sequence logits.

The same encodings and scores as training-time evaluation: ``classify`` scores its label words after the prompt's
last token, or labels of several tokens by their log-likelihood (accuracy, per-class F1); ``instruct`` takes the loss over answer tokens and scores greedy answers
(decoded one token per forward pass, without a key/value cache) on the task's bounded sample.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from fedge.task.classifier import Evaluation, encode as encode_examples, encode_choices, label_tokens, per_class_f1, single_token
from fedge.task.instruct import score
from fedge.task.instruction import encode as encode_dialogues
from fedge.task.next_token import IGNORE
from fedge.task.kinds import kind_of
from fedge.task.data import Record
from fedge.wire import TaskSpec


class CausalLM(Protocol):
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def _mask(input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return (torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()


def evaluate_model(engine: CausalLM, tokenizer, task: TaskSpec, records: list[Record], source: str, batch_size: int = 16) -> Evaluation:
    items = kind_of(task.kind).items(records, task, source)
    if task.kind == "classify":
        return _classify(engine, tokenizer, task, items, batch_size)
    if task.kind == "instruct":
        return _instruct(engine, tokenizer, task, items, batch_size)
    raise ValueError(f"task kind {task.kind!r}: deployed evaluation covers classify and instruct")


def _classify(engine: CausalLM, tokenizer, task: TaskSpec, examples, batch_size: int) -> Evaluation:
    tokens = label_tokens(tokenizer, task.labels)
    data = encode_examples(tokenizer, examples, task) if single_token(tokens) else encode_choices(tokenizer, examples, task)
    predictions, total_loss = [], 0.0
    for begin in range(0, len(data), batch_size):
        rows = torch.arange(begin, min(begin + batch_size, len(data)))
        sequences = data.sequences(rows)
        input_ids, lengths = data.input_ids[sequences], data.lengths[sequences]
        width = int(lengths.max())
        logits = engine.logits(input_ids[:, :width], _mask(input_ids[:, :width], lengths)).float()
        if single_token(tokens):
            scores = logits[torch.arange(len(rows)), lengths - 1][:, [ids[0] for ids in tokens]]
        else:
            targets = data.targets[sequences, :width]
            picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scores = (picked * (targets != IGNORE)).sum(-1).view(len(rows), -1)
        total_loss += F.cross_entropy(scores, data.labels[rows], reduction="sum").item()
        predictions.append(scores.argmax(-1))
    predicted = torch.cat(predictions)
    return Evaluation((predicted == data.labels).float().mean().item(), total_loss / len(data), per_class_f1(predicted, data.labels, len(task.labels)))


def _instruct(engine: CausalLM, tokenizer, task: TaskSpec, dialogues, batch_size: int) -> Evaluation:
    data = encode_dialogues(tokenizer, dialogues, task)
    total, tokens = 0.0, 0
    for begin in range(0, len(data), batch_size):
        rows = slice(begin, begin + batch_size)
        width = int(data.lengths[rows].max())
        logits = engine.logits(data.input_ids[rows, :width], _mask(data.input_ids[rows, :width], data.lengths[rows]))
        targets = data.targets[rows, :width]
        keep = targets != IGNORE
        total += F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum").item()
        tokens += int(keep.sum())
    count = min(task.eval_samples, len(data.prompts))
    answers = [greedy_answer(engine, tokenizer, prompt, task.max_new_tokens) for prompt in data.prompts[:count]]
    scores = [score(task.metric, said, wanted) for said, wanted in zip(answers, data.references)]
    loss = total / max(tokens, 1)
    return Evaluation(sum(scores) / len(scores), loss, metric=task.metric, perplexity=math.exp(min(loss, 50.0)))


def greedy_answer(engine: CausalLM, tokenizer, prompt: list[int], max_new_tokens: int) -> str:
    ids = list(prompt)
    for _ in range(max_new_tokens):
        row = torch.tensor([ids])
        token = int(engine.logits(row, torch.ones_like(row))[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    return tokenizer.decode(ids[len(prompt) :], skip_special_tokens=True).strip()
