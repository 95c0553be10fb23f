"""Fakes and helpers for testing mm7tx and processors built on it.

- :class:`FakeMailSender`: an :class:`IMailSender` that records mail, or fails.
- :func:`http_post`: a full HTTP round trip through a real ``twisted.web``
  ``Site`` over an in-memory transport, no sockets, no global reactor.
- :class:`RecordingDelivery` and :func:`smtp_server_factory`: a real ESMTP
  server (Twisted's own) that keeps what it receives, to listen on loopback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from mm7tx.errors import MM7Error
from mm7tx.interfaces import IMailSender, SendResult


@dataclass
class SentMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


@implementer(IMailSender)
class FakeMailSender:
    """Records every message; fails each with ``error`` if one is set."""

    description = "a fake sender"

    def __init__(self, error: MM7Error | None = None) -> None:
        self.sent: list[SentMail] = []
        self.error = error

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        if self.error is not None:
            return defer.fail(self.error)
        self.sent.append(SentMail(sender, list(recipients), message))
        return defer.succeed(SendResult(tuple(recipients)))


@dataclass
class HTTPResponse:
    code: int
    headers: dict[str, str]
    body: bytes


def http_post(
    resource: Resource,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
) -> HTTPResponse:
    """POST ``body`` to ``path`` of a Site serving ``resource``, in memory.

    The processors must answer synchronously (as with :class:`FakeMailSender`);
    an answer still pending raises ``AssertionError``.
    """
    site = Site(resource)
    channel = site.buildProtocol(IPv4Address("TCP", peer, 40000))
    assert channel is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    channel.makeConnection(transport)
    lines = [f"POST {path} HTTP/1.1", "Host: mm7.test", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    raw = transport.value()
    channel.connectionLost(Exception("test done"))  # type: ignore[arg-type]
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no HTTP answer yet: {raw!r}"
    status, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    return HTTPResponse(int(status.split()[1]), parsed, rest)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


@dataclass
class ReceivedMail:
    """One message as an SMTP server received it."""

    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, delivery: RecordingDelivery, user: smtp.User) -> None:
        self.delivery = delivery
        self.user = user
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[bytes]:
        self.delivery.complete(self.user, b"\n".join(self.lines) + b"\n")
        return defer.succeed(b"queued")

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class RecordingDelivery:
    """Message delivery for Twisted's ESMTP server that keeps every message.

    ``refuse`` maps a recipient address to an SMTP code (a 4xx or 5xx) to
    refuse it with; ``refuse_senders`` does the same for MAIL FROM.  Each message is recorded once, with all the recipients
    the server accepted for it.
    """

    def __init__(self) -> None:
        self.received: list[ReceivedMail] = []
        self.refuse: dict[str, int] = {}
        self.refuse_senders: dict[str, int] = {}
        self.authenticated: list[bytes] = []
        self.tls: list[bool] = []
        self._pending: dict[int, ReceivedMail] = {}

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: from mm7tx-test"

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        code = self.refuse_senders.get(str(origin))
        if code is not None:
            raise smtp.SMTPBadSender(origin, code=code)
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], _Message]:
        address = str(user.dest)
        code = self.refuse.get(address)
        if code is not None:
            raise smtp.SMTPBadRcpt(user, code=code)
        transport = getattr(user.protocol, "transport", None)
        self.tls.append(ISSLTransport.providedBy(transport))
        return lambda: _Message(self, user)

    def complete(self, user: smtp.User, data: bytes) -> None:
        key = id(user.protocol)
        mail = self._pending.get(key)
        if mail is None or mail.data != data:
            mail = ReceivedMail(str(user.orig), [], data)
            self._pending[key] = mail
            self.received.append(mail)
        mail.recipients.append(str(user.dest))


def smtp_server_factory(
    delivery: RecordingDelivery,
    tls: Any = None,
    users: dict[bytes, bytes] | None = None,
    pipelining: bool = False,
) -> smtp.SMTPFactory:
    """A factory for Twisted's ESMTP server delivering into ``delivery``.

    ``pipelining`` makes it offer PIPELINING (RFC 2920); it reads commands
    line by line in order, so pipelined commands work as they would with
    Postfix.

    ``tls`` (a server context factory) makes it offer STARTTLS; ``users``
    makes it offer AUTH LOGIN and PLAIN for those names and passwords.  The
    delivery records, per message, whether TLS was on and who authenticated.
    """
    portal = None
    if users:
        portal = Portal(_DeliveryRealm(delivery), [_Passwords(users)])

    class Server(smtp.ESMTP):
        def extensions(self) -> dict[bytes, Any]:
            offered: dict[bytes, Any] = super().extensions()
            if pipelining:
                offered[b"PIPELINING"] = None
            return offered

    class Factory(smtp.SMTPFactory):
        protocol = Server

        def buildProtocol(self, addr: Any) -> Server:
            challengers = (
                {b"LOGIN": LOGINCredentials, b"PLAIN": PLAINCredentials}
                if users
                else {}
            )
            p = Server(challengers, tls)
            p.factory = self
            p.portal = portal  # type: ignore[assignment]
            p.delivery = delivery
            p.host = b"mm7tx-test"
            return p

    return Factory(portal)


@implementer(IRealm)
class _DeliveryRealm:
    def __init__(self, delivery: RecordingDelivery) -> None:
        self.delivery = delivery

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        self.delivery.authenticated.append(avatarId)
        return smtp.IMessageDelivery, self.delivery, lambda: None


@implementer(ICredentialsChecker)
class _Passwords:
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[bytes, bytes]) -> None:
        self.users = users

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        password = self.users.get(credentials.username)
        if password is not None and credentials.checkPassword(password):
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin("bad password"))
