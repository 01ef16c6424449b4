import json
import os
import random
import struct

import pytest

from fedge.wire import ChunkError, DecodeError, Reassembler, TooLargeError, split_frames


def test_small_messages_travel_whole():
    assert list(split_frames(b"FEDGhello", 1024)) == [b"FEDGhello"]


def test_chunks_reassemble_in_any_order_and_tolerate_redelivery():
    message = os.urandom(50_000)
    frames = list(split_frames(message, 4096))
    assert len(frames) > 10 and all(len(frame) <= 4096 for frame in frames)
    shuffled = frames + frames[:3]  # QoS 1 may deliver twice
    random.Random(1).shuffle(shuffled)
    reassembler = Reassembler()
    results = [reassembler.feed(frame) for frame in shuffled]
    assert [r for r in results if r is not None] == [message]
    assert reassembler.pending == 0


def test_corrupted_chunk_fails_the_message_digest():
    frames = list(split_frames(os.urandom(10_000), 2048))
    frames[1] = frames[1][:-1] + bytes([frames[1][-1] ^ 0xFF])
    reassembler = Reassembler()
    with pytest.raises(ChunkError, match="digest"):
        for frame in frames:
            reassembler.feed(frame)
    assert reassembler.pending == 0


def test_missing_chunk_times_out_cleanly():
    frames = list(split_frames(os.urandom(10_000), 2048))
    reassembler = Reassembler(timeout_s=5)
    for frame in frames[:-1]:
        assert reassembler.feed(frame, now=100.0) is None
    assert reassembler.expire(now=104.0) == []
    dropped = reassembler.expire(now=106.0)
    assert len(dropped) == 1 and "1 of" in dropped[0]
    assert reassembler.pending == 0


def test_oversized_messages_are_refused_before_buffering():
    frames = list(split_frames(os.urandom(10_000), 2048))
    with pytest.raises(TooLargeError):
        Reassembler(max_message_bytes=5_000).feed(frames[0])
    with pytest.raises(TooLargeError):
        Reassembler(max_message_bytes=5_000).feed(b"FEDG" + bytes(6_000))


def test_messages_in_flight_are_bounded_in_all_and_the_heaviest_sender_gives_way():
    reassembler = Reassembler(max_pending=3, max_pending_per_topic=8, sender_of=lambda topic: topic.split("/")[0])
    message = os.urandom(5_000)
    honest = list(split_frames(message, 2048))
    reassembler.feed(honest[0], "b/up")
    for _ in range(5):  # a's fragments fill the store; each new one pushes out one of a's, never b's
        reassembler.feed(next(split_frames(os.urandom(5_000), 2048)), "a/up")
        assert reassembler.pending <= 3
    assert [whole for frame in honest[1:] if (whole := reassembler.feed(frame, "b/up")) is not None] == [message]


def test_one_device_flooding_its_own_topics_cannot_crowd_out_anothers_update():
    """128 never-completing ~1 MiB partial messages on a device's own up and beat topics (what fills a single shared
    budget) cost only that device: another device's chunked update still completes, and the store stays bounded by
    the flooder's own budget."""
    limit = 8 << 20
    reassembler = Reassembler(max_message_bytes=limit, sender_of=lambda topic: topic.split("/")[3])
    for index in range(128):
        frames = list(split_frames(os.urandom(1 << 20), 256 << 10))
        for frame in frames[:-1]:  # every frame but the last
            reassembler.feed(frame, f"fedge/v1/agents/evil/{'up' if index % 2 else 'beat'}")
        assert reassembler.sender_bytes("evil") <= limit
    update = os.urandom(6 << 20)
    completed = [whole for frame in split_frames(update, 256 << 10) if (whole := reassembler.feed(frame, "fedge/v1/agents/good/up")) is not None]
    assert completed == [update]
    assert reassembler.pending_bytes <= 2 * limit


def test_a_message_larger_than_its_senders_budget_is_refused_alone():
    reassembler = Reassembler(max_message_bytes=1 << 20, max_sender_bytes=100_000)
    frames = list(split_frames(os.urandom(300_000), 64 << 10))
    with pytest.raises(TooLargeError, match="budget|more than 100000"):
        for frame in frames:
            reassembler.feed(frame, "a/up")
    assert reassembler.pending == 0 and reassembler.pending_bytes == 0


def test_garbled_chunk_header_is_a_decode_error():
    with pytest.raises(DecodeError):
        Reassembler().feed(b"FEDC\x00\x05{bad}")


def test_only_the_last_frame_carries_the_digest():
    frames = list(split_frames(os.urandom(10_000), 2048))
    last_without_digest = frames[-1].replace(b',"digest":', b',"digesx":')
    with pytest.raises(DecodeError, match="wrong fields"):
        Reassembler().feed(last_without_digest)
    header_end = 6 + struct.unpack(">H", frames[0][4:6])[0]
    header = json.loads(frames[0][6:header_end]) | {"digest": "00"}
    encoded = json.dumps(header).encode()
    first_with_digest = b"FEDC" + struct.pack(">H", len(encoded)) + encoded + frames[0][header_end:]
    with pytest.raises(DecodeError, match="wrong fields"):
        Reassembler().feed(first_with_digest)


def test_a_flood_of_fresh_ids_on_a_topic_cannot_push_out_a_message_that_is_arriving():
    message = bytes(range(256)) * 40
    frames = list(split_frames(message, max_frame_bytes=1024))
    reassembler = Reassembler(max_pending_per_topic=8)
    flood = [next(split_frames(bytes([index]) * 5000, max_frame_bytes=1024)) for index in range(100)]  # first frames only
    whole = None
    for index, frame in enumerate(frames):
        for junk in flood[index * 5 : index * 5 + 5]:
            assert reassembler.feed(junk, "t/a0/up") is None
        whole = reassembler.feed(frame, "t/a0/up")
    assert whole == message
    assert reassembler.pending <= 8 and reassembler.pending_bytes < 9 * 1024
