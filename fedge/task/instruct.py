"""The ``instruct`` task's rules that need no model: checking its spec, taking conversations, scoring answers.

Instruction tuning trains on the assistant's turns only (the loss skips the system and user tokens). Evaluation
reports the held-out loss and perplexity over those tokens, and scores greedy answers to a bounded sample of
held-out conversations against their reference answers: ``exact_match`` (after normalising case, punctuation,
articles and spacing) or ``token_f1`` (the F1 of the normalised words, as SQuAD scores answers).
"""

from __future__ import annotations

import re
import string
from collections import Counter

from fedge.task.data import Dialogue, Record
from fedge.wire import TaskSpec

METRICS = ("token_f1", "exact_match")
DEFAULT_METRIC, DEFAULT_EVAL_SAMPLES, DEFAULT_MAX_NEW_TOKENS = "token_f1", 32, 48


def problems(spec: TaskSpec) -> list[str]:
    """Every problem with an ``instruct`` spec, each naming its key."""
    found = []
    if spec.labels:
        found.append("task.labels: instruct trains on answers, not labels; leave it out")
    if spec.metric not in METRICS:
        found.append(f"task.metric: one of {', '.join(METRICS)}")
    if not 1 <= spec.eval_samples <= 1024:
        found.append("task.eval_samples: between 1 and 1024")
    if not 1 <= spec.max_new_tokens <= 1024:
        found.append("task.max_new_tokens: between 1 and 1024")
    if not 16 <= spec.max_tokens <= 8192:
        found.append("task.max_tokens: between 16 and 8192")
    return found


def dialogues_of(records: list[Record], spec: TaskSpec, source: str) -> list[Dialogue]:
    """The conversations of a data file; a labelled-text line is reported with its file and line."""
    for record in records:
        if not isinstance(record, Dialogue):
            raise ValueError(f"{source}:{record.line}: labelled text; an instruct task trains on {{instruction, response}} or {{messages}} lines")
    return list(records)


def normalise(text: str) -> list[str]:
    """Lower case, without punctuation or the articles a, an, the; split on whitespace."""
    text = "".join(character for character in text.lower() if character not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def exact_match(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


def token_f1(answer: str, reference: str) -> float:
    said, wanted = normalise(answer), normalise(reference)
    if not said or not wanted:
        return float(said == wanted)
    common = sum((Counter(said) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(said), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def score(metric: str, answer: str, reference: str) -> float:
    return token_f1(answer, reference) if metric == "token_f1" else exact_match(answer, reference)
