"""What a processor knows about the HTTP exchange a request arrived in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer

from mm7tx.mm7.messages import DEFAULT_MM7_VERSION, DEFAULT_NAMESPACE
from mm7tx.mm7.peers import Account

T = TypeVar("T")


@dataclass(slots=True)
class Outcome:
    """What became of a transaction, noted as it goes for its log event
    (README, "Logs"): the processor that hands the mail on notes the relay's
    reply to it (``250 2.0.0 Ok: queued as 4F3A2B``).  A processor that
    notes nothing leaves it ``None``."""

    relay_reply: str | None = None
    # A report or a handset's message that went back by the way back, and
    # to whom: ("DSN", "ann@example.org"), ("MDN", …), ("reply", …).
    returned: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One MM7 transaction as the resource saw it.

    ``path`` is the configured URI path it was posted to (``/photo_contest/``),
    ``peer`` the client's address, ``account`` the authenticated VASP
    account on MMSC paths, ``mm7_version`` the version we answer with: the
    request's own MM7Version, else ``mm7_server_version``.
    ``key`` is its exactly-once key (:func:`mm7tx.mm7.digest.transaction_key`:
    the peer, the TransactionID and the request's digest), ``None`` for a
    request without a TransactionID; the email's ``Message-ID`` and a
    SubmitRsp's MessageID are derived from it, so that a retry mailed again
    carries the same ones.
    ``outcome`` is its one mutable part, for what the log should tell.
    """

    transaction_id: str
    path: str
    namespace: str = DEFAULT_NAMESPACE
    peer: str | None = None
    account: Account | None = None
    mm7_version: str = DEFAULT_MM7_VERSION
    key: str | None = None
    # Whether the client's connection is gone, so that no answer reaches
    # it; the resource sets it, a transaction made elsewhere has none.
    connection_gone: Callable[[], bool] | None = field(
        default=None, compare=False, repr=False
    )
    outcome: Outcome = field(default_factory=Outcome, compare=False, repr=False)
    # Runs blocking work off the reactor thread (mm7tx.offload.in_pool):
    # the resource sets it, a transaction made elsewhere has none.
    threads: Callable[..., defer.Deferred[Any]] | None = field(
        default=None, compare=False, repr=False
    )

    def answer_lost(self) -> bool:
        """True once the client went away: its answer will not be sent."""
        return self.connection_gone is not None and self.connection_gone()

    def in_thread(self, function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """``function(*args)`` in a thread of the service's reactor
        (``twisted.internet.threads.deferToThread`` on that reactor), its
        result or exception as a Deferred: for blocking work (files, a
        database driver, an HTTP library without Twisted), which would stop
        every other transaction if run here.  At once, in this thread, for
        a transaction made without a reactor (a unit test)."""
        if self.threads is None:
            return defer.maybeDeferred(function, *args)
        return self.threads(function, *args)
