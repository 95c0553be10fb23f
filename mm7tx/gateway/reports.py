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

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

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
from mm7tx.mm7 import messages as m
from mm7tx.mm7.status import StatusCode
from mm7tx.transaction import Transaction

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.reports")


class DeliveryReporter:
    """Posts delivery reports with retries; one Deferred per report."""

    def __init__(
        self,
        reactor: IReactorTime,
        attempts: int = 8,
        first_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 30.0,
        metrics: Metrics | None = None,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
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

    def report(
        self, account: Account, request: m.DeliveryReportReq, namespace: str
    ) -> defer.Deferred[bool]:
        """Post ``request`` to the account's URL; fires True once answered 1000.

        Once :meth:`stop` was called (a transaction that outlived the drain)
        nothing is posted: the report is logged as abandoned."""
        url = _without_credentials(account.delivery_report_url or "")
        if self._closing:
            _log_abandoned(request.message_id or "-", url)
            self._count("abandoned")
            return defer.succeed(False)
        d = defer.ensureDeferred(self._post(account, request, namespace))
        d.addBoth(self._counted)
        # Nobody waits on this Deferred: a failure must be logged here.
        d.addErrback(_unexpected, request.message_id or "-", url)
        if d.called:
            return d
        self.pending[d] = (request.message_id or "-", url)

        def done(result: Any) -> Any:
            self.pending.pop(d, None)
            return result

        return d.addBoth(done)

    def _counted(self, result: Any) -> Any:
        if isinstance(result, Failure):
            self._count("abandoned" if result.check(defer.CancelledError) else "failed")
        else:
            self._count("accepted" if result else "failed")
        return result

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_report(outcome)

    def stop(self, timeout: float) -> defer.Deferred[None]:
        """Let the reports being posted finish within ``timeout`` seconds;
        cancel the rest (their retries too), logging each as abandoned, as
        any report asked for from now on."""
        self._closing = True
        if not self.pending:
            return defer.succeed(None)
        finished = defer.DeferredList(list(self.pending), consumeErrors=True)
        timer = self.reactor.callLater(timeout, self._abandon)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()

        return finished.addCallback(done)

    def _abandon(self) -> None:
        # Cancelling ends the attempt and its retries: the CancelledError
        # goes through the retry loop, which catches only MM7 client errors.
        for d, (message_id, url) in list(self.pending.items()):
            _log_abandoned(message_id, url)
            d.cancel()

    async def _post(
        self, account: Account, request: m.DeliveryReportReq, namespace: str
    ) -> bool:
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
        delay = self.first_delay
        try:
            for attempt in range(1, self.attempts + 1):
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
                if attempt < self.attempts:
                    log.info(
                        "Delivery report {message_id} for {vasp}: {error}; "
                        "retrying in {delay:g} s",
                        message_id=request.message_id,
                        vasp=account.name,
                        error=problem,
                        delay=delay,
                    )
                    await task.deferLater(self.reactor, delay)
                    delay = min(delay * 2, self.max_delay)
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


def _log_abandoned(message_id: str, url: str) -> None:
    log.warn(
        "Abandoned delivery report {message_id} to {url}: "
        "still not answered when the service stopped",
        message_id=message_id,
        url=url,
    )


# Logged as it was from the processor: the namespace is in every log event.
_submit_log = Logger(namespace="mm7tx.processors")


def report_submit(
    reporter: DeliveryReporter,
    request: m.SubmitReq,
    transaction: Transaction,
    message_id: str,
    forwarded: Callable[[m.Address], bool],
) -> None:
    """Post one DeliveryReportReq per recipient of an accepted SubmitReq, if
    it asked for reports and the account has a URL for them: ``Forwarded``
    for a recipient ``forwarded`` says the relay took, else ``Rejected``.
    None when the SubmitRsp could not reach the VASP: it never learnt the
    MessageID."""
    account = transaction.account
    if not (
        request.delivery_report and account is not None and account.delivery_report_url
    ):
        return
    if transaction.answer_lost():
        _submit_log.info(
            "No delivery report for {message_id} to {vasp}: its SubmitRsp "
            "could not be sent, the connection was gone",
            message_id=message_id,
            vasp=account.name,
        )
        return
    for recipient in request.recipients.all:
        taken = forwarded(recipient)
        reporter.report(
            account,
            m.DeliveryReportReq(
                # The client makes it fit the namespace.
                mm7_version=transaction.mm7_version,
                message_id=message_id,
                recipient=recipient,
                sender=request.sender_address,
                date=datetime.now(UTC).isoformat(timespec="seconds"),
                mm_status="Forwarded" if taken else "Rejected",
                status_text="Accepted by the mail relay"
                if taken
                else "Refused by the mail relay",
            ),
            transaction.namespace,
        )
