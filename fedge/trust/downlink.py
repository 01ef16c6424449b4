"""A device's side of the trust boundary (an agent's, or a site aggregator's toward the central coordinator): it
acts only on messages the coordinator signed for it.

A downlink must verify under the coordinator's public key (from the device's credentials), name this device, be
newer than the last one accepted, and belong to the run the agent is in; an assignment may start a new run (the
agent then adopts its run id). Uplinks are sealed with the device's own key.
"""

from __future__ import annotations

from fedge.trust.enrolment import COORDINATOR_ID, Credentials
from fedge.wire import Assignment, Limits, Message, topics
from fedge.wire.envelope import Sealed, Signer, Verifier
from fedge.wire.errors import ForgedError
from fedge.wire.sealing import SignedCodec


class DownlinkCodec(SignedCodec):
    def __init__(self, credentials: Credentials, limits: Limits = Limits()):
        coordinator = credentials.coordinator_public_key()
        super().__init__(Signer(credentials.identity, credentials.signing_key()), Verifier({COORDINATOR_ID: coordinator}.get), limits)
        self.agent_id = credentials.identity

    def check(self, topic: str, sealed: Sealed, message: Message) -> None:
        if sealed.sender != COORDINATOR_ID or topic != topics.downlink(self.agent_id):
            raise ForgedError(f"{sealed.sender!r} is not the coordinator, or {topic} is not this device's downlink")
        if getattr(message, "agent_id", self.agent_id) != self.agent_id:
            raise ForgedError(f"a message for {getattr(message, 'agent_id', None)!r} on {self.agent_id!r}'s downlink")
        if isinstance(message, Assignment) or not self.run:
            return
        if sealed.run != self.run:
            raise ForgedError(f"sealed for run {sealed.run!r}; this device is in run {self.run!r}")
