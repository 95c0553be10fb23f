"""The ESMTP sessions of :class:`~mm7tx.smtp.esmtp.ESMTPSender`'s pool, on
Twisted's ``ESMTPClient``: a session set up as the settings say, the check
that the relay answers, and the persistent session that sends the pool's
messages one after another (pipelined, RFC 2920, when the relay offers it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from mm7tx.interfaces import SendResult
from mm7tx.mail.wire import CONTROLS
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.smtp.envelope import EnvelopePath, mail_command, path
from mm7tx.smtp.settings import SMTPSettings
from mm7tx.smtp.stuffing import ONE_WRITE, Chunks, Pieces

# Named as before the split: the namespace is in every log event.
log = Logger(namespace="mm7tx.esmtp")


class Pool(Protocol):
    """What a session needs of its pool (:class:`~mm7tx.smtp.esmtp.ESMTPSender`):
    its reactor and settings, and where to take messages from and report
    its own state to."""

    reactor: IReactorTime
    settings: SMTPSettings
    context: Any
    probes: set[Probe]

    def next_job(self, client: SMTPClient | None = None) -> Job | None: ...

    def parked(self, client: SMTPClient) -> None: ...

    def requeue(self, job: Job) -> None: ...

    def fail_oldest(self, reason: MM7Error) -> None: ...

    def forget(self, job: Job) -> None: ...

    def gone(self, client: SMTPClient) -> None: ...


def classify(code: int, numOk: int, addresses: list[Any]) -> MM7Error:
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


def reply(code: int, resp: bytes) -> str:
    """The relay's reply to DATA as one log-safe line (``250 2.0.0 Ok:
    queued as 4F3A2B``), cut to :data:`MAX_REPLY` characters."""
    return CONTROLS.sub(" ", f"{code} {_s(resp)}").strip()[:MAX_REPLY]


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class Job:
    """One message: owns the Deferred the caller gets, whatever connection
    ends up carrying it."""

    def __init__(
        self,
        pool: Pool,
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
        self.client: SMTPClient | None = None
        self.answered = False  # the relay has replied to our MAIL FROM
        self.retried = False
        self.result: defer.Deferred[SendResult] = defer.Deferred(self._cancel)
        self.result.addTimeout(total_timeout, pool.reactor)

    def _cancel(self, _: defer.Deferred[SendResult]) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.abortConnection()  # type: ignore[attr-defined]
        self.pool.forget(self)

    def succeed(self, result: SendResult) -> None:
        if not self.result.called:
            self.result.callback(result)

    def fail(self, reason: Exception) -> None:
        if not self.result.called:
            self.result.errback(Failure(reason))


class ReplyRouting(smtp.ESMTPClient):
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


class Session(ReplyRouting):
    """An ESMTP session set up as the pool's settings say: EHLO name,
    STARTTLS, AUTH, timeouts on the pool's reactor."""

    def __init__(self, pool: Pool) -> None:
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


class Probe(Session):
    """A check that the relay answers: greeting, EHLO (STARTTLS and AUTH as
    configured), then QUIT, with no message; ``answered`` fires once the
    session is ready, or fails with why not."""

    def __init__(self, pool: Pool, answered: defer.Deferred[None]) -> None:
        super().__init__(pool)
        self.answered = answered

    def connectionMade(self) -> None:
        self.pool.probes.add(self)
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
        self.pool.probes.discard(self)
        if not self.answered.called:
            self.answered.errback(
                Failure(ConnectionError("the relay closed the connection"))
            )


class SMTPClient(Session):
    """A persistent ESMTP session on Twisted's client state machine: it sends
    the pool's queued messages one after another, RSET between, and waits
    idle for more."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self.job: Job | None = None
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
        job = self.pool.next_job(self)
        if job is None:
            self._park()
            return
        self.start(job)

    def start(self, job: Job) -> None:
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
                self._mail_from(job.sender, mail_command(job.sender, job.utf8))
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

    def _send_pipelined(self, job: Job) -> None:
        commands = [mail_command(job.sender, job.utf8)]
        commands += [b"RCPT TO:" + path(r) for r in job.recipients]
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
        if sum(map(len, wire)) <= ONE_WRITE or self.transport is None:
            self._write(b"".join(wire))
            return
        # A big message goes as Twisted's client sends one: in chunks as the
        # connection takes them, each restarting the command timeout, so that
        # a slow link is not taken for a relay that stopped answering.
        sending = Chunks().beginFileTransfer(
            Pieces(wire), self.transport, self.transformChunk
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
        self.pool.parked(self)

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

    def getMailTo(self) -> list[EnvelopePath]:
        # Twisted's client quotes them with quoteaddr, which takes an
        # Address as it is (it would decode bytes as ASCII).
        return (
            [EnvelopePath(r) for r in self.job.recipients]
            if self.job is not None
            else []
        )

    def getMailData(self) -> Pieces:  # type: ignore[override]
        # The whole message made SMTP data at once (Twisted's client sends
        # the final dot).  Twisted's own transformChunk works chunk by chunk:
        # a line "." starting a chunk would go undoubled, end the message
        # early and turn the rest of a text into SMTP commands.
        return Pieces(self.job.data if self.job is not None else [])

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
            job.succeed(SendResult(accepted, refused, reply(code, resp)))
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
            job.fail(classify(code, numOk, addresses))

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
        self.pool.gone(self)

    def _lose_job(self, reason: MM7Error) -> None:
        if not self.ready:
            # The session failed before it could carry anything (greeting,
            # STARTTLS, AUTH): the message that has waited longest gets the
            # error, as when the relay is unreachable.
            self.ready = True
            self.pool.fail_oldest(reason)
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
            self.pool.requeue(job)
            return
        job.fail(reason)
