"""The coordinator's voice: work, states and rejects out, without waiting for the broker.

**Fan-out costs O(distinct states).** Devices that get the same view of a state (the strategy's ``view_key``: the
same adapter shape and merged base changes, under most strategies) share one ``GlobalState`` that names no device:
it is converted, encoded and signed once (``MqttTransport.seal_shared``) and the same frames go to each of them,
behind each device's own small signed assignment that names the state's digest (``fedge.trust.downlink`` takes the
state only then). The CPU this costs is counted per round (``fanout_cpu_s``) with the number of distinct states.

**Resends.** Each device's current work is kept with the broker's handles for its frames. Work is sent again only
when the broker acknowledged all of it (it was delivered) and the device shows it did not act on it: it restarted
(its hello), or it reported an older round while idle in a heartbeat it sent ``resend_every_s`` or more after the
broker had the work — never while the work still waits in the send queue, nor while it may still be on its way.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from fedge.transport import MqttTransport, Queued, acknowledged
from fedge.wire import Assignment, GlobalState, Receipt, Reject, topics
from fedge.wire.codec import encode_message

log = logging.getLogger(__name__)

SHARED_STATES_KEPT = 64  # encoded shared states kept for reuse (the current states' views, and resends)


@dataclass(frozen=True)
class _Work:
    assignment: Assignment
    frames: list[bytes]  # the state's frames (shared, or the device's own); empty for prepare-only work
    queued: tuple[Queued, ...]
    sent_at: float
    acked_at: float | None = None  # when the broker was first seen to hold all of it


@dataclass(frozen=True)
class FanoutCost:
    cpu_s: float  # converting, encoding and signing states
    distinct_states: int


class Sender:
    def __init__(self, transport: MqttTransport, resend_every_s: float):
        self.transport = transport
        self.resend_every_s = resend_every_s
        self._work: dict[str, _Work] = {}
        self._shared: OrderedDict[Hashable, tuple[list[bytes], str]] = OrderedDict()
        self._final: dict[Hashable, bytes] = {}  # final states by view, encoded once
        self._cpu_s = 0.0
        self._distinct = 0
        self._answered_again = 0  # receipts sent again since the last record: updates resent after a lost receipt

    def send_work(self, assignment: Assignment, state_key: Hashable | None = None, make_state: Callable[[], GlobalState] | None = None) -> int:
        """Queue a device's assignment and, unless it is prepare-only, the shared state ``make_state`` builds
        (once per ``state_key``); returns the bytes queued."""
        frames: list[bytes] = []
        if make_state is not None:
            frames, digest = self._shared_state(state_key, make_state)
            assignment = replace(assignment, state_digest=digest)
        downlink = topics.downlink(assignment.agent_id)
        queued = (self.transport.enqueue(downlink, assignment),) + ((self.transport.enqueue_frames(downlink, frames),) if frames else ())
        self._work[assignment.agent_id] = _Work(assignment, frames, queued, time.time())
        return sum(item.size for item in queued)

    def _shared_state(self, key: Hashable, make_state: Callable[[], GlobalState]) -> tuple[list[bytes], str]:
        if key in self._shared:
            self._shared.move_to_end(key)
            return self._shared[key]
        started = time.thread_time()
        self._shared[key] = self.transport.seal_shared(make_state())
        self._cpu_s += time.thread_time() - started
        self._distinct += 1
        while len(self._shared) > SHARED_STATES_KEPT:
            self._shared.popitem(last=False)
        return self._shared[key]

    def send_final(self, agent_id: str, state_key: Hashable, make_state: Callable[[], GlobalState]) -> Queued:
        """The final state, encoded once per ``state_key`` and signed for each device's own downlink (there is no
        assignment to name a shared one)."""
        if state_key not in self._final:
            started = time.thread_time()
            self._final[state_key] = encode_message(make_state())
            self._cpu_s += time.thread_time() - started
            self._distinct += 1
        return self.transport.enqueue_encoded(topics.downlink(agent_id), self._final[state_key])

    def reject(self, agent_id: str, reason: str, detail: str, round_number: int | None = None, ref: str | None = None) -> None:
        """Queued without waiting for the broker: a reject never holds up the round."""
        self.transport.enqueue(topics.downlink(agent_id), Reject(agent_id, reason, detail[:500], round_number, ref))

    def receipt(self, agent_id: str, round_number: int, ref: str, again: bool = False) -> None:
        """Queued like a reject: the device stops resending update ``ref``; ``again`` for an update that came back
        after it was taken (its receipt was lost), counted until ``take_answered_again``."""
        self._answered_again += again
        self.transport.enqueue(topics.downlink(agent_id), Receipt(agent_id, round_number, ref))

    def take_answered_again(self) -> int:
        """Updates resent after a lost receipt since the last call, whenever they came (in a round or between)."""
        count, self._answered_again = self._answered_again, 0
        return count

    def current(self, agent_id: str) -> Assignment | None:
        work = self._work.get(agent_id)
        return work.assignment if work is not None else None

    def undelivered(self, agent_id: str) -> int:
        """Frames of the device's current work the broker has not acknowledged yet."""
        work = self._work.get(agent_id)
        return 0 if work is None else sum(not acknowledged(handle) for item in work.queued for handle in item.handles)

    def resend(self, agent_id: str, why: str, reported_at: float | None = None) -> bool:
        """Send a device its current work again, if it was delivered and its deadline has not passed; with
        ``reported_at`` (when the device said it lacks the work), only if it said so ``resend_every_s`` or more after
        the broker was seen to hold the work and the work was last sent. Whether it was sent."""
        work = self._work.get(agent_id)
        now = time.time()
        if work is None or now > work.assignment.deadline_unix or self.undelivered(agent_id):
            return False
        if work.acked_at is None:
            work = self._work[agent_id] = replace(work, acked_at=now)
        if reported_at is not None and reported_at - max(work.acked_at, work.sent_at) < self.resend_every_s:
            return False
        log.info("%s missed its round-%d work (%s); sending it again", agent_id, work.assignment.round, why)
        downlink = topics.downlink(agent_id)
        queued = (self.transport.enqueue(downlink, work.assignment),) + ((self.transport.enqueue_frames(downlink, work.frames),) if work.frames else ())
        self._work[agent_id] = replace(work, queued=queued, sent_at=now, acked_at=None)
        return True

    def forget(self, agent_id: str) -> None:
        self._work.pop(agent_id, None)

    def take_cost(self) -> FanoutCost:
        """The fan-out's cost since the last call."""
        cost = FanoutCost(round(self._cpu_s, 4), self._distinct)
        self._cpu_s, self._distinct = 0.0, 0
        return cost
