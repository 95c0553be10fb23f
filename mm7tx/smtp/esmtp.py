"""The pooled, non-blocking ESMTP sender.

:class:`ESMTPSender` provides :class:`mm7tx.interfaces.IMailSender` over a
pool of persistent sessions (:mod:`mm7tx.smtp.session`) on Twisted's
``ESMTPClient``: one Deferred per message, firing only once the relay said
250 to DATA, failing with :class:`MM7Error` otherwise.  With a relay that
offers PIPELINING (RFC 2920) a message takes two round trips instead of five.
"""

from __future__ import annotations

from collections import deque
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, ssl
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from mm7tx.interfaces import IMailSender, SendResult
from mm7tx.mail.wire import mail_size
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.offload import OFFLOAD_SIZE, Offload
from mm7tx.smtp.envelope import envelope_address
from mm7tx.smtp.session import MAX_REPLY as MAX_REPLY
from mm7tx.smtp.session import Job, Probe, SMTPClient
from mm7tx.smtp.settings import SMTPSettings
from mm7tx.smtp.stuffing import smtp_pieces

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics


def _tls_options(settings: SMTPSettings) -> Any:
    if settings.starttls == "off":
        return None
    trust = None
    if settings.ca_file:
        with open(settings.ca_file, "rb") as f:
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(f.read())])
    if settings.starttls == "required" or trust is not None:
        return ssl.optionsForClientTLS(settings.host, trustRoot=trust)
    # Opportunistic TLS (RFC 7435): encrypt when offered, as MTAs do, without
    # refusing a self-signed certificate, which most local relays have.
    return ssl.CertificateOptions(verify=False)


def _smtp_pieces(message: EmailMessage) -> list[bytes]:
    """A message made SMTP data (:func:`~mm7tx.smtp.stuffing.smtp_pieces`):
    what the pool runs, on the reactor thread or offloaded to a thread."""
    return smtp_pieces(message)


def _stopping() -> MM7Error:
    return MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="the server is stopping")


def _timeouts_are_transient(reason: Failure) -> Failure:
    if reason.check(defer.TimeoutError, defer.CancelledError):
        return Failure(
            MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="the mail relay timed out")
        )
    return reason


