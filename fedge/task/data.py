"""Local datasets on disk: JSON lines of ``{"text": str, "label": int}``."""

from __future__ import annotations

import json
from pathlib import Path

from fedge.task.wordnet import LABELS, Example


def write_jsonl(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({"text": example.text, "label": example.label}) + "\n")


def read_jsonl(path: str | Path) -> list[Example]:
    """Read and check a dataset; a bad line is reported with its number."""
    examples = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row["text"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: expected {{'text': ..., 'label': ...}} ({error})") from None
            if not isinstance(text, str) or not isinstance(label, int) or not 0 <= label < len(LABELS):
                raise ValueError(f"{path}:{number}: text must be a string and label an int in 0..{len(LABELS) - 1}")
            examples.append(Example(text, label))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples
