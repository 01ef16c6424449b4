"""Fortune-cookie quotations labelled with their category (Debian package ``fortunes``), for ``classify``.

The package keeps one file per category under ``/usr/share/games/fortunes/`` with entries separated by lines
holding a single ``%``. The task keeps categories whose names are common English words, so the label words mean
something to a pretrained model, and entries short enough for a small token budget.
"""

from __future__ import annotations

import random
from pathlib import Path

from fedge.task.data import Example
from fedge.wire import TaskSpec

FORTUNES = Path("/usr/share/games/fortunes")
LABELS: tuple[str, ...] = ("art", "computers", "food", "law", "love", "medicine", "politics", "science", "sports")
PROMPT = "Quote: {text}\nTopic (art, computers, food, law, love, medicine, politics, science or sports):"
FORTUNES_TASK = TaskSpec("classify", LABELS, PROMPT, max_tokens=96)
MAX_CHARACTERS = 300  # longer entries (poems, dialogues) are left out


def read_entries(category: str, directory: Path = FORTUNES) -> list[str]:
    """One category's entries, whitespace collapsed, without the long ones."""
    path = directory / category
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the Debian package 'fortunes' (apt-get install fortunes)")
    entries = (" ".join(entry.split()) for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"))
    return [entry for entry in entries if entry and entry != "%" and len(entry) <= MAX_CHARACTERS]


def load_examples(seed: int, directory: Path = FORTUNES) -> list[Example]:
    """Every kept entry of the task's categories, labelled by category index, shuffled."""
    examples = [Example(text, label) for label, category in enumerate(LABELS) for text in read_entries(category, directory)]
    random.Random(seed).shuffle(examples)
    return examples
