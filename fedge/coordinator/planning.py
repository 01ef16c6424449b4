"""The fleet's plan during a run: the first plan of everyone registered, then each late or changed device planned
alone against it, and ``plan.json`` kept up to date (rewritten at most once per round)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.grouping import GroupPlan
from fedge.coordinator.plan_report import plan_to_dict
from fedge.coordinator.plans import DevicePlan, FleetMember, FleetPlan, PlannerOptions
from fedge.coordinator.costing import default_calibrations
from fedge.coordinator.planner import plan_fleet, plan_joiner
from fedge.coordinator.registry import AgentRecord
from fedge.coordinator.reports import RunDirectory
from fedge.profiles.model_shape import ModelShape
from fedge.quantization.backbone import BackboneSource, load_tokenizer
from fedge.task.classifier import scoring_cost

log = logging.getLogger(__name__)


def with_task_costs(options: PlannerOptions, config: CoordinatorConfig, backbone: BackboneSource) -> PlannerOptions:
    """Classify labels of several tokens: the planner costs one sequence per label and the loss on their tokens."""
    if config.task.kind != "classify" or "sequences_per_example" in config.planner:
        return options
    sequences, tokens = scoring_cost(load_tokenizer(backbone), config.task.labels)
    return replace(options, sequences_per_example=sequences, answer_share=min(1.0, tokens / options.seq_len)) if sequences > 1 else options


def member_of(record: AgentRecord) -> FleetMember:
    return FleetMember(record.agent_id, record.profile, record.num_examples, record.label_histogram, record.pin)


class FleetPlanning:
    def __init__(self, shape: ModelShape, options: PlannerOptions, run_dir: RunDirectory):
        self.shape = shape
        self.options = options
        self.run_dir = run_dir
        self.fleet: FleetPlan | None = None  # the plan of the fleet as first planned
        self.rank_sum = 0  # Σ top ranks of every planned device, joiners included
        self.plans: dict[str, DevicePlan] = {}  # every device's plan or refusal, joiners included
        self._changed = False  # a joiner was planned since plan.json was written
        self._calibrations = default_calibrations()

    @property
    def planned(self) -> bool:
        return self.fleet is not None

    @property
    def groups(self) -> list[GroupPlan]:
        return list(self.fleet.groups) if self.fleet is not None else []

    def plan_everyone(self, records: list[AgentRecord]) -> tuple[list[DevicePlan], float]:
        """Each record's plan (in order) and the seconds planning took."""
        started = time.perf_counter()
        fleet = plan_fleet([member_of(record) for record in records], self.shape, self.options, self._calibrations)
        seconds = time.perf_counter() - started
        log.info("planned %d devices in %.2f s: %d can train (median round %.2f s)", len(records), seconds, len(fleet.feasible()), fleet.median_round_seconds)
        self.fleet = fleet
        self.plans = {record.agent_id: plan for record, plan in zip(records, fleet.devices)}
        self.rank_sum = sum(max(plan.ranks) for plan in fleet.feasible())
        self.write()
        return fleet.devices, seconds

    def plan_joiner(self, record: AgentRecord, check: Callable[[DevicePlan], None]) -> DevicePlan:
        """A device that joined (or changed) after the fleet was planned, against the plan's median, touching no
        one else's plan; ``check`` may refuse it (``ValueError``) before it counts."""
        plan = plan_joiner(member_of(record), self.shape, self.options, self.fleet.median_round_seconds, self.rank_sum, self._calibrations)
        check(plan)
        self.plans[record.agent_id] = plan
        self._changed = True
        if plan.feasible:
            self.rank_sum += max(plan.ranks)
        return plan

    def write(self) -> None:
        """plan.json: the fleet's plan with every later joiner's."""
        self.run_dir.write_plan(plan_to_dict(replace(self.fleet, devices=list(self.plans.values()))))
        self._changed = False

    def write_if_changed(self) -> None:
        if self._changed:
            self.write()
