"""Local datasets on disk: JSON lines of ``{"text": str, "label": str | int}``, checked line by line.

Reading needs no task: an agent reads and checks its file at start-up and counts its labels as written. Turning
labels into class indices needs the task's label list (``fedge.task.classify``), which arrives with the assignment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One labelled example with its class index."""

    text: str
    label: int


@dataclass(frozen=True)
class Row:
    """One line of a data file as written: the label is a label string or a class index."""

    text: str
    label: str | int
    line: int


def read_rows(path: str | Path) -> list[Row]:
    """Read a data file; a bad line is reported as ``FILE:LINE: reason``."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise ValueError(f"{path}:{number}: expected an object with 'text' and 'label'")
            text, label = row["text"], row["label"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{number}: 'text' must be a non-empty string")
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise ValueError(f"{path}:{number}: 'label' must be a label string or a class index")
            rows.append(Row(text, label, number))
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def label_counts(rows: list[Row]) -> dict[str, int]:
    """How often each label occurs, keyed as written (indices as decimal strings)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.label)] = counts.get(str(row.label), 0) + 1
    return counts


def write_jsonl(path: Path, examples: list[Example], labels: tuple[str, ...] | None = None) -> None:
    """Write examples, with their label strings when ``labels`` is given, else their class indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            label = labels[example.label] if labels is not None else example.label
            handle.write(json.dumps({"text": example.text, "label": label}) + "\n")
