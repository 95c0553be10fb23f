"""Waiting for an in-flight key's answer by looking again on a clock: how
every store serves :meth:`~mm7tx.interfaces.IExactlyOnceStore.wait` (the
answer may come from another process, which can only be seen by looking)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mm7tx.store.records import Answer, Claim, Done, InFlight

# How often a waiting retry looks at the store again (seconds).
POLL_INTERVAL = 0.05


def wait_by_polling(
    clock: IReactorTime,
    look: Callable[[], defer.Deferred[Claim | None]],
    timeout: float,
    interval: float = POLL_INTERVAL,
) -> defer.Deferred[Answer | None]:
    """Call ``look`` (the key's state, ``None`` when free) now and every
    ``interval`` seconds on ``clock``: fire with the answer once it is
    :class:`Done`, with ``None`` once the key is free or ``timeout`` passed.
    Cancelling the result stops the looking."""
    deadline = clock.seconds() + timeout
    pending: list[IDelayedCall] = []

    def cancel(_: defer.Deferred[Answer | None]) -> None:
        while pending:
            call = pending.pop()
            if call.active():
                call.cancel()

    result: defer.Deferred[Answer | None] = defer.Deferred(cancel)

    def check() -> None:
        pending.clear()
        look().addCallbacks(seen, result.errback)

    def seen(state: Claim | None) -> None:
        if result.called:
            return
        if isinstance(state, Done):
            result.callback(state.answer)
            return
        left = deadline - clock.seconds()
        if not isinstance(state, InFlight) or left <= 0:
            result.callback(None)
            return
        pending.append(clock.callLater(min(interval, left), check))

    check()
    return result
