"""Local LoRA training on cached frozen-prefix states: a plain loop over shuffled mini-batches.

``BatchSampler`` deals the local rows in a shuffled order that carries on across rounds (every row once per epoch,
reshuffled each epoch), so the rows the next round will train on are known ahead and can be cached while the agent
waits for the coordinator.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from galore_torch import GaLoreAdamW

from fedge.edge_agent.memory import peak_bytes, reset_peak
from fedge.task.prefix import PrefixCache

OPTIMIZERS = ("adamw", "sgd", "galore")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    loss: float
    steps: int
    seconds_per_step: float
    peak_memory_bytes: int
    loss_scale: float = 1.0  # the loss scale after the last step (1 without loss scaling)
    skipped_steps: int = 0  # steps loss scaling skipped because a gradient overflowed
    prefix_seconds: float = 0.0  # time spent caching frozen-prefix states of rows not cached before
    prefix_rows: int = 0  # how many rows that was


class DeadlinePassed(ValueError):
    """A round's deadline leaves no time for a single step."""


class TaskModel(Protocol):
    """What the trainer needs of a task: the model it trains and the loss of some rows of a cached dataset."""

    model: torch.nn.Module

    def loss(self, cache: PrefixCache, rows: torch.Tensor) -> torch.Tensor: ...


