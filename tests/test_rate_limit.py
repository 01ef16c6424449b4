"""A device's hellos and heartbeats are acted on at most at their rate, timed by arrival."""

from fedge.coordinator.rate_limit import Rate, RateLimiter
from fedge.wire import Heartbeat, Hello


def test_a_burst_then_one_per_period_by_arrival_time_per_device_and_kind():
    limiter = RateLimiter({Hello: Rate(burst=3, every_s=10.0)})
    flood = [limiter.allow("a1", Hello, 1000.0 + 0.1 * index) for index in range(150)]  # 150 hellos in 15 s
    assert flood[:3] == [True] * 3 and sum(flood) == 4  # the burst, and one more once 10 s have refilled a token
    assert limiter.allow("a2", Hello, 1001.0)  # another device has its own bucket
    assert limiter.allow("a1", Heartbeat, 1001.0)  # a kind without a rate is never limited
    assert not limiter.allow("a1", Hello, 990.0)  # a message read late, stamped earlier, adds no tokens
    assert [limiter.allow("a1", Hello, 1035.0) for _ in range(3)] == [True, True, False]  # refilled by arrival time
