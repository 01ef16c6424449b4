"""Strategies that change the frozen weights (FLoRA, FedEx-LoRA) record each round's change as factored
``base_delta`` entries in the state; a client gets every change newer than the last round it merged, so a device
that missed rounds or restarted catches up exactly."""

from __future__ import annotations

from fedge.strategies.base import ClientInfo, State, base_changes, delta_key, delta_round
from fedge.strategies.factored import LowRank


def record_change(state: State, module: str, round_number: int, change: LowRank) -> None:
    state[delta_key(module, round_number, "left")] = change.left.astype("float32")
    state[delta_key(module, round_number, "right")] = change.right.astype("float32")


def changes_since(state: State, client: ClientInfo) -> State:
    """The base changes of rounds after ``client.base_version``, under their state keys."""
    return {key: value for key, value in base_changes(state).items() if delta_round(key) > client.base_version}
