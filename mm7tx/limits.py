"""Per-account limits enforced on MMSC paths."""

from __future__ import annotations

from typing import Any


class RateLimiter:
    """A token bucket per account: ``rate`` requests per second, with a burst
    of one second's worth (at least one request)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, name: str, rate: float) -> bool:
        now = self.clock.seconds()
        capacity = max(1.0, rate)
        tokens, last = self._buckets.get(name, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[name] = (tokens, now)
            return False
        self._buckets[name] = (tokens - 1.0, now)
        return True
