"""Checks an adapter update must pass before it may touch the global model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.wire import AdapterUpdate


class UpdateRejected(Exception):
    """An update refused for ``reason`` (sent back to the agent in a Reject)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Expectation:
    """What the current round expects from one agent."""

    run_id: str
    round: int
    deadline_unix: float
    shapes: dict[str, tuple[int, int]]
    scaling: float


def validate_update(update: AdapterUpdate, expectation: Expectation | None, already_received: bool, now: float) -> None:
    """Raise ``UpdateRejected`` naming the first problem; return quietly for a usable update."""
    if expectation is None:
        raise UpdateRejected("unknown_agent", f"{update.agent_id} has no assignment in this run")
    if update.run_id != expectation.run_id:
        raise UpdateRejected("wrong_run", f"run {update.run_id!r} is not {expectation.run_id!r}")
    if update.round != expectation.round:
        raise UpdateRejected("wrong_round", f"update for round {update.round}, current round is {expectation.round}")
    if already_received:
        raise UpdateRejected("duplicate", f"{update.agent_id} already sent its round-{update.round} update")
    if now > expectation.deadline_unix:
        raise UpdateRejected("late", f"arrived {now - expectation.deadline_unix:.1f} s after the round deadline")
    if update.num_examples < 1:
        raise UpdateRejected("bad_count", "num_examples must be positive")
    missing = sorted(set(expectation.shapes) - set(update.tensors))
    unexpected = sorted(set(update.tensors) - set(expectation.shapes))
    if missing or unexpected:
        raise UpdateRejected("bad_keys", f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, shape in expectation.shapes.items():
        value = update.tensors[key]
        if tuple(value.shape) != shape:
            raise UpdateRejected("bad_shape", f"{key}: {tuple(value.shape)} instead of {shape}")
        if not np.isfinite(value).all():
            raise UpdateRejected("not_finite", f"{key} holds NaN or Inf")
