"""Mail senders: the non-blocking ESMTP sender and the Maildir sender.

Both provide :class:`mm7tx.interfaces.IMailSender`: one Deferred per message,
firing only once the message is durably accepted (250 after DATA, or renamed
into ``new/``), failing with :class:`MM7Error` otherwise.
"""

from __future__ import annotations

import mailbox
import os
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from io import BytesIO
from typing import Any, Literal

from twisted.internet import defer, error, ssl
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from zope.interface import implementer

from mm7tx.errors import MM7Error
from mm7tx.interfaces import IMailSender
from mm7tx.status import StatusCode

log = Logger()

# Twisted's SMTP client turns "\n" into CRLF and dot-stuffs; give it LF lines.
_WIRE_POLICY = policy.SMTP.clone(linesep="\n")
_FILE_POLICY = policy.default.clone(linesep="\n")

StartTLS = Literal["off", "opportunistic", "required"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the relay did with each recipient of an accepted message."""

    accepted: tuple[str, ...]
    refused: tuple[tuple[str, int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SMTPSettings:
    """How to reach the relay.  Timeouts are in seconds."""

    endpoint: str = "tcp:127.0.0.1:25"
    starttls: StartTLS = "opportunistic"
    ca_file: str | None = None
    tls_hostname: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    helo: str | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    total_timeout: float = 120.0
    max_connections: int = 20

    @property
    def host(self) -> str:
        """The relay's host name, from the endpoint string (for TLS checks)."""
        if self.tls_hostname:
            return self.tls_hostname
        parts = self.endpoint.split(":")
        for part in parts[1:]:
            if part.startswith("host="):
                return part[5:]
        return parts[1] if len(parts) > 1 and "=" not in parts[1] else "localhost"


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


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _Attempt:
    """One message on one connection: owns the Deferred the caller gets."""

    def __init__(self, reactor: IReactorTime, total_timeout: float) -> None:
        self.result: defer.Deferred[SendResult] = defer.Deferred(self._cancel)
        self.result.addTimeout(total_timeout, reactor)
        self.connecting: defer.Deferred[Any] | None = None
        self.protocol: _SMTPClient | None = None
        self._release: Any = None

    def hold(self, release: Any) -> None:
        """Keep a connection slot until the connection is gone."""
        self._release = release

    def free(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def _cancel(self, _: defer.Deferred[SendResult]) -> None:
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
            if self.protocol is None:
                self.free()
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()  # type: ignore[attr-defined]

    def succeed(self, result: SendResult) -> None:
        if not self.result.called:
            self.result.callback(result)

    def fail(self, reason: Exception) -> None:
        if not self.result.called:
            self.result.errback(Failure(reason))


class _SMTPClient(smtp.ESMTPClient):
    """Twisted's ESMTP client state machine, for exactly one message."""

    def __init__(
        self,
        attempt: _Attempt,
        settings: SMTPSettings,
        context: Any,
        sender: bytes,
        recipients: list[bytes],
        data: bytes,
    ) -> None:
        secret = settings.password.encode() if settings.password else None
        identity = (settings.helo or "localhost").encode()
        super().__init__(secret, context, identity)
        self.attempt = attempt
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
        self._sender = sender
        self._recipients = recipients
        self._data = data
        self._done = False

    def getMailFrom(self) -> bytes | None:
        if self._done:
            return None
        self._done = True
        return self._sender

    def getMailTo(self) -> list[bytes]:
        return self._recipients

    def getMailData(self) -> BytesIO:
        return BytesIO(self._data)

    def sentMail(
        self, code: int, resp: bytes, numOk: int, addresses: list[Any], log: Any
    ) -> None:
        if code in smtp.SUCCESS:
            accepted = tuple(_s(a) for a, c, _ in addresses if c in smtp.SUCCESS)
            refused = tuple(
                (_s(a), int(c), _s(r)) for a, c, r in addresses if c not in smtp.SUCCESS
            )
            self.attempt.succeed(SendResult(accepted, refused))
        else:
            self.attempt.fail(_classify(code, numOk, addresses))

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
        self.attempt.fail(MM7Error(StatusCode.SERVICE_UNAVAILABLE, details=detail))
        super().sendError(exc)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self.attempt.free()
        self.attempt.fail(
            MM7Error(
                StatusCode.SERVICE_UNAVAILABLE,
                details="the mail relay closed the connection",
            )
        )


@implementer(IMailSender)
class ESMTPSender:
    """Sends each message over its own ESMTP connection to a relay.

    ``send`` never blocks: it returns a Deferred that fires with a
    :class:`SendResult` once the relay said 250 to DATA, and fails with an
    :class:`MM7Error`: 4006 for a relay that is down, slow or answers 4xx,
    2002 when every recipient got a 5xx, 3002 when the message did.
    """

    def __init__(
        self,
        reactor: Any,
        settings: SMTPSettings,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._endpoint = endpoint or clientFromString(reactor, settings.endpoint)
        self._context = _tls_options(settings)
        self._slots = defer.DeferredSemaphore(settings.max_connections)
        self.description = f"SMTP relay {settings.endpoint}"

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        data = message.as_bytes(policy=_WIRE_POLICY)
        attempt = _Attempt(self._reactor, self._settings.total_timeout)
        rcpts = [r.encode("utf-8") for r in recipients]
        # At most max_connections open at once (a slot is held until the
        # connection is gone); the wait counts in the total timeout.
        waiting = self._slots.acquire()
        attempt.connecting = waiting

        def start(_: object) -> None:
            attempt.hold(self._slots.release)
            self._connect(attempt, sender, rcpts, data)

        waiting.addCallbacks(start, lambda _: None)
        return attempt.result.addErrback(_timeouts_are_transient)

    def _connect(
        self, attempt: _Attempt, sender: str, rcpts: list[bytes], data: bytes
    ) -> None:

        def build() -> IProtocol:
            protocol = _SMTPClient(
                attempt,
                self._settings,
                self._context,
                sender.encode("utf-8"),
                rcpts,
                data,
            )
            attempt.protocol = protocol
            return protocol

        factory: Any = Factory.forProtocol(build)  # type: ignore[type-var, arg-type]
        connecting = self._endpoint.connect(factory)
        attempt.connecting = connecting
        connecting.addTimeout(self._settings.connect_timeout, self._reactor)

        def unreachable(reason: Failure) -> None:
            attempt.free()
            attempt.fail(
                MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details=f"the mail relay is unreachable: {reason.getErrorMessage()}",
                )
            )

        connecting.addErrback(unreachable)


def _timeouts_are_transient(reason: Failure) -> Failure:
    if reason.check(defer.TimeoutError, defer.CancelledError):
        return Failure(
            MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="the mail relay timed out")
        )
    return reason


@implementer(IMailSender)
class MaildirSender:
    """Delivers into a Maildir (the embedded default, for a bare machine).

    The standard library's ``mailbox.Maildir`` writes into ``tmp/`` and renames
    into ``new/``, so a message is either whole or absent.  The write is local
    and small; it runs in the reactor thread.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._maildir = mailbox.Maildir(self.path, create=True)
        self.description = f"Maildir {self.path}"

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        del message["Return-Path"]
        del message["Delivered-To"]
        message["Return-Path"] = f"<{sender}>"
        message["Delivered-To"] = ", ".join(recipients)
        try:
            self._maildir.add(message.as_bytes(policy=_FILE_POLICY))
        except OSError as e:
            return defer.fail(
                MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details=f"cannot write to the Maildir: {e.strerror}",
                )
            )
        return defer.succeed(SendResult(tuple(recipients)))


def sender_for(reactor: Any, settings: SMTPSettings) -> IMailSender:
    """The sender for a relay option: ``maildir:PATH`` or an endpoint string."""
    if settings.endpoint.startswith("maildir:"):
        return MaildirSender(settings.endpoint[len("maildir:") :])
    return ESMTPSender(reactor, settings)
