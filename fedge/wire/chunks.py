"""Split large messages into chunk frames and put them back together.

A message no larger than ``max_frame_bytes`` travels as it is. A larger one becomes chunk frames:
``FEDC`` | header length (u16) | JSON ``{id, index, count, size}`` | data; the last frame's header adds ``digest``,
the sha256 of the whole message, checked once it is reassembled (MQTT over TCP delivers each frame intact or not at
all, so one hash of the whole catches a mixed-up or forged chunk). Carrying the digest last lets both ends hash while
the frames travel: the sender publishes each frame as soon as it is cut, the receiver hashes frames as they arrive
in order. Brokers drop messages silently when their queues overflow, so a message still incomplete after
``timeout_s`` is dropped with an error rather than waited on for ever. A message is never more than a frame's worth
of state until its frames arrive, and the state of partial messages is bounded per topic, per sender and in all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fedge.wire.errors import ChunkError, DecodeError, TooLargeError

CHUNK_MAGIC = b"FEDC"
log = logging.getLogger(__name__)

_CHUNK_PREFIX = struct.Struct(">4sH")
DEFAULT_MAX_FRAME_BYTES = 512 * 1024  # well under the 1 MB limit some brokers (EMQX) default to
_HEADER_ROOM = 512


def split_frames(message: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Iterator[bytes]:
    """The MQTT payloads that carry ``message``, cut one at a time: itself, or its chunk frames."""
    if len(message) <= max_frame_bytes:
        yield message
        return
    data_size = max_frame_bytes - _HEADER_ROOM
    if data_size <= 0:
        raise ValueError(f"max_frame_bytes must exceed {_HEADER_ROOM}")
    message_id = uuid.uuid4().hex
    count = -(-len(message) // data_size)
    view = memoryview(message)
    hasher = hashlib.sha256()
    for index in range(count):
        data = view[index * data_size : (index + 1) * data_size]
        hasher.update(data)
        header = {"id": message_id, "index": index, "count": count, "size": len(message)}
        if index == count - 1:
            header["digest"] = hasher.hexdigest()
        encoded = json.dumps(header, separators=(",", ":")).encode()
        yield b"".join((_CHUNK_PREFIX.pack(CHUNK_MAGIC, len(encoded)), encoded, data))


@dataclass
class _Partial:
    sender: str
    count: int
    size: int
    started: float
    digest: str | None = None
    parts: dict[int, memoryview] = field(default_factory=dict)
    received_bytes: int = 0
    hashed: int = 0  # parts 0 .. hashed-1 are in ``hasher``
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)

    def hash_arrived(self) -> None:
        while self.hashed in self.parts:
            self.hasher.update(self.parts[self.hashed])
            self.hashed += 1


class Reassembler:
    """Feeds frames in, hands whole messages out: one store for every sender topic, bounded per sender and in total.

    Partial messages are keyed by (topic, id), so one sender cannot complete another's. Bounds, and what gives way
    when one is reached (a partial message that gives way is dropped; its sender's next whole message is unaffected):

    - per topic, ``max_pending_per_topic`` messages, and per sender (``sender_of(topic)``: a device owns several
      topics) ``max_pending_per_sender``: the sender's least advanced message (fewest frames, then oldest) gives way,
      so a message that has received more frames than a flood's one-frame fragments outlasts them;
    - per sender, ``max_sender_bytes``: the sender's own least advanced other message gives way; a message that
      cannot fit on its own is refused;
    - in all, ``max_pending`` messages and ``max_pending_bytes``: the heaviest sender's least advanced message gives
      way, so a flooding device only ever crowds out itself.

    Expiry pops the oldest first, so handling a frame costs O(1) in the number of senders (the heaviest sender is
    looked for only when the total is full).
    """

    def __init__(
        self, max_message_bytes: int = 256 * 1024 * 1024, timeout_s: float = 60.0, max_pending: int = 256,
        max_pending_per_topic: int = 8, max_pending_bytes: int | None = None, sender_of: Callable[[str], str | None] | None = None,
        max_pending_per_sender: int = 16, max_sender_bytes: int | None = None,
    ):
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_pending_per_topic = max_pending_per_topic
        self.max_pending_per_sender = max_pending_per_sender
        self.max_pending_bytes = max_pending_bytes if max_pending_bytes is not None else 2 * max_message_bytes
        self.max_sender_bytes = max_sender_bytes if max_sender_bytes is not None else max_message_bytes
        self._sender_of = sender_of or (lambda topic: topic)
        self._pending: OrderedDict[tuple[str, str], _Partial] = OrderedDict()  # oldest first
        self._per_topic: dict[str, set[tuple[str, str]]] = {}  # each topic's partial messages
        self._per_sender: dict[str, set[tuple[str, str]]] = {}
        self._sender_bytes: dict[str, int] = {}
        self._bytes = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def sender_bytes(self, sender: str) -> int:
        return self._sender_bytes.get(sender, 0)

    def feed(self, frame: bytes, topic: str = "", now: float | None = None) -> bytes | None:
        """The completed message if ``frame`` finished one, else ``None``; raises on a bad frame."""
        if not frame.startswith(CHUNK_MAGIC):
            if len(frame) > self.max_message_bytes:
                raise TooLargeError(f"message of {len(frame)} bytes exceeds the {self.max_message_bytes}-byte limit")
            return frame
        now = time.monotonic() if now is None else now
        header, data = self._parse(frame)
        key = (topic, header["id"])
        partial = self._pending.get(key)
        if partial is None:
            partial = self._start(key, header, now)
        if (header["count"], header["size"]) != (partial.count, partial.size):
            raise ChunkError(f"chunk {header['index']} of {header['id']} disagrees with its siblings")
        if "digest" in header:
            partial.digest = header["digest"]
        if header["index"] not in partial.parts:
            self._make_room(key, len(data))
            partial.parts[header["index"]] = data
            partial.received_bytes += len(data)
            self._bytes += len(data)
            self._sender_bytes[partial.sender] += len(data)
            partial.hash_arrived()
        if partial.received_bytes > partial.size:
            self._drop(key)
            raise ChunkError(f"chunks of {header['id']} exceed the declared size")
        if len(partial.parts) < partial.count:
            return None
        self._drop(key)
        if partial.received_bytes != partial.size or partial.hasher.hexdigest() != partial.digest:
            raise ChunkError(f"reassembled {header['id']} fails its digest")
        return b"".join(partial.parts[index] for index in range(partial.count))

    def _start(self, key: tuple[str, str], header: dict, now: float) -> _Partial:
        topic = key[0]
        sender = self._sender_of(topic) or topic
        if header["size"] > self.max_message_bytes:
            raise TooLargeError(f"chunked message of {header['size']} bytes exceeds the {self.max_message_bytes}-byte limit")
        if len(self._per_topic.get(topic, ())) >= self.max_pending_per_topic:
            self._give_way(self._least_advanced(self._per_topic[topic]), "a newer one on its topic replaced it")
        if len(self._per_sender.get(sender, ())) >= self.max_pending_per_sender:
            self._give_way(self._least_advanced(self._per_sender[sender]), "a newer one from its sender replaced it")
        if len(self._pending) >= self.max_pending:
            self._give_way(self._least_advanced(self._per_sender[self._heaviest()]), "the heaviest sender's gave way")
        partial = _Partial(sender=sender, count=header["count"], size=header["size"], started=now)
        self._pending[key] = partial
        self._per_topic.setdefault(topic, set()).add(key)
        self._per_sender.setdefault(sender, set()).add(key)
        self._sender_bytes.setdefault(sender, 0)
        return partial

    def _make_room(self, key: tuple[str, str], size: int) -> None:
        """Room for ``size`` more bytes of ``key``'s message within its sender's budget and the total; raises
        ``TooLargeError`` (dropping it) when only the message itself could give way."""
        sender = self._pending[key].sender
        while self._sender_bytes[sender] + size > self.max_sender_bytes:
            others = self._per_sender[sender] - {key}
            if not others:
                self._drop(key)
                raise TooLargeError(f"{sender}'s partial messages would hold more than {self.max_sender_bytes} bytes")
            self._give_way(self._least_advanced(others), f"{sender} is over its {self.max_sender_bytes}-byte budget")
        while self._bytes + size > self.max_pending_bytes:
            heaviest = self._heaviest()
            candidates = self._per_sender[heaviest] - {key}
            if not candidates:
                self._drop(key)
                raise TooLargeError(f"partial messages would hold more than {self.max_pending_bytes} bytes")
            self._give_way(self._least_advanced(candidates), "partial messages are over their total budget")

    def _heaviest(self) -> str:
        return max(self._sender_bytes, key=lambda sender: (self._sender_bytes[sender], len(self._per_sender.get(sender, ()))))

    def _least_advanced(self, keys) -> tuple[str, str]:
        return min(keys, key=lambda k: (len(self._pending[k].parts), self._pending[k].started))

    def _give_way(self, key: tuple[str, str], why: str) -> None:
        self._drop(key)
        log.debug("dropped incomplete message %s on %s: %s", key[1], key[0], why)

    def _drop(self, key: tuple[str, str]) -> _Partial:
        partial = self._pending.pop(key)
        self._bytes -= partial.received_bytes
        for index, owner in ((self._per_topic, key[0]), (self._per_sender, partial.sender)):
            index[owner].discard(key)
            if not index[owner]:
                del index[owner]
        self._sender_bytes[partial.sender] -= partial.received_bytes
        if partial.sender not in self._per_sender:
            del self._sender_bytes[partial.sender]
        return partial

    def expire(self, now: float | None = None) -> list[str]:
        """Drop messages still incomplete after the timeout; returns a description of each."""
        now = time.monotonic() if now is None else now
        dropped = []
        while self._pending:
            key, partial = next(iter(self._pending.items()))
            if now - partial.started <= self.timeout_s:
                break
            self._drop(key)
            missing = partial.count - len(partial.parts)
            dropped.append(f"{key[1]} on {key[0] or 'its topic'}: {missing} of {partial.count} chunks missing after {self.timeout_s:.0f} s")
        return dropped

    @staticmethod
    def _parse(frame: bytes) -> tuple[dict, memoryview]:
        if len(frame) < _CHUNK_PREFIX.size:
            raise DecodeError("chunk frame shorter than its prefix")
        _, header_length = _CHUNK_PREFIX.unpack_from(frame)
        end = _CHUNK_PREFIX.size + header_length
        try:
            header = json.loads(frame[_CHUNK_PREFIX.size : end])
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise DecodeError("chunk header is not JSON") from None
        if not isinstance(header, dict):
            raise DecodeError("chunk header is not an object")
        expected = dict(_FRAME_FIELDS)
        if isinstance(header.get("count"), int) and header.get("index") == header["count"] - 1:
            expected["digest"] = str  # the last frame carries the whole message's digest
        if set(header) != set(expected):
            raise DecodeError("chunk header has the wrong fields")
        if any(not isinstance(header[key], kind) or isinstance(header[key], bool) for key, kind in expected.items()):
            raise DecodeError("chunk header has a field of the wrong type")
        if not 0 <= header["index"] < header["count"] or header["size"] < 0:
            raise DecodeError("chunk index out of range")
        return header, memoryview(frame)[end:]


_FRAME_FIELDS = {"id": str, "index": int, "count": int, "size": int}
