"""Local LoRA training on cached frozen-prefix states: a plain loop over random mini-batches."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil
import torch
import torch.nn.functional as F

from fedge.task.classifier import EncodedExamples, FrozenPrefix


@dataclass(frozen=True)
class TrainResult:
    loss: float
    steps: int
    seconds_per_step: float
    peak_memory_bytes: int


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    return int(psutil.Process().memory_info().rss)


def train_local(
    runner: FrozenPrefix,
    prefix: torch.Tensor,
    data: EncodedExamples,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> TrainResult:
    """``steps`` AdamW steps over random batches of the local data; returns the mean loss."""
    model = runner.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    device = str(prefix.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    losses = []
    started = time.perf_counter()
    for _ in range(steps):
        rows = torch.randperm(len(prefix), generator=generator)[:batch_size]
        logits = runner.label_logits(prefix[rows], data.lengths[rows])
        loss = F.cross_entropy(logits.float(), data.labels[rows].to(logits.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - started
    model.eval()
    return TrainResult(
        loss=sum(losses) / len(losses),
        steps=steps,
        seconds_per_step=elapsed / steps,
        peak_memory_bytes=peak_memory_bytes(device),
    )
