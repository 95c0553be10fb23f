"""The rate limiter's bound on its buckets: past ``max_names`` it forgets
those full again, then the stalest, a tenth of the bound at a time, so
that a stream of new names (a sender changing its MAIL FROM) costs a
constant amount of work per name, not a scan of every bucket each."""

from __future__ import annotations

from twisted.internet.task import Clock

from mm7tx.http.limits import LoginThrottle, RateLimiter


class CountingLimiter(RateLimiter):
    """Counts its evictions and the buckets each one looked at."""

    def __init__(self, clock: Clock, max_names: int) -> None:
        super().__init__(clock, max_names=max_names)
        self.evictions = 0
        self.looked_at = 0

    def _forget(self, now: float) -> None:
        self.evictions += 1
        self.looked_at += len(self._buckets)
        super()._forget(now)


def test_new_names_past_the_bound_evict_in_batches():
    limiter = CountingLimiter(Clock(), max_names=100)
    for n in range(10_000):
        assert limiter.allow(f"sender{n}", 1 / 60, burst=60)
        assert len(limiter._buckets) <= 100
    # 9,900 names past the bound, a tenth of it (10) freed per eviction.
    assert limiter.evictions <= 990
    assert limiter.looked_at <= 100 * 990
    assert "sender9999" in limiter._buckets


def test_a_small_bound_is_kept_too():
    limiter = CountingLimiter(Clock(), max_names=10)
    for n in range(1000):
        limiter.allow(f"sender{n}", 1.0)
        assert len(limiter._buckets) <= 10


def test_the_buckets_full_again_go_first_then_the_stalest():
    clock = Clock()
    limiter = RateLimiter(clock, max_names=10)
    limiter.allow("busy", 1 / 60, burst=60)  # the oldest, full again in 60 s
    for n in range(9):
        limiter.allow(f"idle{n}", 1.0)  # full again in 1 s
    clock.advance(2)
    limiter.allow("new", 1.0)
    # The idle ones were full again: forgotten, the busy one kept as it was.
    assert list(limiter._buckets) == ["busy", "new"]
    for _ in range(59):  # 59 tokens left, and a thirtieth refilled
        assert limiter.allow("busy", 1 / 60, burst=60)
    assert not limiter.allow("busy", 1 / 60, burst=60)


def test_past_the_bound_the_stalest_go_and_the_one_in_use_stays():
    clock = Clock()
    limiter = RateLimiter(clock, max_names=10)
    for n in range(10):
        limiter.allow(f"s{n}", 1 / 60, burst=60)  # none full again for 60 s
    limiter.allow("s0", 1 / 60, burst=60)  # the oldest, in use again
    limiter.allow("new", 1 / 60, burst=60)
    assert len(limiter._buckets) <= 10
    assert "s0" in limiter._buckets and "new" in limiter._buckets
    assert "s1" not in limiter._buckets  # the stalest


def test_the_login_throttle_forgets_addresses_in_batches() -> None:
    """Failed logins from ever new addresses past a full table: the bound
    holds, and the scan of every address runs once per tenth of it."""
    throttle = LoginThrottle(Clock(), max_addresses=100)
    scans = 0
    forget = throttle._forget

    def counted(now: float) -> None:
        nonlocal scans
        scans += 1
        forget(now)

    throttle._forget = counted  # type: ignore[method-assign]
    for n in range(10000):
        throttle.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        assert len(throttle._seen) <= 100
    assert scans <= 1000  # one per ten new addresses; it was one per address
