"""Work too large for one turn of the reactor, done in a thread.

Reading a request of tens of megabytes, or writing its mail, is pure work
(bytes in, bytes out) that would hold the reactor for hundreds of
milliseconds in one piece.  Above :data:`OFFLOAD_SIZE` it goes to the
reactor's thread pool through an :data:`Offload`; every step of it is a C
call over at most a megabyte or so, so that the reactor thread gets the
interpreter back within milliseconds while it runs.  Smaller work stays on
the reactor thread, where it costs less than the trip to a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads

T = TypeVar("T")

# Bodies and mails over this many bytes are worked on in a thread.
OFFLOAD_SIZE = 1024 * 1024
# The interpreter's switch interval `twistd mm7` sets (seconds; Python's
# default is 0.005): how long the reactor thread may wait for the
# interpreter while a thread works.
SWITCH_INTERVAL = 0.0005

# Runs ``function(*args)`` and gives its result as a Deferred.
Offload = Callable[..., "defer.Deferred[Any]"]


def inline(function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    """An :data:`Offload` that runs the work at once, on the caller's
    thread (the in-memory gateway's, and where no thread pool is wanted)."""
    return defer.maybeDeferred(function, *args)


def in_threads(reactor: Any) -> Offload:
    """An :data:`Offload` on ``reactor``'s thread pool, one piece of work at
    a time (others wait their turn); :func:`inline` for a reactor without
    threads (``MemoryReactor``, a ``Clock``).

    One at a time: the work holds the interpreter while it runs, so that
    with two threads at it the reactor thread would get a third of the
    time, not half; and the memory of one large request is worked on at
    once rather than that of all in flight."""
    if not (
        IReactorThreads.providedBy(reactor) and IReactorFromThreads.providedBy(reactor)
    ):
        return inline
    turn = defer.DeferredSemaphore(1)

    def offload(function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return turn.run(
            threads.deferToThreadPool,
            reactor,
            reactor.getThreadPool(),
            function,
            *args,
        )

    return offload


def in_pool(reactor: Any) -> Offload:
    """An :data:`Offload` for a processor's blocking work
    (:meth:`mm7tx.transaction.Transaction.in_thread`): ``deferToThread`` on
    ``reactor``'s thread pool, as many at once as the pool has threads;
    :func:`inline` for a reactor without threads."""
    if not (
        IReactorThreads.providedBy(reactor) and IReactorFromThreads.providedBy(reactor)
    ):
        return inline

    def offload(function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), function, *args
        )

    return offload
