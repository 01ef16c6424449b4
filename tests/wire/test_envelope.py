"""Signed envelopes: a genuine message opens once; a forgery, a replay, a copy onto another topic or a stale one
does not."""

import json

import pytest

from fedge.trust.keys import new_private_key
from fedge.wire import PROTOCOL_VERSION, Heartbeat, decode_message, encode_message
from fedge.wire.codec import Limits, json_depth
from fedge.wire.envelope import Signer, Verifier
from fedge.wire.errors import DecodeError, ForgedError, ReplayError, TooLargeError

TOPIC = "fedge/v1/agents/a1/up"


def _pair(clock=None):
    key = new_private_key()
    verifier = Verifier({"a1": key.public_key()}.get, max_age_s=60, **({"clock": clock} if clock else {}))
    return Signer("a1", key), verifier


def test_a_sealed_message_opens_once_with_its_sender_run_and_stream():
    signer, verifier = _pair()
    payload = encode_message(Heartbeat("a1", "idle", 1.0))
    sealed = verifier.open(TOPIC, signer.seal(TOPIC, "run-1", payload, stream="beat"))
    assert (sealed.sender, sealed.run, sealed.stream, sealed.payload) == ("a1", "run-1", "beat", payload)
    assert decode_message(sealed.payload) == Heartbeat("a1", "idle", 1.0, message_id=decode_message(payload).message_id)


def test_replays_copies_alterations_and_strangers_are_refused():
    signer, verifier = _pair()
    envelope = signer.seal(TOPIC, "run-1", b"hello")
    verifier.open(TOPIC, envelope)
    with pytest.raises(ReplayError):
        verifier.open(TOPIC, envelope)  # the same envelope again
    fresh = signer.seal(TOPIC, "run-1", b"hello")
    with pytest.raises(ForgedError):
        verifier.open("fedge/v1/agents/a2/up", fresh)  # copied onto another topic
    altered = bytearray(fresh)
    altered[-1] ^= 1
    with pytest.raises(ForgedError):
        verifier.open(TOPIC, bytes(altered))
    stranger = Signer("a1", new_private_key())  # claims a1's id with another key
    with pytest.raises(ForgedError):
        verifier.open(TOPIC, stranger.seal(TOPIC, "run-1", b"hello"))
    with pytest.raises(ForgedError):
        verifier.open(TOPIC, Signer("a9", new_private_key()).seal(TOPIC, "run-1", b"x"))  # not enrolled
    with pytest.raises(ForgedError):
        verifier.open(TOPIC, encode_message(Heartbeat("a1", "idle", 1.0)))  # unsigned
    assert verifier.open(TOPIC, fresh).payload == b"hello"  # the genuine one still opens


def test_streams_keep_their_own_counters_but_each_refuses_its_replays():
    signer, verifier = _pair()
    main_first = signer.seal(TOPIC, "r", b"1")
    beat = signer.seal(TOPIC, "r", b"2", stream="beat")
    verifier.open(TOPIC, beat)
    verifier.open(TOPIC, main_first)  # sealed earlier on another stream: still accepted
    with pytest.raises(ReplayError):
        verifier.open(TOPIC, beat)


def test_a_message_far_from_the_receivers_clock_is_refused():
    now = [10**18]
    signer, verifier = _pair(clock=lambda: now[0])
    old = signer.seal(TOPIC, "r", b"x")
    now[0] += 61 * 10**9
    with pytest.raises(ReplayError, match="clocks disagree"):
        verifier.open(TOPIC, old)


def test_envelope_meta_is_parsed_strictly():
    signer, verifier = _pair()
    envelope = signer.seal(TOPIC, "r", b"x")
    meta_length = int.from_bytes(envelope[4:6], "big")
    meta = json.loads(envelope[6 : 6 + meta_length])
    for bad in ({**meta, "n": -1}, {**meta, "extra": 1}, {**meta, "from": 3}, [[[[[]]]]]):
        raw = json.dumps(bad).encode()
        with pytest.raises(DecodeError):
            verifier.open(TOPIC, b"FEDS" + len(raw).to_bytes(2, "big") + raw + envelope[6 + meta_length :])


def test_deeply_nested_headers_are_refused_before_parsing():
    header = b"[" * 30_000 + b"]" * 30_000
    data = b"FEDG" + bytes([PROTOCOL_VERSION]) + len(header).to_bytes(4, "big") + header
    with pytest.raises(TooLargeError, match="nests 30000 deep"):
        decode_message(data, Limits(max_header_bytes=100_000))
    assert json_depth(b'{"prompt": "[[[[[[[[[[[[[[[[[[[[ {text}", "a": [1, {"b": 2}]}') == 3  # brackets in strings do not count


def test_a_restarted_receiver_refuses_what_was_sealed_before_it_started_and_keeps_its_saved_counters():
    key = new_private_key()
    now = [10**18]
    signer = Signer("a1", key, clock=lambda: now[0])
    before = Verifier({"a1": key.public_key()}.get, clock=lambda: now[0])
    captured = signer.seal(TOPIC, "r", b"update")
    before.open(TOPIC, captured)
    ahead = Signer("a1", key, clock=lambda: now[0] + 50 * 10**9)  # a sender whose clock runs 50 s ahead
    ahead_captured = ahead.seal(TOPIC, "r", b"hello")
    before.open(TOPIC, ahead_captured)
    saved = before.counters()
    now[0] += 10 * 10**9  # the receiver dies and starts again 10 s later
    after = Verifier({"a1": key.public_key()}.get, clock=lambda: now[0], not_before_ns=now[0])
    with pytest.raises(ReplayError, match="before this receiver started"):
        after.open(TOPIC, captured)
    assert after.open(TOPIC, ahead.seal(TOPIC, "r", b"x")).payload == b"x"  # without the saved counters, the ahead clock's past...
    restored = Verifier({"a1": key.public_key()}.get, clock=lambda: now[0], not_before_ns=now[0])
    restored.restore(saved)
    with pytest.raises(ReplayError, match="not newer"):
        restored.open(TOPIC, ahead_captured)  # ...is refused with them
    assert restored.open(TOPIC, ahead.seal(TOPIC, "r", b"fresh")).payload == b"fresh"
    restored.restore([("stranger", "main", 5), ("a1", "main", "x")])  # unknown senders and junk are ignored
    assert {sender for sender, _, _ in restored.counters()} == {"a1"}


def test_a_sender_far_ahead_of_the_receivers_clock_is_refused():
    key = new_private_key()
    verifier = Verifier({"a1": key.public_key()}.get)
    far = Signer("a1", key, clock=lambda: __import__("time").time_ns() + 600 * 10**9)
    with pytest.raises(ReplayError, match="ahead"):
        verifier.open(TOPIC, far.seal(TOPIC, "r", b"x"))
