"""The wire protocol shared by agents and the coordinator: messages, codec, signed envelopes, chunking, topics, errors.

Nothing here imports torch or paho, so the format can be tested and fuzzed quickly.
"""

from fedge.wire.chunks import Reassembler, split_frames
from fedge.wire.codec import Limits, decode_message, encode_message
from fedge.wire.envelope import Signer, Verifier
from fedge.wire.errors import ChunkError, DecodeError, ForgedError, ProtocolError, ReplayError, SchemaError, TooLargeError
from fedge.wire.messages import (
    MAX_GALORE_SCALE,
    MAX_PROXIMAL_MU,
    PREPARED_ROUNDS,
    PROTOCOL_VERSION,
    AdapterUpdate,
    Assignment,
    BackbonePart,
    BackboneRequest,
    BackboneSpec,
    DeviceProfile,
    Evaluation,
    GlobalState,
    Heartbeat,
    Hello,
    LoraSpec,
    Message,
    Receipt,
    Reject,
    TaskSpec,
)

__all__ = [
    "MAX_GALORE_SCALE",
    "MAX_PROXIMAL_MU",
    "PREPARED_ROUNDS",
    "PROTOCOL_VERSION",
    "AdapterUpdate",
    "Assignment",
    "BackbonePart",
    "BackboneRequest",
    "BackboneSpec",
    "ChunkError",
    "DecodeError",
    "DeviceProfile",
    "Evaluation",
    "ForgedError",
    "GlobalState",
    "Heartbeat",
    "Hello",
    "Limits",
    "LoraSpec",
    "Message",
    "ProtocolError",
    "Reassembler",
    "Receipt",
    "Reject",
    "ReplayError",
    "TaskSpec",
    "SchemaError",
    "Signer",
    "TooLargeError",
    "Verifier",
    "decode_message",
    "encode_message",
    "split_frames",
]
