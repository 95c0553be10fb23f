"""The pooled, non-blocking ESMTP sender.

:class:`ESMTPSender` provides :class:`mm7tx.interfaces.IMailSender` over a
pool of persistent sessions on Twisted's ``ESMTPClient``: one Deferred per
message, firing only once the relay said 250 to DATA, failing with
:class:`MM7Error` otherwise.  With a relay that offers PIPELINING (RFC 2920)
a message takes two round trips instead of five.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, error, ssl
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from mm7tx.interfaces import IMailSender, SendResult
from mm7tx.mail.wire import CONTROLS, mail_size, write_wire
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.offload import OFFLOAD_SIZE, Offload
from mm7tx.smtp.settings import SMTPSettings

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.esmtp")


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


def _classify(code: int, numOk: int, addresses: list[Any]) -> MM7Error:
    """The MM7 status for an SMTP reply that refused the message."""
    if 400 <= code < 500 or code < 0:
        return MM7Error(
            StatusCode.SERVICE_UNAVAILABLE, details=f"the mail relay answered {code}"
        )
    if numOk == 0 and addresses:
        return MM7Error(
            StatusCode.ADDRESS_ERROR,
            details="the mail relay refused every recipient: "
            + "; ".join(f"{_s(a)} {c}" for a, c, _ in addresses),
        )
    return MM7Error(
        StatusCode.MESSAGE_REJECTED,
        details=f"the mail relay refused the message ({code})",
    )


# The longest relay reply kept for the log: a queue id fits many times over.
MAX_REPLY = 200


def _reply(code: int, resp: bytes) -> str:
    """The relay's reply to DATA as one log-safe line (``250 2.0.0 Ok:
    queued as 4F3A2B``), cut to :data:`MAX_REPLY` characters."""
    return CONTROLS.sub(" ", f"{code} {_s(resp)}").strip()[:MAX_REPLY]


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _Job:
    """One message: owns the Deferred the caller gets, whatever connection
    ends up carrying it."""

    def __init__(
        self,
        pool: ESMTPSender,
        sender: bytes,
        recipients: list[bytes],
        data: list[bytes],
        total_timeout: float,
        utf8: bool = False,
    ) -> None:
        self.pool = pool
        self.sender = sender
        self.recipients = recipients
        self.data = data  # the SMTP data without its final dot, in pieces
        self.utf8 = utf8  # an address is not ASCII: it needs SMTPUTF8
        self.client: _SMTPClient | None = None
        self.answered = False  # the relay has replied to our MAIL FROM
        self.retried = False
        self.result: defer.Deferred[SendResult] = defer.Deferred(self._cancel)
        self.result.addTimeout(total_timeout, pool.reactor)

    def _cancel(self, _: defer.Deferred[SendResult]) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.abortConnection()  # type: ignore[attr-defined]
        self.pool._forget(self)

    def succeed(self, result: SendResult) -> None:
        if not self.result.called:
            self.result.callback(result)

    def fail(self, reason: Exception) -> None:
        if not self.result.called:
            self.result.errback(Failure(reason))


class _ReplyRouting(smtp.ESMTPClient):
    """The one place mm7tx touches Twisted's SMTP client state.

    ``SMTPClient`` is a state machine over two private attributes: each reply
    whose code is in ``_expected`` goes to ``_okresponse``, any other to
    ``_failresponse``.  It has no public way to send several commands before
    their replies (RFC 2920 PIPELINING), so the pipelined path routes every
    reply to its own handler, which counts them and judges their codes.
    Twisted's own ``smtpState_*`` methods set both attributes the same way.
    """

    # Every three-digit reply: the handler, not Twisted, judges the codes.
    _ANY_REPLY: Any = range(1000)

    def _route_replies(self, handler: Callable[[int, bytes], Any]) -> None:
        self._expected = self._ANY_REPLY
        self._okresponse = handler

    def _mail_from(self, sender: bytes, command: bytes) -> None:
        """Start a transaction as Twisted's ``smtpState_from`` does, but with
        our own MAIL FROM ``command``: Twisted's sends no ESMTP parameter
        (SMTPUTF8), and its ``quoteaddr`` takes ASCII only."""
        self._from = sender
        self._failresponse = self.smtpTransferFailed
        self._expected = [250]
        self._okresponse = self.smtpState_to
        self.sendLine(command)

    def quit(self) -> None:
        """QUIT, and close once the relay answers (as Twisted's private
        ``_disconnectFromServer`` does), within the command timeout."""
        self.setTimeout(self.timeout)
        self._route_replies(self.smtpState_disconnect)
        self.sendLine(b"QUIT")


class _Session(_ReplyRouting):
    """An ESMTP session set up as the pool's settings say: EHLO name,
    STARTTLS, AUTH, timeouts on the pool's reactor."""

    def __init__(self, pool: ESMTPSender) -> None:
        settings = pool.settings
        secret = settings.password.encode() if settings.password else None
        identity = (settings.helo or "localhost").encode()
        super().__init__(secret, pool.context, identity)
        self.pool = pool
        # TimeoutMixin's clock: the pool's reactor, never the global one.
        self.callLater = pool.reactor.callLater  # type: ignore[method-assign, assignment]
        # No transcript: it would hold the AUTH exchange, and costs time.
        self.debug = False
        self.heloFallback = True
        self.requireAuthentication = bool(settings.username)
        self.requireTransportSecurity = settings.starttls == "required"
        self.timeout = settings.command_timeout  # type: ignore[assignment]
        if settings.username:
            user = settings.username.encode()
            self.registerAuthenticator(smtp.CramMD5ClientAuthenticator(user))
            self.registerAuthenticator(smtp.LOGINAuthenticator(user))
            self.registerAuthenticator(smtp.PLAINAuthenticator(user))


