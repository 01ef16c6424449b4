"""The coordinator's side of the trust boundary: only enrolled devices' signed messages reach a handler.

Uplinks are opened by ``UplinkCodec``: the envelope must verify under the key of the device whose topic it came
on, be newer than the last one accepted from it, and belong to this run (a hello or heartbeat may come before the
device knows the run). Downlinks are sealed with the coordinator's key. What is refused is logged by reason
(rate-limited, so a flood cannot fill the log) and counted for the round's record; nothing is answered, so a
forger can neither provoke traffic nor have a genuine device told off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.trust.enrolment import COORDINATOR_ID, ENROLMENT_FILE, Credentials, Enrolment
from fedge.wire import Assignment, BackbonePart, GlobalState, Heartbeat, Hello, Limits, Message, Receipt, topics
from fedge.wire.envelope import Sealed, Signer, Verifier
from fedge.wire.errors import ForgedError
from fedge.wire.sealing import Codec, PlainCodec, SignedCodec

log = logging.getLogger(__name__)

_AGENT_KINDS_ONLY = (Assignment, GlobalState, BackbonePart, Receipt)  # what only the coordinator sends


class FleetKeys:
    """The enrolled devices' public keys, reloaded when ``enrolment.json`` changes (so a revocation takes effect
    during a run); ``accepts_topic`` is safe to call from the network thread."""

    def __init__(self, fleet_dir: str | Path):
        self.path = Path(fleet_dir) / ENROLMENT_FILE
        self._lock = threading.Lock()
        self._enrolment = Enrolment.load(fleet_dir)
        self._mtime = self.path.stat().st_mtime
        self._keys: dict[str, Ed25519PublicKey | None] = {}  # looked up once per sender

    def refresh(self) -> list[str]:
        """Reload after a change; returns the devices revoked since the last load."""
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return []
        before = set(self._enrolment.active())
        enrolment = Enrolment.load(self.path.parent)
        with self._lock:
            self._enrolment, self._mtime, self._keys = enrolment, mtime, {}
        revoked = sorted(before - set(enrolment.active()))
        if revoked:
            log.warning("revoked during the run: %s", ", ".join(revoked))
        return revoked

    def active_count(self) -> int:
        """Devices enrolled and not revoked."""
        with self._lock:
            return len(self._enrolment.active())

    def key_of(self, identity: str) -> Ed25519PublicKey | None:
        with self._lock:
            if identity not in self._keys:
                self._keys[identity] = self._enrolment.public_key(identity)
            return self._keys[identity]

    def accepts_topic(self, topic: str) -> bool:
        """Whether a topic belongs to an enrolled device (asked on the network thread)."""
        agent_id = topics.agent_of(topic)
        return agent_id is not None and self._enrolment.is_active(agent_id)


class UplinkCodec(SignedCodec):
    def check(self, topic: str, sealed: Sealed, message: Message) -> None:
        agent_id = topics.agent_of(topic)
        if sealed.sender != agent_id:
            raise ForgedError(f"{sealed.sender!r} signed a message on {agent_id!r}'s topic")
        if getattr(message, "agent_id", agent_id) != agent_id:
            raise ForgedError(f"message names {getattr(message, 'agent_id', None)!r} on {agent_id!r}'s topic")
        if isinstance(message, _AGENT_KINDS_ONLY):
            raise ForgedError(f"devices do not send {type(message).__name__}")
        if sealed.run != self.run and not (sealed.run == "" and isinstance(message, (Hello, Heartbeat))):
            raise ForgedError(f"sealed for run {sealed.run!r}, not {self.run!r}")


def coordinator_codec(fleet: FleetKeys | None, credentials: Credentials | None, run_id: str, limits: Limits, not_before_ns: int = 0) -> Codec:
    """Signed envelopes with the fleet's keys and the coordinator's own (its ``credentials``), or plain messages for
    an insecure run (``fleet`` None); ``not_before_ns``: a resumed coordinator's start, before which nothing opens."""
    if fleet is None or credentials is None:
        return PlainCodec(limits)
    return UplinkCodec(Signer(COORDINATOR_ID, credentials.signing_key()), Verifier(fleet.key_of, not_before_ns=not_before_ns), limits, run_id)


class RefusalLog:
    """Counts refused messages by reason; logs the first of each reason, then one summary per ``every_s``. The
    receiver's thread and the round engine both refuse."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.counts: Counter[str] = Counter()  # since the last take()
        self._unlogged: Counter[str] = Counter()
        self._last_summary = time.monotonic()
        self._lock = threading.Lock()

    def refuse(self, reason: str, detail: str, topic: str) -> None:
        with self._lock:
            self._count(reason, detail, topic)

    def _count(self, reason: str, detail: str, topic: str) -> None:
        if reason not in self.counts:
            log.warning("refused a message on %s: %s (%s)", topic, reason, detail[:300])
        else:
            self._unlogged[reason] += 1
        self.counts[reason] += 1
        now = time.monotonic()
        if self._unlogged and now - self._last_summary >= self.every_s:
            log.warning("refused %s more messages in the last %.0f s", ", ".join(f"{count} {reason}" for reason, count in self._unlogged.most_common()), now - self._last_summary)
            self._unlogged.clear()
            self._last_summary = now

    def take(self) -> dict[str, int]:
        """The counts since the last call (for a round's record), and start counting afresh."""
        with self._lock:
            counts, self.counts = dict(self.counts), Counter()
        return counts
