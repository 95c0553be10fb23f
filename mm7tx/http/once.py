"""Exactly once across a peer's retries: the answer given to a transaction,
kept in the state store under its key, given again to a retry.

:class:`ExactlyOnce` is what :class:`~mm7tx.http.resource.MM7Resource`
asks before it hands a request to its processor: a stored answer (a retry
of a transaction already answered, or one that was in flight and got its
answer meanwhile), a :class:`Ticket` (the transaction is this request's to
run: complete it with its answer or release it), or nothing (the store
failed or was too slow: serve without dedup).

:class:`StoreHealth` says whether the store answers: logged once when it
stops (then once when it is back), counted, and named by ``/readyz``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mm7tx.interfaces import IExactlyOnceStore
from mm7tx.mm7 import messages as m
from mm7tx.mm7.digest import peer_identity, transaction_digest, transaction_key
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.store.records import Answer, Done, InFlight, New

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics

__all__ = ["Answer", "ExactlyOnce", "StoreHealth", "Ticket", "request_key"]

log = Logger(namespace="mm7tx.once")

T = TypeVar("T")

# The longest any one store call may take before the request is served
# without it (seconds): the store is there to save a duplicate, never to
# make a peer wait.
CALL_TIMEOUT = 2.0


def request_key(
    envelope: m.Envelope, account: str | None, path: str, peer: str | None
) -> str | None:
    """The exactly-once key of a decoded request: who sent it (``account``,
    else ``path`` and the source network of ``peer``), its TransactionID
    and its digest; ``None`` without a TransactionID (not deduplicated)."""
    message = envelope.message
    if not envelope.transaction_id or not isinstance(message, m.Request):
        return None
    identity = peer_identity(account, path, peer)
    return transaction_key(
        identity, envelope.transaction_id, transaction_digest(message)
    )


def replayed_status(answer: Answer) -> m.Status:
    """The status of a kept answer, for the retry's log event and count."""
    metadata = answer.metadata
    code = int(metadata.get("status", StatusCode.SUCCESS))
    return m.Status(code, metadata.get("status_text", ""))


class StoreHealth:
    """Whether the state store answered its last call: the first failure of
    an outage is logged (with why), the first success after one too, and
    nothing in between; every failure is counted."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        # Why the last call failed, while no call succeeded since.
        self.error: str | None = None
        self.description = ""

    def failed(self, operation: str, why: str) -> None:
        """A call (``claim``, ``complete``…) failed or timed out."""
        if self.metrics is not None:
            self.metrics.store_error(operation)
        if self.error is None:
            log.warn(
                "The state store {store} fails ({operation}: {why}): serving "
                "without exactly once until it answers again",
                store=self.description,
                operation=operation,
                why=why,
            )
        self.error = why

    def answered(self) -> None:
        """A call succeeded."""
        if self.error is not None:
            log.info(
                "The state store {store} answers again: exactly once is back",
                store=self.description,
            )
        self.error = None

    def problem(self) -> str | None:
        """What ``/readyz`` notes while the store fails, or None."""
        if self.error is None:
            return None
        return (
            f"the state store does not answer ({self.error}): serving "
            "without exactly once"
        )


@dataclass
class Ticket:
    """A claimed key: this request runs the transaction; :meth:`complete`
    keeps its answer, :meth:`release` (a fault) lets a retry run it again."""

    once: ExactlyOnce
    store: IExactlyOnceStore
    key: str
    token: str

    def complete(self, answer: Answer) -> defer.Deferred[None]:
        """Keep ``answer`` for the dedup window (a failure is counted and
        logged once per outage, never raised)."""
        once = self.once
        return once.call(
            "complete",
            lambda: self.store.complete(self.key, self.token, answer, once.window),
        ).addCallback(lambda _: None)

    def settle(
        self, status: m.Status, response: object, data: bytes
    ) -> defer.Deferred[None]:
        """Keep a success (``data``, the answer sent, with its status and
        any MessageID), release anything else."""
        if not status.is_success:
            return self.release()
        text = status.details or status.text
        metadata = {"status": str(status.code), "status_text": text}
        message_id = getattr(response, "message_id", None)
        if message_id:
            metadata["message_id"] = message_id
        return self.complete(Answer(data, metadata))

    def settle_as(
        self, response: m.Response, encode: Callable[[], bytes]
    ) -> defer.Deferred[bytes]:
        """:meth:`settle` ``response`` as ``encode`` makes it, firing with
        those bytes; if it cannot be made, the claim is released (a retry
        runs afresh) and ``encode``'s exception raised."""
        try:
            data = encode()
        except BaseException:
            self.release()
            raise
        return self.settle(response.status, response, data).addCallback(lambda _: data)

    def release(self) -> defer.Deferred[None]:
        """Forget the claim (the fault is not remembered)."""
        return self.once.call(
            "release", lambda: self.store.release(self.key, self.token)
        ).addCallback(lambda _: None)


