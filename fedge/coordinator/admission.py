"""Who may take part: hellos checked, devices registered and planned (late joiners alone, against the plan), the
backbone packaged for every planned quantization, and unregistered devices asked — at most once per
``UNKNOWN_REPLY_S`` each — to say hello."""

from __future__ import annotations

import logging
import time

from fedge.coordinator.boundary import FleetKeys, RefusalLog
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.plans import DevicePlan, Pin
from fedge.coordinator.planning import FleetPlanning
from fedge.coordinator.registry import AgentRecord, Registry
from fedge.coordinator.sender import Sender
from fedge.coordinator.validation import SITE_CLASS, profile_problems
from fedge.coordinator.work import WorkOrders
from fedge.task.classify import histogram
from fedge.wire import Hello, LoraSpec, topics

log = logging.getLogger(__name__)

UNKNOWN_REPLY_S = 5.0  # at most one "send hello" reply per unregistered device in this long


class Admission:
    def __init__(self, config: CoordinatorConfig, registry: Registry, planning: FleetPlanning, work: WorkOrders, sender: Sender, refusals: RefusalLog, fleet: FleetKeys | None, pin_limits: Pin):
        """``pin_limits``: the global adapter's rank and depth, which a site is pinned to."""
        self.config = config
        self.registry = registry
        self.planning = planning
        self.work = work
        self.sender = sender
        self.refusals = refusals
        self.fleet = fleet
        self.pin_limits = pin_limits
        self.told_unknown: dict[str, float] = {}  # unregistered devices -> when they were last asked for a hello
        self._asked_for_labels: set[str] = set()  # devices asked for their label counts (enrolled ones only)

    def on_hello(self, hello: Hello) -> None:
        config, strategy = self.config, self.work.strategy
        problems = profile_problems(hello, len(config.task.labels))
        if (hello.profile.device_class == SITE_CLASS) != (hello.agent_id in config.sites):
            problems.append(f"device_class: {SITE_CLASS!r} is for the site aggregators this coordinator lists in sites:, and only them")
        if problems:
            return self.reject(hello.agent_id, "bad_profile", "; ".join(problems))
        if not hello.label_counts and self._needs_label_counts() and hello.agent_id not in self._asked_for_labels:
            self._asked_for_labels.add(hello.agent_id)  # its next hello registers it, with its counts or without
            return self.sender.reject(hello.agent_id, "label_counts_wanted", f"{strategy.name}{' with groups' if self.work.options.groups else ''} uses devices' label counts; say hello with them, or without to decline")
        known = self.registry.get(hello.agent_id)
        keep = known.plan if known is not None and known.profile == hello.profile and known.num_examples == hello.num_examples else None
        pin = self.pin_limits if hello.agent_id in config.sites else config.pin_for(hello.profile.name, hello.profile.device_class)
        counts = histogram(hello.label_counts, config.task) if hello.label_counts else (known.label_histogram if keep else ())
        record = AgentRecord(hello.agent_id, hello.profile, hello.num_examples, counts, pin, keep, base_version=hello.base_version)
        is_new = self.registry.register(record)
        log.info("%s %s: %s, %d examples", "registered" if is_new else "re-registered", hello.agent_id, hello.profile.name, hello.num_examples)
        if self.planning.planned and record.plan is None:  # joined (or changed) after the fleet was planned
            try:
                self.give_plan(record, self.planning.plan_joiner(record, self._check_ranks))
            except (ValueError, ArithmeticError) as error:
                self.registry.remove(hello.agent_id)
                return self.reject(hello.agent_id, "infeasible", f"cannot plan this device: {error}")
        if keep is not None:  # a known device said hello again: it restarted and lost its work
            self.sender.resend(hello.agent_id, "it restarted")

    def _check_ranks(self, plan: DevicePlan) -> None:
        if plan.feasible:
            self.work.strategy.check_ranks([LoraSpec(tuple(self.work.options.target_modules), plan.layers, plan.ranks, self.work.options.scaling)])

    def _needs_label_counts(self) -> bool:
        return self.work.strategy.needs_label_histograms or bool(self.work.options.groups)

    def plan_everyone(self) -> float:
        """Plan every registered device; returns the seconds planning took."""
        records = self.registry.all()
        plans, seconds = self.planning.plan_everyone(records)
        for record, plan in zip(records, plans):
            self.give_plan(record, plan)
        self.work.strategy.check_ranks([self.work.lora_spec(record) for record in self.registry.all() if record.plan is not None])
        return seconds

    def give_plan(self, record: AgentRecord, plan: DevicePlan) -> bool:
        """Hand a device its plan (and package its backbone), or refuse it; whether it can take part."""
        if not plan.feasible:
            self.registry.remove(record.agent_id)
            self.reject(record.agent_id, "infeasible", plan.reason)
            return False
        record.plan = plan
        self.work.backbones.offer({plan.quantization})
        log.debug("planned %s (%s): %s, depth %d, ranks %s, batch %d, %d steps; predicted %.0f MiB of %.0f MiB, %.2f s/step", record.agent_id, plan.profile_name, plan.quantization, plan.depth, "/".join(map(str, plan.ranks)), plan.batch_size, plan.local_steps, plan.memory.total / 2**20, plan.available_bytes / 2**20, plan.step_seconds)
        return True

    def on_unknown(self, agent_id: str) -> None:
        """A registered-only message (a heartbeat, say) from a device this coordinator does not know: e.g. it
        restarted with --resume. Asked for its hello, at most once per ``UNKNOWN_REPLY_S``."""
        now = time.monotonic()
        if now - self.told_unknown.get(agent_id, -UNKNOWN_REPLY_S) >= UNKNOWN_REPLY_S:
            self.told_unknown[agent_id] = now  # one entry per enrolled device at most
            self.sender.reject(agent_id, "unknown_agent", "not registered with this coordinator; send hello")

    def drop_revoked(self) -> list[str]:
        """Devices revoked since the last look (``fedge enroll --revoke``) take no further part."""
        if self.fleet is None:
            return []
        revoked = self.fleet.refresh()
        for agent_id in revoked:
            self.registry.remove(agent_id)
            self.sender.forget(agent_id)
        return revoked

    def reject(self, agent_id: str, reason: str, detail: str, round_number: int | None = None, ref: str | None = None) -> None:
        """Answer an enrolled device's bad message; logged like every refusal (rate-limited: even an enrolled
        device that floods cannot fill the log)."""
        self.refusals.refuse(reason, f"{agent_id}: {detail}", topics.uplink(agent_id))
        self.sender.reject(agent_id, reason, detail, round_number, ref)
