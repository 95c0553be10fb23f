"""Delivery reports back to VASPs: MMSC paths post a DeliveryReportReq to the
account's ``delivery_report_url`` when a SubmitReq asked for one.

Reports go only for a MessageID the VASP was given in a SubmitRsp: each
recipient ``Forwarded`` once the relay took the mail for it, ``Rejected``
when the relay refused it in a partial success (1100); nothing after a
fault (:func:`report_submit`).  While the VASP is unreachable, times out or
answers 4006, the post is retried with exponential backoff; the final
outcome is logged either way.  Any other failure (a refusal, an answer that
is not MM7 or is over ``mm7_client_max_answer_size``) is logged at once.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mm7tx.gateway.report_owners import OWNERS_KEY as OWNERS_KEY
from mm7tx.gateway.report_owners import default_instance, gone_owners
from mm7tx.gateway.report_record import StoredReport, UnreadableReport
from mm7tx.gateway.store_calls import Outage
from mm7tx.http.auth import Account
from mm7tx.http.client import (
    DEFAULT_MAX_ANSWER_SIZE,
    MM7Client,
    MM7ClientError,
    MM7Fault,
    TimedOut,
    Unreachable,
    url_credentials,
)
from mm7tx.interfaces import IRecordStore, IReportStore
from mm7tx.mm7 import messages as m
from mm7tx.mm7.status import StatusCode
from mm7tx.store.records import Report

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.reports")

T = TypeVar("T")

# How often the store is asked for reports to take over (and at start).
POLL_INTERVAL = 5.0
# A report's lease runs this long past the attempt timeout after it is due.
LEASE_MARGIN = 15.0
# The most reports taken from the store in one poll, per owner asked for.
TAKE_AT_ONCE = 100
DAY = 86400.0


class DeliveryReporter:
    """Posts delivery reports with retries; one Deferred per report.

    With a ``store`` (an :class:`~mm7tx.interfaces.IReportStore`), each
    report is written there before it is first posted, its attempts and next
    due time after each failed attempt, and it is removed once answered,
    refused or given up; every ``poll_interval`` seconds (and at once) the
    reporter takes over the due reports of an earlier start of the same
    ``instance`` and those whose owner's lease passed, and posts them on
    with the attempts they had left (:mod:`mm7tx.gateway.report_record`).
    Without one, reports live in memory only."""

    def __init__(
        self,
        reactor: IReactorTime,
        attempts: int = 8,
        first_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 30.0,
        metrics: Metrics | None = None,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
        store: IReportStore | None = None,
        accounts: Mapping[str, Account] | None = None,
        instance: str | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics
        self.attempts = attempts
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.timeout = timeout
        # The most of a VASP's answer read (its body; the headers are
        # bounded by the client): a VASP answering without end cannot grow us.
        self.max_answer_size = max_answer_size
        # Each report being posted: its MessageID and URL, for the log.
        self.pending: dict[defer.Deferred[bool], tuple[str, str]] = {}
        self._closing = False  # stop() was called: no new report goes out
        # The VASP accounts by name, as configured now (the wiring sets them
        # on each load): a report taken from the store is posted with its
        # account's URL and credentials as they are when it is posted.
        self.accounts: Mapping[str, Account] = accounts or {}
        # Which service this is, the same across its restarts; the owner of
        # its reports is this start of it (unique per process start).
        self.instance = instance if instance is not None else default_instance()
        self.owner = f"{self.instance}#{os.getpid()}.{secrets.token_hex(4)}"
        # Longer than an attempt can last: a live owner renews the lease when
        # an attempt fails, so nobody takes a report over from under it.
        self.lease = timeout + LEASE_MARGIN
        self.poll_interval = poll_interval
        self.store_errors = 0  # store operations that failed
        # A store outage logged once, then once when the store is back.
        self._outage = Outage(
            log,
            "The state store failed ({error}): serving without exactly once, "
            "and delivery reports are posted from memory, until it answers again",
            "The state store answers again: delivery reports are kept",
        )
        # The reports posted here now, by id (the poll skips them); the ids
        # of the pending Deferreds that have one; those the store holds.
        self._live: set[str] = set()
        self._ids: dict[defer.Deferred[bool], str] = {}
        self._kept: set[str] = set()
        # The wait for its next attempt of each kept report between two
        # attempts, by id: a stop leaves these in the store at once.
        self._waiting: dict[str, defer.Deferred[None]] = {}
        # The kept reports a stop is leaving in the store (their attempt's
        # connections closing): left, whatever ends them now.
        self._leaving: set[str] = set()
        # The owners of this instance's earlier starts (newest first): their
        # reports are this start's at once, their leases notwithstanding.
        self._predecessors: list[str] | None = None
        self._poll: task.LoopingCall | None = None
        self._first_poll: IDelayedCall | None = None
        self.store: IReportStore | None = None
        self.use_store(store)

    def set_timeout(self, timeout: float) -> None:
        """Wait ``timeout`` seconds for each post from now on (a reload),
        the lease of the reports taken from now on following it."""
        self.timeout = timeout
        self.lease = timeout + LEASE_MARGIN

    def use_store(self, store: IReportStore | None) -> None:
        """Keep new reports in ``store`` from now on, and take over due
        reports from it (a reload that changes the store); the reports
        already kept stay with the store that holds them."""
        if store is self.store:
            return
        self._stop_polling()
        self._poll = None
        self.store = store
        self._predecessors = None
        if store is not None and not self._closing:
            self._poll = task.LoopingCall(self._take_due)
            self._poll.clock = self.reactor
            # The first poll once the reactor runs, not here: a service that
            # never starts (a port in use) has touched no store, so no
            # store's thread keeps its process from exiting.
            self._poll.start(self.poll_interval, now=False)
            self._first_poll = self.reactor.callLater(
                0, defer.maybeDeferred, self._take_due
            )

    def _stop_polling(self) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._first_poll is not None and self._first_poll.active():
            self._first_poll.cancel()

    def report(
        self, account: Account, request: m.DeliveryReportReq, namespace: str
    ) -> defer.Deferred[bool]:
        """Post ``request`` to the account's URL; fires True once answered 1000.

        Once :meth:`stop` was called (a transaction that outlived the drain)
        nothing is posted: the report is kept in the store for the next
        start if there is one, else logged as abandoned."""
        url = _without_credentials(account.delivery_report_url or "")
        message_id = request.message_id or "-"
        if self._closing:
            if self.store is not None:
                return defer.ensureDeferred(
                    self._leave(account, request, namespace, url)
                )
            _log_abandoned(message_id, url)
            self._count("abandoned")
            return defer.succeed(False)
        if self.store is None:
            d = defer.ensureDeferred(self._post(account, request, namespace))
            return self._track(d, message_id, url)
        kept = _Kept(self.store, uuid.uuid4().hex)
        self._live.add(kept.report_id)
        record = StoredReport(account.name, request, namespace)
        d = defer.ensureDeferred(self._durable(kept, account, record))
        return self._track(d, message_id, url, kept.report_id)

    def _track(
        self,
        d: defer.Deferred[bool],
        message_id: str,
        url: str,
        report_id: str | None = None,
    ) -> defer.Deferred[bool]:
        """Count and log ``d``'s outcome; keep it in :attr:`pending` until then."""
        d.addBoth(self._counted)
        # Nobody waits on this Deferred: a failure must be logged here.
        d.addErrback(_unexpected, message_id, url)
        if d.called:
            self._live.discard(report_id or "")
            return d
        self.pending[d] = (message_id, url)
        if report_id is not None:
            self._ids[d] = report_id

        def done(result: Any) -> Any:
            self.pending.pop(d, None)
            self._ids.pop(d, None)
            self._live.discard(report_id or "")
            return result

        return d.addBoth(done)

    def _counted(self, result: Any) -> Any:
        if isinstance(result, Failure):
            if result.check(_Left):
                self._count("left")
                return False
            self._count("abandoned" if result.check(defer.CancelledError) else "failed")
        else:
            self._count("accepted" if result else "failed")
        return result

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_report(outcome)

    def stop(self, timeout: float) -> defer.Deferred[None]:
        """Stop posting.  A report kept in the store and waiting for its
        next attempt is left there at once, for the next start (or another
        instance) to post; one with an attempt under way is left once that
        attempt fails.  The others (without a store, or whose store failed)
        get ``timeout`` seconds to be answered, retries included; then they
        are cancelled, each logged as abandoned (with a store, left).  A
        report asked for from now on is left in the store, or abandoned."""
        self._closing = True
        self._stop_polling()
        leaving = dict(self._waiting)
        self._leaving.update(leaving)
        for sleep in leaving.values():
            sleep.cancel()  # logged as left by its report, which ends here
        draining = [d for d in self.pending if self._ids.get(d) not in leaving]
        if not draining:
            return defer.succeed(None)
        log.info(
            "Draining: {count} delivery reports still being posted "
            "(at most {timeout:g} s)",
            count=len(draining),
            timeout=timeout,
        )
        finished = defer.DeferredList(list(self.pending), consumeErrors=True)
        timer = self.reactor.callLater(timeout, self._abandon)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
                log.info("Drained {count} delivery reports", count=len(draining))

        return finished.addCallback(done)

    def _abandon(self) -> None:
        # Cancelling ends the attempt and its retries: the CancelledError
        # goes through the retry loop, which catches only MM7 client errors.
        # A kept report logs itself as left when it ends so.
        # One being left already (its connections still closing) is only cut.
        count = 0
        for d, (message_id, url) in list(self.pending.items()):
            if self._ids.get(d) not in self._leaving:
                count += 1
                if self._ids.get(d) not in self._kept:
                    _log_abandoned(message_id, url)
            d.cancel()
        if count:
            log.warn("Stopped with {count} delivery reports not answered", count=count)

    # The store.

    async def _durable(
        self, kept: _Kept, account: Account, record: StoredReport
    ) -> bool:
        """Keep the report in the store, then post it; forget it once it
        has an outcome.  A store that fails leaves it in memory only."""
        now = self.reactor.seconds()
        written = await self._stored(
            kept.store.put_report(
                kept.report_id,
                record.encode(),
                self.owner,
                now,
                self.lease,
                self._ttl(),
            )
        )
        if written is _FAILED:
            return await self._post(account, record.request, record.namespace)
        return await self._posted_then_forgotten(kept, account, record, 0)

    async def _posted_then_forgotten(
        self, kept: _Kept, account: Account, record: StoredReport, made: int
    ) -> bool:
        """Post the report ``kept`` after ``made`` attempts; forget it once
        it has an outcome, keep it if the service stops first."""
        report_id = kept.report_id
        self._kept.add(report_id)
        try:
            answered = await self._post(
                account, record.request, record.namespace, kept, made
            )
        except _TakenOver:
            # It stays in the store, for the instance that took it over.
            raise _Left() from None
        except BaseException as e:
            if isinstance(e, defer.CancelledError) or report_id in self._leaving:
                # Stopped: it stays in the store for the next start.
                url = _without_credentials(account.delivery_report_url or "")
                _log_left(record.request.message_id or "-", url)
                raise _Left() from None
            await self._forget(kept)
            raise
        finally:
            self._kept.discard(report_id)
            self._leaving.discard(report_id)
        await self._forget(kept)
        return answered

    async def _forget(self, kept: _Kept) -> None:
        await self._stored(kept.store.remove_report(kept.report_id))

    async def _leave(
        self,
        account: Account,
        request: m.DeliveryReportReq,
        namespace: str,
        url: str,
    ) -> bool:
        """A report asked for after :meth:`stop`: kept for the next start."""
        assert self.store is not None
        record = StoredReport(account.name, request, namespace).encode()
        now = self.reactor.seconds()
        kept = await self._stored(
            self.store.put_report(
                uuid.uuid4().hex, record, self.owner, now, 0.0, self._ttl()
            )
        )
        if kept is _FAILED:
            _log_abandoned(request.message_id or "-", url)
            self._count("abandoned")
        else:
            _log_left(request.message_id or "-", url)
            self._count("left")
        return False

    async def _stored(self, operation: defer.Deferred[T]) -> T | object:
        """``operation``'s result, or :data:`_FAILED` if the store failed
        (counted; logged once per outage)."""
        try:
            result = await operation
        except defer.CancelledError:
            raise
        except Exception as e:  # any store fault is an outage
            self.store_errors += 1
            self._outage.failed(e)
            return _FAILED
        self._outage.answered()
        return result

    def _ttl(self) -> float:
        """How long a report is kept at most: its whole schedule, twice,
        and at least a day."""
        delays = sum(self._delay_after(n) for n in range(1, self.attempts))
        return max(DAY, 2 * (delays + self.attempts * self.timeout))

    def _delay_after(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1, 2, …)."""
        return float(min(self.first_delay * 2 ** (attempt - 1), self.max_delay))

    async def _take_due(self) -> None:
        """Take over the reports due now that this instance's earlier starts
        owned or whose owner's lease passed, and post them on.  Never fails:
        the poll goes on."""
        try:
            await self._take_due_once()
        except Exception:  # the next poll tries again
            log.failure("Taking over delivery reports failed")

    async def _take_due_once(self) -> None:
        store = self.store
        if store is None:
            return
        found = await self._predecessors_found(store)
        if found is None:
            return
        self._predecessors = found
        for owner in [self.owner, *self._predecessors]:
            due = await self._stored(store.due_reports(owner, TAKE_AT_ONCE))
            if due is _FAILED:
                return
            assert isinstance(due, list)
            for report in due:
                if self._closing:
                    return
                if report.report_id in self._live:
                    continue  # being posted here
                if report.owner in self._predecessors:
                    # Its lease ended at once: this start is its owner now.
                    ended = await self._stored(
                        store.lease_report(report.report_id, report.owner, 0.0)
                    )
                    if ended is _FAILED:
                        return
                taken = await self._stored(
                    store.lease_report(report.report_id, self.owner, self.lease)
                )
                if taken is _FAILED:
                    return
                if isinstance(taken, Report) and taken.report_id not in self._live:
                    await self._resume(store, taken)

    async def _predecessors_found(self, store: IReportStore) -> list[str] | None:
        """The owners of this instance whose processes are gone, from its
        owners record, which lists this start too (:func:`gone_owners`);
        ``None`` if the store failed."""
        if not IRecordStore.providedBy(store):
            return []
        found = await self._stored(
            defer.ensureDeferred(
                gone_owners(
                    IRecordStore(store),
                    self.instance,
                    self.owner,
                    self.reactor.seconds(),
                    self._ttl(),
                )
            )
        )
        if found is _FAILED:
            return None
        assert isinstance(found, list)
        return found

    async def _resume(self, store: IReportStore, report: Report) -> None:
        """Post on a report taken from ``store``, after ``report.attempts``."""
        kept = _Kept(store, report.report_id)
        try:
            record = StoredReport.decode(report.payload)
        except UnreadableReport as e:
            log.warn(
                "Dropped stored delivery report {report_id}: unreadable ({error})",
                report_id=report.report_id,
                error=str(e),
            )
            await self._forget(kept)
            return
        message_id = record.request.message_id or "-"
        account = self.accounts.get(record.account)
        if account is None or not account.delivery_report_url:
            log.warn(
                "Dropped delivery report {message_id} for {vasp}: the account "
                "has no delivery_report_url any more",
                message_id=message_id,
                vasp=record.account,
            )
            await self._forget(kept)
            self._count("failed")
            return
        url = _without_credentials(account.delivery_report_url)
        log.info(
            "Taking over delivery report {message_id} for {vasp} after "
            "{attempts} attempts",
            message_id=message_id,
            vasp=account.name,
            attempts=report.attempts,
        )
        self._live.add(report.report_id)
        d = defer.ensureDeferred(
            self._posted_then_forgotten(kept, account, record, report.attempts)
        )
        self._track(d, message_id, url, report.report_id)

    async def _post(
        self,
        account: Account,
        request: m.DeliveryReportReq,
        namespace: str,
        kept: _Kept | None = None,
        made: int = 0,
    ) -> bool:
        """Post with retries, after ``made`` attempts made before; the
        store's record ``kept`` (if any) follows each failed attempt."""
        assert account.delivery_report_url is not None
        credentials = None
        if account.delivery_report_user is not None:
            credentials = (
                account.delivery_report_user,
                account.delivery_report_password or "",
            )
        client = MM7Client(
            self.reactor,
            account.delivery_report_url,
            credentials,
            namespace=namespace,
            mm7_version=request.mm7_version,
            timeout=self.timeout,
            max_answer_size=self.max_answer_size,
        )
        problem = "its attempts were used up before a restart"
        try:
            for attempt in range(made + 1, self.attempts + 1):
                delay = self._delay_after(attempt)
                try:
                    response = await client.delivery_report(request)
                except MM7Fault as fault:
                    if fault.status.code != StatusCode.SERVICE_UNAVAILABLE:
                        log.warn(
                            "Delivery report {message_id} for {vasp} refused: {error}",
                            message_id=request.message_id,
                            vasp=account.name,
                            error=str(fault),
                        )
                        return False
                    problem = str(fault)
                except (Unreachable, TimedOut) as e:
                    problem = str(e)
                except MM7ClientError as e:
                    log.warn(
                        "Delivery report {message_id} for {vasp} failed: {error}",
                        message_id=request.message_id,
                        vasp=account.name,
                        error=str(e),
                    )
                    return False
                else:
                    log.info(
                        "Delivery report {message_id} ({status}) for {vasp} "
                        "answered {code}",
                        message_id=request.message_id,
                        status=request.mm_status,
                        vasp=account.name,
                        code=response.status.code,
                    )
                    return response.status.is_success
                if attempt < self.attempts and kept is not None and self._closing:
                    # Stopping: the store has when it is due next.
                    await self._next_attempt(kept, attempt, delay, request)
                    self._leaving.add(kept.report_id)
                    raise defer.CancelledError()
                if attempt < self.attempts:
                    log.info(
                        "Delivery report {message_id} for {vasp}: {error}; "
                        "retrying in {delay:g} s",
                        message_id=request.message_id,
                        vasp=account.name,
                        error=problem,
                        delay=delay,
                    )
                    if kept is not None:
                        await self._next_attempt(kept, attempt, delay, request)
                        await self._wait(kept.report_id, delay)
                    else:
                        await task.deferLater(self.reactor, delay)
            log.warn(
                "Gave up on delivery report {message_id} for {vasp} after "
                "{attempts} attempts: {error}",
                message_id=request.message_id,
                vasp=account.name,
                attempts=self.attempts,
                error=problem,
            )
            return False
        finally:
            await client.close()

    async def _wait(self, report_id: str, delay: float) -> None:
        """Wait ``delay`` seconds before a kept report's next attempt, or
        until a stop cancels the wait (:class:`defer.CancelledError`)."""
        if self._closing:
            self._leaving.add(report_id)
            raise defer.CancelledError()
        sleep: defer.Deferred[None] = task.deferLater(self.reactor, delay)
        self._waiting[report_id] = sleep
        try:
            await sleep
        finally:
            self._waiting.pop(report_id, None)

    async def _next_attempt(
        self, kept: _Kept, attempts: int, delay: float, request: m.DeliveryReportReq
    ) -> None:
        """Record a failed attempt in the store (the lease renewed with it);
        :class:`_TakenOver` if another instance owns the report now."""
        due = self.reactor.seconds() + delay
        still = await self._stored(
            kept.store.update_report(
                kept.report_id, self.owner, attempts, due, self.lease
            )
        )
        if still is False:
            log.info(
                "Delivery report {message_id}: another instance took it over",
                message_id=request.message_id,
            )
            raise _TakenOver()


