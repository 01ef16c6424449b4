"""A trial's data: where the examples come from, how they are dealt to the simulated devices, and the held-out set.

Sources (``data.source`` in the trial YAML):
- ``wordnet``: WordNet noun definitions by topic (classify, the demo's task), ``train_per_label``/``test_per_label``;
- ``fortunes``: the Debian ``fortunes`` categories (classify), up to ``train_per_label``/``test_per_label`` each;
- ``chatterbot``: the ``chatterbot-corpus`` question/answer pairs (instruct), a ``test_fraction`` of every topic
  held out and the rest dealt to devices by topic, so each device sees only some topics;
- ``files``: the operator's own ``train`` and ``test`` JSON lines in the task's format; ``train`` is one file dealt
  to the devices, or a list with one file per fleet device, in the fleet's order (each device keeps its own data).
Classify examples are dealt with Dirichlet(``alpha``) label proportions; conversations from one file at random.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from fedge.task.data import Dialogue, Example, read_rows, write_dialogues, write_jsonl
from fedge.task.split import dirichlet_split, label_histogram
from fedge.wire import TaskSpec

SOURCES = ("wordnet", "fortunes", "chatterbot", "files")
FIELD_SOURCE = "each device's own"  # a field trial's data (fedge.shell.trial.field): never dealt, so not a source to choose
KINDS = {"wordnet": "classify", "fortunes": "classify", "chatterbot": "instruct"}


@dataclass(frozen=True)
class TrialData:
    """The ``data:`` section of a trial."""

    source: str = "wordnet"
    train_per_label: int = 60
    test_per_label: int = 25
    alpha: float = 0.5
    min_examples: int = 16
    test_fraction: float = 0.1
    train: str | tuple[str, ...] = ""  # files: one file to deal, or one per fleet device
    test: str = ""

    @property
    def per_device(self) -> bool:
        """Whether each device has its own training file (``train`` is a list)."""
        return isinstance(self.train, (list, tuple))

    def problems(self) -> list[str]:
        """What the schema (``config.DataSection``) cannot say: ``train`` and ``test`` go with ``files`` only."""
        if self.source == "files" and not (self.train and self.test):
            return ["data.train and data.test: JSON lines files, required with source: files"]
        if self.source != "files" and (self.train or self.test):
            return ["data.train and data.test: only with source: files"]
        return []

    def fleet_problems(self, devices: int) -> list[str]:
        """Problems that need the fleet's size: a list of training files must have one per device."""
        if self.per_device and len(self.train) != devices:
            return [f"data.train: {len(self.train)} files for {devices} fleet devices (one each, in the fleet's order)"]
        return []


def default_task(source: str) -> TaskSpec | None:
    """The task a built-in source is written for (None for the operator's files: their trial names the task)."""
    if source == "wordnet":
        from fedge.task.wordnet import WORDNET_TASK

        return WORDNET_TASK
    if source == "fortunes":
        from fedge.task.fortunes import FORTUNES_TASK

        return FORTUNES_TASK
    if source == "chatterbot":
        return TaskSpec("instruct", max_tokens=96, metric="token_f1", eval_samples=32, max_new_tokens=32)
    return None


def prepare_data(data: TrialData, task: TaskSpec, agents: list[str], seed: int, directory: Path) -> dict:
    """Write each agent's shard, the held-out set and the pooled training set (for the centralised run) under
    ``directory``; returns the split's description (per-agent label histograms or topics)."""
    directory.mkdir(parents=True, exist_ok=True)
    if task.kind == "instruct":
        shards, test, description = _conversations(data, task, len(agents), seed)
        for agent_id, shard in zip(agents, shards):
            write_dialogues(directory / f"{agent_id}.jsonl", shard)
        write_dialogues(directory / "test.jsonl", test)
        write_dialogues(directory / "train_pooled.jsonl", [dialogue for shard in shards for dialogue in shard])
        split = {"agents": {agent: info for agent, info in zip(agents, description)}}
    else:
        shards, test = _labelled_shards(data, task, len(agents), seed)
        for agent_id, shard in zip(agents, shards):
            write_jsonl(directory / f"{agent_id}.jsonl", shard, task.labels)
        write_jsonl(directory / "test.jsonl", test, task.labels)
        write_jsonl(directory / "train_pooled.jsonl", [example for shard in shards for example in shard], task.labels)
        split = {"alpha": None if data.per_device else data.alpha, "labels": list(task.labels), "agents": {agent: label_histogram(shard, len(task.labels)) for agent, shard in zip(agents, shards)}}
    split |= {"source": data.source, "seed": seed, "test_examples": len(test)}
    (directory / "split.json").write_text(json.dumps(split, indent=2))
    return split


def _labelled_shards(data: TrialData, task: TaskSpec, devices: int, seed: int) -> tuple[list[list[Example]], list[Example]]:
    """Each device's examples and the held-out set: the devices' own files as they are, else a Dirichlet deal."""
    from fedge.task.classify import examples_of

    if data.per_device:
        return [examples_of(read_rows(path), task, path) for path in data.train], examples_of(read_rows(data.test), task, data.test)
    train, test = _labelled(data, task, seed)
    return dirichlet_split(train, devices, data.alpha, seed, data.min_examples), test


def _labelled(data: TrialData, task: TaskSpec, seed: int) -> tuple[list[Example], list[Example]]:
    if data.source == "wordnet":
        from fedge.task.wordnet import load_splits

        return load_splits(data.train_per_label, data.test_per_label, seed)
    if data.source == "fortunes":
        from fedge.task.fortunes import load_examples

        return _per_label(load_examples(seed), len(task.labels), data.train_per_label, data.test_per_label)
    from fedge.task.classify import examples_of

    train, test = (examples_of(read_rows(path), task, path) for path in (data.train, data.test))
    return train, test


def _per_label(examples: list[Example], labels: int, train: int, test: int) -> tuple[list[Example], list[Example]]:
    """The first ``test`` examples of each label held out, the next ``train`` for training (fewer where a label has fewer)."""
    held, kept = [], []
    for label in range(labels):
        mine = [example for example in examples if example.label == label]
        held += mine[:test]
        kept += mine[test : test + train]
    return kept, held


def _conversations(data: TrialData, task: TaskSpec, devices: int, seed: int) -> tuple[list[list[Dialogue]], list[Dialogue], list]:
    if data.source == "chatterbot":
        from fedge.task.chatterbot import load_pairs, split_by_topic

        shards, test = split_by_topic(load_pairs(), devices, data.test_fraction, seed)
        return shards, test, [sorted({dialogue.extra["topic"] for dialogue in shard}) for shard in shards]
    from fedge.task.instruct import dialogues_of

    test = dialogues_of(read_rows(data.test), task, data.test)
    if data.per_device:
        shards = [dialogues_of(read_rows(path), task, path) for path in data.train]
        return shards, test, [len(shard) for shard in shards]
    train = dialogues_of(read_rows(data.train), task, data.train)
    random.Random(seed).shuffle(train)
    shards = [train[index::devices] for index in range(devices)]
    return shards, test, [len(shard) for shard in shards]
