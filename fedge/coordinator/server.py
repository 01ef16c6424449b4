"""The coordinator: its parts put together, the run's lifecycle, and what each kind of message does.

    Receiver   (own thread)  frames in, verified messages out, each device's liveness stamped on arrival
    Admission                hellos, registry, planning of the fleet and of late joiners, backbones
    rounds / buffered_rounds the round engines: one round's path, top to bottom
    Sender                   fan-out (each distinct state encoded and signed once), resends, rejects
    Evaluator  (own thread)  the held-out score of each committed state, while the next round runs
    RunRecorder              commits rounds and writes their records in order

Only enrolled devices' signed messages reach the handlers here (``fedge.coordinator.boundary``); anything else is
counted and logged by the receiver, never answered. An authenticated but bad, late or duplicate message is answered
with a Reject (queued, never waited on) and the round goes on with the valid updates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedge.coordinator.admission import Admission
from fedge.coordinator.aggregation_guard import update_norm
from fedge.coordinator.backbones import Backbones
from fedge.coordinator.boundary import FleetKeys, RefusalLog, coordinator_codec
from fedge.coordinator.collection import Collection
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.delivery import BackboneServer
from fedge.coordinator.evaluation import GlobalModel
from fedge.coordinator.evaluator import Evaluator
from fedge.coordinator.liveness import Liveness
from fedge.coordinator.live_server import LiveView
from fedge.coordinator.monitor import RunFacts, RunMonitor
from fedge.coordinator.plans import Pin
from fedge.coordinator.planning import FleetPlanning, with_task_costs
from fedge.coordinator.reputation import Reputation
from fedge.coordinator.receiver import Arrival, Receiver, waited_s
from fedge.coordinator.record import RunRecorder
from fedge.coordinator.registry import Registry
from fedge.coordinator.reports import RunDirectory
from fedge.coordinator.rounds import run_round, wire_round
from fedge.coordinator.run_lock import RunInUse, RunLock
from fedge.coordinator.buffered_rounds import run_buffered
from fedge.coordinator.sender import Sender
from fedge.coordinator.validation import UpdateRejected, validate_update
from fedge.coordinator.work import WorkOrders
from fedge.profiles.model_shape import load_model_shape
from fedge.quantization.backbone import locate_backbone
from fedge.strategies import Strategy
from fedge.task.data import read_rows
from fedge.task.kinds import kind_of
from fedge.transport import BrokerConfig, MqttTransport
from fedge.trust.enrolment import coordinator_credentials
from fedge.wire import AdapterUpdate, Evaluation, Heartbeat, Hello, Limits, Reject, topics

log = logging.getLogger(__name__)

NOTE_EVERY_S = 15.0  # how often a wait at start-up (registration, preparation) says how far it got
WAIT_S = 0.2  # the longest one wait for a message lasts, so heartbeats and sweeps are handled at least this often


def noting(done: Callable[[], bool], say: Callable[[], None], every_s: float = NOTE_EVERY_S) -> Callable[[], bool]:
    """``done``, which also calls ``say()`` every ``every_s`` while it is not: a long wait says how far it got."""
    next_note = time.monotonic() + every_s

    def check() -> bool:
        nonlocal next_note
        if done():
            return True
        if time.monotonic() >= next_note:
            next_note += every_s
            say()
        return False

    return check


def _some(devices: set[str], shown: int = 5) -> str:
    return ", ".join(sorted(devices)[:shown]) + (f" and {len(devices) - shown} more" if len(devices) > shown else "")


@dataclass(frozen=True)
class RunSummary:
    run_dir: str
    rounds: list[dict]


class Coordinator:
    def __init__(self, config: CoordinatorConfig, resume: bool = False, more_runs: bool = False):
        """``more_runs``: another run follows for the same devices (a field trial's next arm), so the final states
        ask them to stay connected."""
        self.config = config
        self.more_runs = more_runs
        fleet = FleetKeys(config.enrolment) if config.enrolment else None
        credentials = coordinator_credentials(config.enrolment) if config.enrolment else None
        broker = BrokerConfig.from_url(config.broker, max_frame_bytes=config.max_frame_kb * 1024, ca_certs=config.ca_certs)
        if credentials is not None and broker.username is None:  # log in to the broker as the enrolment's coordinator
            broker = replace(broker, username=credentials.broker_username, password=credentials.broker_password)
        limits = Limits(max_message_bytes=int(config.max_message_mb * 1024 * 1024))
        accept = fleet.accepts_topic if fleet is not None else None
        self.transport = MqttTransport(broker, client_id=f"fedge-coordinator-{config.run_id}", limits=limits, codec=coordinator_codec(fleet, credentials, config.run_id, limits, time.time_ns() if resume else 0), accept=accept, latest_only=topics.is_heartbeat, latest_max_wait_s=config.rejoin_grace_s / 3)
        self.registry = Registry(Liveness(config.rejoin_grace_s, self.transport.unread_since))
        self.receiver = Receiver(self.transport, self.registry.liveness, RefusalLog())
        self.sender = Sender(self.transport, config.rejoin_grace_s / 3)
        backbone = locate_backbone(config.backbone)
        shape = load_model_shape(str(backbone.directory))
        options = with_task_costs(config.planner_options().for_model(shape), config, backbone)
        pins = list(config.devices.values())
        # The global adapter covers every layer and rank any plan may use (the planner's caps and the pins).
        depth = min(shape.num_layers, max([options.max_depth or shape.num_layers] + [pin.depth for pin in pins]))
        rank = max(list(options.ranks) + [pin.rank for pin in pins])
        server = BackboneServer(broker, client_id=f"fedge-backbone-{config.run_id}", codec=coordinator_codec(fleet, credentials, config.run_id, Limits(max_message_bytes=64 * 1024)), accept=accept)
        strategy = config.make_strategy()
        self.work = WorkOrders(config, options, strategy, Backbones(backbone, config.backbone, server, config.max_frame_kb, config.backbone_url))
        run_dir = RunDirectory(config.run_dir)
        self.admission = Admission(config, self.registry, FleetPlanning(shape, options, run_dir), self.work, self.sender, self.receiver.refusals, fleet, Pin(rank, depth))
        test = kind_of(config.task.kind).items(read_rows(config.eval_data), config.task, config.eval_data)
        layers = list(range(shape.num_layers - depth, shape.num_layers))
        evaluator = Evaluator(lambda: GlobalModel(backbone, rank, layers, list(options.target_modules), config.task, test, config.seed), strategy, config.task.metric or "accuracy")
        facts = RunFacts(config.run_id, config.rounds, config.task.metric or "accuracy", fleet.active_count if fleet is not None else lambda: None)
        self.live = LiveView(RunMonitor(facts), config.live_address, run_dir.path)  # binds its address now: a taken one fails before the run starts
        self.recorder = RunRecorder(run_dir, evaluator, config.privacy, config.server_optimizer, on_record=self.live.monitor.on_record)
        self.collection: Collection | None = None  # the open round's (the last round's, between rounds)
        self.preparing: set[str] = set()  # devices preparing for the first round that have not said ready
        self.reputation = Reputation(config.robust.trust_memory, config.robust.quarantine_after)
        self._resume = resume
        self.lock = RunLock(Path(config.run_dir))

    @property
    def strategy(self) -> Strategy:
        return self.work.strategy

    @property
    def run_dir(self) -> RunDirectory:
        return self.recorder.run_dir

    # --- the run, top to bottom ---
    def run(self) -> RunSummary:
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            self.lock.acquire(config.run_id)  # RunInUse: another coordinator holds this run
        except RunInUse:
            self.recorder.close()
            raise
        start_round, arrays = self.recorder.starting_point(self._resume)
        if start_round > config.rounds:
            log.info("the run in %s already completed its %d rounds; nothing to resume", self.run_dir.path, config.rounds)
            self.recorder.close()
            self.lock.release()
            return RunSummary(run_dir=str(self.run_dir.path), rounds=self.run_dir.rounds())
        if start_round > 1:  # resumed: replays refused, trust and quarantines kept
            self.receiver.restore_replay_counters(self.run_dir.replay_counters())
            self.reputation.replay(self._committed_records())
        self.open()
        try:
            if arrays is None:
                model = self.recorder.evaluator.model()
                arrays = self.strategy.initial_state(model.initial_arrays(), model.base_weights())
                self.recorder.record_start(arrays)  # scored while the devices register and prepare
            self.register_and_plan()
            self.prepare(start_round)
        except BaseException:
            self.close()
            raise
        try:
            if config.round_mode == "sync":
                for round_number in range(start_round, config.rounds + 1):
                    arrays = run_round(self, round_number, arrays)
            else:
                arrays = run_buffered(self, start_round, arrays)
        finally:
            self.finish(arrays)
        return RunSummary(run_dir=str(self.run_dir.path), rounds=self.run_dir.rounds())

    def _committed_records(self) -> list[dict]:
        """Every committed round's record, scored or still pending, in round order."""
        records = {record["round"]: record for record in self.run_dir.rounds()}
        records.update({number: {**record, "round": number} for number, record in self.run_dir.pending_records() if number not in records})
        return [records[number] for number in sorted(records)]

    def open(self) -> None:
        """Connect, start reading, serve backbones and record the config."""
        self.transport.subscribe(topics.all_uplinks())
        self.transport.subscribe(topics.all_heartbeats())
        self.transport.connect()
        self.receiver.start()
        self.work.backbones.server.start()
        self.live.start()
        self.run_dir.write_config(self.config.to_record())
        log.info("listening for devices on %s:%d (run %s)", self.transport.config.host, self.transport.config.port, self.config.run_id)

    def register_and_plan(self) -> None:
        """Wait for the expected agents, then plan them; ``RuntimeError`` when too few can train."""
        started = time.time()
        self.live.monitor.enter("registering")
        self.await_agents(self.config.expected_clients)
        self.recorder.startup["registration_s"] = round(time.time() - started, 2)
        self.live.monitor.enter("planning")
        self.recorder.startup["plan_s"] = round(self.admission.plan_everyone(), 3)
        if len(self.registry.planned()) < self.config.min_clients:
            raise RuntimeError(f"only {len(self.registry.planned())} agents can train this model; the run needs {self.config.min_clients} (see {self.run_dir.path}/plan.json)")

    def prepare(self, round_number: int) -> None:
        """Before the first round: send each planned agent its assignment alone and wait, up to the round deadline,
        until every one has fetched and loaded its backbone and cached the rows the round trains on (heartbeat
        ``ready``) or refused. The round's clock starts after, so its wall time is training, as in later rounds."""
        started = time.time()
        deadline = started + self.config.round_deadline_s
        self.live.monitor.enter("preparing", round_number)
        self.preparing = set()
        for record in self.registry.planned():
            self.sender.send_work(self.work.assignment(record, wire_round(self, round_number, 1), deadline, prepare_only=True))
            self.preparing.add(record.agent_id)
        planned = len(self.preparing)
        self.handle_until(noting(lambda: not self._drop_silent(self.preparing), lambda: log.info(
            "preparing round %d: %d of %d devices ready after %.0f s (fetching and loading the backbone, caching rows); waiting for %s", round_number,
            planned - len(self.preparing), planned, time.time() - started, _some(self.preparing))), deadline)
        self.recorder.startup["prepare_s"] = round(time.time() - started, 2)
        log.info("agents prepared for round %d in %.1f s%s", round_number, self.recorder.startup["prepare_s"], f"; not ready: {', '.join(sorted(self.preparing))}" if self.preparing else "")
        self.preparing = set()
        self.recorder.rounds_started = time.time()

    def _drop_silent(self, devices: set[str]) -> set[str]:
        """Devices gone silent stop being waited for; returns those still waited for."""
        horizon = self.registry.liveness.horizon()
        devices.difference_update([agent for agent in devices if not self.registry.liveness.is_live(agent, horizon)])
        return devices

    def await_agents(self, wanted: int) -> None:
        """Handle messages until ``wanted`` agents are online (or the registration timeout passes)."""
        started = time.time()
        self.handle_until(noting(lambda: len(self.registry.online()) >= wanted, lambda: log.info(
            "waiting for agents: %d of %d online after %.0f s (registration_timeout_s %g)", len(self.registry.online()), wanted, time.time() - started,
            self.config.registration_timeout_s)), started + self.config.registration_timeout_s)
        count = len(self.registry.online())
        if count < self.config.min_clients:
            raise RuntimeError(f"only {count} agents online; the run needs {self.config.min_clients} (resume it with --resume)")
        log.info("%d agents online", count)

    def finish(self, arrays: dict[str, np.ndarray]) -> None:
        """Send every planned agent the final state, wait for their evaluations, save the adapter and close."""
        work, rounds = self.work, self.config.rounds
        self.live.monitor.enter("finishing")
        queued = [self.sender.send_final(r.agent_id, work.view_key(r), lambda r=r: work.state(r, arrays, rounds, final=True, more_runs=self.more_runs)) for r in self.registry.with_plans()]
        unsent = self.transport.wait_sent(queued, timeout_s=30)
        if unsent:
            log.warning("%d frames of the final states were not acknowledged within 30 s", unsent)
        self.handle_until(lambda: self.recorder.reported_by(rounds, [r.agent_id for r in self.registry.planned()]), time.time() + self.config.final_eval_wait_s)
        self.recorder.flush()
        parts = self.strategy.global_parts(arrays)
        if parts is not None:
            self.recorder.evaluator.save_adapter(parts, self.run_dir.adapter_dir)
        self.live.monitor.enter("finished")
        self.show_status()
        self.close()
        self.run_dir.plot()

    def close(self) -> None:
        """Write what is still being written, stop reading and serving, disconnect."""
        self.recorder.close()
        self.receiver.stop()
        self.work.backbones.server.close()
        self.live.close()
        self.transport.close()
        self.lock.release()

    def run_round(self, round_number: int, arrays: dict[str, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
        """One synchronous round (``fedge.coordinator.rounds``); a site runs one per central round."""
        return run_round(self, round_number, arrays, deadline)

    def contributions(self) -> dict[str, AdapterUpdate]:
        """The updates that counted in the last round."""
        return dict(self.collection.ledger.contributed) if self.collection is not None else {}

    # --- incoming messages ---
    def pump(self, seconds: float) -> None:
        """Handle the devices' messages for ``seconds`` (a site aggregator does, while the centre is busy)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.handle_next(deadline)

    def handle_until(self, done: Callable[[], bool], deadline: float, check_every_s: float = 0.5) -> None:
        """Handle messages until ``done()`` (asked at most every ``check_every_s``, as it may walk the fleet) or the
        deadline."""
        next_check = 0.0
        while time.time() < deadline:
            if time.monotonic() >= next_check:
                if done():
                    return
                next_check = time.monotonic() + check_every_s
            self.handle_next(deadline)

    def handle_next(self, deadline: float) -> None:
        """Handle the newest heartbeats and the next message, waiting at most ``WAIT_S`` and never past ``deadline``."""
        for beat in self.receiver.heartbeats():
            self._on_heartbeat(beat)
        arrival = self.receiver.next(min(WAIT_S, max(deadline - time.time(), 0.0)))
        if arrival is not None:
            self._dispatch(arrival)
        if self.live.monitor.due():
            self.show_status()

    def show_status(self) -> None:
        """Hand the live view the fleet as it is now."""
        collection = self.collection
        quarantined = set(self.reputation.held)
        updates_in, expected = (len(collection.ledger.contributed), len(collection.expected)) if collection is not None else (0, 0)
        self.live.monitor.snapshot(self.registry, self.admission.planning.plans, quarantined, updates_in, expected)

    def _dispatch(self, arrival: Arrival) -> None:
        waited = waited_s(arrival)
        self.live.monitor.metrics.message_wait.observe(waited)
        if self.collection is not None:
            self.collection.ledger.waited(waited)
        message = arrival.message
        if isinstance(message, Hello):
            self.admission.on_hello(message)
        elif isinstance(message, AdapterUpdate):
            self._on_update(message, arrival)
        elif isinstance(message, Evaluation):
            self._on_evaluation(message)
        elif isinstance(message, Reject):
            log.warning("%s refused its work: %s (%s)", arrival.agent_id, message.reason, message.detail)
            self.preparing.discard(arrival.agent_id)
            if self.collection is not None and self.collection.expected_round(arrival.agent_id) == message.round:
                self.collection.give_up(arrival.agent_id, f"refused by agent: {message.reason} ({message.detail[:200]})")
        else:
            self.receiver.refusals.refuse("unexpected_type", f"devices do not send {type(message).__name__}", topics.uplink(arrival.agent_id))

    def _on_heartbeat(self, arrival: Arrival) -> None:
        beat: Heartbeat = arrival.message
        agent_id = arrival.agent_id
        if self.registry.get(agent_id) is None:  # e.g. this coordinator restarted with --resume
            return self.admission.on_unknown(agent_id)
        self.live.monitor.heartbeat(agent_id, beat.state, beat.round, beat.step, beat.steps, beat.sent_unix)
        if beat.state == "ready":
            self.preparing.discard(agent_id)
        current = self.sender.current(agent_id)
        waiting_for_it = self.collection is None or self.collection.still_out(agent_id)
        if beat.state == "idle" and current is not None and beat.round < current.round and waiting_for_it:
            self.sender.resend(agent_id, f"it holds round {beat.round}", reported_at=beat.sent_unix)

    def _on_update(self, update: AdapterUpdate, arrival: Arrival) -> None:
        collection, record = self.collection, self.registry.get(update.agent_id)
        if record is not None and record.last_update == update.message_id:  # its receipt was lost: answered again, taken once
            return self.sender.receipt(update.agent_id, update.round, update.message_id, again=True)
        expected = collection.expected.get(update.agent_id) if collection is not None else None
        try:
            validate_update(update, expected.expectation if expected else None, collection is not None and update.agent_id in collection.received, arrival.arrived)
            norm = self._check_update_limits(update)
        except UpdateRejected as error:
            if collection is not None and update.round == collection.expected_round(update.agent_id) and error.reason != "duplicate":
                collection.give_up(update.agent_id, error.reason)  # it will not send another
            return self.admission.reject(update.agent_id, error.reason, error.detail, update.round, update.message_id)
        self.recorder.keep_update(update.round, update.agent_id, update.tensors)
        collection.accept(update, arrival.size, norm)
        self.registry.get(update.agent_id).last_update = update.message_id
        self.sender.receipt(update.agent_id, update.round, update.message_id)
        self.registry.get(update.agent_id).base_version = int(update.metrics.get("base_version", 0))
        log.debug("round %d: update from %s (%d examples, loss %.3f)", update.round, update.agent_id, update.num_examples, update.metrics.get("loss", float("nan")))

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
            return self.admission.reject(evaluation.agent_id, "unknown_agent", "evaluation for another run or from an unregistered agent")
        if not (0.0 <= evaluation.accuracy <= 1.0 and np.isfinite(evaluation.loss)):
            return self.admission.reject(evaluation.agent_id, "bad_evaluation", f"accuracy {evaluation.accuracy}, loss {evaluation.loss}")
        last_wire_round = wire_round(self, self.config.rounds, self.work.options.max_group_frequency if self.work.options.groups else 1)
        if not 0 <= evaluation.round <= last_wire_round or not self.recorder.client_evaluation(evaluation):
            return self.admission.reject(evaluation.agent_id, "bad_evaluation", f"round {evaluation.round}: not a round of this run, or reported already")
