"""The coordinator's round loop: register, assign, collect until the deadline, aggregate, evaluate, record.

Everything runs on one thread that reads whole messages from the transport's queue. Only enrolled devices' signed
messages reach the handlers (``fedge.coordinator.boundary``); anything else is counted and logged, never answered. An
authenticated but bad, late or duplicate message is answered with a Reject (queued, never waited on) and the round
goes on with the valid updates; a device silent for the grace period stops holding up a round.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from fedge.coordinator.aggregation_guard import all_finite, capped_weights, update_norm
from fedge.coordinator.boundary import FleetKeys, RefusalLog, coordinator_codec
from fedge.coordinator.buffered import UpdateBuffer, moved_by
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.delivery import BackboneServer
from fedge.coordinator.evaluation import GlobalModel
from fedge.coordinator.plan_report import plan_to_dict
from fedge.coordinator.grouping import GroupPlan
from fedge.coordinator.planner import DevicePlan, FleetMember, FleetPlan, Pin, PlannerOptions, default_calibrations, plan_fleet, plan_joiner
from fedge.coordinator.registry import AgentRecord, Registry
from fedge.coordinator.reports import RunDirectory
from fedge.coordinator.validation import SITE_CLASS, Expectation, UpdateRejected, profile_problems, validate_update
from fedge.privacy import DEFAULT_DELTA, epsilon
from fedge.strategies import ClientInfo, ClientUpdate
from fedge.task.classifier import scoring_cost
from fedge.task.classify import histogram
from fedge.task.kinds import kind_of
from fedge.task.data import read_rows
from fedge.transport import BrokerConfig, MqttTransport, Received
from fedge.trust.enrolment import coordinator_credentials
from fedge.wire import AdapterUpdate, Assignment, BackboneSpec, Evaluation, GlobalState, Heartbeat, Hello, Limits, LoraSpec, Reject
from fedge.wire import topics
from fedge.profiles.model_shape import load_model_shape
from fedge.quantization.backbone import locate_backbone
from fedge.quantization.package import BackbonePackage, chunk_bytes_for, package_backbone

log = logging.getLogger(__name__)

UNKNOWN_REPLY_S = 5.0  # at most one "send hello" reply per unregistered device in this long


@dataclass
class _GroupRun:
    """A HierFedLoRA group during one global round (or the whole fleet as one group, τ = 1)."""

    index: int
    members: list[AgentRecord]
    frequency: int  # exchanges per global round (τ_g)
    state: dict[str, np.ndarray]
    exchange: int = 0  # exchanges opened so far
    waiting: set[str] = field(default_factory=set)  # members sent work in the open exchange
    pending: set[str] = field(default_factory=set)  # of those, the ones still expected (no update, refusal or silence yet)
    examples: dict[str, int] = field(default_factory=dict)  # contributors' dataset sizes, to weigh the group globally
    done: bool = False


@dataclass(frozen=True)
class RunSummary:
    run_dir: str
    rounds: list[dict]


class Coordinator:
    def __init__(self, config: CoordinatorConfig, resume: bool = False, on_round=None):
        self.config = config
        self.run_dir = RunDirectory(config.run_dir)
        self.registry = Registry(liveness_s=config.rejoin_grace_s)
        self.limits = Limits(max_message_bytes=int(config.max_message_mb * 1024 * 1024))
        self.fleet = FleetKeys(config.enrolment) if config.enrolment else None
        credentials = coordinator_credentials(config.enrolment) if config.enrolment else None
        broker = BrokerConfig.from_url(config.broker, max_frame_bytes=config.max_frame_kb * 1024, ca_certs=config.ca_certs)
        if credentials is not None and broker.username is None:  # log in to the broker as the enrolment's coordinator
            broker = replace(broker, username=credentials.broker_username, password=credentials.broker_password)
        self.codec = coordinator_codec(self.fleet, credentials, config.run_id, self.limits)
        accept = self.fleet.accepts_topic if self.fleet is not None else None
        self.transport = MqttTransport(broker, client_id=f"fedge-coordinator-{config.run_id}", limits=self.limits, codec=self.codec, accept=accept, latest_only=topics.is_heartbeat)
        self.backbone_server = BackboneServer(broker, client_id=f"fedge-backbone-{config.run_id}", codec=coordinator_codec(self.fleet, credentials, config.run_id, Limits(max_message_bytes=64 * 1024)), accept=accept)
        self.refusals = RefusalLog()
        self._packages: dict[str, BackbonePackage] = {}  # the backbone as each assigned quantization ships
        self.backbone = locate_backbone(config.backbone)
        self.strategy = config.make_strategy()
        self.shape = load_model_shape(str(self.backbone.directory))
        self.options = config.planner_options().for_model(self.shape)
        self.num_layers = self.shape.num_layers
        pins = list(config.devices.values())
        # The global adapter covers every layer and rank any plan may use (the planner's caps and the pins).
        self.depth = min(self.num_layers, max([self.options.max_depth or self.num_layers] + [pin.depth for pin in pins]))
        self.rank = max(list(self.options.ranks) + [pin.rank for pin in pins])
        self._planned = False
        self._calibrations = default_calibrations()
        self._fleet: FleetPlan | None = None  # the plan of the fleet as first planned
        self._fleet_rank_sum = 0  # Σ top ranks of every planned device, joiners included
        self._device_plans: dict[str, DevicePlan] = {}  # every device's plan or refusal, joiners included
        self._plan_changed = False  # a joiner was planned since plan.json was written
        self._resume = resume
        self._on_round = on_round or (lambda record: None)
        self._expectations: dict[str, Expectation] = {}
        self._assigned: dict[str, DevicePlan] = {}  # the plan each agent got this round
        self._specs: dict[str, LoraSpec] = {}  # the adapter each agent was told to train this round
        self._evaluated: set[tuple[int, str]] = set()  # (round, agent) of evaluations agents reported
        self._received: dict[str, AdapterUpdate] = {}  # updates of the open exchanges
        self._pending_in: dict[str, set[str]] = {}  # each awaited agent's group's set of agents still expected
        self._arrivals: list[str] = []  # agents whose update was accepted since the buffered loop last looked
        self._given_up: list[str] = []  # agents refused or refusing since then
        self._staleness: dict[str, int] = {}  # buffered rounds: each contributor's staleness
        self._discount = 1.0  # buffered rounds: how far the last aggregation moved the state (λ)
        self._rounds_started = 0.0  # when the first round began (records' elapsed_s)
        self._preparing: set[str] = set()  # agents preparing for the first round that have not said ready
        self._startup_s: dict[str, float] = {}  # registration, planning and preparation times, recorded with the first round
        self._contributed: dict[str, AdapterUpdate] = {}  # every agent's latest accepted update this round
        self._bytes_up: dict[str, int] = {}
        self._bytes_down: dict[str, int] = {}
        self._rejected: dict[str, str] = {}
        self._aggregate_s = 0.0
        self._group_plans: list[GroupPlan] = []  # HierFedLoRA groups from the planner
        self._told_unknown: dict[str, float] = {}  # unregistered devices -> when they were last asked for a hello
        self._asked_for_labels: set[str] = set()  # devices asked for their label counts (enrolled ones only)
        self._outbox: dict[str, tuple[Assignment, GlobalState | None, float]] = {}  # each agent's current work, and when it was sent
        self._norms: dict[str, float] = {}  # L2 norm of each accepted update this round
        self._poisoned: list[str] = []  # aggregates refused this round (not finite)

    def _top_layers(self, depth: int) -> tuple[int, ...]:
        return tuple(range(self.num_layers - depth, self.num_layers))

    # --- the run, top to bottom ---
    def run(self) -> RunSummary:
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        start_round, arrays = self._starting_point_or_none()
        if start_round > config.rounds:
            log.info("the run in %s already completed its %d rounds; nothing to resume", self.run_dir.path, config.rounds)
            return RunSummary(run_dir=str(self.run_dir.path), rounds=self.run_dir.rounds())
        self.open()
        if arrays is None:
            arrays = self.strategy.initial_state(self.model.initial_arrays(), self.model.base_weights())
            self._record({"round": 0, **self._evaluate(arrays), "participants": [], "contributors": []})
        self.register_and_plan()
        self.prepare(start_round)
        try:
            if config.round_mode == "sync":
                for round_number in range(start_round, config.rounds + 1):
                    arrays = self.run_round(round_number, arrays)
            else:
                arrays = self._run_buffered(start_round, arrays)
        finally:
            self.finish(arrays)
        return RunSummary(run_dir=str(self.run_dir.path), rounds=self.run_dir.rounds())

    def open(self) -> None:
        """Connect, serve backbones, record the config and load the model the rounds are evaluated on."""
        config = self.config
        self.transport.subscribe(topics.all_uplinks())
        self.transport.subscribe(topics.all_heartbeats())
        self.transport.connect()
        self.backbone_server.start()
        self.run_dir.write_config(config.to_record())
        test = kind_of(config.task.kind).items(read_rows(config.eval_data), config.task, config.eval_data)
        self.model = GlobalModel(self.backbone, self.rank, list(self._top_layers(self.depth)), list(self.options.target_modules), config.task, test, config.seed)
        self.options = self._task_costs(self.options)

    def register_and_plan(self) -> None:
        """Wait for the expected agents, then plan them; ``RuntimeError`` when too few can train."""
        started = time.time()
        self._await_agents(self.config.expected_clients)
        self._startup_s["registration_s"] = round(time.time() - started, 2)
        self._plan()
        if len(self.registry.planned()) < self.config.min_clients:
            raise RuntimeError(f"only {len(self.registry.planned())} agents can train this model; the run needs {self.config.min_clients} (see {self.run_dir.path}/plan.json)")

    def prepare(self, round_number: int) -> None:
        """Have every planned agent ready its backbone and first rows; the rounds' clock starts after."""
        self._prepare_agents(round_number)
        self._rounds_started = time.time()

    def _starting_point_or_none(self) -> tuple[int, dict[str, np.ndarray] | None]:
        latest = self.run_dir.latest_global()
        if latest is None:
            if self.run_dir.metrics_file.exists():
                self.run_dir.metrics_file.unlink()
            return 1, None
        if not self._resume:
            raise RuntimeError(f"{self.run_dir.path} already holds round {latest[0]}; pass --resume or use a new run_dir")
        log.info("resuming after round %d from %s", latest[0], self.run_dir.path)
        self.run_dir.drop_rounds_after(latest[0])  # metrics of a round that died before its commit point
        return latest[0] + 1, latest[1]

    def _await_agents(self, wanted: int) -> None:
        """Handle messages until ``wanted`` agents are online (or the registration timeout passes)."""
        self._handle_until(lambda: len(self.registry.online()) >= wanted, time.time() + self.config.registration_timeout_s)
        count = len(self.registry.online())
        if count < self.config.min_clients:
            raise RuntimeError(f"only {count} agents online; the run needs {self.config.min_clients} (resume it with --resume)")
        log.info("%d agents online", count)

    def pump(self, seconds: float) -> None:
        """Handle the devices' messages for ``seconds`` (a site aggregator does, while the centre is busy)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            self._handle_next(deadline)

    def _handle_until(self, done: Callable[[], bool], deadline: float, check_every_s: float = 0.5) -> None:
        """Handle messages until ``done()`` (asked at most every ``check_every_s``, as it may walk the fleet) or the
        deadline."""
        next_check = 0.0
        while time.time() < deadline:
            if time.monotonic() >= next_check:
                if done():
                    return
                next_check = time.monotonic() + check_every_s
            self._handle_next(deadline)

    def _plan(self) -> None:
        """Run the capacity planner over the registered fleet."""
        records = self.registry.all()
        members = [FleetMember(r.agent_id, r.profile, r.num_examples, r.label_histogram, r.pin) for r in records]
        started = time.perf_counter()
        fleet = plan_fleet(members, self.shape, self.options, self._calibrations)
        self._startup_s["plan_s"] = round(time.perf_counter() - started, 3)
        log.info("planned %d devices in %.2f s: %d can train (median round %.2f s)", len(members), self._startup_s["plan_s"], len(fleet.feasible()), fleet.median_round_seconds)
        for record, plan in zip(records, fleet.devices):
            self._device_plans[record.agent_id] = plan
            self._give_plan(record, plan)
        self._fleet = fleet
        self._fleet_rank_sum = sum(max(plan.ranks) for plan in fleet.feasible())
        self._write_plan()
        self._package_backbones({plan.quantization for plan in fleet.feasible()})
        self._group_plans = list(fleet.groups)
        self._planned = True
        self.strategy.check_ranks([self._lora_spec(record) for record in self.registry.all() if record.plan is not None])

    def _plan_joiner(self, record: AgentRecord) -> None:
        """Plan a device that joined (or changed) after the fleet was planned, against the plan's median, without
        touching anyone else's plan."""
        member = FleetMember(record.agent_id, record.profile, record.num_examples, record.label_histogram, record.pin)
        plan = plan_joiner(member, self.shape, self.options, self._fleet.median_round_seconds, self._fleet_rank_sum, self._calibrations)
        self.strategy.check_ranks([LoraSpec(tuple(self.options.target_modules), plan.layers, plan.ranks, self.options.scaling)] if plan.feasible else [])
        self._device_plans[record.agent_id] = plan
        self._plan_changed = True
        if self._give_plan(record, plan):
            self._fleet_rank_sum += max(plan.ranks)
            self._package_backbones({plan.quantization})

    def _give_plan(self, record: AgentRecord, plan: DevicePlan) -> bool:
        """Hand a device its plan, or refuse it; whether it can take part."""
        if not plan.feasible:
            self.registry.remove(record.agent_id)
            self._reject(record.agent_id, "infeasible", plan.reason)
            return False
        record.plan = plan
        log.debug("planned %s (%s): %s, depth %d, ranks %s, batch %d, %d steps; predicted %.0f MiB of %.0f MiB, %.2f s/step", record.agent_id, plan.profile_name, plan.quantization, plan.depth, "/".join(map(str, plan.ranks)), plan.batch_size, plan.local_steps, plan.memory.total / 2**20, plan.available_bytes / 2**20, plan.step_seconds)
        return True

    def _write_plan(self) -> None:
        """plan.json: the fleet's plan with every later joiner's (written once per round at most, not per joiner)."""
        self.run_dir.write_plan(plan_to_dict(replace(self._fleet, devices=list(self._device_plans.values()))))
        self._plan_changed = False

    def _package_backbones(self, quantizations: set[str]) -> None:
        """Build (or find in the cache) the backbone in every quantization a plan hands out, ready to serve."""
        chunk_bytes = chunk_bytes_for(self.config.max_frame_kb)
        for quantization in sorted(quantizations - set(self._packages)):
            package = package_backbone(self.backbone, quantization, chunk_bytes)
            self._packages[quantization] = package
            self.backbone_server.offer(package)
            log.info("backbone %s as %s: %d files, %.1f MB, digest %s…", self.config.backbone, quantization, len(package.manifest.files), package.manifest.total_bytes / 1e6, package.digest[:12])

    def _backbone_spec(self, agent_id: str, quantization: str) -> BackboneSpec:
        package = self._packages[quantization]
        self.backbone_server.allow(agent_id, package.digest)
        url = f"{self.config.backbone_url.rstrip('/')}/{package.digest}/" if self.config.backbone_url else None
        return BackboneSpec(self.config.backbone, package.digest, quantization, package.manifest.total_bytes, url)

    def _prepare_agents(self, round_number: int) -> None:
        """Before the first round: send each planned agent its assignment alone and wait, up to the round deadline,
        until every one has fetched and loaded its backbone and cached the rows the round trains on (heartbeat
        ``ready``) or refused. The round's clock starts after, so its wall time is training, as in later rounds."""
        started = time.time()
        deadline = started + self.config.round_deadline_s
        self._preparing = set()
        for record in self.registry.planned():
            assignment = self._assignment(record, self._wire_round(round_number, 1), deadline, prepare_only=True)
            self.transport.enqueue(topics.downlink(record.agent_id), assignment)
            self._outbox[record.agent_id] = (assignment, None, time.time())
            self._preparing.add(record.agent_id)
        next_sweep = time.monotonic() + 1.0
        while self._preparing and time.time() < deadline:
            self._handle_next(deadline)
            if time.monotonic() >= next_sweep:  # devices gone silent stop being waited for
                self._preparing.difference_update([a for a in self._preparing if not self._still_expected(a)])
                next_sweep = time.monotonic() + 1.0
        self._startup_s["prepare_s"] = round(time.time() - started, 2)
        log.info("agents prepared for round %d in %.1f s%s", round_number, self._startup_s["prepare_s"], f"; not ready: {', '.join(sorted(self._preparing))}" if self._preparing else "")
        self._preparing = set()

    def run_round(self, round_number: int, arrays: dict[str, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
        """One global round: every group runs its τ_g exchanges (one group of everyone, τ = 1, without HierFedLoRA
        groups), then the group states are combined. ``deadline``: earlier than ``round_deadline_s`` from now."""
        self._drop_revoked()
        if self._plan_changed:
            self._write_plan()
        self._await_agents(self.config.min_clients)  # e.g. agents still reconnecting after a broker outage
        started = time.time()
        deadline = min(deadline or math.inf, started + self.config.round_deadline_s)
        participants = self.registry.planned()
        self._expectations, self._assigned, self._specs, self._received, self._pending_in = {}, {}, {}, {}, {}
        self._begin_record()
        groups = self._groups_for(participants, arrays)
        for group in groups:
            self._open_exchange(group, round_number, deadline)
        next_sweep = time.monotonic() + 1.0
        while not all(group.done for group in groups) and time.time() < deadline:
            self._handle_next(deadline)
            if time.monotonic() >= next_sweep:  # devices gone silent stop holding up their group
                for group in groups:
                    group.pending.difference_update([a for a in group.pending if not self._still_expected(a)])
                next_sweep = time.monotonic() + 1.0
            for group in groups:
                if not group.done and not group.pending:
                    self._close_exchange(group, round_number, deadline)
        for group in groups:
            if not group.done:  # the deadline: use what arrived
                self._close_exchange(group, round_number, deadline, last=True)
        arrays = self._combine(arrays, groups, round_number)
        grouping = {"groups": [{"index": g.index, "members": [r.agent_id for r in g.members], "frequency": g.frequency, "exchanges": g.exchange} for g in groups]} if len(groups) > 1 else {}
        self._commit(round_number, arrays, [r.agent_id for r in participants], started, grouping)
        return arrays

    def _begin_record(self) -> None:
        """Start collecting what the next round's record reports."""
        self._rejected, self._contributed, self._bytes_up, self._bytes_down, self._aggregate_s = {}, {}, {}, {}, 0.0
        self._norms, self._poisoned, self._arrivals, self._given_up = {}, [], [], []

    def _commit(self, round_number: int, arrays: dict[str, np.ndarray], participants: list[str], started: float, extra: dict) -> None:
        """Record the round and save its global state: the commit point of the round."""
        self._record({
            "round": round_number,
            **self._evaluate(arrays),
            "strategy": self.strategy.name,
            "round_mode": self.config.round_mode,
            "server_aggregate_s": round(self._aggregate_s, 4),
            "participants": sorted(participants),
            "contributors": sorted(self._contributed),
            "rejected": dict(self._rejected),
            "update_norms": {agent: round(norm, 4) for agent, norm in sorted(self._norms.items())},
            **({"aggregate_refused": list(self._poisoned)} if self._poisoned else {}),
            "refused_messages": self.refusals.take(),
            **self._privacy_spent(),
            "bytes_up": dict(self._bytes_up),
            "bytes_down": dict(self._bytes_down),
            "client_metrics": {agent: update.metrics for agent, update in self._contributed.items()},
            "capacity": self._predicted_vs_measured(),
            **extra,
            "wall_s": round(time.time() - started, 2),
            "elapsed_s": round(time.time() - self._rounds_started, 2),
            **self._startup_s,
        })
        self._startup_s = {}
        self.run_dir.save_global(round_number, arrays)

    def _run_buffered(self, start_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Asynchronous or semi-synchronous rounds (``fedge.coordinator.buffered``): each round is one aggregation of the
        buffer of accepted updates; devices get new work as soon as theirs was buffered or refused."""
        config = self.config
        self._drop_revoked()
        self._await_agents(config.min_clients)
        buffer = UpdateBuffer(config.buffer_size or max(1, -(-len(self.registry.planned()) // 2)), config.max_staleness, config.staleness_exponent)
        version = start_round - 1  # aggregations done so far
        self._expectations, self._assigned, self._specs, self._received = {}, {}, {}, {}
        self._begin_record()
        working: set[str] = set()  # devices training on some version
        started = time.time()
        next_period, next_sweep, last_redispatch = started + config.aggregation_period_s, time.monotonic() + 1.0, 0.0

        def give_work(agent_ids) -> None:
            for agent_id in agent_ids:
                record = self.registry.get(agent_id)
                if record is None or record.plan is None or agent_id in working:
                    continue
                self._received.pop(agent_id, None)
                self._rejected.pop(agent_id, None)
                self._bytes_down[agent_id] = self._bytes_down.get(agent_id, 0) + self._assign(record, version + 1, time.time() + config.round_deadline_s, arrays)
                working.add(agent_id)

        give_work(record.agent_id for record in self.registry.planned())
        while version < config.rounds:
            self._handle_next(time.time() + 1.0)
            for agent_id in self._arrivals:  # accepted updates join the buffer, unless too stale
                update = self._received[agent_id]
                working.discard(agent_id)
                staleness = buffer.stale(update.round, version + 1)
                if staleness is None:
                    self._reject(agent_id, "stale", f"trained for round {update.round}; the global state is at {version}, more than max_staleness {config.max_staleness} ahead", update.round, update.message_id)
                    self._contributed.pop(agent_id, None)
                    give_work([agent_id])
                else:
                    buffer.add(update, staleness)
            working.difference_update(self._given_up)  # refused or failed: new work below
            self._arrivals, self._given_up = [], []
            if time.monotonic() >= next_sweep:
                working.difference_update([a for a in working if not self._still_expected(a)])
                next_sweep = time.monotonic() + 1.0
            now = time.time()
            due = buffer.full() and (config.round_mode == "async" or now >= next_period)
            if due or (buffer.entries and not working) or now - started >= config.round_deadline_s:
                arrays = self._aggregate_buffer(buffer, arrays, version + 1)
                version += 1
                self._commit(version, arrays, [r.agent_id for r in self.registry.planned()], started, {"staleness": self._staleness, "discount": round(self._discount, 4)})
                self._begin_record()
                started, next_period = time.time(), time.time() + config.aggregation_period_s
                if version < config.rounds:
                    give_work(record.agent_id for record in self.registry.planned() if record.agent_id not in buffer.entries)
            elif not working and not buffer.entries and time.monotonic() - last_redispatch >= UNKNOWN_REPLY_S:
                give_work(record.agent_id for record in self.registry.planned())  # everyone refused or went quiet
                last_redispatch = time.monotonic()
        return arrays

    def _aggregate_buffer(self, buffer: UpdateBuffer, arrays: dict[str, np.ndarray], version: int) -> dict[str, np.ndarray]:
        """The buffer's updates aggregated with staleness-discounted weights, the state moved by the buffer's mean
        discount (``fedge.coordinator.buffered``); the state unchanged when the buffer is empty or the result not finite."""
        weights, self._discount = capped_weights(buffer.weights(), self.config.max_weight_share), buffer.discount()
        entries = buffer.take()
        self._staleness = {update.agent_id: staleness for update, staleness in entries}
        if not entries:
            log.warning("round %d: no update arrived within round_deadline_s; the state is unchanged", version)
            return arrays
        updates = [replace(self._client_update(update), num_examples=weight) for (update, _), weight in zip(entries, weights)]
        aggregating = time.perf_counter()
        state = moved_by(arrays, self.strategy.aggregate(arrays, updates, version), self._discount)
        self._aggregate_s += time.perf_counter() - aggregating
        if not all_finite(state):
            self._refuse_aggregate(f"the buffer of round {version}")
            return arrays
        return state

    def _groups_for(self, participants: list[AgentRecord], arrays: dict[str, np.ndarray]) -> list[_GroupRun]:
        planned = {record.agent_id: record for record in participants}
        groups = [_GroupRun(g.index, [planned[a] for a in g.members if a in planned], g.frequency, arrays) for g in self._group_plans]
        groups = [group for group in groups if group.members]
        grouped = {record.agent_id for group in groups for record in group.members}
        rest = [record for record in participants if record.agent_id not in grouped]
        if rest or not groups:
            groups.append(_GroupRun(len(groups), rest, 1, arrays))
        return groups

    def _wire_round(self, round_number: int, exchange: int) -> int:
        """The round number on the wire: one per exchange, so a group's inner exchanges never collide."""
        per_round = self.options.max_group_frequency if self.options.groups else 1
        return (round_number - 1) * per_round + exchange

    def _open_exchange(self, group: _GroupRun, round_number: int, deadline: float) -> None:
        group.exchange += 1
        wire_round = self._wire_round(round_number, group.exchange)
        group.waiting, group.pending = set(), set()
        for record in group.members:
            if not self._still_expected(record.agent_id):
                continue
            self._bytes_down[record.agent_id] = self._bytes_down.get(record.agent_id, 0) + self._assign(record, wire_round, deadline, group.state)
            group.waiting.add(record.agent_id)
            group.pending.add(record.agent_id)
            self._pending_in[record.agent_id] = group.pending
        if not group.waiting:
            group.done = True

    def _close_exchange(self, group: _GroupRun, round_number: int, deadline: float, last: bool = False) -> None:
        """Aggregate the group's updates of its open exchange; open the next one unless this was its last."""
        updates = [self._client_update(self._received.pop(a)) for a in sorted(group.waiting) if a in self._received]
        needed = min(self.config.min_clients, len(group.members))
        if len(updates) >= needed:
            weights = capped_weights([update.num_examples for update in updates], self.config.max_weight_share)
            updates = [replace(update, num_examples=weight) for update, weight in zip(updates, weights)]
            aggregating = time.perf_counter()
            state = self.strategy.aggregate(group.state, updates, self._wire_round(round_number, group.exchange))
            self._aggregate_s += time.perf_counter() - aggregating
            if all_finite(state):
                group.state = state
                group.examples.update({update.agent_id: update.num_examples for update in updates})
            else:
                self._refuse_aggregate(f"group {group.index}, exchange {group.exchange}")
        else:
            log.warning("round %d: group %d got %d valid updates, fewer than %d; its state is unchanged", round_number, group.index, len(updates), needed)
        group.waiting = set()
        if last or group.exchange >= group.frequency or time.time() >= deadline:
            group.done = True
        else:
            self._open_exchange(group, round_number, deadline)

    def _combine(self, arrays: dict[str, np.ndarray], groups: list[_GroupRun], round_number: int) -> dict[str, np.ndarray]:
        """The global state: the only group's state, or the groups' states combined by the strategy as if each group
        were one client of the global rank (scaling 1) on its layers, weighted by the examples behind it."""
        if len(groups) == 1:
            return groups[0].state
        updates = []
        for group in groups:
            if not group.examples:
                continue
            layers = sorted({layer for record in group.members for layer in record.plan.layers})
            spec = LoraSpec(tuple(self.options.target_modules), tuple(layers), (self.rank,) * len(layers), 1.0)
            tensors = {key: group.state[key] for key in self.strategy.upload_shapes(group.state, spec)}
            updates.append(ClientUpdate(f"group-{group.index}", sum(group.examples.values()), spec, tensors))
        if not updates:
            return arrays
        aggregating = time.perf_counter()
        combined = self.strategy.aggregate(arrays, updates, round_number)
        self._aggregate_s += time.perf_counter() - aggregating
        if not all_finite(combined):
            self._refuse_aggregate("the groups' combination")
            return arrays
        return combined

    def _privacy_spent(self) -> dict:
        """With privacy on: each contributor's (ε, δ) budget after this round, counting every round it sent an
        update in (read back from the run directory, so a resumed run keeps counting)."""
        privacy = self.config.privacy
        if not privacy:
            return {}
        taken = Counter(agent for record in self.run_dir.rounds() for agent in record.get("contributors", ()))
        taken.update(list(self._contributed))
        delta = float(privacy.get("delta", DEFAULT_DELTA))
        spent = {agent: round(epsilon(taken[agent], float(privacy["noise_multiplier"]), delta), 4) for agent in sorted(self._contributed)}
        return {"privacy": {"clip_norm": privacy["clip_norm"], "noise_multiplier": privacy["noise_multiplier"], "delta": delta, "epsilon": spent}}

    def _refuse_aggregate(self, what: str) -> None:
        """A poisoned aggregate is never committed: the state it would replace stays."""
        log.error("round aggregate of %s is not finite; refused, the previous state stays", what)
        self._poisoned.append(what)

    def _client_update(self, update: AdapterUpdate) -> ClientUpdate:
        record = self.registry.get(update.agent_id)
        histogram = record.label_histogram if record is not None else ()
        return ClientUpdate(update.agent_id, update.num_examples, self._specs[update.agent_id], update.tensors, histogram)

    def _evaluate(self, arrays: dict[str, np.ndarray]) -> dict:
        """The held-out score (``accuracy``: the task's headline metric, named by ``metric``) and loss of the
        strategy's global model, with classify's F1 (macro and per class) or instruct's perplexity; NaN where the
        strategy has no global model."""
        parts = self.strategy.global_parts(arrays)
        if parts is None:
            return {"accuracy": float("nan"), "loss": float("nan"), "metric": self.config.task.metric or "accuracy"}
        result = self.model.evaluate(parts)
        record = {"accuracy": result.accuracy, "loss": result.loss, "metric": result.metric}
        if result.per_class_f1:
            record |= {"macro_f1": result.macro_f1, "per_class_f1": [round(f1, 4) for f1 in result.per_class_f1]}
        if math.isfinite(result.perplexity):
            record["perplexity"] = result.perplexity
        return record

    def _task_costs(self, options: PlannerOptions) -> PlannerOptions:
        """Classify labels of several tokens: the planner costs one sequence per label and the loss on their tokens."""
        if self.config.task.kind != "classify" or "sequences_per_example" in self.config.planner:
            return options
        sequences, tokens = scoring_cost(self.model.tokenizer, self.config.task.labels)
        return replace(options, sequences_per_example=sequences, answer_share=min(1.0, tokens / options.seq_len)) if sequences > 1 else options

    def _expected_round(self, agent_id: str) -> int | None:
        expectation = self._expectations.get(agent_id)
        return expectation.round if expectation is not None else None

    def _still_expected(self, agent_id: str) -> bool:
        """Whether a round still waits for this agent: registered, not refused, and heard from (its heartbeats
        come every few seconds, training or not) within ``rejoin_grace_s``: a broker restart silences everyone for a
        moment, a device that died or never trains drops out of the waiting set after the grace period."""
        record = self.registry.get(agent_id)
        return record is not None and agent_id not in self._rejected and self.registry.is_online(record)

    def _stop_waiting(self, agent_id: str, reason: str) -> None:
        """This round gets nothing from the agent: record why, and its exchange stops waiting for it (a buffered
        round gives it new work)."""
        self._rejected[agent_id] = reason
        self._pending_in.pop(agent_id, set()).discard(agent_id)
        self._given_up.append(agent_id)

    def _drop_revoked(self) -> None:
        """Devices revoked since the last round (``fedge enroll --revoke``) take no further part."""
        if self.fleet is None:
            return
        for agent_id in self.fleet.refresh():
            self.registry.remove(agent_id)
            self._outbox.pop(agent_id, None)

    def _predicted_vs_measured(self) -> dict[str, dict[str, float]]:
        """Per contributing device: the planner's memory and step-time predictions next to what the agent measured."""
        out = {}
        for agent_id, update in self._contributed.items():
            plan = self._assigned[agent_id]
            out[agent_id] = {
                "predicted_peak_bytes": plan.memory.total,
                "measured_peak_bytes": update.metrics.get("peak_memory_bytes", float("nan")),
                "predicted_step_seconds": round(plan.step_seconds, 4),
                "measured_step_seconds": update.metrics.get("seconds_per_step", float("nan")),
            }
        return out

    def _lora_spec(self, record: AgentRecord) -> LoraSpec:
        """What the device trains; a site aggregates a group of devices, so it gets the global rank on every layer
        at scaling 1, the state's own convention (as HierFedLoRA's groups are combined)."""
        plan = record.plan
        return LoraSpec(tuple(self.options.target_modules), plan.layers, plan.ranks, 1.0 if record.agent_id in self.config.sites else self.options.scaling)

    def contributions(self) -> dict[str, AdapterUpdate]:
        """The updates that counted in the last round."""
        return dict(self._contributed)

    def _assign(self, record: AgentRecord, round_number: int, deadline: float, arrays: dict[str, np.ndarray]) -> int:
        plan, spec = record.plan, self._lora_spec(record)
        self._assigned[record.agent_id] = plan
        self._specs[record.agent_id] = spec
        self._expectations[record.agent_id] = Expectation(self.config.run_id, round_number, deadline, self.strategy.upload_shapes(arrays, spec), spec.scaling)
        state = self._state_for(record, arrays, round_number, final=False)
        assignment = self._assignment(record, round_number, deadline)
        self._outbox[record.agent_id] = (assignment, state, time.time())
        downlink = topics.downlink(record.agent_id)
        return self.transport.enqueue(downlink, assignment).size + self.transport.enqueue(downlink, state).size

    def _assignment(self, record: AgentRecord, round_number: int, deadline: float, prepare_only: bool = False) -> Assignment:
        plan, spec = record.plan, self._lora_spec(record)
        return Assignment(
            run_id=self.config.run_id,
            round=round_number,
            agent_id=record.agent_id,
            backbone=self._backbone_spec(record.agent_id, plan.quantization),
            lora=spec,
            task=self.config.task,
            local_steps=plan.local_steps,
            batch_size=plan.batch_size,
            learning_rate=self.config.learning_rate,
            deadline_unix=deadline,
            seed=self.config.seed + round_number,
            optimizer=self.options.optimizer,
            gradient_checkpointing=plan.gradient_checkpointing,
            predicted_peak_bytes=plan.memory.total,
            predicted_step_seconds=plan.step_seconds,
            strategy=self.strategy.name,
            run_seed=self.config.seed,
            prefix_cache_bytes=plan.memory.cached_prefix,
            prepare_only=prepare_only,
            clip_norm=float(self.config.privacy.get("clip_norm", 0.0)),
            noise_multiplier=float(self.config.privacy.get("noise_multiplier", 0.0)),
        )

    def _state_for(self, record: AgentRecord, arrays: dict[str, np.ndarray], round_number: int, final: bool) -> GlobalState:
        """What the strategy gives this device: its own layers, ranks and scaling, and base changes it lacks."""
        view = self.strategy.client_view(arrays, ClientInfo(record.agent_id, self._lora_spec(record), record.base_version))
        return GlobalState(self.config.run_id, round_number, record.agent_id, final, {}, view)

    def finish(self, arrays: dict[str, np.ndarray]) -> None:
        """Send every planned agent the final state, wait for their evaluations, save the adapter and close."""
        queued = [self.transport.enqueue(topics.downlink(r.agent_id), self._state_for(r, arrays, self.config.rounds, final=True)) for r in self.registry.all() if r.plan is not None]
        unsent = self.transport.wait_sent(queued, timeout_s=30)
        if unsent:
            log.warning("%d frames of the final states were not acknowledged within 30 s", unsent)
        self._await_final_evaluations()
        parts = self.strategy.global_parts(arrays)
        if parts is not None:
            self.model.save(parts, self.run_dir.adapter_dir)
        self.run_dir.plot()
        self.backbone_server.close()
        self.transport.close()

    def _await_final_evaluations(self) -> None:
        """Up to ``final_eval_wait_s``: handle messages until every online planned agent reported the last round."""
        self._handle_until(lambda: all((self.config.rounds, r.agent_id) in self._evaluated for r in self.registry.planned()), time.time() + self.config.final_eval_wait_s)

    def _record(self, record: dict) -> None:
        self.run_dir.append_round(record)
        log.info("round %d: accuracy %.3f loss %.3f", record["round"], record["accuracy"], record["loss"])
        self._on_round(record)

    # --- incoming messages ---
    def _handle_next(self, deadline: float) -> None:
        """Handle the next message, waiting at most a second and never past ``deadline``."""
        self._handle(self.transport.receive(timeout_s=min(1.0, max(deadline - time.time(), 0.01))))

    def _handle(self, received: Received | None) -> None:
        if received is None:
            return
        if received.error is not None:  # unreadable, unauthenticated or replayed: counted and logged, never answered
            return self.refusals.refuse(received.error.reason, str(received.error), received.topic)
        agent_id = topics.agent_of(received.topic)
        message = received.message
        if agent_id is None or getattr(message, "agent_id", None) != agent_id:  # the signed codec checks this too
            return self.refusals.refuse("agent_mismatch", f"{type(message).__name__} naming {getattr(message, 'agent_id', None)!r}", received.topic)
        self.registry.seen(agent_id)
        if isinstance(message, Hello):
            self._on_hello(message)
        elif isinstance(message, AdapterUpdate):
            self._on_update(message, received.size)
        elif isinstance(message, Evaluation):
            self._on_evaluation(message)
        elif isinstance(message, Heartbeat):
            self._on_heartbeat(message)
        elif isinstance(message, Reject):
            log.warning("%s refused its work: %s (%s)", agent_id, message.reason, message.detail)
            self._preparing.discard(agent_id)
            if self._expected_round(agent_id) == message.round:
                self._stop_waiting(agent_id, f"refused by agent: {message.reason} ({message.detail[:200]})")
        else:
            self.refusals.refuse("unexpected_type", f"devices do not send {type(message).__name__}", received.topic)

    def _on_heartbeat(self, heartbeat: Heartbeat) -> None:
        agent_id = heartbeat.agent_id
        if self.registry.get(agent_id) is None:  # e.g. this coordinator restarted with --resume
            now = time.monotonic()
            if now - self._told_unknown.get(agent_id, -UNKNOWN_REPLY_S) >= UNKNOWN_REPLY_S:
                self._told_unknown[agent_id] = now  # one entry per enrolled device at most
                self._send_reject(agent_id, "unknown_agent", "not registered with this coordinator; send hello")
            return
        if heartbeat.state == "ready":
            self._preparing.discard(agent_id)
        outbox = self._outbox.get(agent_id)
        if heartbeat.state == "idle" and outbox is not None and heartbeat.round < outbox[0].round:
            self._resend(agent_id, f"it holds round {heartbeat.round}")

    def _resend(self, agent_id: str, why: str, at_once: bool = False) -> None:
        """Send an agent its current assignment and state again (it reconnected after the broker lost them, or it
        restarted); unless ``at_once``, at most once per ``rejoin_grace_s / 3``, so heartbeats already in flight do
        not multiply the traffic."""
        if agent_id in self._received or agent_id in self._rejected or agent_id not in self._outbox:
            return
        assignment, state, sent = self._outbox[agent_id]
        if (not at_once and time.time() - sent < self.config.rejoin_grace_s / 3) or time.time() > assignment.deadline_unix:
            return
        log.info("%s missed its round-%d work (%s); sending it again", agent_id, assignment.round, why)
        self._outbox[agent_id] = (assignment, state, time.time())
        downlink = topics.downlink(agent_id)
        for message in (assignment, state):
            if message is not None:
                self.transport.enqueue(downlink, message)

    def _on_hello(self, hello: Hello) -> None:
        problems = profile_problems(hello, len(self.config.task.labels))
        if (hello.profile.device_class == SITE_CLASS) != (hello.agent_id in self.config.sites):
            problems.append(f"device_class: {SITE_CLASS!r} is for the site aggregators this coordinator lists in sites:, and only them")
        if problems:
            return self._reject(hello.agent_id, "bad_profile", "; ".join(problems))
        if not hello.label_counts and self._needs_label_counts() and hello.agent_id not in self._asked_for_labels:
            self._asked_for_labels.add(hello.agent_id)  # its next hello registers it, with its counts or without
            return self._send_reject(hello.agent_id, "label_counts_wanted", f"{self.strategy.name}{' with groups' if self.options.groups else ''} uses devices' label counts; say hello with them, or without to decline")
        known = self.registry.get(hello.agent_id)
        keep = known.plan if known is not None and known.profile == hello.profile and known.num_examples == hello.num_examples else None
        pin = Pin(self.rank, self.depth) if hello.agent_id in self.config.sites else self.config.pin_for(hello.profile.name, hello.profile.device_class)
        counts = histogram(hello.label_counts, self.config.task) if hello.label_counts else (known.label_histogram if keep else ())
        record = AgentRecord(hello.agent_id, hello.profile, hello.num_examples, counts, pin, keep, base_version=hello.base_version)
        is_new = self.registry.register(record)
        log.info("%s %s: %s, %d examples", "registered" if is_new else "re-registered", hello.agent_id, hello.profile.name, hello.num_examples)
        if self._planned and record.plan is None:  # joined (or changed) after the fleet was planned
            try:
                self._plan_joiner(record)
            except (ValueError, ArithmeticError) as error:
                self.registry.remove(hello.agent_id)
                return self._reject(hello.agent_id, "infeasible", f"cannot plan this device: {error}")
        if keep is not None:  # a known device said hello again: it restarted and lost its work
            self._resend(hello.agent_id, "it restarted", at_once=True)

    def _on_update(self, update: AdapterUpdate, size: int) -> None:
        try:
            validate_update(update, self._expectations.get(update.agent_id), update.agent_id in self._received, time.time())
            norm = self._check_update_limits(update)
        except UpdateRejected as error:
            if update.round == self._expected_round(update.agent_id) and error.reason != "duplicate":
                self._stop_waiting(update.agent_id, error.reason)  # it will not send another
            return self._reject(update.agent_id, error.reason, error.detail, update.round, update.message_id)
        self.run_dir.save_update(update.round, update.agent_id, update.tensors)
        self._norms[update.agent_id] = norm
        self._received[update.agent_id] = update
        self._pending_in.pop(update.agent_id, set()).discard(update.agent_id)
        self._arrivals.append(update.agent_id)
        self._contributed[update.agent_id] = update
        self._bytes_up[update.agent_id] = self._bytes_up.get(update.agent_id, 0) + size
        self.registry.get(update.agent_id).base_version = int(update.metrics.get("base_version", 0))
        log.info("round %d: update from %s (%d examples, loss %.3f)", update.round, update.agent_id, update.num_examples, update.metrics.get("loss", float("nan")))

    def _needs_label_counts(self) -> bool:
        return self.strategy.needs_label_histograms or bool(self.options.groups)

    def _check_update_limits(self, update: AdapterUpdate) -> float:
        """Policy beyond the round's expectation: no more examples than the device registered with, and an L2
        norm within ``max_update_norm``; returns the norm."""
        registered = self.registry.get(update.agent_id).num_examples
        if update.num_examples > registered:
            raise UpdateRejected("bad_count", f"{update.num_examples} examples claimed; the device registered {registered}")
        norm = update_norm(update.tensors)
        if norm > self.config.max_update_norm:
            raise UpdateRejected("norm_too_large", f"L2 norm {norm:.4g} exceeds max_update_norm {self.config.max_update_norm:g}")
        return norm

    def _on_evaluation(self, evaluation: Evaluation) -> None:
        if evaluation.run_id != self.config.run_id or self.registry.get(evaluation.agent_id) is None:
            return self._reject(evaluation.agent_id, "unknown_agent", "evaluation for another run or from an unregistered agent")
        if not (0.0 <= evaluation.accuracy <= 1.0 and np.isfinite(evaluation.loss)):
            return self._reject(evaluation.agent_id, "bad_evaluation", f"accuracy {evaluation.accuracy}, loss {evaluation.loss}")
        last_wire_round = self._wire_round(self.config.rounds, self.options.max_group_frequency if self.options.groups else 1)
        if not 0 <= evaluation.round <= last_wire_round or (evaluation.round, evaluation.agent_id) in self._evaluated:
            return self._reject(evaluation.agent_id, "bad_evaluation", f"round {evaluation.round}: not a round of this run, or reported already")
        self.run_dir.append_client_eval({"round": evaluation.round, "agent": evaluation.agent_id, "accuracy": evaluation.accuracy, "loss": evaluation.loss, "examples": evaluation.num_examples})
        self._evaluated.add((evaluation.round, evaluation.agent_id))

    def _reject(self, agent_id: str, reason: str, detail: str, round_number: int | None = None, ref: str | None = None) -> None:
        """Answer an enrolled device's bad message; logged like every refusal (rate-limited: even an enrolled
        device that floods cannot fill the log)."""
        self.refusals.refuse(reason, f"{agent_id}: {detail}", topics.uplink(agent_id))
        self._send_reject(agent_id, reason, detail, round_number, ref)

    def _send_reject(self, agent_id: str, reason: str, detail: str, round_number: int | None = None, ref: str | None = None) -> None:
        """Queued without waiting for the broker: a reject never holds up the round loop."""
        self.transport.enqueue(topics.downlink(agent_id), Reject(agent_id, reason, detail[:500], round_number, ref))
