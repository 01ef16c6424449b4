"""WordNet noun glosses labelled with their lexicographer category (Debian package ``wordnet-base``).

WordNet 3.0 (Princeton licence, free to use and redistribute) files each noun synset under one of 26
lexicographer files; ``data.noun`` carries the file number in its second field and the gloss after ``|``. The
task keeps eight concrete categories whose names are single, common English words the model already knows.
"""

from __future__ import annotations

import random
from pathlib import Path

from fedge.task.data import Example
from fedge.wire import TaskSpec

WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
# Lexicographer file numbers fixed by WordNet's lexnames(5WN) table, and the label word the model is asked for.
CATEGORIES: dict[int, str] = {
    5: "animal",
    8: "body",
    13: "food",
    15: "place",
    18: "person",
    20: "plant",
    27: "substance",
    28: "time",
}
LABELS: tuple[str, ...] = tuple(CATEGORIES.values())
PROMPT = "Definition: {text}\nCategory (animal, body, food, place, person, plant, substance or time):"
WORDNET_TASK = TaskSpec("classify", LABELS, PROMPT, max_tokens=48)  # the demo's task, and the default one


def _definition(gloss: str) -> str:
    """The definition part of a gloss, without its quoted usage examples."""
    return gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()


def read_glosses(path: Path = WORDNET_NOUNS) -> dict[int, list[str]]:
    """All definitions per label index, in file order."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the Debian package wordnet-base")
    by_label: dict[int, list[str]] = {index: [] for index in range(len(LABELS))}
    label_of = {lexfile: index for index, lexfile in enumerate(CATEGORIES)}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            fields = line.split(" ", 2)
            index = label_of.get(int(fields[1]))
            if index is not None:
                definition = _definition(line.split(" | ", 1)[1])
                if len(definition) >= 12:
                    by_label[index].append(definition)
    return by_label


def load_splits(train_per_label: int, test_per_label: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Balanced, disjoint train and held-out test sets, sampled reproducibly from every category."""
    rng = random.Random(seed)
    train: list[Example] = []
    test: list[Example] = []
    for label, texts in read_glosses().items():
        chosen = rng.sample(texts, train_per_label + test_per_label)
        train += [Example(text, label) for text in chosen[:train_per_label]]
        test += [Example(text, label) for text in chosen[train_per_label:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test