class _Probe(_Session):
    """A check that the relay answers: greeting, EHLO (STARTTLS and AUTH as
    configured), then QUIT, with no message; ``answered`` fires once the
    session is ready, or fails with why not."""

    def __init__(self, pool: ESMTPSender, answered: defer.Deferred[None]) -> None:
        super().__init__(pool)
        self.answered = answered

    def connectionMade(self) -> None:
        self.pool._probes.add(self)
        super().connectionMade()

    def smtpState_from(self, code: int, resp: bytes) -> None:
        if not self.answered.called:
            self.answered.callback(None)
        self.quit()

    def sendError(self, exc: Exception) -> None:
        if not self.answered.called:
            code = getattr(exc, "code", -1)
            self.answered.errback(
                Failure(ConnectionError(f"{code} {_s(getattr(exc, 'resp', exc))}"))
            )
        super().sendError(exc)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self.pool._probes.discard(self)
        if not self.answered.called:
            self.answered.errback(
                Failure(ConnectionError("the relay closed the connection"))
            )


class _SMTPClient(_Session):
    """A persistent ESMTP session on Twisted's client state machine: it sends
    the pool's queued messages one after another, RSET between, and waits
    idle for more."""

    def __init__(self, pool: ESMTPSender) -> None:
        super().__init__(pool)
        self.job: _Job | None = None
        self.sent = 0
        self.idle = False
        self.ready = False  # greeted, EHLO, STARTTLS and AUTH done
        self.pipelining = False  # the relay offers PIPELINING (RFC 2920)
        self.smtputf8 = False  # the relay offers SMTPUTF8 (RFC 6531)
        self._idle_call: Any = None
        self._replies: list[tuple[int, bytes]] = []

    def connectionMade(self) -> None:
        # Commands go one at a time, each awaiting its reply: without
        # TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to every message.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        super().connectionMade()

    def tryTLS(self, code: int, resp: bytes, items: dict[bytes, Any]) -> None:
        # Called with the extensions of each EHLO answer (again after STARTTLS).
        offered = {key.upper() for key in items}
        self.pipelining = b"PIPELINING" in offered
        self.smtputf8 = b"SMTPUTF8" in offered
        super().tryTLS(code, resp, items)

    # Taking messages from the pool.

    def smtpState_from(self, code: int, resp: bytes) -> None:
        self.ready = True
        job = self.pool._next_job(self)
        if job is None:
            self._park()
            return
        self.start(job)

    def start(self, job: _Job) -> None:
        """Send ``job`` on this (ready) connection."""
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self.idle = False
        self.job = job
        job.client = self
        self.setTimeout(self.timeout)
        try:
            if self.pipelining:
                self._send_pipelined(job)
            else:
                self._mail_from(job.sender, _mail_command(job))
        except Exception:
            self._broken(Failure())

    def lineReceived(self, line: bytes) -> Any:
        try:
            return super().lineReceived(line)
        except Exception:
            self._broken(Failure())
            return None

    def _broken(self, reason: Failure) -> None:
        """Our own code raised while this session held a message (a bug, or
        a case not foreseen): that message fails, and the session, in a
        state no one can vouch for, is closed at once, so that nothing else
        waits on it."""
        log.failure("SMTP session failed", reason)
        job, self.job = self.job, None
        self.idle = False
        if job is not None:
            job.fail(
                MM7Error(
                    StatusCode.GENERAL_SERVICE_ERROR,
                    details="internal error while sending the mail",
                )
            )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # RFC 2920 PIPELINING: MAIL FROM, every RCPT TO and DATA go in one write,
    # the message and its final dot in another, and a session goes straight
    # on to the next message: two round trips per message instead of five
    # (Twisted's client sends each command on its own, then RSET).

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _send_pipelined(self, job: _Job) -> None:
        commands = [_mail_command(job)]
        commands += [b"RCPT TO:" + _path(r) for r in job.recipients]
        commands.append(b"DATA")
        self._replies = []
        self._route_replies(self._pipelined_reply)
        self._write(b"\r\n".join(commands) + b"\r\n")

    def _pipelined_reply(self, code: int, resp: bytes) -> None:
        job = self.job
        if job is None:
            return
        job.answered = True
        self._replies.append((code, resp))
        if len(self._replies) < len(job.recipients) + 2:
            return
        (mail, mail_resp), *rcpts, (data, data_resp) = self._replies
        addresses = [(r, c, t) for r, (c, t) in zip(job.recipients, rcpts, strict=True)]
        accepted = sum(1 for _, c, _ in addresses if c in smtp.SUCCESS)
        if data == 354 and mail in smtp.SUCCESS and accepted:
            self._route_replies(
                lambda code, resp: self._pipelined_sent(code, resp, accepted, addresses)
            )
            wire, job.data = [*job.data, b".\r\n"], []  # no resend from here on
            self._send_data(wire)
            return
        if data == 354:
            # A relay that took DATA with no one to deliver to: end it empty.
            self._route_replies(
                lambda code, resp: self._pipelined_refused(
                    mail, mail_resp, accepted, addresses, data, data_resp
                )
            )
            self._write(b".\r\n")
            return
        self._pipelined_refused(mail, mail_resp, accepted, addresses, data, data_resp)

    def _send_data(self, wire: list[bytes]) -> None:
        if sum(map(len, wire)) <= _ONE_WRITE or self.transport is None:
            self._write(b"".join(wire))
            return
        # A big message goes as Twisted's client sends one: in chunks as the
        # connection takes them, each restarting the command timeout, so that
        # a slow link is not taken for a relay that stopped answering.
        sending = _Chunks().beginFileTransfer(
            _Pieces(wire), self.transport, self.transformChunk
        )
        sending.addErrback(lambda _: None)  # a lost connection fails the job

    def _pipelined_sent(
        self, code: int, resp: bytes, accepted: int, addresses: list[Any]
    ) -> None:
        self.sentMail(code, resp, accepted, addresses, None)
        self.smtpState_from(code, resp)  # the transaction is over: the next one

    def _pipelined_refused(
        self,
        mail: int,
        mail_resp: bytes,
        accepted: int,
        addresses: list[Any],
        data: int,
        data_resp: bytes,
    ) -> None:
        """The transaction failed before the message was sent: report the
        reply that decided it (as Twisted's client would), then RSET."""
        if mail not in smtp.SUCCESS:
            self.sentMail(mail, mail_resp, 0, [], None)
        elif not accepted:
            codes = [c for _, c, _ in addresses]
            transient = [c for c in codes if 400 <= c < 500]
            self.sentMail(
                (transient or codes)[-1], b"No recipients accepted", 0, addresses, None
            )
        else:
            self.sentMail(
                data if data != 354 else 554, data_resp, accepted, addresses, None
            )
        self._route_replies(self.smtpState_from)
        self.sendLine(b"RSET")

    def _park(self) -> None:
        self.idle = True
        self.setTimeout(None)
        # A reply now answers nothing we sent: a relay closing an idle
        # session says 421 first.  Left to the last transaction's handler,
        # it would park this session a second time, and the next message
        # would go to it once it is dead.
        self._route_replies(self._idle_reply)
        self._idle_call = self.pool.reactor.callLater(
            self.pool.settings.idle_timeout, self.quit
        )
        self.pool._parked(self)

    def _idle_reply(self, code: int, resp: bytes) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def quit(self) -> None:
        # Out of the pool before the QUIT goes: no message may start on a
        # session that is closing (the relay's 221 would answer its MAIL).
        self.idle = False
        super().quit()

    def getMailFrom(self) -> bytes | None:
        return self.job.sender if self.job is not None else None

    def smtpState_to(self, code: int, resp: bytes) -> Any:
        if self.job is not None:
            self.job.answered = True
        return super().smtpState_to(code, resp)

    def smtpTransferFailed(self, code: int, resp: bytes) -> None:
        if self.job is not None:
            self.job.answered = True
        super().smtpTransferFailed(code, resp)

    def getMailTo(self) -> list[_Path]:
        # Twisted's client quotes them with quoteaddr, which takes an
        # Address as it is (it would decode bytes as ASCII).
        return [_Path(r) for r in self.job.recipients] if self.job is not None else []

    def getMailData(self) -> _Pieces:  # type: ignore[override]
        # The whole message made SMTP data at once (Twisted's client sends
        # the final dot).  Twisted's own transformChunk works chunk by chunk:
        # a line "." starting a chunk would go undoubled, end the message
        # early and turn the rest of a text into SMTP commands.
        return _Pieces(self.job.data if self.job is not None else [])

    def transformChunk(self, chunk: bytes) -> bytes:
        self.resetTimeout()  # progress: the relay is not silent, just slow
        return chunk

    def sentMail(
        self, code: int, resp: bytes, numOk: int, addresses: list[Any], log: Any
    ) -> None:
        job, self.job = self.job, None
        self.sent += 1
        if job is None:
            return
        accepted = tuple(_s(a) for a, c, _ in addresses if c in smtp.SUCCESS)
        if code in smtp.SUCCESS and accepted:
            refused = tuple(
                (_s(a), int(c), _s(r)) for a, c, r in addresses if c not in smtp.SUCCESS
            )
            job.succeed(SendResult(accepted, refused, _reply(code, resp)))
        elif code in smtp.SUCCESS:
            # A 2xx that is not the relay taking the message for a recipient
            # (its 221 to a QUIT crossing our MAIL FROM): never a success.
            job.fail(
                MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details=f"the mail relay answered {code} with no recipient taken",
                )
            )
        else:
            job.fail(_classify(code, numOk, addresses))

    # Failures.

    def sendError(self, exc: Exception) -> None:
        code = getattr(exc, "code", -1)
        if isinstance(exc, smtp.SMTPTimeoutError):
            detail = "the mail relay timed out"
        elif isinstance(exc, smtp.TLSRequiredError):
            detail = "the mail relay does not offer STARTTLS, which is required"
        elif isinstance(exc, smtp.AUTHRequiredError):
            detail = "the mail relay does not offer AUTH, which is required"
        else:
            detail = f"the mail relay failed: {code} {_s(getattr(exc, 'resp', exc))}"
        # Connection, TLS and AUTH problems are the operator's to fix and the
        # sender's to retry: never a permanent status.
        self._lose_job(MM7Error(StatusCode.SERVICE_UNAVAILABLE, details=detail))
        super().sendError(exc)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._lose_job(
            MM7Error(
                StatusCode.SERVICE_UNAVAILABLE,
                details="the mail relay closed the connection",
            )
        )
        self.pool._gone(self)

    def _lose_job(self, reason: MM7Error) -> None:
        if not self.ready:
            # The session failed before it could carry anything (greeting,
            # STARTTLS, AUTH): the message that has waited longest gets the
            # error, as when the relay is unreachable.
            self.ready = True
            self.pool._fail_oldest(reason)
            return
        job, self.job = self.job, None
        if job is None or job.result.called:
            return
        if self.sent and not job.answered and not job.retried:
            # A reused connection that died before the relay answered our
            # MAIL FROM (it had timed us out): nothing was accepted, so the
            # message can go again on a fresh connection.
            job.retried = True
            job.client = None
            self.pool._requeue(job)
            return
        job.fail(reason)


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
        self._probes: set[_Probe] = set()
        self.endpoint = endpoint or clientFromString(reactor, settings.endpoint)
        self.context = _tls_options(settings)
        self.description = f"SMTP relay {settings.endpoint}"
        self._queue: deque[_Job] = deque()
        self._idle: list[_SMTPClient] = []
        self._open: set[_SMTPClient] = set()
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
            envelope = [_envelope_address(sender, "sender", empty=True)]
            envelope += [_envelope_address(r, "recipient") for r in recipients]
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
        job = _Job(
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
        probes: list[_Probe] = []

        def cancel(_: defer.Deferred[None]) -> None:
            connecting.cancel()
            for probe in probes:
                if probe.transport is not None:
                    probe.transport.abortConnection()  # type: ignore[attr-defined]

        answered: defer.Deferred[None] = defer.Deferred(cancel)

        def build() -> _Probe:
            probe = _Probe(self, answered)
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
        for probe in list(self._probes):
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
        # _gone all the same, once their connections are lost (an aborted
        # connection always reports it), so never while one is still open.
        if self._cutting is None or not self._cutting.active():
            self._cutting = self.reactor.callLater(timeout, self._cut)
        return closed

    def _cut(self) -> None:
        for client in list(self._open):
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]

    # The pool.

    def _dispatch(self) -> None:
        if self._closed:
            return
        while self._queue and self._idle:
            client = self._idle.pop()
            if client.transport is None or not client.idle:
                continue
            job = self._next_job(client)
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
        factory: Any = Factory.forProtocol(lambda: _SMTPClient(self))  # type: ignore[arg-type, type-var]
        factory.noisy = False  # no "Starting factory" line for every connection
        connecting = self.endpoint.connect(factory)
        connecting.addTimeout(self.settings.connect_timeout, self.reactor)
        self._attempts.add(connecting)

        def connected(client: _SMTPClient) -> None:
            self._attempts.discard(connecting)
            self._connecting -= 1
            self._open.add(client)

        def unreachable(reason: Failure) -> None:
            self._attempts.discard(connecting)
            self._connecting -= 1
            if self._closed:
                return
            self._fail_oldest(
                MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details="the mail relay is unreachable: "
                    + reason.getErrorMessage(),
                )
            )
            self._dispatch()

        connecting.addCallbacks(connected, unreachable)

    def _fail_oldest(self, reason: MM7Error) -> None:
        """A session could not be had: the message that has waited longest
        fails with ``reason`` (so while the relay is down or refusing, each
        message gets its own quick 4006 rather than waiting for its timeout)."""
        job = self._next_job()
        if job is not None:
            job.fail(reason)

    def _next_job(self, client: _SMTPClient | None = None) -> _Job | None:
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

    def _parked(self, client: _SMTPClient) -> None:
        self._idle.append(client)
        self._dispatch()

    def _requeue(self, job: _Job) -> None:
        if self._closed:
            # Its session was cut by close(): nothing will take it any more.
            job.fail(_stopping())
            return
        self._queue.appendleft(job)
        self._dispatch_soon()

    def _dispatch_soon(self) -> None:
        if self._dispatch_call is None or not self._dispatch_call.active():
            self._dispatch_call = self.reactor.callLater(0, self._dispatch)

    def _forget(self, job: _Job) -> None:
        if job in self._queue:
            self._queue.remove(job)

    def _gone(self, client: _SMTPClient) -> None:
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


