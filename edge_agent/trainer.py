"""Local LoRA training on cached frozen-prefix states: a plain loop over random mini-batches."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_agent.memory import peak_bytes, reset_peak
from fedge.task.classifier import EncodedExamples, FrozenPrefix

OPTIMIZERS = ("adamw", "sgd")


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
) -> TrainResult:
    """``steps`` optimizer steps (AdamW, or plain SGD) over random batches of the local data; returns the mean
    loss, the time per step and the peak memory of the training alone."""
    model = runner.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    step_rule = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0) if optimizer == "adamw" else torch.optim.SGD(params, lr=learning_rate)
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
        losses.append(loss.item())
    elapsed = time.perf_counter() - started
    model.eval()
    return TrainResult(
        loss=sum(losses) / len(losses),
        steps=steps,
        seconds_per_step=elapsed / steps,
        peak_memory_bytes=peak_bytes(device),
    )
