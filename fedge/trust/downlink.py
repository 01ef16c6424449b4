"""A device's side of the trust boundary (an agent's, or a site aggregator's toward the central coordinator): it
acts only on messages the coordinator signed for it.

A downlink must verify under the coordinator's public key (from the device's credentials), name this device, be
newer than the last one accepted, and belong to the run the agent is in; an assignment may start a new run (the
agent then adopts its run id). A global state that several devices share names no device and is signed once for
every device (``fedge.wire.envelope``'s shared stream): it is taken only when an assignment this device opened
earlier names its digest, and it is then handed on as this device's own. A state naming no device that is signed
for this device's own downlink (a final state, encoded once and signed per device) is its own too. Uplinks are sealed with the device's own key.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace

from fedge.trust.enrolment import COORDINATOR_ID, Credentials
from fedge.wire import Assignment, GlobalState, Limits, Message, topics
from fedge.wire.envelope import SHARED_STREAM, Sealed, Signer, Verifier
from fedge.wire.errors import ForgedError
from fedge.wire.sealing import SignedCodec, payload_digest

NAMED_STATES_KEPT = 8  # digests of shared states this device's recent assignments named


class DownlinkCodec(SignedCodec):
    def __init__(self, credentials: Credentials, limits: Limits = Limits()):
        coordinator = credentials.coordinator_public_key()
        # Nothing the coordinator sealed before this device started opens: a replay across the device's restart.
        super().__init__(Signer(credentials.identity, credentials.signing_key()), Verifier({COORDINATOR_ID: coordinator}.get, shared=True, not_before_ns=time.time_ns()), limits)
        self.agent_id = credentials.identity
        self._named: deque[str] = deque(maxlen=NAMED_STATES_KEPT)

    def accepted(self, sealed: Sealed, message: Message) -> Message:
        """A state naming no device becomes this device's own; an assignment's state digest is noted for its state."""
        if isinstance(message, GlobalState) and not message.agent_id:
            return replace(message, agent_id=self.agent_id)
        if isinstance(message, Assignment) and message.state_digest:
            self._named.append(message.state_digest)
        return message

    def check(self, topic: str, sealed: Sealed, message: Message) -> None:
        if sealed.sender != COORDINATOR_ID or topic != topics.downlink(self.agent_id):
            raise ForgedError(f"{sealed.sender!r} is not the coordinator, or {topic} is not this device's downlink")
        if sealed.stream == SHARED_STREAM:
            if not isinstance(message, GlobalState) or message.agent_id or payload_digest(sealed.payload) not in self._named:
                raise ForgedError("a shared message that no assignment of this device named")
        elif getattr(message, "agent_id", self.agent_id) not in (self.agent_id, "" if isinstance(message, GlobalState) else self.agent_id):
            raise ForgedError(f"a message for {getattr(message, 'agent_id', None)!r} on {self.agent_id!r}'s downlink")
        if isinstance(message, Assignment) or not self.run:
            return
        if sealed.run != self.run:
            raise ForgedError(f"sealed for run {sealed.run!r}; this device is in run {self.run!r}")
