"""Whatever bytes arrive, decoding and opening raise only the wire's own errors (never a crash of another kind)."""

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.trust.keys import new_private_key
from fedge.wire import PROTOCOL_VERSION, ProtocolError, Reassembler, Signer, Verifier, decode_message, encode_message
from fedge.wire.codec import MAGIC, Limits
from fedge.wire.messages import MESSAGE_TYPES
from tests.wire.test_codec import MESSAGES

KEY = new_private_key()
TOPIC = "fedge/v1/agents/a1/up"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)


def _only_protocol_errors(action) -> None:
    try:
        action()
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(MESSAGES) - 1), position=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_mutated_or_cut_messages_fail_only_with_protocol_errors(index, position, value, cut):
    data = bytearray(encode_message(MESSAGES[index]))
    data[position % len(data)] = value
    _only_protocol_errors(lambda: decode_message(bytes(data[: max(cut, 1)])))
    _only_protocol_errors(lambda: decode_message(bytes(data)))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(MESSAGE_TYPES)), fields=st.dictionaries(st.text(max_size=24), json_values, max_size=8))
def test_arbitrary_json_fields_of_every_type_fail_only_with_protocol_errors(kind, fields):
    header = json.dumps({"type": kind, "fields": fields}).encode()
    _only_protocol_errors(lambda: decode_message(struct.pack(">4sBI", MAGIC, PROTOCOL_VERSION, len(header)) + header))


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 400), value=st.integers(0, 255), frames=st.lists(st.binary(max_size=300), max_size=5))
def test_mutated_envelopes_and_chunk_frames_fail_only_with_protocol_errors(position, value, frames):
    envelope = bytearray(Signer("a1", KEY).seal(TOPIC, "run", encode_message(MESSAGES[0])))
    envelope[position % len(envelope)] = value
    verifier = Verifier({"a1": KEY.public_key()}.get)
    _only_protocol_errors(lambda: verifier.open(TOPIC, bytes(envelope)))
    reassembler = Reassembler(max_message_bytes=10_000)
    for frame in frames:
        _only_protocol_errors(lambda: reassembler.feed(b"FEDC" + frame, TOPIC))
    assert reassembler.pending_bytes <= reassembler.max_pending_bytes


def test_a_header_at_the_size_limit_full_of_brackets_is_refused_quickly():
    header = b"[" * (Limits().max_header_bytes // 2) + b"]" * (Limits().max_header_bytes // 2)
    _only_protocol_errors(lambda: decode_message(struct.pack(">4sBI", MAGIC, PROTOCOL_VERSION, len(header)) + header))
