"""Every error the wire layer raises, so callers catch one family.

    ProtocolError
    ├── DecodeError          bytes that are not a fedge message (bad magic, JSON, safetensors body)
    │   └── SchemaError      a well-formed message whose type, version or fields are wrong
    ├── TooLargeError        a header, message or chunk set over its configured limit
    ├── ChunkError           a chunk that fails its hash, or a chunked message that timed out incomplete
    ├── ForgedError          no envelope, a sender that is not enrolled, or a signature that does not verify
    └── ReplayError          a genuine envelope seen before, or sealed too far from the receiver's clock
"""


class ProtocolError(Exception):
    """Base of every wire-level error; ``reason`` is a short machine-readable code sent back in a Reject."""

    reason = "protocol_error"


class DecodeError(ProtocolError):
    reason = "malformed"


class SchemaError(DecodeError):
    reason = "schema"


class TooLargeError(ProtocolError):
    reason = "too_large"


class ChunkError(ProtocolError):
    reason = "chunk"


class ForgedError(ProtocolError):
    """Not sealed by an enrolled sender: no envelope, an unknown key, or a signature that does not verify."""

    reason = "unauthenticated"


class ReplayError(ProtocolError):
    """Sealed by an enrolled sender, but not newer than what was accepted from it, or far from the receiver's clock."""

    reason = "replay"
