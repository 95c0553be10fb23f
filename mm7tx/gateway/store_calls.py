"""The state store's calls on the mail side, bounded as the HTTP side's
are (:data:`~mm7tx.http.once.CALL_TIMEOUT`): a store that does not answer
within the bound counts as failed, so a slow store never holds a mail or a
report longer than a failing one would.

:class:`Outage` logs a user's store failures once per outage: the first
failure (with why), then the first answer after it, nothing in between
and never a key (keys hold phone numbers and Message-IDs).
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mm7tx.http.once import CALL_TIMEOUT

T = TypeVar("T")


class StoreFailed(Exception):
    """A store call failed or took too long, where the caller must tell
    that from no record (logged by its user already)."""


class StoreTimeout(Exception):
    """A store call did not answer within its bound (it was cancelled)."""


def bounded(
    d: defer.Deferred[T], clock: IReactorTime, timeout: float = CALL_TIMEOUT
) -> defer.Deferred[T]:
    """``d``, cancelled and failed with :class:`StoreTimeout` unless it
    fires within ``timeout`` seconds on ``clock``."""

    def timed_out(reason: Failure) -> Failure:
        if reason.check(defer.TimeoutError):
            return Failure(StoreTimeout(f"no answer within {timeout:g} s"))
        return reason

    d.addTimeout(timeout, clock)
    return d.addErrback(timed_out)


class Outage:
    """Whether the store failed its user's last call: ``failing`` (the
    warning, with an ``{error}`` field) is logged at an outage's first
    failure, ``back`` at the first answer after it."""

    def __init__(self, log: Logger, failing: str, back: str) -> None:
        self.log = log
        self.failing_format = failing
        self.back_format = back
        self.failing = False

    def failed(self, error: BaseException) -> None:
        """A call failed or took too long."""
        if not self.failing:
            self.failing = True
            self.log.warn(self.failing_format, error=str(error) or type(error).__name__)

    def answered(self) -> None:
        """A call answered."""
        if self.failing:
            self.failing = False
            self.log.info(self.back_format)
