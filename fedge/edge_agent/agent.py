"""The agent's lifecycle: announce, take an assignment, train on each global state, send the update, repeat.

    connect (Last Will: status "offline") -> status "online" -> Hello(profile, data size; label counts only if asked)
    every heartbeat_s, from its own thread: Heartbeat(state, round) -- the coordinator's only sign of life
    Assignment(round r)  -> remember it
    GlobalState(round r) -> verify + load the backbone once, apply the state, [Evaluation(r-1)], train, send AdapterUpdate(r)
                            then, while waiting, cache the frozen-prefix states of the rows round r+1 will train on;
                            no Receipt (or Reject) for the update in time: send it again (fedge.edge_agent.resend)
    GlobalState(final)   -> apply it, [Evaluation(final round)], save the adapter if asked, stop; with
                            ``more_runs`` (a field trial's next arm follows) start over instead: the backbone
                            rebuilt pristine, ready for the next run's coordinator to ask for a hello

An agent given evaluation data reports the held-out accuracy of the model it holds after each state it takes.
With credentials (``fedge enroll``) it signs everything it sends and acts only on what the coordinator signed for it
(``fedge.trust.downlink``); anything else is logged and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedge.edge_agent.memory import memory_shortfall
from fedge.edge_agent.resend import RECEIPT_WAIT_S, Resender
from fedge.edge_agent.session import Session
from fedge.edge_agent.trainer import BatchSampler, Slowed, StepProgress, TrainResult, reused_optimizer, train_local
from fedge.heartbeat import start_heartbeat
from fedge.adapters import apply_view, attach, galore_groups, restart_lora, restore, round_start, save_adapter, upload
from fedge.privacy import privatise
from fedge.strategies import StrategyError, recipe_for
from fedge.task.kinds import kind_of, task_problems
from fedge.task.data import Record, label_counts
from fedge.task.prefix import FrozenPrefix
from fedge.transport import BrokerConfig, MqttTransport, Received, TransportError
from fedge.trust.enrolment import Credentials
from fedge.wire import MAX_GALORE_SCALE, MAX_PROXIMAL_MU, PREPARED_ROUNDS, AdapterUpdate, Assignment, DeviceProfile, Evaluation, GlobalState, Heartbeat, Hello, Receipt, Reject
from fedge.wire import topics
from fedge.trust.downlink import DownlinkCodec
from fedge.edge_agent.fetch import BackboneFetcher, package_cache
from fedge.quantization.backbone import BackboneSource, load_backbone, needs_loss_scaling, quantization_problem

log = logging.getLogger(__name__)


class EdgeAgent:
    def __init__(
        self, agent_id: str, broker: BrokerConfig, data: list[Record], profile: DeviceProfile, device: str = "cpu",
        heartbeat_s: float = 10.0, save_dir: Path | None = None, eval_data: list[Record] | None = None,
        cache_dir: Path | None = None, data_source: str = "training data", eval_source: str = "evaluation data",
        credentials: Credentials | None = None, share_label_counts: bool = True, slowdown: float = 1.0, receipt_wait_s: float = RECEIPT_WAIT_S,
    ):
        """``data`` and ``eval_data`` are rows as their files hold them; ``*_source`` names those files in errors.
        ``credentials``: this device's identity from ``fedge enroll`` (its id must be ``agent_id``); they also log in
        to the broker unless ``broker`` names a user. Without them the agent runs unsigned (an insecure run).
        ``share_label_counts``: whether to tell a coordinator that asks how many examples of each label this device
        holds (CE-LoRA and HierFedLoRA grouping use them)."""
        self.agent_id = topics.check_agent_id(agent_id)
        self.data = data
        self.eval_data = eval_data or None
        self.data_source, self.eval_source = data_source, eval_source
        self.profile = profile
        self.device = device
        self.heartbeat_s = heartbeat_s
        self.slowdown = slowdown  # > 1: every training step takes this many times as long (emulating a slower device)
        self.save_dir = save_dir
        status = topics.status(agent_id)
        self.codec = None
        if credentials is not None:
            if credentials.identity != agent_id:
                raise ValueError(f"the credentials are {credentials.identity!r}'s, not {agent_id!r}'s")
            self.codec = DownlinkCodec(credentials)
            if broker.username is None:
                broker = replace(broker, username=credentials.broker_username, password=credentials.broker_password)
        self.transport = MqttTransport(broker, client_id=f"fedge-agent-{agent_id}", will=(status, b"offline"), birth=(status, b"online"), codec=self.codec)
        self.share_label_counts = share_label_counts
        self._labels_asked = False
        self._state = "idle"  # what the heartbeat thread reports: idle, preparing, ready or training
        self._progress: StepProgress | None = None  # the training round's steps, also reported by the heartbeat thread
        self._stopped = threading.Event()
        self._unreadable = 0
        self._assignment: Assignment | None = None
        self._session: Session | None = None
        self._done = False
        self.refused: str | None = None  # set when the coordinator refuses this device outright
        self._handled_states: deque[str] = deque(maxlen=64)  # ids of global states already acted on
        self._base_changes: dict[str, np.ndarray] = {}  # every frozen-weight change received, to rebuild a backbone
        self._deferred: deque[Received] = deque()  # messages that arrived while the backbone was downloading
        self._fetcher = BackboneFetcher(self.transport, self.agent_id, cache_dir or package_cache(), defer=self._deferred.append)
        self._resender = Resender(receipt_wait_s)  # the last update, until the coordinator answers it

    def run(self) -> None:
        self.transport.subscribe(topics.downlink(self.agent_id))
        self.transport.connect()
        self._hello()
        beating = start_heartbeat(self.transport, self.agent_id, self.heartbeat_s, self._stopped, self._status)
        try:
            while not self._done:
                received = self._next_message()
                try:
                    if received is not None:
                        self._handle(received)
                    if (again := self._resender.due()) is not None:
                        log.warning("%s: no answer to the round %d update yet; sending it again", self.agent_id, again.round)
                        self._send(again)
                except TransportError as error:
                    # paho keeps the unacknowledged message queued and sends it once the broker is back
                    log.warning("%s: broker unavailable (%s); carrying on", self.agent_id, error)
        finally:
            self._stopped.set()
            beating.join(timeout=5)
            try:
                self.transport.publish_raw(topics.status(self.agent_id), b"offline", retain=True, timeout_s=5)
            except TransportError:
                pass  # the Last Will says it for us
            self.transport.close()

    def _handle(self, received: Received) -> None:
        if received.error is not None:
            self._note_unreadable(received)
        elif not self._addressed_here(received.message):
            log.warning("%s: ignored a %s for %r", self.agent_id, type(received.message).__name__, received.message.agent_id)
        else:
            self._dispatch(received.message)

    def _addressed_here(self, message) -> bool:
        """Whether a message is for this device: it names it, or it is a global state that names no device (shared
        by the devices with the same view; with credentials the codec has already bound it to this device)."""
        addressee = getattr(message, "agent_id", self.agent_id)
        return addressee == self.agent_id or (addressee == "" and isinstance(message, GlobalState))

    def _status(self) -> tuple[str, int, int, int]:
        """What the heartbeat thread reports: what this device is doing, the round it holds and, while training, the
        steps done of the round's."""
        step, steps = (self._progress.step, self._progress.total) if self._state == "training" and self._progress is not None else (0, 0)
        return self._state, self._assignment.round if self._assignment is not None else 0, step, steps

    def _note_unreadable(self, received: Received) -> None:
        """Forged, replayed or malformed downlinks: the first few are logged, then every hundredth."""
        self._unreadable += 1
        if self._unreadable <= 5 or self._unreadable % 100 == 0:
            log.warning("%s: dropped a message on %s (%d so far): %s", self.agent_id, received.topic, self._unreadable, received.error)

    def _next_message(self) -> Received | None:
        """The next message; while rows for the next round wait to be cached, cache a chunk between polls. None
        after ``heartbeat_s`` with nothing to do."""
        if self._deferred:
            return self._deferred.popleft()
        session = self._session
        while session is not None and session.ahead:
            received = self.transport.receive(timeout_s=0)
            if received is not None:
                return received
            chunk, session.ahead = session.ahead[: session.cache.chunk_rows], session.ahead[session.cache.chunk_rows :]
            session.cache.fill(chunk)
        return self.transport.receive(timeout_s=self.heartbeat_s)

    def _hello(self) -> None:
        """Register; the data's label counts go only to a coordinator that asked for them, and only if allowed."""
        counts = label_counts(self.data) if self._labels_asked and self.share_label_counts else {}
        self._send(Hello(self.agent_id, self.profile, len(self.data), counts, self._base_version()))
        log.info("%s: announced as %s with %d examples%s", self.agent_id, self.profile.name, len(self.data), " and their label counts" if counts else "")

    def _dispatch(self, message) -> None:
        if isinstance(message, (Receipt, Reject)):
            self._resender.answered(message.ref)
        if isinstance(message, Receipt):
            log.debug("%s: the coordinator took the round %d update", self.agent_id, message.round)
        elif isinstance(message, Assignment):
            self._resender.forget_before(message.round)
            self._assignment = message
            if self.codec is not None:
                self.codec.run = message.run_id  # what this device signs from now on belongs to this run
            if message.prepare_only:
                self._state = "preparing"
                self._get_ready(message)
        elif isinstance(message, GlobalState):
            self._on_global(message)
        elif isinstance(message, Reject) and message.reason == "unknown_agent":
            self._hello()  # the coordinator lost us (restarted): register again
        elif isinstance(message, Reject) and message.reason == "label_counts_wanted":
            self._labels_asked = True
            if not self.share_label_counts:
                log.warning("%s: the coordinator asked for this device's label counts; declining (%s)", self.agent_id, message.detail)
            self._hello()  # with the counts, or without them to decline
        elif isinstance(message, Reject) and message.reason in ("infeasible", "bad_profile"):
            log.error("%s: the coordinator refused this device (%s): %s", self.agent_id, message.reason, message.detail)
            self.refused = message.detail
            self._done = True
        elif isinstance(message, Reject):
            log.warning("%s: coordinator rejected round %s: %s (%s)", self.agent_id, message.round, message.reason, message.detail)
        else:
            log.warning("%s: ignoring unexpected %s", self.agent_id, type(message).__name__)

    def _on_global(self, state: GlobalState) -> None:
        if state.final:
            if self._session is not None:
                self._apply(self._session, state.tensors)
                self._report_accuracy(self._session, state.run_id, state.round)
                if self.save_dir is not None:
                    save_adapter(self._session.model, self.save_dir)
            if state.more_runs:
                log.info("%s: run %s finished; staying for the next run", self.agent_id, state.run_id)
                self._start_over()
            else:
                log.info("%s: run finished", self.agent_id)
                self._done = True
            return
        if state.message_id in self._handled_states:
            log.info("%s: redelivered global state for round %d ignored", self.agent_id, state.round)
            return
        self._handled_states.append(state.message_id)
        assignment = self._assignment
        if assignment is None or assignment.round != state.round:
            log.warning("%s: global state for round %d without its assignment; skipped", self.agent_id, state.round)
            return
        self._state = "training"
        try:
            self._train_round(state, assignment)
        finally:
            self._state = "idle"

    def _train_round(self, state: GlobalState, assignment: Assignment) -> None:
        session = self._session_for(assignment)
        if session is None:
            return
        try:
            if session.recipe.reinit_each_round:
                restart_lora(session.model, assignment.seed)
            self._apply(session, state.tensors)
            session.round_start = round_start(session.model, session.lora, session.recipe)
            if assignment.clip_norm < 0 or assignment.noise_multiplier < 0:
                raise ValueError("the assignment's clip_norm and noise_multiplier must not be negative")
            if not 0 <= assignment.proximal_mu <= MAX_PROXIMAL_MU:
                raise ValueError(f"the assignment's proximal_mu must be from 0 to {MAX_PROXIMAL_MU:g}")
            if not 0 < assignment.galore_scale <= MAX_GALORE_SCALE:
                raise ValueError(f"the assignment's galore_scale must be above 0 and at most {MAX_GALORE_SCALE:g}")
        except (ValueError, RuntimeError, OSError, StrategyError) as error:
            log.error("%s: cannot take round %d: %s", self.agent_id, state.round, error)
            self._send(Reject(self.agent_id, "cannot_train", str(error)[:500], state.round, assignment.message_id))
            return
        received = upload(session.model, session.lora, session.recipe, session.round_start) if assignment.clip_norm > 0 else None
        if state.round > 1:
            self._report_accuracy(session, state.run_id, state.round - 1)  # the model round r-1 left this device
        log.info("%s: round %d, training %d steps (ranks %s on the top %d layers%s)", self.agent_id, state.round, assignment.local_steps, "/".join(map(str, assignment.lora.ranks)), len(assignment.lora.layers),
                 f"; FedProx μ = {assignment.proximal_mu:g}" if assignment.proximal_mu else "")
        try:
            optimizer = session.recipe.optimizer or assignment.optimizer
            groups = galore_groups(session.model, session.lora, assignment.galore_scale, assignment.local_steps) if optimizer == "galore" else None
            if session.recipe.keeps_optimizer:  # moments and projectors carry over; this round's rate and scale
                session.step_rule = reused_optimizer(session.step_rule, optimizer, session.model, assignment.learning_rate, groups, assignment.galore_scale)
            result = train_local(
                session.task, session.cache, session.sampler, assignment.local_steps, assignment.batch_size,
                assignment.learning_rate, optimizer, groups, session.loss_scaling, proximal_mu=assignment.proximal_mu,
                on_step=self._step_hook(f"{self.agent_id}: round {state.round}", assignment.local_steps), stop_at=assignment.work_until(time.time()), step_rule=session.step_rule,
            )
        except (ValueError, RuntimeError, torch.OutOfMemoryError) as error:
            log.error("%s: training round %d failed: %s", self.agent_id, state.round, error)
            self._send(Reject(self.agent_id, "cannot_train", str(error)[:500], state.round, assignment.message_id))
            return
        if result.steps < assignment.local_steps:
            log.warning("%s: round %d stopped after %d of %d steps to meet its deadline", self.agent_id, state.round, result.steps, assignment.local_steps)
        self._send_update(assignment, session, result, received)
        upcoming = torch.cat(session.sampler.upcoming(assignment.local_steps, assignment.batch_size))
        session.ahead = session.cache.missing(upcoming)  # cached between messages while the coordinator aggregates

    def _start_over(self) -> None:
        """Between runs: forget the run (its assignment, backbone with its frozen-weight changes, pending update) so
        the next one starts from the pristine backbone, and accept the next run's coordinator."""
        self._assignment, self._session = None, None
        self._base_changes = {}
        self._handled_states.clear()
        self._resender = Resender(self._resender.wait_s)
        if self.codec is not None:
            self.codec.run = ""  # the next run's assignment binds it again
        self._state = "idle"

    def _step_hook(self, label: str, steps: int):
        self._progress = progress = StepProgress(label, steps)
        return Slowed(progress, self.slowdown) if self.slowdown > 1 else progress

    def _get_ready(self, assignment: Assignment) -> None:
        """Before the round's state arrives: fetch and load the backbone and cache the frozen prefix of the rows this
        round and the next will train on (the next round's would otherwise be cached while the coordinator
        aggregates this one), then tell the coordinator (heartbeat ``ready``), or refuse the round with the reason."""
        session = self._session_for(assignment)
        if session is None:
            self._state = "idle"
            return
        started = time.perf_counter()
        rows = torch.cat(session.sampler.upcoming(PREPARED_ROUNDS * assignment.local_steps, assignment.batch_size))
        cached = len(session.cache.fill(rows))
        log.info("%s: ready for round %d (%d prefix rows cached in %.1f s)", self.agent_id, assignment.round, cached, time.perf_counter() - started)
        self._state = "ready"
        self._send(Heartbeat(self.agent_id, "ready", time.time(), assignment.round))

    def _session_for(self, assignment: Assignment) -> Session | None:
        """The session an assignment trains in (built when it differs from the current one), or None after refusing
        the round with the reason: too little free memory, or a backbone, task or data it cannot use."""
        shortfall = memory_shortfall(assignment.predicted_peak_bytes, self.device)
        if shortfall:
            log.error("%s: refusing round %d: %s", self.agent_id, assignment.round, shortfall)
            self._send(Reject(self.agent_id, "insufficient_memory", shortfall, assignment.round, assignment.message_id))
            return None
        try:
            return self._prepare(assignment)
        except (ValueError, RuntimeError, OSError, StrategyError) as error:
            log.error("%s: cannot take round %d: %s", self.agent_id, assignment.round, error)
            self._send(Reject(self.agent_id, "cannot_train", str(error)[:500], assignment.round, assignment.message_id))
            return None

    def _base_version(self) -> int:
        """The last round whose frozen-weight changes this agent holds (0: the pristine backbone)."""
        return max(self._session.applied_rounds, default=0) if self._session else 0

    def _apply(self, session: Session, view: dict[str, np.ndarray]) -> None:
        """Load a received state; refresh the cached prefix when a change reached a layer below the adapter."""
        self._base_changes.update({key: value for key, value in view.items() if ".base_delta." in key})
        restore(session.model, session.lora, session.round_start)  # full weights: back to the last round's start, then its changes
        lowest = apply_view(session.model, view, session.applied_rounds)
        for cache in (session.cache, session.held_out):
            if cache is not None:
                cache.weights_changed(lowest)

    def _report_accuracy(self, session: Session, run_id: str, round_number: int) -> None:
        """Evaluate the model this device now holds on its evaluation data and tell the coordinator."""
        if session.held_out is None:
            return
        result = session.task.evaluate(session.held_out)
        self._send(Evaluation(run_id, round_number, self.agent_id, result.accuracy, result.loss, len(session.held_out)))
        log.info("%s: the model after round %d scores %.3f on %d held-out examples", self.agent_id, round_number, result.accuracy, len(session.held_out))

    def _prepare(self, assignment: Assignment) -> Session:
        spec = assignment.backbone
        task = assignment.task
        key = (assignment.lora, task, spec.sha256, spec.quantization, assignment.gradient_checkpointing, assignment.strategy, assignment.run_seed)
        session = self._session
        if session and session.key == key:
            return session
        problem = quantization_problem(spec.quantization, self.device)
        if problem:
            raise ValueError(f"cannot run the assigned {spec.quantization} base: {problem}")
        problems = task_problems(task)
        if problems:
            raise ValueError("the assigned task is invalid: " + "; ".join(problems))
        recipe = recipe_for(assignment.strategy)
        if assignment.prefix_cache_bytes < 0:
            raise ValueError("the assignment's prefix_cache_bytes is negative")
        if assignment.clip_norm > 0 and not recipe.privatisable:
            raise ValueError(f"privacy is not available under {assignment.strategy}: clipping and noise would break what its devices send")
        kind = kind_of(task.kind)
        items = kind.items(self.data, task, self.data_source)  # data the task cannot use fails before any download
        held_out_items = kind.items(self.eval_data, task, self.eval_source) if self.eval_data else None
        source = BackboneSource(spec.name, self._fetcher.fetch(spec), spec.sha256)
        started = time.perf_counter()
        model, tokenizer = load_backbone(source, spec.quantization, self.device)
        trainable = attach(model, assignment.lora, recipe, assignment.run_seed, assignment.seed)
        runner = FrozenPrefix(trainable, min(assignment.lora.layers), assignment.gradient_checkpointing)
        applied: set[int] = set()
        apply_view(trainable, self._base_changes, applied)  # a rebuilt backbone gets every change back
        task_model = kind.model(runner, tokenizer, task)
        cache = runner.cache(task_model.encode(items).to(self.device), assignment.prefix_cache_bytes or None)
        held_out = runner.cache(task_model.encode(held_out_items).to(self.device)) if held_out_items else None
        log.info("%s: backbone %s (%s, %s) ready in %.1f s; %d examples, split below layer %d", self.agent_id, source.name, spec.quantization, assignment.strategy, time.perf_counter() - started, len(self.data), runner.start_layer)
        loss_scaling = needs_loss_scaling(spec.quantization, self.device)
        sampler = BatchSampler(len(cache), assignment.run_seed)
        self._session = Session(key, assignment.lora, recipe, trainable, task_model, cache, sampler, applied, loss_scaling, held_out)
        return self._session

    def _send_update(self, assignment: Assignment, session: Session, result: TrainResult, received: dict[str, np.ndarray] | None) -> None:
        """Send what the strategy asks for; with privacy on (``received``: the tensors before training), the round's
        change clipped and noised on this device first."""
        metrics = {
            "loss": result.loss,
            "steps": float(result.steps),
            "seconds_per_step": result.seconds_per_step,
            "peak_memory_bytes": float(result.peak_memory_bytes),
            "base_version": float(self._base_version()),
            "skipped_steps": float(result.skipped_steps),
            "prefix_seconds": result.prefix_seconds,
            "prefix_rows": float(result.prefix_rows),
        }
        tensors = upload(session.model, session.lora, session.recipe, session.round_start)
        if received is not None:
            tensors, metrics["update_norm"] = privatise(tensors, received, assignment.clip_norm, assignment.noise_multiplier)
        update = AdapterUpdate(assignment.run_id, assignment.round, self.agent_id, len(self.data), metrics, tensors)
        sent = self._send(update)
        self._resender.sent(update)
        log.info("%s: round %d sent (%d bytes, loss %.3f)", self.agent_id, assignment.round, sent, result.loss)

    def _send(self, message) -> int:
        return self.transport.publish(topics.uplink(self.agent_id), message)