# A message up to this size (as SMTP data) goes to the transport in one write;
# a bigger one in chunks of this size.
_ONE_WRITE = 256 * 1024


class _Chunks(FileSender):
    CHUNK_SIZE = _ONE_WRITE


# Past this many dots, _stuffed stops looking for one that starts a line
# and doubles every "\r\n." in one call.
_DOTS_LOOKED_AT = 64


def _dot_starts_a_line(data: bytes) -> bool:
    """Whether a dot follows a line feed in ``data``, or may (past
    :data:`_DOTS_LOOKED_AT` dots).  The dots are found with ``find`` (a
    ``memchr``): a mail has a few, in its headers, and none in its base64
    parts, so this is much faster than a search for a two-byte pattern
    that stops at every line end (``replace(b"\r\n.", ...)`` was 3/4 of
    ``_stuffed``'s time for a 30 KB image)."""
    at = data.find(b".")
    for _ in range(_DOTS_LOOKED_AT):
        if at < 0:
            return False
        if at > 0 and data[at - 1] == 10:
            return True
        at = data.find(b".", at + 1)
    return at >= 0


def _stuffed(data: bytes) -> bytes:
    """A message with LF line ends as SMTP DATA without the final dot: CRLF
    line ends and leading dots doubled (RFC 5321 4.5.2)."""
    return b"".join(_stuffed_pieces(data))