class BatchSampler:
    """Row indices of an ``n``-row dataset in shuffled epochs, dealt batch by batch across calls; a batch never spans
    two epochs (an epoch's last rows that do not fill a batch are left for the next shuffle)."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("no rows to sample")
        self.n = n
        self._generator = torch.Generator().manual_seed(seed)
        self._epochs: deque[torch.Tensor] = deque()
        self._next = 0

    def upcoming(self, batches: int, batch_size: int) -> list[torch.Tensor]:
        """The next ``batches`` batches ``take`` will deal, without dealing them (for caching ahead of need)."""
        size = min(batch_size, self.n)
        epoch, position, out = 0, self._next, []
        for _ in range(batches):
            if position + size > self.n:
                epoch, position = epoch + 1, 0
            out.append(self._epoch(epoch)[position : position + size])
            position += size
        return out

    def take(self, batch_size: int) -> torch.Tensor:
        rows = self.upcoming(1, batch_size)[0]
        if self._next + len(rows) > self.n:
            self._epochs.popleft()
            self._next = 0
        self._next += len(rows)
        return rows

    def _epoch(self, index: int) -> torch.Tensor:
        while len(self._epochs) <= index:
            self._epochs.append(torch.randperm(self.n, generator=self._generator))
        return self._epochs[index]


def train_local(
    task: TaskModel,
    cache: PrefixCache,
    sampler: BatchSampler,
    steps: int,
    batch_size: int,
    learning_rate: float,
    optimizer: str = "adamw",
    galore_groups: list[dict] | None = None,
    loss_scaling: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    stop_at: float | None = None,
    proximal_mu: float = 0.0,
    step_rule: torch.optim.Optimizer | None = None,
) -> TrainResult:
    """``steps`` optimizer steps (AdamW, plain SGD, or GaLore-AdamW over ``galore_groups``) over the sampler's next
    batches of the cached data; rows not cached yet are cached first. Returns the mean loss, the time per step and
    the peak memory of the training alone, and the time caching took.
    ``on_step(step, loss)`` is called after every step (e.g. a ``StepProgress``). With ``stop_at`` (Unix time), no
    step starts that would, at the mean step time so far, end after it: fewer steps are taken and counted in the
    result. ``DeadlinePassed`` if not even the first step can start before it.

    With ``loss_scaling`` (fp16 activations) the loss is scaled up before backward so small gradients do not
    underflow, and a step whose gradients overflowed is skipped while the scale backs off (``torch.amp.GradScaler``);
    the trained parameters themselves must be fp32 (peft's LoRA factors are).

    With ``proximal_mu`` μ > 0 (FedProx, Li et al. 2020) each step minimises loss + μ/2·‖w − w₀‖², w the trainable
    weights and w₀ their values when this call began (the round's starting point): the device's drift from the
    global state costs, which damps client drift on non-IID shards. The reported loss is the task's alone.

    ``step_rule``: an optimizer kept from earlier rounds (its state carries over) instead of a fresh one."""
    model = task.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if loss_scaling and any(p.dtype != torch.float32 for p in params):
        raise ValueError("loss scaling needs fp32 trainable parameters; train a 16-bit base's weights from an fp32 base")
    step_rule = step_rule or make_optimizer(optimizer, params, learning_rate, galore_groups)
    anchors = [param.detach().clone() for param in params] if proximal_mu > 0 else []
    device = str(params[0].device)
    scaler = torch.amp.GradScaler(params[0].device.type, enabled=loss_scaling)
    batches = [sampler.take(batch_size) for _ in range(steps)]
    started = time.perf_counter()
    newly_cached = len(cache.fill(torch.cat(batches)))  # the rows this call trains on that no earlier call (or prefetch) cached
    prefix_seconds = time.perf_counter() - started
    reset_peak(device)
    model.train()
    losses = []
    skipped, galore_checked = 0, False
    started = time.perf_counter()
    for rows in batches:
        if stop_at is not None and time.time() + ((time.perf_counter() - started) / len(losses) if losses else 0.0) > stop_at:
            if not losses:
                raise DeadlinePassed(f"the round's deadline passed {time.time() - stop_at:.1f} s before training could start")
            break
        loss = task.loss(cache, rows)
        step_rule.zero_grad(set_to_none=True)
        objective = loss + proximal_mu / 2 * sum(torch.sum(torch.square(param - anchor)) for param, anchor in zip(params, anchors)) if anchors else loss
        scaler.scale(objective).backward()
        scale = scaler.get_scale()
        scaler.step(step_rule)
        scaler.update()
        if scaler.get_scale() < scale:  # the scale backs off only after an overflow, whose step was skipped
            skipped += 1
        elif optimizer == "galore" and not galore_checked:
            check_galore_active(step_rule)
            galore_checked = True
        losses.append(loss.item())
        if on_step is not None:
            on_step(len(losses), losses[-1])
    elapsed = time.perf_counter() - started
    model.eval()
    return TrainResult(
        loss=sum(losses) / len(losses),
        steps=len(losses),
        seconds_per_step=elapsed / len(losses),
        peak_memory_bytes=peak_bytes(device),
        loss_scale=scaler.get_scale() if loss_scaling else 1.0,
        skipped_steps=skipped,
        prefix_seconds=prefix_seconds,
        prefix_rows=newly_cached,
    )


class StepProgress:
    """Logs training progress at the first and last step and every ``every_s`` seconds between: step, loss,
    time per step and what is left (plain log lines, readable in a file)."""

    def __init__(self, label: str, total_steps: int, every_s: float = 2.0):
        self.label = label
        self.total = total_steps
        self.every_s = every_s
        self.started = self.last = time.monotonic()
        self.step = 0  # the last step done: what the device's heartbeats report

    def __call__(self, step: int, loss: float) -> None:
        self.step = step
        now = time.monotonic()
        if step not in (1, self.total) and now - self.last < self.every_s:
            return
        self.last = now
        per_step = (now - self.started) / step
        log.info("%s: step %d/%d, loss %.4f, %.2f s/step, %.0f s left", self.label, step, self.total, loss, per_step, per_step * (self.total - step))


class Slowed:
    """An ``on_step`` that makes each step take ``factor`` times as long as it did (sleeping after it), then calls
    ``inner``: a slower device emulated on this one, for field trials."""

    def __init__(self, inner: Callable[[int, float], None], factor: float):
        self.inner, self.factor, self.last = inner, factor, time.monotonic()

    def __call__(self, step: int, loss: float) -> None:
        time.sleep((self.factor - 1) * (time.monotonic() - self.last))
        self.last = time.monotonic()
        self.inner(step, loss)


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


def reused_optimizer(kept: torch.optim.Optimizer | None, name: str, model: torch.nn.Module, learning_rate: float, galore_groups: list[dict] | None, galore_scale: float) -> torch.optim.Optimizer:
    """The optimizer kept from earlier rounds of a run (its moments and GaLore's projectors with it), or a new one
    over ``model``'s trainable parameters, set to this round's learning rate and GaLore scale."""
    if kept is None:
        kept = make_optimizer(name, [param for param in model.parameters() if param.requires_grad], learning_rate, galore_groups)
    for group in kept.param_groups:
        group["lr"] = learning_rate
        if "scale" in group:
            group["scale"] = galore_scale
    return kept


def check_galore_active(optimizer: torch.optim.Optimizer) -> None:
    """After a step: every projected matrix must hold a projector and moments smaller than the matrix itself."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if param.grad is not None and ("projector" not in state or state["exp_avg"].numel() >= param.numel()):
                raise RuntimeError(f"GaLore projection is not active on a {tuple(param.shape)} matrix (rank {group.get('rank')})")
