"""What each device is told to do: its assignment, the view of the global state it starts from, and what its update
must then look like."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from fedge.coordinator.backbones import Backbones
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.plans import PlannerOptions
from fedge.coordinator.registry import AgentRecord
from fedge.coordinator.validation import Expectation
from fedge.strategies import ClientInfo, Strategy
from fedge.wire import Assignment, GlobalState, LoraSpec


class WorkOrders:
    def __init__(self, config: CoordinatorConfig, options: PlannerOptions, strategy: Strategy, backbones: Backbones):
        self.config = config
        self.options = options
        self.strategy = strategy
        self.backbones = backbones

    def lora_spec(self, record: AgentRecord) -> LoraSpec:
        """What the device trains; a site aggregates a group of devices, so it gets the global rank on every layer
        at scaling 1, the state's own convention (as HierFedLoRA's groups are combined)."""
        plan = record.plan
        return LoraSpec(tuple(self.options.target_modules), plan.layers, plan.ranks, 1.0 if record.agent_id in self.config.sites else self.options.scaling)

    def assignment(self, record: AgentRecord, round_number: int, deadline: float, prepare_only: bool = False) -> Assignment:
        plan, config = record.plan, self.config
        return Assignment(
            run_id=config.run_id,
            round=round_number,
            agent_id=record.agent_id,
            backbone=self.backbones.spec_for(record.agent_id, plan.quantization),
            lora=self.lora_spec(record),
            task=config.task,
            local_steps=plan.local_steps,
            batch_size=plan.batch_size,
            learning_rate=self.strategy.device_learning_rate(config.learning_rate),
            deadline_unix=deadline,
            seed=config.seed + round_number,
            optimizer=self.options.optimizer,
            gradient_checkpointing=plan.gradient_checkpointing,
            predicted_peak_bytes=plan.memory.total,
            predicted_step_seconds=plan.step_seconds,
            strategy=self.strategy.name,
            run_seed=config.seed,
            prefix_cache_bytes=plan.memory.cached_prefix,
            prepare_only=prepare_only,
            clip_norm=float(config.privacy.get("clip_norm", 0.0)),
            noise_multiplier=float(config.privacy.get("noise_multiplier", 0.0)),
            proximal_mu=config.proximal_mu,
            galore_scale=self.strategy.galore_scale,
        )

    def _client(self, record: AgentRecord) -> ClientInfo:
        return ClientInfo(record.agent_id, self.lora_spec(record), record.base_version)

    def view_key(self, record: AgentRecord) -> Hashable:
        """Devices with equal keys get the same view of a state, so it is built, encoded and signed once for them."""
        return self.strategy.view_key(self._client(record))

    def state(self, record: AgentRecord, arrays: dict[str, np.ndarray], round_number: int, final: bool, more_runs: bool = False) -> GlobalState:
        """The strategy's view for this device (its own layers, ranks and scaling, and base changes it lacks), naming
        no device: every device with the same ``view_key`` gets the same state. ``more_runs``: on a final state,
        another run follows for the same devices."""
        view = self.strategy.client_view(arrays, self._client(record))
        return GlobalState(self.config.run_id, round_number, "", final, {}, view, more_runs=final and more_runs)

    def expectation(self, record: AgentRecord, round_number: int, deadline: float, arrays: dict[str, np.ndarray]) -> Expectation:
        spec = self.lora_spec(record)
        return Expectation(self.config.run_id, round_number, deadline, self.strategy.upload_shapes(arrays, spec), spec.scaling)