def _stuffed_pieces(data: bytes) -> list[bytes]:
    """:func:`_stuffed` in pieces of about a megabyte of whole lines: each
    piece over whole lines at once, never chunk by chunk (a dot starting a
    chunk would be missed), and no single call over a large message holds
    the interpreter for long (this may run in a thread, mm7tx.offload)."""
    if len(data) <= _PIECE:
        return [_stuffed_lines(data)]
    pieces = []
    at = 0
    while at < len(data):
        end = data.find(b"\n", at + _PIECE - 1) + 1 or len(data)
        pieces.append(_stuffed_lines(data[at:end]))
        at = end
    return pieces


# How much of a message _stuffed works on at a time.
_PIECE = 1024 * 1024


def _stuffed_lines(data: bytes) -> bytes:
    """:func:`_stuffed` for ``data`` starting at the start of a line."""
    wire = data.replace(b"\n", b"\r\n")
    if _dot_starts_a_line(data):
        wire = wire.replace(b"\r\n.", b"\r\n..")
    if wire.startswith(b"."):
        wire = b"." + wire
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return wire


def _smtp_pieces(message: EmailMessage) -> list[bytes]:
    """The message as SMTP DATA without the final dot, in pieces: made once,
    whatever the connection that carries it, as it is written (never whole
    with LF line ends first, nor joined: copies of tens of megabytes)."""
    out = _Stuffer()
    write_wire(message, out)
    return out.close()


