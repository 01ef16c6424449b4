"""The ``classify`` task's rules that need no model: checking a ``TaskSpec`` and turning labels into classes.

The operator names the classes (``labels``, in index order) and the prompt; data may write a label as its string
or as its class index. Each label is scored by the model's likelihood of its tokens after the prompt
(``fedge.task.classifier``).
"""

from __future__ import annotations

from fedge.task.data import Example, Record, Row
from fedge.wire import TaskSpec

MAX_LABELS = 1024


def problems(spec: TaskSpec) -> list[str]:
    """Every problem with a ``classify`` spec, each naming its key (empty when it is valid)."""
    found = []
    if not 2 <= len(spec.labels) <= MAX_LABELS:
        found.append(f"task.labels: between 2 and {MAX_LABELS} labels")
    if any(not label.strip() for label in spec.labels) or len(set(spec.labels)) != len(spec.labels):
        found.append("task.labels: non-empty and distinct")
    if "{text}" not in spec.prompt:
        found.append("task.prompt: must contain {text}, where each example goes")
    if not 8 <= spec.max_tokens <= 8192:
        found.append("task.max_tokens: between 8 and 8192")
    if spec.metric not in ("", "accuracy") or spec.eval_samples or spec.max_new_tokens:
        found.append("task.metric, eval_samples, max_new_tokens: instruct settings; classify reports accuracy and per-class F1")
    return found


def examples_of(rows: list[Record], spec: TaskSpec, source: str) -> list[Example]:
    """The rows with their labels as class indices; an unknown label is reported with its file and line."""
    index = {label: position for position, label in enumerate(spec.labels)}
    examples = []
    for row in rows:
        if not isinstance(row, Row):
            raise ValueError(f"{source}:{row.line}: a conversation; a classify task trains on {{text, label}} lines")
        label = index.get(row.label) if isinstance(row.label, str) else row.label
        if label is None or not 0 <= label < len(spec.labels):
            raise ValueError(f"{source}:{row.line}: label {row.label!r} is not one of the task's {len(spec.labels)} labels ({_some(spec.labels)}) or an index 0..{len(spec.labels) - 1}")
        examples.append(Example(row.text, label))
    return examples


def histogram(counts: dict[str, int], spec: TaskSpec) -> tuple[int, ...]:
    """Label counts as an agent reports them (strings or decimal indices), in the task's label order; labels the
    task does not have are left out."""
    out = [0] * len(spec.labels)
    index = {label: position for position, label in enumerate(spec.labels)}
    for key, count in counts.items():
        position = index.get(key)
        if position is None and key.isdecimal() and len(key) <= 9:
            position = int(key)
        if position is not None and 0 <= position < len(out):
            out[position] += count
    return tuple(out)


def _some(labels: tuple[str, ...]) -> str:
    shown = ", ".join(repr(label) for label in labels[:8])
    return shown + (", …" if len(labels) > 8 else "")
