"""Per-account limits enforced on MMSC paths."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime


class RateLimiter:
    """A token bucket per account: ``rate`` requests per second, with a burst
    of one second's worth (at least one request)."""

    def __init__(self, clock: IReactorTime) -> None:
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


class TransactionGate:
    """A bound on transactions in flight, and the drain on shutdown.

    Past ``limit`` a new transaction is refused at once (the resource answers
    4006) rather than queued without end; once :meth:`close` is called no new
    one is taken, and :meth:`drained` fires when the last one has finished.
    """

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self.in_flight = 0
        self.closed = False
        self._waiting: list[defer.Deferred[None]] = []

    def enter(self) -> str | None:
        """Take a place; or the reason there is none."""
        if self.closed:
            return "the server is shutting down"
        if self.in_flight >= self.limit:
            return f"{self.in_flight} transactions in flight, the limit"
        self.in_flight += 1
        return None

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                if not d.called:  # a drain that timed out cancelled it
                    d.callback(None)

    def close(self) -> None:
        self.closed = True

    def drained(self) -> defer.Deferred[None]:
        """Fires once no transaction is in flight."""
        if self.in_flight == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d
