"""Local LoRA training on cached frozen-prefix states: a plain loop over random mini-batches."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from galore_torch import GaLoreAdamW

from edge_agent.memory import peak_bytes, reset_peak
from fedge.task.classifier import EncodedExamples, FrozenPrefix

OPTIMIZERS = ("adamw", "sgd", "galore")


@dataclass(frozen=True)
class TrainResult:
    loss: float
    steps: int
    seconds_per_step: float
    peak_memory_bytes: int


def train_local(
    runner: FrozenPrefix,
    prefix: torch.Tensor,
    data: EncodedExamples,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    optimizer: str = "adamw",
    galore_groups: list[dict] | None = None,
) -> TrainResult:
    """``steps`` optimizer steps (AdamW, plain SGD, or GaLore-AdamW over ``galore_groups``) over random batches of
    the local data; returns the mean loss, the time per step and the peak memory of the training alone."""
    model = runner.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    step_rule = make_optimizer(optimizer, params, learning_rate, galore_groups)
    generator = torch.Generator().manual_seed(seed)
    device = str(prefix.device)
    reset_peak(device)
    model.train()
    losses = []
    started = time.perf_counter()
    for _ in range(steps):
        rows = torch.randperm(len(prefix), generator=generator)[:batch_size]
        logits = runner.label_logits(prefix[rows], data.lengths[rows])
        loss = F.cross_entropy(logits.float(), data.labels[rows].to(logits.device))
        step_rule.zero_grad(set_to_none=True)
        loss.backward()
        step_rule.step()
        if optimizer == "galore" and not losses:
            check_galore_active(step_rule)
        losses.append(loss.item())
    elapsed = time.perf_counter() - started
    model.eval()
    return TrainResult(
        loss=sum(losses) / len(losses),
        steps=steps,
        seconds_per_step=elapsed / steps,
        peak_memory_bytes=peak_bytes(device),
    )


def make_optimizer(name: str, params: list[torch.nn.Parameter], learning_rate: float, galore_groups: list[dict] | None = None) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate)
    if name == "galore":
        if not galore_groups or any("rank" not in group for group in galore_groups):
            # GaLoreAdamW silently runs plain AdamW on a group without "rank": refuse instead
            raise ValueError("galore needs parameter groups that each name a projection rank")
        return GaLoreAdamW(galore_groups, lr=learning_rate, weight_decay=0.0, no_deprecation_warning=True)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def check_galore_active(optimizer: torch.optim.Optimizer) -> None:
    """After a step: every projected matrix must hold a projector and moments smaller than the matrix itself."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if param.grad is not None and ("projector" not in state or state["exp_avg"].numel() >= param.numel()):
                raise RuntimeError(f"GaLore projection is not active on a {tuple(param.shape)} matrix (rank {group.get('rank')})")
