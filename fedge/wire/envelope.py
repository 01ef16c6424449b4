"""Signed envelopes: every message on the wire is sealed by its sender's Ed25519 key.

    FEDS | meta length (u16) | meta JSON {"from", "run", "s", "n"} | signature (64 bytes) | message bytes

The signature covers the topic, the meta and the message, so a copy onto another topic, a message from another
sender or an altered byte fails. ``n`` is the sender's counter: nanoseconds since the epoch, strictly increasing
per sender and stream ``s`` (a sender's threads that publish independently, such as the agent's heartbeat, each
seal on their own stream, so their messages may arrive in any order between streams), so a receiver refuses
anything not newer than the last it accepted from that sender and stream (a replay), anything sealed more than
``max_age_s`` ago or more than ``max_future_s`` ahead of its own clock (a device whose clock is wrong: the
protocol's deadlines already assume clocks agree), and anything sealed before ``not_before_ns``. ``run`` binds the
message to a run.

Replays across a restart: a receiver that restarts passes the time it started as ``not_before_ns``, so nothing
captured before then opens, and may ``restore`` the counters it had saved (``counters``), which also covers a sender
whose clock ran up to ``max_future_s`` ahead. The shared stream is exempt from ``not_before_ns``: a state sealed once
before a device restarted is still what its fresh assignment names, and the assignment is what binds it.

One stream is special: a message sealed on ``SHARED_STREAM`` is signed for ``SHARED_TOPIC`` rather than the topic it
travels on, so the coordinator signs a state once and publishes the same bytes to every device that shares it. Only
verifiers built with ``shared=True`` (devices) accept it, and they must bind it to something signed for them alone
(the device's assignment names its digest).
Envelopes are sealed before chunking and opened after reassembly, so large messages cost one signature.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedge.wire.errors import DecodeError, ForgedError, ReplayError

SIGNED_MAGIC = b"FEDS"
_PREFIX = struct.Struct(">4sH")
SIGNATURE_BYTES = 64
MAX_META_BYTES = 512
MAX_STREAMS = 8  # per sender: a receiver's replay state stays bounded
SHARED_STREAM = "shared"
SHARED_TOPIC = "fedge/shared"  # what a shared-stream message is signed for, wherever it travels
DEFAULT_MAX_AGE_S = 3600.0  # a 64 MB update over a slow uplink can take many minutes between sealing and arrival
MAX_FUTURE_S = 60.0  # how far ahead of the receiver's clock a sender's may run


@dataclass(frozen=True)
class Sealed:
    """An opened envelope: who signed it, for which run, its counter, and the message bytes inside."""

    sender: str
    run: str
    stream: str
    counter: int
    payload: bytes


def _signed_bytes(topic: str, meta: bytes, payload: bytes | memoryview) -> bytes:
    topic_bytes = topic.encode()
    return b"".join((b"fedge-envelope-v1\0", struct.pack(">H", len(topic_bytes)), topic_bytes, meta, payload))


class Signer:
    """Seals outgoing messages with one sender's key; thread-safe (the agent's heartbeat thread signs too)."""

    def __init__(self, sender: str, key: Ed25519PrivateKey, clock: Callable[[], int] = time.time_ns):
        self.sender = sender
        self._key = key
        self._clock = clock
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def _next_counter(self, stream: str) -> int:
        with self._lock:
            self._last[stream] = max(self._last.get(stream, 0) + 1, self._clock())
            return self._last[stream]

    def seal(self, topic: str, run: str, payload: bytes, stream: str = "main") -> bytes:
        """Sign for ``topic`` (for ``SHARED_TOPIC`` on ``SHARED_STREAM``, whatever ``topic`` says)."""
        topic = SHARED_TOPIC if stream == SHARED_STREAM else topic
        meta = json.dumps({"from": self.sender, "run": run, "s": stream, "n": self._next_counter(stream)}, separators=(",", ":")).encode()
        if len(meta) > MAX_META_BYTES:
            raise ValueError("envelope meta too long (sender or run id)")
        signature = self._key.sign(_signed_bytes(topic, meta, payload))
        return b"".join((_PREFIX.pack(SIGNED_MAGIC, len(meta)), meta, signature, payload))


class Verifier:
    """Opens envelopes from senders whose public keys ``key_of`` knows; remembers one counter per sender it has
    accepted from (so its state is bounded by the number of keys, never by what arrives)."""

    def __init__(self, key_of: Callable[[str], Ed25519PublicKey | None], max_age_s: float = DEFAULT_MAX_AGE_S, clock: Callable[[], int] = time.time_ns, shared: bool = False, not_before_ns: int = 0):
        """``shared``: accept ``SHARED_STREAM`` envelopes (signed for ``SHARED_TOPIC``); the caller binds them.
        ``not_before_ns``: refuse whatever was sealed before then (a restarted receiver's start)."""
        self._key_of = key_of
        self._shared = shared
        self._max_age_ns = int(max_age_s * 1e9)
        self._max_future_ns = int(MAX_FUTURE_S * 1e9)
        self._not_before = not_before_ns
        self._clock = clock
        self._last: dict[tuple[str, str], int] = {}
        self._streams: dict[str, int] = {}

    def open(self, topic: str, data: bytes) -> Sealed:
        """The verified envelope; raises ``DecodeError`` (unreadable), ``ForgedError`` (unknown sender or bad
        signature) or ``ReplayError`` (an old or repeated counter)."""
        if len(data) < _PREFIX.size + SIGNATURE_BYTES:
            raise DecodeError("shorter than a signed envelope")
        magic, meta_length = _PREFIX.unpack_from(data)
        if magic != SIGNED_MAGIC:
            raise ForgedError("not a signed envelope")
        if meta_length > MAX_META_BYTES:
            raise DecodeError("envelope meta too long")
        meta_end = _PREFIX.size + meta_length
        meta_bytes = bytes(data[_PREFIX.size : meta_end])
        meta = _parse_meta(meta_bytes)
        if meta["s"] == SHARED_STREAM:
            if not self._shared:
                raise ForgedError("a shared-stream envelope where none is accepted")
            topic = SHARED_TOPIC
        key = self._key_of(meta["from"])
        if key is None:
            raise ForgedError(f"sender {meta['from'][:64]!r} is not enrolled")
        signature = bytes(data[meta_end : meta_end + SIGNATURE_BYTES])
        payload = memoryview(data)[meta_end + SIGNATURE_BYTES :]
        try:
            key.verify(signature, _signed_bytes(topic, meta_bytes, payload))
        except InvalidSignature:
            raise ForgedError(f"signature of {meta['from'][:64]!r} does not verify on {topic}") from None
        counter, stream = meta["n"], (meta["from"], meta["s"])
        if counter <= self._last.get(stream, 0):
            raise ReplayError(f"counter {counter} from {meta['from']!r} ({meta['s']}) is not newer than the last accepted")
        if counter <= self._not_before and meta["s"] != SHARED_STREAM:  # a shared message is bound to fresh work instead
            raise ReplayError(f"message from {meta['from']!r} was sealed before this receiver started: a replay")
        now = self._clock()
        if now - counter > self._max_age_ns or counter - now > self._max_future_ns:
            raise ReplayError(f"message from {meta['from']!r} was sealed {(now - counter) / 1e9:.0f} s ago (allowed {self._max_age_ns / 1e9:.0f} s ago to {self._max_future_ns / 1e9:.0f} s ahead): replayed, or the clocks disagree")
        if stream not in self._last:
            if self._streams.get(meta["from"], 0) >= MAX_STREAMS:
                raise ForgedError(f"{meta['from']!r} uses more than {MAX_STREAMS} streams")
            self._streams[meta["from"]] = self._streams.get(meta["from"], 0) + 1
        self._last[stream] = counter
        return Sealed(meta["from"], meta["run"], meta["s"], counter, bytes(payload))

    def counters(self) -> list[tuple[str, str, int]]:
        """(sender, stream, last counter accepted) of every stream: what a restarted receiver ``restore``s."""
        return [(sender, stream, counter) for (sender, stream), counter in dict(self._last).items()]

    def restore(self, counters: list[tuple[str, str, int]]) -> None:
        """Take saved counters back (for senders still known, within ``MAX_STREAMS`` each, never lowering one)."""
        for sender, stream, counter in counters:
            if not (isinstance(sender, str) and isinstance(stream, str) and isinstance(counter, int)) or self._key_of(sender) is None:
                continue
            if (sender, stream) not in self._last:
                if self._streams.get(sender, 0) >= MAX_STREAMS:
                    continue
                self._streams[sender] = self._streams.get(sender, 0) + 1
            self._last[(sender, stream)] = max(counter, self._last.get((sender, stream), 0))


def _parse_meta(raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise DecodeError("envelope meta is not JSON") from None
    if not isinstance(meta, dict) or set(meta) != {"from", "run", "s", "n"}:
        raise DecodeError("envelope meta must hold exactly from, run, s and n")
    if not all(isinstance(meta[key], str) for key in ("from", "run", "s")):
        raise DecodeError("envelope sender, run and stream must be strings")
    if not isinstance(meta["n"], int) or isinstance(meta["n"], bool) or meta["n"] <= 0:
        raise DecodeError("envelope counter must be a positive integer")
    return meta
