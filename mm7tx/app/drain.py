"""Stopping without losing a transaction: the transactions in flight
drained within a deadline, then the HTTP connections closed (cut if a peer
does not read its answer)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mm7tx.http.limits import TransactionGate
from mm7tx.http.site import MM7Site

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.service")

# Seconds to close the HTTP connections and the SMTP pool on stop, beyond
# the drain if that ran out.
CLOSE_GRACE = 5.0


async def within(
    clock: IReactorTime, waiting: defer.Deferred[None], deadline: float
) -> bool:
    """Whether ``waiting`` fired before ``deadline`` (on ``clock``)."""
    timed_out: list[bool] = []

    def on_timeout(result: object, timeout: float) -> None:
        timed_out.append(True)

    waiting.addTimeout(
        max(0.0, deadline - clock.seconds()), clock, onTimeoutCancel=on_timeout
    )
    await waiting
    return not timed_out


async def drain(
    clock: IReactorTime,
    gate: TransactionGate,
    listeners: defer.Deferred[None] | None,
    timeout: float,
) -> float:
    """Wait for ``listeners`` to stop, then for the transactions in ``gate``
    (closed already) to finish, ``timeout`` seconds at most from now; logged
    either way.  The deadline, for what closes after."""
    deadline = clock.seconds() + timeout
    in_flight = gate.in_flight
    if in_flight:
        log.info(
            "Draining {count} transactions in flight (at most {timeout:g} s)",
            count=in_flight,
            timeout=timeout,
        )
    if listeners is not None:
        await listeners
    drained = await within(clock, gate.drained(), deadline)
    if not drained:
        log.warn(
            "Stopped with {count} transactions still in flight",
            count=gate.in_flight,
        )
    elif in_flight:
        log.info("Drained {count} transactions", count=in_flight)
    return deadline


async def close_connections(
    clock: IReactorTime, site: MM7Site, deadline: float
) -> None:
    """Every answer written and its connection closed before the process
    may exit: until ``deadline``, or :data:`CLOSE_GRACE` from now if that is
    later (a drain that ran out of time leaves a few seconds for it)."""
    closing = site.close_connections()
    grace = max(deadline, clock.seconds() + CLOSE_GRACE)
    if not await within(clock, closing, grace):
        # A peer that does not read what we write: cut it.
        log.warn(
            "Cutting {count} HTTP connections still not closed",
            count=len(site.channels),
        )
        cutting = site.close_connections(abort=True)
        await within(clock, cutting, clock.seconds() + 1)
