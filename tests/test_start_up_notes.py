"""A long wait at start-up (agents registering, devices preparing) says how far it got, at a steady pace."""

import fedge.coordinator.server as server
from fedge.coordinator.server import noting


def test_a_wait_says_how_far_it_got_until_it_is_done(monkeypatch):
    clock = iter([0.0, 3.0, 9.0, 16.0, 20.0, 31.0])  # when the check is made, then each unfinished check
    monkeypatch.setattr(server.time, "monotonic", lambda: next(clock))
    said, finished = [], iter([False, False, False, False, False, True])
    check = noting(lambda: next(finished), lambda: said.append(len(said)), every_s=15.0)
    assert [check() for _ in range(6)] == [False] * 5 + [True]
    assert said == [0, 1]  # at 16 s and at 31 s; the sixth check found it done and said nothing
