"""One synchronous round, top to bottom: every group runs its τ_g exchanges (one group of everyone, τ = 1, without
HierFedLoRA groups), then the group states are combined, the round is committed and every planned device that did
not contribute is given its reason. The message handlers (``fedge.coordinator.server``) feed the open
``Collection`` while the round waits; the receiver keeps reading whatever the round is doing."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedge.coordinator.admission import Admission
from fedge.coordinator.aggregation_guard import all_finite
from fedge.coordinator.collection import Collection, Expected
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.ledger import RoundLedger
from fedge.coordinator.live_server import LiveView
from fedge.coordinator.reputation import Reputation
from fedge.coordinator.receiver import Receiver
from fedge.coordinator.record import RunRecorder
from fedge.coordinator.robust import guard_updates
from fedge.coordinator.registry import AgentRecord, Registry
from fedge.coordinator.sender import Sender
from fedge.coordinator.work import WorkOrders
from fedge.strategies import ClientInfo, ClientUpdate, Strategy
from fedge.wire import AdapterUpdate, LoraSpec

log = logging.getLogger(__name__)


class Coordinator(Protocol):
    """What the round engines use of the coordinator (``fedge.coordinator.server``): its parts, the open round's
    collection, and its message handling."""

    config: CoordinatorConfig
    registry: Registry
    admission: Admission
    work: WorkOrders
    sender: Sender
    receiver: Receiver
    recorder: RunRecorder
    collection: Collection | None
    reputation: Reputation
    live: LiveView

    @property
    def strategy(self) -> Strategy: ...

    def handle_next(self, deadline: float) -> None: ...

    def await_agents(self, wanted: int) -> None: ...

SWEEP_S = 1.0  # how often devices gone silent stop being waited for
PROGRESS_S = 10.0  # how often a waiting round says how far it got


@dataclass
class GroupExchange:
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


def run_round(c: Coordinator, round_number: int, arrays: dict[str, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
    """One global round. ``deadline``: earlier than ``round_deadline_s`` from now (a site's, set by its centre)."""
    c.admission.drop_revoked()
    c.admission.planning.write_if_changed()
    c.await_agents(c.config.min_clients)  # e.g. agents still reconnecting after a broker outage
    started = time.time()
    deadline = min(deadline or math.inf, started + c.config.round_deadline_s)
    working = c.registry.planned()
    c.collection = Collection(RoundLedger([record.agent_id for record in c.registry.with_plans()]))
    groups = groups_for(c, working, arrays)
    for group in groups:
        open_exchange(c, group, round_number, deadline)
    c.live.monitor.enter("training", round_number)
    c.recorder.save_kept_updates()  # the last round's, while the devices train
    next_sweep, next_progress = time.monotonic() + SWEEP_S, time.monotonic() + PROGRESS_S
    while not all(group.done for group in groups) and time.time() < deadline:
        c.handle_next(deadline)
        if time.monotonic() >= next_sweep:  # devices gone silent stop holding up their group
            sweep_silent(c, [agent for group in groups for agent in group.pending])
            next_sweep = time.monotonic() + SWEEP_S
        if time.monotonic() >= next_progress:
            log.info("round %d: %d updates in, waiting for %d devices (deadline in %.0f s)", round_number, len(c.collection.ledger.contributed), sum(len(group.pending) for group in groups), deadline - time.time())
            next_progress = time.monotonic() + PROGRESS_S
        for group in groups:
            if not group.done and not group.pending:
                close_exchange(c, group, round_number, deadline)
    for group in groups:
        if not group.done:  # the deadline: use what arrived
            close_exchange(c, group, round_number, deadline, last=True)
    c.live.monitor.enter("aggregating")
    arrays = c.recorder.moments.step(arrays, combine(c, arrays, groups, round_number))
    log.info("round %d closed after %.1f s: %d updates from %d participants", round_number, time.time() - started, len(c.collection.ledger.contributed), len(c.collection.ledger.participants))
    grouping = {"groups": [{"index": g.index, "members": [r.agent_id for r in g.members], "frequency": g.frequency, "exchanges": g.exchange} for g in groups]} if len(groups) > 1 else {}
    commit(c, round_number, arrays, started, grouping)
    return arrays


def groups_for(c: Coordinator, working: list[AgentRecord], arrays: dict[str, np.ndarray]) -> list[GroupExchange]:
    planned = {record.agent_id: record for record in working}
    groups = [GroupExchange(g.index, [planned[a] for a in g.members if a in planned], g.frequency, arrays) for g in c.admission.planning.groups]
    groups = [group for group in groups if group.members]
    grouped = {record.agent_id for group in groups for record in group.members}
    rest = [record for record in working if record.agent_id not in grouped]
    if rest or not groups:
        groups.append(GroupExchange(len(groups), rest, 1, arrays))
    return groups


def wire_round(c: Coordinator, round_number: int, exchange: int) -> int:
    """The round number on the wire: one per exchange, so a group's inner exchanges never collide."""
    per_round = c.work.options.max_group_frequency if c.work.options.groups else 1
    return (round_number - 1) * per_round + exchange


def give_work(c: Coordinator, record: AgentRecord, round_number: int, deadline: float, arrays: dict[str, np.ndarray], state_id: object, waiting: set[str] | None = None) -> None:
    """Send a device its work on ``arrays`` (``state_id`` names them: devices with the same view of the same state
    share one encoded state) and expect its update."""
    work = c.work
    c.collection.expect(record.agent_id, Expected(work.expectation(record, round_number, deadline, arrays), work.lora_spec(record), record.plan, arrays), waiting)
    size = c.sender.send_work(work.assignment(record, round_number, deadline), (state_id, work.view_key(record)), lambda: work.state(record, arrays, round_number, final=False))
    c.collection.ledger.add_bytes(c.collection.ledger.bytes_down, record.agent_id, size)


def open_exchange(c: Coordinator, group: GroupExchange, round_number: int, deadline: float) -> None:
    group.exchange += 1
    number = wire_round(c, round_number, group.exchange)
    group.waiting, group.pending = set(), set()
    horizon = c.registry.liveness.horizon()
    for record in group.members:
        if quarantined := c.reputation.reason(record.agent_id):
            c.collection.ledger.leave_out(record.agent_id, quarantined)
            continue
        if record.agent_id in c.collection.ledger.refused or not c.registry.liveness.is_live(record.agent_id, horizon):
            continue
        give_work(c, record, number, deadline, group.state, (number, group.index), group.pending)
        group.waiting.add(record.agent_id)
    if not group.waiting:
        group.done = True


def sweep_silent(c: Coordinator, pending: list[str]) -> None:
    """Devices nothing arrived from within the grace period (up to what has been read) stop being waited for."""
    liveness = c.registry.liveness
    horizon = liveness.horizon()
    for agent_id in pending:
        if not liveness.is_live(agent_id, horizon):
            c.collection.stop_waiting(agent_id, liveness.silence(agent_id))


def close_exchange(c: Coordinator, group: GroupExchange, round_number: int, deadline: float, last: bool = False) -> None:
    """Aggregate the group's updates of its open exchange; open the next one unless this was its last."""
    updates = [client_update(c, c.collection.received.pop(a)) for a in sorted(group.waiting) if a in c.collection.received]
    needed = min(c.config.min_clients, sum(c.reputation.reason(record.agent_id) is None for record in group.members))  # quarantined devices are not waited for
    if len(updates) >= needed:
        what = f"group {group.index}, exchange {group.exchange}"
        updates = guarded(c, updates, [update.num_examples for update in updates], what)
        state = aggregate(c, group.state, updates, wire_round(c, round_number, group.exchange), what)
        if state is not None:
            group.state = state
            group.examples.update({update.agent_id: update.num_examples for update in updates})
    else:
        log.warning("round %d: group %d got %d valid updates, fewer than %d; its state is unchanged", round_number, group.index, len(updates), needed)
    group.waiting = set()
    if last or group.exchange >= group.frequency or time.time() >= deadline:
        group.done = True
    else:
        open_exchange(c, group, round_number, deadline)


def combine(c: Coordinator, arrays: dict[str, np.ndarray], groups: list[GroupExchange], round_number: int) -> dict[str, np.ndarray]:
    """The global state: the only group's state, or the groups' states combined by the strategy as if each group
    were one client of the global rank (scaling 1) on its layers, weighted by the examples behind it."""
    if len(groups) == 1:
        return groups[0].state
    rank = c.admission.pin_limits.rank
    updates = []
    for group in groups:
        if not group.examples:
            continue
        layers = sorted({layer for record in group.members for layer in record.plan.layers})
        spec = LoraSpec(tuple(c.work.options.target_modules), tuple(layers), (rank,) * len(layers), 1.0)
        tensors = {key: group.state[key] for key in c.strategy.upload_shapes(group.state, spec)}
        updates.append(ClientUpdate(f"group-{group.index}", sum(group.examples.values()), spec, tensors))
    if not updates:
        return arrays
    return aggregate(c, arrays, updates, round_number, "the groups' combination") or arrays


def guarded(c: Coordinator, updates: list[ClientUpdate], weights: list[float], what: str) -> list[ClientUpdate]:
    """The updates under the robust rules (``fedge.coordinator.robust``), each measured from the state its device was
    given, weights capped in ``num_examples``; what the rules did goes into the round record under ``what``."""
    starts = []
    for update in updates:
        expected, record = c.collection.expected[update.agent_id], c.registry.get(update.agent_id)
        starts.append(c.strategy.update_start(expected.started_from, ClientInfo(update.agent_id, expected.spec, record.base_version if record else 0)))
    result = guard_updates(updates, weights, starts, c.config.robust, c.config.max_weight_share, c.strategy.coordinatewise, c.reputation)
    c.collection.ledger.robust[what] = result.to_record(c.config.robust)
    c.collection.ledger.outliers.update(result.outliers)
    c.collection.ledger.trust.update(result.trust)
    c.collection.ledger.agreement.update(result.agreement)
    if result.outliers:
        log.warning("%s: outliers %s (%s)", what, ", ".join(result.outliers), ", ".join(f"{agent} scaled ×{factor:.3g}" for agent, factor in result.scaled.items()) or "deviation over the bound")
    return result.updates


def aggregate(c: Coordinator, state: dict[str, np.ndarray], updates: list[ClientUpdate], round_number: int, what: str) -> dict[str, np.ndarray] | None:
    """The strategy's aggregate, timed; None (and recorded) when it is not finite: a poisoned aggregate is never
    committed, the state it would replace stays."""
    log_of = c.collection.ledger.aggregations
    aggregating = time.perf_counter()
    aggregated = c.strategy.aggregate(state, updates, round_number)
    log_of.seconds += time.perf_counter() - aggregating
    notes = c.strategy.notes(state, updates)
    if notes:
        log_of.notes[what] = notes
    if all_finite(aggregated):
        return aggregated
    log.error("round aggregate of %s is not finite; refused, the previous state stays", what)
    log_of.refused.append(what)
    return None


def client_update(c: Coordinator, update: AdapterUpdate) -> ClientUpdate:
    record = c.registry.get(update.agent_id)
    histogram = record.label_histogram if record is not None else ()
    return ClientUpdate(update.agent_id, update.num_examples, c.collection.expected[update.agent_id].spec, update.tensors, histogram)


def explain_left_out(c: Coordinator) -> None:
    """Give every participant that did not contribute and has no reason yet its reason: never sent work (silent
    when the round began), work not yet delivered, silent, or late (alive and expected; buffered rounds name the
    devices still training before this)."""
    collection, liveness = c.collection, c.registry.liveness
    horizon = liveness.horizon()
    for agent_id in collection.ledger.unexplained():
        if agent_id not in collection.expected:
            collection.ledger.leave_out(agent_id, f"no work this round ({liveness.silence(agent_id)})" if not liveness.is_live(agent_id, horizon) else "no work this round")
        elif undelivered := c.sender.undelivered(agent_id):
            collection.ledger.leave_out(agent_id, f"work not delivered: {undelivered} frames still unacknowledged by the broker")
        elif not liveness.is_live(agent_id, horizon):
            collection.ledger.leave_out(agent_id, liveness.silence(agent_id))
        else:
            collection.ledger.leave_out(agent_id, "late: no update before the round closed")


def commit(c: Coordinator, round_number: int, arrays: dict[str, np.ndarray], started: float, extra: dict) -> None:
    """Record the round and save its global state: the commit point of the round."""
    explain_left_out(c)
    c.recorder.run_dir.save_replay_counters(c.receiver.replay_counters())
    ledger = c.collection.ledger
    quarantined = c.reputation.observe(round_number, ledger.trust, ledger.outliers, ledger.agreement)
    fanout = c.sender.take_cost()
    c.recorder.commit(round_number, arrays, {
        "strategy": c.strategy.name,
        "round_mode": c.config.round_mode,
        **ledger.to_record(),
        "refused_messages": c.receiver.refusals.take(),
        "losses": {**c.receiver.take_losses(), "resent_updates": c.sender.take_answered_again()},
        "fanout": {"cpu_s": fanout.cpu_s, "distinct_states": fanout.distinct_states},
        "capacity": predicted_vs_measured(c.collection),
        **({"quarantined": {agent: c.reputation.reason(agent) for agent in quarantined}} if quarantined else {}),
        **extra,
        "wall_s": round(time.time() - started, 2),
    })


def predicted_vs_measured(collection: Collection) -> dict[str, dict[str, float]]:
    """Per contributing device: the planner's memory and step-time predictions next to what the agent measured."""
    out = {}
    for agent_id, update in collection.ledger.contributed.items():
        plan = collection.expected[agent_id].plan
        out[agent_id] = {
            "predicted_peak_bytes": plan.memory.total,
            "measured_peak_bytes": update.metrics.get("peak_memory_bytes", float("nan")),
            "predicted_step_seconds": round(plan.step_seconds, 4),
            "measured_step_seconds": update.metrics.get("seconds_per_step", float("nan")),
        }
    return out