class _Failed:
    """A store call that failed (counted and logged already)."""


FAILED = _Failed()


class ExactlyOnce:
    """The state store as the resource uses it: each call bounded by
    ``call_timeout`` seconds on ``clock``, its latency observed, its
    failures told to ``health``.  ``window`` is how long an answer is kept
    (``mm7_dedup_window``); ``store`` may be a callable giving the store of
    the moment (a reload may switch it)."""

    def __init__(
        self,
        store: IExactlyOnceStore | Callable[[], IExactlyOnceStore | None],
        clock: IReactorTime,
        window: float,
        health: StoreHealth | None = None,
        metrics: Metrics | None = None,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self._store = store
        self.clock = clock
        self.window = window
        self.health = health if health is not None else StoreHealth(metrics)
        self.metrics = metrics
        self.call_timeout = call_timeout

    @property
    def store(self) -> IExactlyOnceStore | None:
        """The store new transactions use."""
        if IExactlyOnceStore.providedBy(self._store):
            return self._store  # type: ignore[return-value]
        return self._store()  # type: ignore[operator, no-any-return]

    def call(
        self, operation: str, start: Callable[[], defer.Deferred[T]]
    ) -> defer.Deferred[T | _Failed]:
        """``start()``'s result, or :data:`FAILED` once it failed or took
        longer than ``call_timeout`` (then it is cancelled)."""
        began = time.monotonic()
        try:
            d = start()
        except Exception as e:
            d = defer.fail(e)
        d.addTimeout(self.call_timeout, self.clock)
        health = self.health

        def answered(result: T) -> T:
            self._observe(operation, began)
            health.answered()
            return result

        def failed(reason: Failure) -> _Failed:
            self._observe(operation, began)
            if reason.check(defer.TimeoutError):
                why = f"no answer within {self.call_timeout:g} s"
            else:
                why = reason.getErrorMessage() or type(reason.value).__name__
            health.failed(operation, why)
            return FAILED

        return d.addCallbacks(answered, failed)

    def _hit(self, answer: Answer, operation: str) -> Answer:
        if self.metrics is not None:
            self.metrics.dedup_hit(operation)
        return answer

    def _observe(self, operation: str, began: float) -> None:
        if self.metrics is not None:
            self.metrics.store_call(operation, time.monotonic() - began)

    async def claim(
        self, key: str, lease: float, operation: str = "unknown"
    ) -> Answer | Ticket | None:
        """The answer already given for ``key``; else a :class:`Ticket`
        for this request to run it (held for ``lease`` seconds, the
        transaction's own bound); ``None`` to serve without the store (it
        failed).  A key still in flight elsewhere after ``lease`` seconds
        is a 4006 (:class:`MM7Error`): mailing then could mail twice.  A key in
        flight elsewhere is waited for, up to ``lease`` seconds: then its
        answer, or the key claimed again if it was released."""
        store = self.store
        if store is None:
            return None
        deadline = self.clock.seconds() + lease
        waited = False
        while True:
            claimed: Any = await self.call("claim", lambda: store.claim(key, lease))
            if isinstance(claimed, _Failed):
                return None
            if isinstance(claimed, New):
                return Ticket(self, store, key, claimed.token)
            if isinstance(claimed, Done):
                return self._hit(claimed.answer, operation)
            assert isinstance(claimed, InFlight)
            left = deadline - self.clock.seconds()
            if left <= 0:
                # Mailing now could mail twice: a transient fault, not
                # remembered, makes the peer try again later.
                raise MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details=f"the same transaction has been in flight for {lease:g} s",
                )
            if not waited and self.metrics is not None:
                self.metrics.in_flight_wait()
            waited = True
            # wait() is bounded by its own timeout, not by call_timeout.
            try:
                answer = await store.wait(key, left)
            except Exception as e:
                self.health.failed("wait", str(e) or type(e).__name__)
                return None
            if answer is not None:
                return self._hit(answer, operation)
            # Released, its lease passed, or the wait ran out: look again.