@dataclass(frozen=True)
class _Kept:
    """A report's record: its id in the store that holds it (a reload
    may bring another store for new reports; this one stays with it)."""

    store: IReportStore
    report_id: str


class _Left(Exception):
    """A report cancelled at stop whose record stays in the store."""


class _TakenOver(Exception):
    """Another instance owns the report now: it posts it."""


_FAILED = object()  # what _stored gives for a store operation that failed


def _without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` taken out, for the log."""
    return url_credentials(url)[0]


def _unexpected(reason: Failure, message_id: str, url: str) -> Any:
    """A report that failed other than as an MM7 client error (a bug, a URL
    the agent refuses): logged with its MessageID and URL, never swallowed
    by the Deferred nobody consumes.  A cancellation (the drain) passes."""
    if reason.check(defer.CancelledError):
        return reason
    log.failure(
        "Delivery report {message_id} to {url} failed: {error}",
        reason,
        message_id=message_id,
        url=url,
        error=reason.getErrorMessage(),
    )
    return False


def _log_left(message_id: str, url: str) -> None:
    log.warn(
        "Left delivery report {message_id} to {url} in the state store for "
        "the next start: still not answered when the service stopped",
        message_id=message_id,
        url=url,
    )


def _log_abandoned(message_id: str, url: str) -> None:
    log.warn(
        "Abandoned delivery report {message_id} to {url}: "
        "still not answered when the service stopped",
        message_id=message_id,
        url=url,
    )
