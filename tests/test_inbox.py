"""The transport's inbox: frames wait in arrival order, telemetry keeps only its newest, and the bytes waiting are
bounded in all and per sender, so one flooding device loses only its own frames."""

from fedge.inbox import Inbox
from fedge.wire import topics


def test_bytes_are_bounded_in_all_and_per_sender():
    inbox = Inbox(max_frames=1000, max_bytes=10_000, max_sender_bytes=4_000, sender_of=topics.agent_of)
    flood, honest = topics.uplink("evil"), topics.uplink("good")
    accepted = sum(inbox.put(flood if index % 2 else topics.heartbeat("evil"), bytes(1_000), False) for index in range(20))
    assert accepted == 4 and inbox.waiting_bytes == 4_000  # the flooder's budget, across its topics
    assert all(inbox.put(honest, bytes(1_000), False) for _ in range(4))
    assert not inbox.put(honest, bytes(1_000), False)  # the good device's own budget, not the flooder's, is spent
    assert all(inbox.put(topics.uplink(f"d{index}"), bytes(1_000), False) for index in range(2))
    assert not inbox.put(topics.uplink("d9"), bytes(1), False)  # 10,000 bytes in all
    taken = inbox.get(0)
    assert taken[0] == topics.heartbeat("evil") and inbox.waiting_bytes == 9_000
    assert inbox.put(flood, bytes(1_000), False)  # a frame read frees its sender's budget


def test_newest_telemetry_replaces_its_bytes():
    inbox = Inbox(max_frames=10, max_bytes=1_500, sender_of=topics.agent_of)
    beat = topics.heartbeat("a1")
    assert inbox.put(beat, bytes(1_000), True) and inbox.put(beat, bytes(1_200), True)
    assert inbox.waiting_bytes == 1_200 and len(inbox) == 1
    assert not inbox.put(topics.uplink("a2"), bytes(400), False)
    assert inbox.get(0)[1] == bytes(1_200) and inbox.waiting_bytes == 0
