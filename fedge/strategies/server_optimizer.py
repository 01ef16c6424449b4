"""Server optimisers: the round's aggregate change is a pseudo-gradient, stepped with momentum or an adaptive rate.

For every tensor the strategy keeps from round to round, Δ = x̄ − x is the strategy's aggregate x̄ minus the state
x the round started from. Then, per coordinate (Hsu et al. 2019 for FedAvgM; Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2, for the adaptive ones):

    fedavgm   v ← β₁·v + Δ                                       x ← x + η·v
    fedadam   m ← β₁·m + (1 − β₁)·Δ    v ← β₂·v + (1 − β₂)·Δ²       x ← x + η·m / (√v + τ)
    fedyogi   m as fedadam             v ← v − (1 − β₂)·Δ²·sign(v − Δ²)   x as fedadam

with m₀ = 0 and, as Reddi et al. start them, v₀ = τ² for the adaptive rules (no bias correction). FedAvgM with
η = 1 and β₁ = 0 is the strategy's own aggregate; ``none`` takes x̄ as it is. Tensors the strategy does not keep
(its ``base_delta`` history) and tensors whose shape changed are taken from x̄ as they are, and a changed tensor's
moments start again. The moments are part of the round's state: the coordinator saves them with each global and
a resumed run continues from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.strategies.base import State, base_changes

SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadam", "fedyogi")
# η and β₁ where the config sets none, tuned on examples/trial-optimizers.yaml (README, "Server optimisers and FedProx")
RULE_DEFAULTS = {"none": (1.0, 0.0), "fedavgm": (1.0, 0.5), "fedadam": (3e-2, 0.9), "fedyogi": (3e-2, 0.9)}
_SEPARATOR = "::"


@dataclass(frozen=True)
class ServerOptimizer:
    """The rule and its settings; a config's are checked against ``fedge.coordinator.config_schema.ServerOptimizerSection``."""

    name: str = "none"
    learning_rate: float | None = None  # η (None: the rule's RULE_DEFAULTS)
    beta1: float | None = None  # β₁: momentum (fedavgm) or the first moment's decay (None: the rule's RULE_DEFAULTS)
    beta2: float = 0.99  # β₂: the second moment's decay (fedadam, fedyogi)
    tau: float = 1e-3  # τ: adaptivity; a larger τ steps more like SGD with momentum

    @property
    def rate(self) -> float:
        """η: as set, or the rule's default."""
        return RULE_DEFAULTS.get(self.name, (1.0, 0.0))[0] if self.learning_rate is None else self.learning_rate

    @property
    def momentum(self) -> float:
        """β₁: as set, or the rule's default."""
        return RULE_DEFAULTS.get(self.name, (1.0, 0.0))[1] if self.beta1 is None else self.beta1


class ServerMoments:
    """The optimiser's moments per tensor, updated by ``step``; saved and restored as flat tensors."""

    def __init__(self, optimizer: ServerOptimizer, tensors: State | None = None):
        self.optimizer = optimizer
        self.first: State = {}
        self.second: State = {}
        for name, value in (tensors or {}).items():
            kind, _, key = name.partition(_SEPARATOR)
            (self.first if kind == "m" else self.second)[key] = value.astype(np.float32)

    def step(self, start: State, aggregated: State) -> State:
        """The next state: ``aggregated`` with every kept tensor stepped from ``start`` (module docstring)."""
        if self.optimizer.name == "none":
            return aggregated
        history = base_changes(aggregated)
        out = dict(aggregated)
        for key, value in aggregated.items():
            before = start.get(key)
            if key in history or before is None or before.shape != value.shape:
                self.first.pop(key, None)
                self.second.pop(key, None)
                continue
            change = value.astype(np.float64) - before
            out[key] = (before + self._move(key, change)).astype(value.dtype)
        return out

    def _move(self, key: str, change: np.ndarray) -> np.ndarray:
        rule, eta, beta1, beta2, tau = (getattr(self.optimizer, name) for name in ("name", "rate", "momentum", "beta2", "tau"))
        first = self._kept(self.first, key, change, 0.0)
        if rule == "fedavgm":
            first = beta1 * first + change
            self.first[key] = first.astype(np.float32)
            return eta * first
        second = self._kept(self.second, key, change, tau**2)
        first = beta1 * first + (1 - beta1) * change
        squared = np.square(change)
        second = beta2 * second + (1 - beta2) * squared if rule == "fedadam" else second - (1 - beta2) * squared * np.sign(second - squared)
        self.first[key], self.second[key] = first.astype(np.float32), second.astype(np.float32)
        return eta * first / (np.sqrt(second) + tau)

    @staticmethod
    def _kept(moments: State, key: str, like: np.ndarray, start: float) -> np.ndarray:
        value = moments.get(key)
        return np.full(like.shape, start) if value is None or value.shape != like.shape else value.astype(np.float64)

    def to_tensors(self) -> State:
        """Flat tensors for a safetensors file (``m::key``, ``v::key``); the constructor reads them back."""
        return {**{f"m{_SEPARATOR}{key}": value for key, value in self.first.items()}, **{f"v{_SEPARATOR}{key}": value for key, value in self.second.items()}}