@implementer(IMailSender)
class ESMTPSender:
    """Sends messages to a relay over a pool of persistent ESMTP sessions.

    ``send`` never blocks: it returns a Deferred that fires with a
    :class:`SendResult` once the relay said 250 to DATA, and fails with an
    :class:`MM7Error`: 4006 for a relay that is down, slow or answers 4xx,
    2002 when every recipient got a 5xx, 3002 when the message did.  At most
    ``max_connections`` sessions are open; each sends one message after
    another (RSET between) and is closed after ``idle_timeout`` unused.
    :meth:`check` sees whether the relay answers without sending anything;
    :attr:`last_answer` is when it last did (a message taken, or a check).
    ``metrics``, if given, counts each message's outcome.  With an
    ``offload`` (:mod:`mm7tx.offload`), a message over ``OFFLOAD_SIZE`` is
    made SMTP data there, off the reactor thread.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        settings: SMTPSettings,
        endpoint: IStreamClientEndpoint | None = None,
        metrics: Metrics | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.metrics = metrics
        self.offload = offload
        self.last_answer: float | None = None
        self.probes: set[Probe] = set()
        self.endpoint = endpoint or clientFromString(reactor, settings.endpoint)
        self.context = _tls_options(settings)
        self.description = f"SMTP relay {settings.endpoint}"
        self._queue: deque[Job] = deque()
        self._idle: list[SMTPClient] = []
        self._open: set[SMTPClient] = set()
        self._connecting = 0
        self._attempts: set[defer.Deferred[Any]] = set()
        self._dispatch_call: IDelayedCall | None = None
        self._closed = False
        self._closing: list[defer.Deferred[None]] = []
        self._cutting: IDelayedCall | None = None

    @property
    def connections(self) -> int:
        """Sessions open or being opened."""
        return len(self._open) + self._connecting

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        if self._closed:
            return defer.fail(_stopping())
        if not recipients:
            return defer.fail(
                MM7Error(StatusCode.ADDRESS_ERROR, details="the mail has no recipient")
            )
        try:
            envelope = [envelope_address(sender, "sender", empty=True)]
            envelope += [envelope_address(r, "recipient") for r in recipients]
        except MM7Error as e:
            return defer.fail(e)
        utf8 = not all(a.isascii() for a in envelope)
        started = self.reactor.seconds()
        if self.offload is not None and mail_size(message) > OFFLOAD_SIZE:
            # Tens of megabytes: made SMTP data in a thread.
            made = self.offload(_smtp_pieces, message)
            return made.addCallbacks(
                self._enqueue,
                self._answered,
                callbackArgs=(envelope, utf8, started),
                errbackArgs=(started,),
            )
        return self._enqueue(_smtp_pieces(message), envelope, utf8, started)

    def _enqueue(
        self, data: list[bytes], envelope: list[bytes], utf8: bool, started: float
    ) -> defer.Deferred[SendResult]:
        if self._closed:  # closed while the data was made in a thread
            return defer.fail(_stopping()).addBoth(self._answered, started)
        job = Job(
            self,
            envelope[0],
            envelope[1:],
            data,
            self.settings.total_timeout,
            utf8=utf8,
        )
        self._queue.append(job)
        self._dispatch()
        result = job.result.addErrback(_timeouts_are_transient)
        return result.addBoth(self._answered, started)

    def _answered(
        self, result: SendResult | Failure, started: float
    ) -> SendResult | Failure:
        """Note the relay's final answer to a message (for the readiness
        check and the metrics); ``result`` goes on unchanged."""
        now = self.reactor.seconds()
        if isinstance(result, Failure):
            status = getattr(result.value, "status", None)
            # 2xxx/3xxx: refused for good; 4xxx: the relay could not take it now.
            permanent = status is not None and int(status.code) < 4000
            outcome = "refused" if permanent else "failed"
        else:
            self.last_answer = now
            outcome = "accepted"
        if self.metrics is not None:
            self.metrics.smtp_message(outcome, now - started)
        return result

    def check(self) -> defer.Deferred[None]:
        """Whether the relay answers: a session of its own that connects,
        says EHLO (STARTTLS and AUTH as configured) and QUITs, sending no
        message.  Fires once the session was ready (and sets
        :attr:`last_answer`); fails with why not, within ``smtp_timeout``."""
        probes: list[Probe] = []

        def cancel(_: defer.Deferred[None]) -> None:
            connecting.cancel()
            for probe in probes:
                if probe.transport is not None:
                    probe.transport.abortConnection()  # type: ignore[attr-defined]

        answered: defer.Deferred[None] = defer.Deferred(cancel)

        def build() -> Probe:
            probe = Probe(self, answered)
            probes.append(probe)
            return probe

        factory: Any = Factory.forProtocol(build)  # type: ignore[arg-type, type-var]
        factory.noisy = False
        connecting = self.endpoint.connect(factory)
        connecting.addTimeout(self.settings.connect_timeout, self.reactor)

        def unreachable(reason: Failure) -> None:
            if not answered.called:
                answered.errback(reason)

        connecting.addErrback(unreachable)
        answered.addTimeout(self.settings.total_timeout, self.reactor)

        def ready(result: None) -> None:
            self.last_answer = self.reactor.seconds()

        return answered.addCallback(ready)

    def close(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """Stop the pool; fires once every session is closed.

        Messages still queued fail with 4006 (their peers retry), idle
        sessions QUIT, connection attempts are cancelled, and a session
        still carrying a message (a drain that ran out of time) is cut: its
        message fails with 4006 too.  Sessions not closed within
        ``timeout`` are cut.
        """
        self._closed = True
        while self._queue:
            self._queue.popleft().fail(_stopping())
        if self._dispatch_call is not None and self._dispatch_call.active():
            self._dispatch_call.cancel()
        for attempt in list(self._attempts):
            attempt.cancel()
        for probe in list(self.probes):
            if probe.transport is not None:
                probe.transport.abortConnection()  # type: ignore[attr-defined]
        for client in list(self._open):
            if client.idle:
                client.quit()
            elif client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]
        if not self._open:
            return defer.succeed(None)
        closed: defer.Deferred[None] = defer.Deferred()
        self._closing.append(closed)
        # Those still open after ``timeout`` are cut; ``closed`` fires from
        # gone all the same, once their connections are lost (an aborted
        # connection always reports it), so never while one is still open.
        if self._cutting is None or not self._cutting.active():
            self._cutting = self.reactor.callLater(timeout, self._cut)
        return closed

    def _cut(self) -> None:
        for client in list(self._open):
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]

    # The pool.  What its sessions call is public, as mm7tx.smtp.session.Pool
    # names it: next_job, parked, requeue, fail_oldest, forget, gone.

    def _dispatch(self) -> None:
        if self._closed:
            return
        while self._queue and self._idle:
            client = self._idle.pop()
            if client.transport is None or not client.idle:
                continue
            job = self.next_job(client)
            if job is None:
                self._idle.append(client)
                break
            client.start(job)
        waiting = len(self._queue) - self._connecting
        while waiting > 0 and self.connections < self.settings.max_connections:
            self._connect()
            waiting -= 1

    def _connect(self) -> None:
        self._connecting += 1
        factory: Any = Factory.forProtocol(lambda: SMTPClient(self))  # type: ignore[arg-type, type-var]
        factory.noisy = False  # no "Starting factory" line for every connection
        connecting = self.endpoint.connect(factory)
        connecting.addTimeout(self.settings.connect_timeout, self.reactor)
        self._attempts.add(connecting)

        def connected(client: SMTPClient) -> None:
            self._attempts.discard(connecting)
            self._connecting -= 1
            self._open.add(client)

        def unreachable(reason: Failure) -> None:
            self._attempts.discard(connecting)
            self._connecting -= 1
            if self._closed:
                return
            self.fail_oldest(
                MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details="the mail relay is unreachable: "
                    + reason.getErrorMessage(),
                )
            )
            self._dispatch()

        connecting.addCallbacks(connected, unreachable)

    def fail_oldest(self, reason: MM7Error) -> None:
        """A session could not be had: the message that has waited longest
        fails with ``reason`` (so while the relay is down or refusing, each
        message gets its own quick 4006 rather than waiting for its timeout)."""
        job = self.next_job()
        if job is not None:
            job.fail(reason)

    def next_job(self, client: SMTPClient | None = None) -> Job | None:
        """The next message still waiting, that ``client`` can carry: one
        with a non-ASCII address needs a relay that offers SMTPUTF8, and
        fails for good (2002) before a session without it takes it."""
        while self._queue:
            job = self._queue.popleft()
            if job.result.called:
                continue
            if client is not None and job.utf8 and not client.smtputf8:
                job.fail(
                    MM7Error(
                        StatusCode.ADDRESS_ERROR,
                        details="an address is not ASCII, and the mail relay"
                        " does not offer SMTPUTF8",
                    )
                )
                continue
            return job
        return None

    def parked(self, client: SMTPClient) -> None:
        self._idle.append(client)
        self._dispatch()

    def requeue(self, job: Job) -> None:
        if self._closed:
            # Its session was cut by close(): nothing will take it any more.
            job.fail(_stopping())
            return
        self._queue.appendleft(job)
        self._dispatch_soon()

    def _dispatch_soon(self) -> None:
        if self._dispatch_call is None or not self._dispatch_call.active():
            self._dispatch_call = self.reactor.callLater(0, self._dispatch)

    def forget(self, job: Job) -> None:
        if job in self._queue:
            self._queue.remove(job)

    def gone(self, client: SMTPClient) -> None:
        self._open.discard(client)
        if client in self._idle:
            self._idle.remove(client)
        if self._queue:
            self._dispatch_soon()
        if self._closed and not self._open:
            if self._cutting is not None and self._cutting.active():
                self._cutting.cancel()
            closing, self._closing = self._closing, []
            for closed in closing:
                if not closed.called:
                    closed.callback(None)