class _Stuffer:
    """What the generator writes, made SMTP data as it comes: the whole
    lines written so far, once about a megabyte is pending, through
    :func:`_stuffed_pieces` (mail lines are at most 998 octets, so whole
    lines end soon after any write)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size >= _PIECE:
            self._stuff(final=False)

    def close(self) -> list[bytes]:
        """The pieces, the last line ended if it was not."""
        self._stuff(final=True)
        return self.pieces

    def _stuff(self, final: bool) -> None:
        data = b"".join(self._pending)
        end = len(data) if final else data.rfind(b"\n") + 1
        if end:
            self.pieces.extend(_stuffed_pieces(data[:end]))
        rest = data[end:]
        self._pending, self._size = ([rest] if rest else []), len(rest)


class _Pieces:
    """The pieces of a message read as a file, as ``FileSender`` reads one:
    no piece is copied but for the slices read."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self._index = 0
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        out = []
        want = size if size >= 0 else sum(map(len, self._pieces))
        while want > 0 and self._index < len(self._pieces):
            piece = self._pieces[self._index]
            taken = piece[self._offset : self._offset + want]
            out.append(taken)
            want -= len(taken)
            self._offset += len(taken)
            if self._offset >= len(piece):
                self._index, self._offset = self._index + 1, 0
        return b"".join(out)


