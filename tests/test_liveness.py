"""Silence is judged by what arrived and when, up to what the coordinator has read."""

from fedge.coordinator.liveness import Liveness


def test_a_device_is_silent_only_once_the_grace_period_passed_after_what_was_read():
    unread = {"since": None}
    liveness = Liveness(grace_s=10, unread_since=lambda: unread["since"])
    liveness.heard("a0", arrived=1000.0)
    assert liveness.is_live("a0", horizon=1009.0) and not liveness.is_live("a0", horizon=1010.0)
    unread["since"] = 1005.0  # a frame that arrived at 1005 is still unread: nothing after it counts as silence
    assert liveness.horizon(now=2000.0) == 1005.0 and liveness.is_live("a0")
    unread["since"] = None
    assert not liveness.is_live("a0") and "nothing arrived for" in liveness.silence("a0")
    assert not liveness.is_live("a1") and liveness.silence("a1") == "silent: never heard from"


def test_an_older_arrival_read_late_never_moves_a_device_back():
    liveness = Liveness(grace_s=10)
    liveness.heard("a0", arrived=1000.0)
    liveness.heard("a0", arrived=990.0)
    assert liveness.last_heard("a0") == 1000.0


def test_the_table_is_bounded():
    liveness = Liveness(grace_s=10, max_devices=2)
    for index in range(5):
        liveness.heard(f"d{index}", arrived=1.0)
    assert liveness.last_heard("d1") == 1.0 and liveness.last_heard("d2") is None
