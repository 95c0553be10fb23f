"""Twisted's ESMTP server, recording every transaction it receives:
:class:`RecordingDelivery` and :func:`smtp_server_factory` (to listen on
loopback, with STARTTLS and AUTH if asked), with PIPELINING and SMTPUTF8
when told to offer them.
"""

from __future__ import annotations

import re
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
from twisted.internet.interfaces import (
    ISSLTransport,
)
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from zope.interface import implementer


@dataclass
class ReceivedMail:
    """One SMTP transaction as the server received it: one record per
    message, with every recipient the server accepted for it.  ``reply`` is
    the code the server answered after the data (250 when it took the
    message), ``None`` if it never answered; ``queue_id`` the id its 250
    named (``250 2.0.0 Ok: queued as 4F3A2B01``, as Postfix says).
    ``sender`` is ``""`` for the null sender (``MAIL FROM:<>``)."""

    sender: str
    recipients: list[str]
    data: bytes
    reply: int | None = None
    queue_id: str = ""

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
    refuse it with; ``refuse_senders`` does the same for MAIL FROM.  Each
    transaction is recorded once, with all the recipients the server
    accepted for it (two equal messages on one session are two records).
    """

    def __init__(self) -> None:
        self.received: list[ReceivedMail] = []
        self.refuse: dict[str, int] = {}
        self.refuse_senders: dict[str, int] = {}
        self.authenticated: list[bytes] = []
        self.tls: list[bool] = []

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
        # Twisted makes one IMessage per recipient; the server (a
        # RecordingESMTP) says which transaction they belong to.
        protocol = user.protocol
        mail: ReceivedMail | None = getattr(protocol, "current_mail", None)
        if mail is None:
            queue_id = f"{0x4F3A2B01 + len(self.received):X}"
            mail = ReceivedMail(str(user.orig), [], data, queue_id=queue_id)
            self.received.append(mail)
            if isinstance(protocol, RecordingESMTP):
                protocol.current_mail = mail
        mail.recipients.append(str(user.dest))


class _UTF8Address(smtp.Address):
    """An address with UTF-8 in it (RFC 6531), which Twisted's ``Address``
    refuses to parse and to print."""

    addrstr: bytes

    def __init__(self, addr: bytes) -> None:
        self.addrstr = addr
        self.local, _, self.domain = addr.rpartition(b"@")

    def __str__(self) -> str:
        return self.addrstr.decode("utf-8")


class _UTF8User(smtp.User):
    def __str__(self) -> str:
        return bytes(self).decode("utf-8")


# MAIL FROM or RCPT TO with a non-ASCII address, and its parameters.
_UTF8_PATH = re.compile(rb"\s*(?:FROM|TO):\s*<([^<>\s@]+@[^<>\s@]+)>(.*)", re.I | re.S)


class RecordingESMTP(smtp.ESMTP):
    """Twisted's ESMTP server, offering PIPELINING and SMTPUTF8 if told to
    and marking where each transaction starts, for :class:`RecordingDelivery`.

    Twisted's server knows nothing of SMTPUTF8 (RFC 6531): offering it,
    this one takes UTF-8 addresses in a transaction whose MAIL FROM has the
    ``SMTPUTF8`` parameter, and refuses them (553 5.6.7) otherwise, as
    Postfix does.
    """

    pipelining = False
    smtputf8 = False
    current_mail: ReceivedMail | None = None
    _utf8_transaction = False

    def extensions(self) -> dict[bytes, Any]:
        offered: dict[bytes, Any] = super().extensions()
        if self.pipelining:
            offered[b"PIPELINING"] = None
        if self.smtputf8:
            offered[b"8BITMIME"] = None
            offered[b"SMTPUTF8"] = None
        return offered

    def do_MAIL(self, rest: bytes) -> None:
        if not self._from:
            self._utf8_transaction = self.smtputf8 and _has_param(rest, b"SMTPUTF8")
        if rest.isascii() or self._from:
            super().do_MAIL(rest)
            return
        path = self._utf8_path(rest)
        if path is None:
            return
        self._to = []
        validated = defer.maybeDeferred(self.validateFrom, self._helo, path)
        validated.addCallbacks(self._cbFromValidate, self._ebFromValidate)

    def do_RCPT(self, rest: bytes) -> None:
        if rest.isascii() or not self._from:
            super().do_RCPT(rest)
            return
        path = self._utf8_path(rest)
        if path is None:
            return
        user = _UTF8User(b"<rcpt@placeholder>", self._helo, self, self._from)
        user.dest = path
        validated = defer.maybeDeferred(self.validateTo, user)
        validated.addCallbacks(
            self._cbToValidate, self._ebToValidate, callbackArgs=(user,)
        )

    def _utf8_path(self, rest: bytes) -> _UTF8Address | None:
        if not self._utf8_transaction:
            self.sendCode(553, b"5.6.7 non-ASCII address without SMTPUTF8")
            return None
        match = _UTF8_PATH.fullmatch(rest)
        try:
            match and match.group(1).decode("utf-8")
        except UnicodeDecodeError:
            match = None
        if match is None:
            self.sendCode(501, b"Syntax error")
            return None
        return _UTF8Address(match.group(1))

    def do_DATA(self, rest: bytes) -> None:
        self.current_mail = None  # a new transaction, a new record
        super().do_DATA(rest)

    def _messageHandled(self, resultList: list[tuple[bool, Any]]) -> None:
        # Twisted's server says "250 Delivery in progress"; a relay names
        # its queue id, which mm7tx logs.
        mail = self.current_mail
        if mail is None or not all(ok for ok, _ in resultList):
            super()._messageHandled(resultList)
            return
        self.sendCode(250, b"2.0.0 Ok: queued as " + mail.queue_id.encode())


def _has_param(rest: bytes, name: bytes) -> bool:
    """Whether the MAIL FROM argument ``rest`` carries ESMTP parameter ``name``."""
    params = rest.rpartition(b">")[2].split()
    return any(p.split(b"=")[0].upper() == name for p in params)


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

    class Server(RecordingESMTP):
        pass

    Server.pipelining = pipelining

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