# An address as it may go between < and > in MAIL FROM or RCPT TO: a local
# part and a domain, with no space, control character, angle bracket or
# second @ (RFC 5321 4.1.2, UTF-8 allowed as in RFC 6531).
_ENVELOPE_ADDRESS = re.compile(
    r"[^\s<>@\x00-\x1f\x7f-\x9f]+@[^\s<>@\x00-\x1f\x7f-\x9f]+"
)

# A display name and one address in angle brackets, and nothing after them.
_NAMED_ADDRESS = re.compile(r"[^<>]*<([^<>]*)>\s*")


def _envelope_address(address: str, what: str, empty: bool = False) -> bytes:
    """``address`` as it goes in the SMTP envelope (UTF-8), or a 2002 for one
    that cannot: checked before any session takes the message, so that no
    address can break a session or add a command to it."""
    if address == "" and empty:
        return b""  # the null reverse-path, <>
    named = _NAMED_ADDRESS.fullmatch(address)
    if named:  # "Name <a@b.example>", as a configured default may be
        address = named.group(1)
    if _ENVELOPE_ADDRESS.fullmatch(address):
        try:
            return address.encode("utf-8")
        except UnicodeEncodeError:
            pass
    raise MM7Error(
        StatusCode.ADDRESS_ERROR,
        details=f"the {what} {address[:80]!r} cannot go in an SMTP envelope",
    )


def _path(address: bytes) -> bytes:
    """An envelope address, checked, as an SMTP path."""
    return b"<" + address + b">"


def _mail_command(job: _Job) -> bytes:
    command = b"MAIL FROM:" + _path(job.sender)
    return command + b" SMTPUTF8" if job.utf8 else command


class _Path(smtp.Address):
    """An envelope address, checked, for Twisted's client: its ``quoteaddr``
    takes an ``Address`` as it is (and decodes bytes as ASCII)."""

    addrstr: bytes

    def __init__(self, address: bytes) -> None:
        self.addrstr = address
        self.local, _, self.domain = address.rpartition(b"@")

    def __bytes__(self) -> bytes:
        return self.addrstr

    def __str__(self) -> str:
        return self.addrstr.decode("utf-8")


def _stopping() -> MM7Error:
    return MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="the server is stopping")


def _timeouts_are_transient(reason: Failure) -> Failure:
    if reason.check(defer.TimeoutError, defer.CancelledError):
        return Failure(
            MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="the mail relay timed out")
        )
    return reason
