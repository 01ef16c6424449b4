"""Question/answer pairs of the PyPI package ``chatterbot-corpus`` (BSD-3-Clause), for the ``instruct`` task.

The package ships YAML files of short English conversations, one file per topic (AI, computers, food, history,
tech support, trivia, ...). Each conversation alternates speaker and reply; fedge takes every consecutive
(question, answer) pair as one single-turn conversation, tagged with its topic. Topics are very uneven in size,
which gives a naturally non-IID split when each device holds a few topics.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import yaml

from fedge.task.data import Dialogue

PACKAGE = "chatterbot_corpus"


def corpus_directory() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {PACKAGE} package is not installed: pip install --no-deps chatterbot-corpus")
    return Path(spec.submodule_search_locations[0]) / "data" / "english"


def load_pairs(directory: Path | None = None) -> dict[str, list[Dialogue]]:
    """Every (question, answer) pair per topic (the file's name), in file order, with the topic in ``extra``."""
    topics: dict[str, list[Dialogue]] = {}
    for path in sorted((directory or corpus_directory()).glob("*.yml")):
        topic = path.stem
        conversations = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []
        pairs = topics.setdefault(topic, [])
        for conversation in conversations:
            turns = [str(turn).strip() for turn in conversation if turn is not None]
            for question, answer in zip(turns[0::2], turns[1::2]):
                if question and answer:
                    pairs.append(Dialogue((("user", question), ("assistant", answer)), len(pairs) + 1, {"topic": topic}))
    return {topic: pairs for topic, pairs in topics.items() if pairs}


def split_by_topic(topics: dict[str, list[Dialogue]], devices: int, test_fraction: float, seed: int) -> tuple[list[list[Dialogue]], list[Dialogue]]:
    """A held-out sample drawn from every topic, and the rest dealt to ``devices`` by topic: topics in random
    order go to whichever device holds the fewest pairs so far, so each device sees only some topics."""
    rng = random.Random(seed)
    test: list[Dialogue] = []
    shards: list[list[Dialogue]] = [[] for _ in range(devices)]
    names = sorted(topics)
    rng.shuffle(names)
    for topic in sorted(names, key=lambda name: -len(topics[name])):  # largest first keeps the shards balanced
        pairs = list(topics[topic])
        rng.shuffle(pairs)
        held = round(len(pairs) * test_fraction)
        test += pairs[:held]
        min(shards, key=len).extend(pairs[held:])
    rng.shuffle(test)
    for shard in shards:
        rng.shuffle(shard)
    return shards, test
