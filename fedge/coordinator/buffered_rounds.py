"""Asynchronous and semi-synchronous rounds (the policy is ``fedge.coordinator.buffered``'s), top to bottom: each
round is one aggregation of the buffer of accepted updates; devices get new work as soon as theirs was buffered or
refused."""

from __future__ import annotations

import logging
import time
import numpy as np

from fedge.coordinator.admission import UNKNOWN_REPLY_S
from fedge.coordinator.buffered import UpdateBuffer, moved_by
from fedge.coordinator.collection import Collection
from fedge.coordinator.ledger import RoundLedger
from fedge.coordinator.rounds import SWEEP_S, Coordinator, aggregate, client_update, commit, give_work, guarded, sweep_silent

log = logging.getLogger(__name__)


def run_buffered(c: Coordinator, start_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    config = c.config
    c.admission.drop_revoked()
    c.await_agents(config.min_clients)
    buffer = UpdateBuffer(config.buffer_size or max(1, -(-len(c.registry.planned()) // 2)), config.max_staleness, config.staleness_exponent)
    version = start_round - 1  # aggregations done so far
    c.collection = Collection(RoundLedger([record.agent_id for record in c.registry.with_plans()]))
    working: set[str] = set()  # devices training on some version
    started = time.time()
    next_period, next_sweep, last_redispatch = started + config.aggregation_period_s, time.monotonic() + SWEEP_S, 0.0

    def new_work(agent_ids) -> None:
        for agent_id in agent_ids:
            record = c.registry.get(agent_id)
            if record is None or record.plan is None or agent_id in working:
                continue
            if quarantined := c.reputation.reason(agent_id):
                c.collection.ledger.leave_out(agent_id, quarantined)
                continue
            give_work(c, record, version + 1, time.time() + config.round_deadline_s, arrays, version)
            working.add(agent_id)

    new_work(record.agent_id for record in c.registry.planned())
    c.live.monitor.enter("training", version + 1)
    while version < config.rounds:
        c.handle_next(time.time() + 1.0)
        arrivals, given_up = c.collection.take_news()
        for agent_id in arrivals:  # accepted updates join the buffer, unless too stale
            update = c.collection.received[agent_id]
            working.discard(agent_id)
            staleness = buffer.stale(update.round, version + 1)
            if staleness is None:
                c.admission.reject(agent_id, "stale", f"trained for round {update.round}; the global state is at {version}, more than max_staleness {config.max_staleness} ahead", update.round, update.message_id)
                c.collection.ledger.withdraw(agent_id, "stale")
                new_work([agent_id])
            else:
                buffer.add(update, staleness)
        working.difference_update(given_up)  # refused or failed: new work below
        if time.monotonic() >= next_sweep:
            sweep_silent(c, list(working))
            working.difference_update([agent for agent in working if agent in c.collection.ledger.left_out])
            next_sweep = time.monotonic() + SWEEP_S
        now = time.time()
        due = buffer.full() and (config.round_mode == "async" or now >= next_period)
        if due or (buffer.entries and not working) or now - started >= config.round_deadline_s:
            c.live.monitor.enter("aggregating")
            arrays, staleness, discount = aggregate_buffer(c, buffer, arrays, version + 1)
            version += 1
            busy = {agent: f"still training on version {c.collection.expected_round(agent) - 1}" for agent in working}
            for agent_id, reason in busy.items():
                c.collection.ledger.leave_out(agent_id, reason)
            commit(c, version, arrays, started, {"staleness": staleness, "discount": round(discount, 4)})
            waiting = c.collection
            c.collection = Collection(RoundLedger([record.agent_id for record in c.registry.with_plans()]), expected=waiting.expected, received=waiting.received, settled=waiting.settled)
            started, next_period = time.time(), time.time() + config.aggregation_period_s
            if version < config.rounds:
                new_work(record.agent_id for record in c.registry.planned() if record.agent_id not in buffer.entries)
            c.recorder.save_kept_updates()
            c.live.monitor.enter("training", min(version + 1, config.rounds))
        elif not working and not buffer.entries and time.monotonic() - last_redispatch >= UNKNOWN_REPLY_S:
            new_work(record.agent_id for record in c.registry.planned())  # everyone refused or went quiet
            last_redispatch = time.monotonic()
    return arrays


def aggregate_buffer(c: Coordinator, buffer: UpdateBuffer, arrays: dict[str, np.ndarray], version: int) -> tuple[dict[str, np.ndarray], dict[str, int], float]:
    """The buffer's updates aggregated with staleness-discounted weights, the state moved by the buffer's mean
    discount (``fedge.coordinator.buffered``) and stepped by the server optimiser: the new state, each contributor's
    staleness and the discount; the state unchanged when the buffer is empty or the result not finite."""
    weights, discount = buffer.weights(), buffer.discount()
    entries = buffer.take()
    staleness = {update.agent_id: stale for update, stale in entries}
    if not entries:
        log.warning("round %d: no update arrived within round_deadline_s; the state is unchanged", version)
        return arrays, staleness, discount
    updates = guarded(c, [client_update(c, update) for update, _ in entries], weights, f"the buffer of round {version}")
    for update, _ in entries:
        c.collection.received.pop(update.agent_id, None)
    aggregated = aggregate(c, arrays, updates, version, f"the buffer of round {version}")
    return (arrays if aggregated is None else c.recorder.moments.step(arrays, moved_by(arrays, aggregated, discount))), staleness, discount
