"""Task kinds by name: the built-in ``classify`` and ``instruct``, and custom kinds installed as entry points.

A task spec arriving over the network names a kind; the name selects code already installed on this machine,
never a module to import. A custom kind is a Python package installed on the coordinator and on every agent that
registers an object under the ``fedge.tasks`` entry point group::

    [project.entry-points."fedge.tasks"]
    sentiment-margin = "my_package.task:KIND"

The object offers what the built-in kinds below offer (``TaskKind``): checking a spec, taking the data file's
records, and building the model side (encode, loss, evaluate) on a split backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol

from fedge.task import classify, instruct
from fedge.task.data import Record
from fedge.wire import TaskSpec

ENTRY_POINT_GROUP = "fedge.tasks"


class TaskKind(Protocol):
    name: str

    def problems(self, spec: TaskSpec) -> list[str]:
        """Every problem with the spec, each naming its key (empty when valid); needs no model."""

    def items(self, records: list[Record], spec: TaskSpec, source: str) -> list[Any]:
        """The training items of a data file, or ``ValueError`` naming ``source`` and the line."""

    def model(self, runner, tokenizer, spec: TaskSpec) -> Any:
        """The model side on a ``FrozenPrefix``: ``encode(items)``, ``loss(cache, rows)``, ``evaluate(cache)``."""


@dataclass(frozen=True)
class BuiltIn:
    name: str
    problems: Callable[[TaskSpec], list[str]]
    items: Callable[[list[Record], TaskSpec, str], list[Any]]
    build: str  # "module:function" building the model side, imported only when a model is loaded

    def model(self, runner, tokenizer, spec: TaskSpec) -> Any:
        module, function = self.build.split(":")
        return getattr(import_module(module), function)(runner, tokenizer, spec)


BUILT_IN: dict[str, TaskKind] = {
    "classify": BuiltIn("classify", classify.problems, classify.examples_of, "fedge.task.classifier:classifier_for"),
    "instruct": BuiltIn("instruct", instruct.problems, instruct.dialogues_of, "fedge.task.instruction:tuner_for"),
}


@cache
def installed() -> dict[str, Any]:
    """Custom kinds registered under ``fedge.tasks`` (loaded once; a built-in name cannot be replaced)."""
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name not in BUILT_IN}


def kind_of(name: str) -> TaskKind:
    """The task kind called ``name``, or ``ValueError`` listing the kinds this machine has."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    entry = installed().get(name)
    if entry is None:
        known = ", ".join([*BUILT_IN, *installed()])
        raise ValueError(f"task.kind: {name!r} is not a task kind here; choose one of {known} (custom kinds are installed as '{ENTRY_POINT_GROUP}' entry points)")
    return entry.load()


def task_problems(spec: TaskSpec) -> list[str]:
    """Every problem with a task spec, each naming its key (empty when it is valid)."""
    try:
        kind = kind_of(spec.kind)
    except ValueError as error:
        return [str(error)]
    return kind.problems(spec)
