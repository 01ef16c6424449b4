"""What an agent trains in during a run: the loaded backbone with the strategy's adapter on it, the task model, the
frozen-prefix caches of its data and the batches' order, and (where the strategy keeps it) the optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedge.edge_agent.trainer import BatchSampler, TaskModel
from fedge.strategies import ClientRecipe
from fedge.task.prefix import PrefixCache
from fedge.wire import LoraSpec


@dataclass
class Session:
    """A loaded backbone with what the strategy trains on it and the frozen-prefix caches of the local data."""

    key: tuple
    lora: LoraSpec
    recipe: ClientRecipe
    model: torch.nn.Module
    task: TaskModel
    cache: PrefixCache
    sampler: BatchSampler
    applied_rounds: set[int]  # rounds whose frozen-weight changes this backbone holds
    loss_scaling: bool = False  # fp16 activations: scale the loss so gradients do not underflow
    held_out: PrefixCache | None = None  # evaluation data, when the agent was given some
    ahead: list[int] = field(default_factory=list)  # rows the next round trains on, still to cache while idle
    step_rule: torch.optim.Optimizer | None = None  # kept across rounds where the strategy keeps its optimizer state
    round_start: dict[str, torch.Tensor] = field(default_factory=dict)  # full weights as this round began (the change is taken against them)

