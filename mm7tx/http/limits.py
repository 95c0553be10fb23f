"""Limits: per-account rates, transactions in flight, failed logins per
address."""

from __future__ import annotations

from itertools import islice

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mm7tx.http.settings import (
    DEFAULT_FAILED_LOGIN_WINDOW as DEFAULT_FAILED_LOGIN_WINDOW,
)
from mm7tx.http.settings import DEFAULT_LOGIN_LOCKOUT as DEFAULT_LOGIN_LOCKOUT
from mm7tx.http.settings import DEFAULT_MAX_FAILED_LOGINS as DEFAULT_MAX_FAILED_LOGINS


class RateLimiter:
    """A token bucket per account: ``rate`` requests per second, with a burst
    of one second's worth (at least one request) unless ``burst`` says how
    many.  At most ``max_names`` buckets are kept: past it, those full again
    (as a new one would be) are forgotten, then the stalest, until a tenth
    of the room is free, so that a stream of new names (a sender changing
    its MAIL FROM) costs constant work per name on average."""

    def __init__(self, clock: IReactorTime, max_names: int = 100000) -> None:
        self.clock = clock
        self.max_names = max_names
        # name -> (tokens, last use, when it is full again)
        self._buckets: dict[str, tuple[float, float, float]] = {}

    def allow(self, name: str, rate: float, burst: float | None = None) -> bool:
        now = self.clock.seconds()
        capacity = max(1.0, rate if burst is None else burst)
        tokens, last, _ = self._buckets.pop(name, (capacity, now, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self.max_names:
            self._forget(now)
        # Newest last, for _forget.
        self._buckets[name] = (tokens, now, now + (capacity - tokens) / rate)
        return allowed

    def _forget(self, now: float) -> None:
        """Forget the buckets full again, then the stalest (the first in
        the dict's insertion order), until a tenth of ``max_names`` (at
        least one) is free: the scan of every bucket is paid once per that
        many new names."""
        for name, (_, _, full) in list(self._buckets.items()):
            if full <= now:
                del self._buckets[name]
        keep = self.max_names - max(1, self.max_names // 10)
        excess = len(self._buckets) - keep
        if excess > 0:
            for name in list(islice(self._buckets, excess)):
                del self._buckets[name]


class TransactionGate:
    """A bound on transactions in flight, and the drain on shutdown.

    Past ``limit`` a new transaction is refused at once (the resource answers
    4006) rather than queued without end; once :meth:`close` is called no new
    one is taken, and :meth:`drained` fires when the last one has finished.

    A gate ``within`` another takes each place in that one too (its limit and
    its closing apply) and counts its own: the transactions of one
    configuration, which a reload lets finish with the objects they started
    with (:meth:`drained` fires once those alone are done).
    """

    def __init__(self, limit: int = 200, within: TransactionGate | None = None) -> None:
        self.limit = limit
        self.within = within
        self.in_flight = 0
        self.closed = False
        self._waiting: list[defer.Deferred[None]] = []

    def enter(self) -> str | None:
        """Take a place; or the reason there is none."""
        if self.within is not None:
            refused = self.within.enter()
            if refused is None:
                self.in_flight += 1
            return refused
        if self.closed:
            return "the server is shutting down"
        if self.in_flight >= self.limit:
            return f"{self.in_flight} transactions in flight, the limit"
        self.in_flight += 1
        return None

    def leave(self) -> None:
        if self.within is not None:
            self.within.leave()
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


class LoginThrottle:
    """Counts failed logins per source address on the reactor's clock.

    After ``max_failures`` within ``window`` seconds the address is locked
    out for ``lockout`` seconds: :meth:`locked` says for how much longer, and
    the resource answers 401 at once without checking a password (no scrypt
    for a guesser).  A success does not reset the count.  At most
    ``max_addresses`` are tracked; past it, the stalest are forgotten.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_failures: int = DEFAULT_MAX_FAILED_LOGINS,
        window: float = DEFAULT_FAILED_LOGIN_WINDOW,
        lockout: float = DEFAULT_LOGIN_LOCKOUT,
        max_addresses: int = 100000,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_addresses = max_addresses
        # address -> (start of its window, failures in it, locked until)
        self._seen: dict[str, tuple[float, int, float]] = {}

    def locked(self, address: str) -> float:
        """Seconds ``address`` is still locked out for (0: it is not)."""
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry[2] - self.clock.seconds())

    def failed(self, address: str) -> bool:
        """Count a failed login; whether it locked the address out."""
        now = self.clock.seconds()
        start, count, until = self._seen.pop(address, (now, 0, 0.0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        locking = count >= self.max_failures and until <= now
        if locking:
            until, start, count = now + self.lockout, now, 0
        if len(self._seen) >= self.max_addresses:
            self._forget(now)
        self._seen[address] = (start, count, until)  # newest last
        return locking

    def _forget(self, now: float) -> None:
        """Forget the addresses whose window passed and that are not locked
        out, then the stalest, until a tenth of ``max_addresses`` (at least
        one) is free: the scan of every address is paid once per that many
        new addresses, not for each (guessers from many addresses)."""
        for address, (start, _, until) in list(self._seen.items()):
            if now - start >= self.window and until <= now:
                del self._seen[address]
        keep = self.max_addresses - max(1, self.max_addresses // 10)
        excess = len(self._seen) - keep
        if excess > 0:
            for address in list(islice(self._seen, excess)):
                del self._seen[address]
