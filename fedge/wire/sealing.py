"""What turns a message into MQTT payload bytes and back: plainly encoded, or sealed in a signed envelope.

The transport calls ``seal`` on the way out and ``open`` on the owner's thread on the way in, so nothing
unauthenticated is ever decoded into a message. ``SignedCodec.check`` is where each side binds an authenticated
envelope to the message inside (who may say what, for which run); the coordinator and the agent each refine it.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from fedge.wire.codec import Limits, decode_message, encode_message
from fedge.wire.envelope import SHARED_STREAM, SHARED_TOPIC, Sealed, Signer, Verifier
from fedge.wire.errors import ForgedError
from fedge.wire.messages import Message


class Codec(Protocol):
    def seal(self, topic: str, message: Message, tensor_dtype: str = "float16", stream: str = "main") -> bytes: ...

    def seal_shared(self, message: Message, tensor_dtype: str = "float16") -> tuple[bytes, str]: ...

    def seal_encoded(self, topic: str, encoded: bytes) -> bytes: ...

    def open(self, topic: str, data: bytes) -> Message: ...


def payload_digest(payload: bytes | memoryview) -> str:
    """The sha256 (hex) of an encoded message: how an assignment names the shared state it goes with."""
    return hashlib.sha256(payload).hexdigest()


class PlainCodec:
    """No signatures: for an insecure run on a trusted machine, and as the baseline the hostile benchmark compares
    against."""

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits

    def seal(self, topic: str, message: Message, tensor_dtype: str = "float16", stream: str = "main") -> bytes:
        return encode_message(message, tensor_dtype)

    def seal_shared(self, message: Message, tensor_dtype: str = "float16") -> tuple[bytes, str]:
        encoded = encode_message(message, tensor_dtype)
        return encoded, payload_digest(encoded)

    def seal_encoded(self, topic: str, encoded: bytes) -> bytes:
        return encoded

    def open(self, topic: str, data: bytes) -> Message:
        return decode_message(data, self.limits)


class SignedCodec:
    """Seals with our key under the current ``run``; opens only envelopes the verifier accepts, then ``check``s
    that the message inside belongs to its sender and run."""

    def __init__(self, signer: Signer, verifier: Verifier, limits: Limits = Limits(), run: str = ""):
        self.signer = signer
        self.verifier = verifier
        self.limits = limits
        self.run = run

    def seal(self, topic: str, message: Message, tensor_dtype: str = "float16", stream: str = "main") -> bytes:
        """``stream``: each thread that publishes on its own names its counter stream (see ``fedge.wire.envelope``)."""
        return self.signer.seal(topic, self.run, encode_message(message, tensor_dtype), stream)

    def seal_shared(self, message: Message, tensor_dtype: str = "float16") -> tuple[bytes, str]:
        """One envelope for every device that shares ``message`` (see ``fedge.wire.envelope``), and the digest of
        the message inside, for the assignments that name it."""
        encoded = encode_message(message, tensor_dtype)
        return self.signer.seal(SHARED_TOPIC, self.run, encoded, SHARED_STREAM), payload_digest(encoded)

    def seal_encoded(self, topic: str, encoded: bytes) -> bytes:
        """A message encoded once (e.g. a state for several devices), sealed for one topic."""
        return self.signer.seal(topic, self.run, encoded)

    def open(self, topic: str, data: bytes) -> Message:
        sealed = self.verifier.open(topic, data)
        message = decode_message(sealed.payload, self.limits)
        run_id = getattr(message, "run_id", None)
        if run_id is not None and run_id != sealed.run:
            raise ForgedError(f"message for run {run_id!r} sealed for run {sealed.run!r}")
        self.check(topic, sealed, message)
        return self.accepted(sealed, message)

    def accepted(self, sealed: Sealed, message: Message) -> Message:
        """The message as the receiver acts on it, once checked (a refinement may note or adapt it)."""
        return message

    def check(self, topic: str, sealed: Sealed, message: Message) -> None:
        """Raise a ``ProtocolError`` when an authenticated sender may not send this message here."""
