"""Fakes and an in-memory gateway for testing mm7tx and processors built on it.

The whole gateway runs in memory, on one fake reactor, in milliseconds:

- :class:`MemoryGateway`: the real resource tree, processors, pooled ESMTP
  sender and ``MM7Site`` built from a :class:`~mm7tx.config.Config`, with an
  in-memory SMTP relay behind it and a clock the test advances.
- :class:`MemoryReactor`: a ``Clock`` and ``IReactorTCP`` whose connections
  are made in memory (``twisted.test.iosim`` transports) to whatever listens
  on it, with a synchronous stand-in thread pool.  ``flush()`` moves bytes
  until every connection is quiet; ``advance(seconds)`` moves time, timer by
  timer, flushing after each.
- :class:`MemoryAgent`: an ``IAgent`` over that reactor, for ``MM7Client`` or
  any Twisted HTTP code; :func:`http_post` a one-shot POST to a resource.
- :class:`MemorySMTPRelay`: Twisted's own ESMTP server on that reactor,
  recording every transaction, told to refuse, hang or drop at any stage.
- :class:`FakeMailSender`: an :class:`IMailSender` that records mail, or fails.
- :class:`RecordingDelivery` and :func:`smtp_server_factory`: the same real
  ESMTP server, to listen on loopback.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IConnector,
    IListeningPort,
    IProtocolFactory,
    IReactorThreads,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface import implementer

from mm7tx.app.service import build_service, make_processor
from mm7tx.config import EMBEDDED, Config, load
from mm7tx.http.client import MM7Client, QuietConnectionPool, _Body, read_body
from mm7tx.http.resource import MM7Resource
from mm7tx.interfaces import (
    ICancelProcessor,
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IMailSender,
    IReadReplyProcessor,
    IReplaceProcessor,
    ISubmitProcessor,
    SendResult,
)
from mm7tx.mm7.errors import MM7Error
from mm7tx.smtp.esmtp import ESMTPSender

if TYPE_CHECKING:
    from mm7tx.app.service import IMM7Reactor

T = TypeVar("T")


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


# The reactor: connections in memory, time on a Clock --------------------------


class SynchronousThreadPool(ThreadPool):
    """A stand-in for the reactor's thread pool that runs the work at once,
    in the caller's thread, and starts no thread (``deferToThreadPool`` then
    delivers the result through ``callFromThread``, on the next
    :meth:`MemoryReactor.flush`)."""

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[..., Any],
        *args: Any,
        **kw: Any,
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            if onResult is not None:
                onResult(False, Failure())
        else:
            if onResult is not None:
                onResult(True, result)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@implementer(IListeningPort)
class _MemoryPort:
    def __init__(self, reactor: MemoryReactor, key: tuple[str, int], factory: Any):
        self.reactor = reactor
        self.key = key
        self.factory = factory

    def startListening(self) -> None:
        self.reactor._listeners[self.key] = self
        self.factory.doStart()

    def stopListening(self) -> defer.Deferred[None]:
        if self.reactor._listeners.get(self.key) is self:
            del self.reactor._listeners[self.key]
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.key[0] or "0.0.0.0", self.key[1])


@implementer(IConnector)
class _MemoryConnector:
    """A connection being made: it completes (or is refused) on the next
    flush, like a real one, and can be stopped before."""

    def __init__(self, destination: IPv4Address, factory: Any) -> None:
        self.destination = destination
        self.factory = factory
        self.pending: Any = None  # the IDelayedCall that completes it

    def stopConnecting(self) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
            self.pending = None
            self.factory.clientConnectionFailed(
                self, Failure(error.UserError(string="stopConnecting called"))
            )
            self.factory.doStop()

    def disconnect(self) -> None:
        self.stopConnecting()

    def connect(self) -> None:
        raise NotImplementedError("in-memory connections are made once")

    def getDestination(self) -> IPv4Address:
        return self.destination


@implementer(IReactorThreads)
class MemoryReactor(MemoryReactorClock):
    """A reactor for tests: time is a ``Clock``, TCP is in memory.

    ``listenTCP`` registers a factory under its interface (any name: a
    relay can listen on ``relay.test``) and port; ``connectTCP`` reaches it
    on the next :meth:`flush`, the client's address taken from
    ``bindAddress`` (default ``127.0.0.1``), or is refused when nothing
    listens; its factory is started and stopped around the connection as a
    real reactor does (so a noisy factory logs here too).  The thread pool runs work synchronously, so code that defers
    to threads (the scrypt password check) is deterministic too.
    """

    def __init__(self) -> None:
        super().__init__()
        self._listeners: dict[tuple[str, int], _MemoryPort] = {}
        self._pumps: list[iosim.IOPump] = []
        self._client_factories: dict[iosim.IOPump, Any] = {}
        self._ports = itertools.count(40000)
        self._threadpool = SynchronousThreadPool()

    # IReactorTCP.

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> _MemoryPort:
        super().listenTCP(port, factory, backlog, interface)
        key = (interface, port)
        if key in self._listeners:
            raise error.CannotListenError(interface, port, OSError("in use"))
        listening = _MemoryPort(self, key, factory)
        listening.startListening()
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> _MemoryConnector:
        self.tcpClients.append((host, port, factory, timeout, bindAddress))  # type: ignore[arg-type]
        connector = _MemoryConnector(IPv4Address("TCP", host, port), factory)
        factory.doStart()
        factory.startedConnecting(connector)
        source = bindAddress[0] if bindAddress else "127.0.0.1"
        connector.pending = self.callLater(
            0, self._complete, connector, host, port, source
        )
        return connector

    def _listener(self, host: str, port: int) -> _MemoryPort | None:
        for key in ((host, port), ("", port), ("0.0.0.0", port)):
            if key in self._listeners:
                return self._listeners[key]
        return None

    def _complete(
        self, connector: _MemoryConnector, host: str, port: int, source: str
    ) -> None:
        connector.pending = None
        listener = self._listener(host, port)
        client_address = IPv4Address("TCP", source, next(self._ports))
        server_address = IPv4Address("TCP", host, port)
        server = listener.factory.buildProtocol(client_address) if listener else None
        if server is None:
            connector.factory.clientConnectionFailed(
                connector,
                Failure(error.ConnectionRefusedError(f"nothing at {host}:{port}")),
            )
            connector.factory.doStop()
            return
        client = connector.factory.buildProtocol(server_address)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, server_address, client_address),
            client,
            iosim.FakeTransport(client, False, client_address, server_address),
            greet=False,
            clock=self,
        )
        self._pumps.append(pump)
        self._client_factories[pump] = connector.factory

    # IReactorThreads, synchronously.

    def getThreadPool(self) -> SynchronousThreadPool:
        return self._threadpool

    def callInThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        self._threadpool.callInThread(callable, *args, **kwargs)

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        self.callLater(0, callable, *args, **kwargs)

    def suggestThreadPoolSize(self, size: int) -> None:
        pass

    # Moving bytes and time.

    def flush(self) -> None:
        """Move bytes over every connection, and run what is due now, until
        nothing moves."""
        for _ in range(100000):
            Clock.advance(self, 0)
            moved = False
            for pump in list(self._pumps):
                moved = pump.pump(advanceClock=False) or moved
            for pump in list(self._pumps):
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self._pumps.remove(pump)
                    self._client_factories.pop(pump).doStop()
            due = self.calls and self.calls[0].getTime() <= self.seconds()
            if not moved and not due:
                return
        raise AssertionError("the connections never went quiet")

    def advance(self, amount: float) -> None:
        """Move the clock ``amount`` seconds, one timer at a time, flushing
        after each (so what a timeout sends arrives before the next timer)."""
        target = self.seconds() + amount
        self.flush()
        while self.calls and self.calls[0].getTime() <= target:
            Clock.advance(self, max(0.0, self.calls[0].getTime() - self.seconds()))
            self.flush()
        Clock.advance(self, max(0.0, target - self.seconds()))
        self.flush()

    @property
    def connections(self) -> int:
        """In-memory connections not yet closed on both sides."""
        return len(self._pumps)


def fired(d: defer.Deferred[Any]) -> bool:
    """Whether ``d`` has its result (``called`` is true already while it
    waits on an inner Deferred); the result stays in it."""
    results: list[object] = []

    def keep(result: object) -> object:
        results.append(result)
        return result

    d.addBoth(keep)
    return bool(results)


def result_of(d: defer.Deferred[T]) -> T:
    """The result of a Deferred that has fired (its failure raised), or
    ``AssertionError`` if it is still waiting.  A result stays in the
    Deferred for its other callbacks; a failure is taken (it is raised here)."""
    results: list[Any] = []
    asking = True

    def keep(result: Any) -> Any:
        if not asking:  # fired after we gave up on it: leave it be
            return result
        results.append(result)
        return None if isinstance(result, Failure) else result

    d.addBoth(keep)
    asking = False
    if not results:
        raise AssertionError(f"{d!r} has not fired: is something waiting for time?")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    value: T = result
    return value


# HTTP over the memory reactor --------------------------------------------------


@implementer(IAgentEndpointFactory)
class _MemoryEndpoints:
    def __init__(self, reactor: MemoryReactor, peer: str) -> None:
        self.reactor = reactor
        self.peer = peer

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        if uri.scheme != b"http":
            raise SchemeNotSupported(f"in memory, only http: not {uri.scheme!r}")
        return TCP4ClientEndpoint(
            self.reactor, uri.host.decode("ascii"), uri.port, bindAddress=(self.peer, 0)
        )


@implementer(IAgent)
class MemoryAgent:
    """An ``IAgent`` whose connections go, in memory, to what listens on a
    :class:`MemoryReactor` (a real ``Site``: ``MM7Site`` or any other), from
    the client address ``peer``.  Answers come as the reactor is flushed:
    resources that answer later (``NOT_DONE_YET``) work as over TCP."""

    def __init__(self, reactor: MemoryReactor, peer: str = "127.0.0.1") -> None:
        self.reactor = reactor
        self.peer = peer
        self._agent = Agent.usingEndpointFactory(
            reactor,
            _MemoryEndpoints(reactor, peer),
            QuietConnectionPool(reactor, persistent=False),
        )

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: Any = None,
    ) -> defer.Deferred[IResponse]:
        answer: defer.Deferred[IResponse] = self._agent.request(
            method, uri, headers, bodyProducer
        )
        return answer


@dataclass
class HTTPResponse:
    """An HTTP answer read whole; header names in lower case."""

    code: int
    headers: dict[str, str]
    body: bytes


async def _post(
    agent: IAgent, url: str, body: bytes, headers: dict[str, str] | None
) -> HTTPResponse:
    sent = Headers()
    for name, value in (headers or {}).items():
        sent.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    response = await agent.request(b"POST", url.encode("utf-8"), sent, _Body(body))
    data = await read_body(response)
    received = {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
    }
    return HTTPResponse(response.code, received, data)


async def _get(agent: IAgent, url: str) -> HTTPResponse:
    response = await agent.request(b"GET", url.encode("utf-8"))
    data = await read_body(response)
    received = {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
    }
    return HTTPResponse(response.code, received, data)


def get(agent: IAgent, url: str) -> defer.Deferred[HTTPResponse]:
    """GET ``url`` through ``agent``; fires with the answer."""
    return defer.ensureDeferred(_get(agent, url))


def post(
    agent: IAgent, url: str, body: bytes, headers: dict[str, str] | None = None
) -> defer.Deferred[HTTPResponse]:
    """POST ``body`` to ``url`` through ``agent``; fires with the answer."""
    return defer.ensureDeferred(_post(agent, url, body, headers))


def http_post(
    resource: IResource,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
) -> HTTPResponse:
    """POST ``body`` to ``path`` of a ``Site`` serving ``resource``, from
    ``peer``, in memory; the answer must come without time passing (with
    :class:`FakeMailSender`, say): one still pending raises ``AssertionError``.
    For answers that need time or a relay, use :class:`MemoryGateway`."""
    reactor = MemoryReactor()
    reactor.listenTCP(80, Site(resource, reactor=reactor), interface="mm7tx.test")
    answer = post(MemoryAgent(reactor, peer), "http://mm7tx.test" + path, body, headers)
    reactor.flush()
    return result_of(answer)


# SMTP ---------------------------------------------------------------------------


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
        # _RecordingESMTP) says which transaction they belong to.
        protocol = user.protocol
        mail: ReceivedMail | None = getattr(protocol, "current_mail", None)
        if mail is None:
            queue_id = f"{0x4F3A2B01 + len(self.received):X}"
            mail = ReceivedMail(str(user.orig), [], data, queue_id=queue_id)
            self.received.append(mail)
            if isinstance(protocol, _RecordingESMTP):
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


class _RecordingESMTP(smtp.ESMTP):
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

    class Server(_RecordingESMTP):
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


# The in-memory relay, with faults ---------------------------------------------

Stage = Literal["greeting", "mail", "rcpt", "data", "message", "end"]
"""Where a relay fault strikes: the greeting; the reply to MAIL FROM, to
RCPT TO or to the DATA command; while the message comes in (mid-DATA); the
reply after the message's final dot."""

Action = Literal["refuse", "hang", "drop", "close"]
"""``refuse``: answer ``code`` instead; ``hang``: never answer again (read
and ignore everything); ``drop``: close the connection instead of answering;
``close``: answer as usual, then close."""

_STAGES = ("greeting", "mail", "rcpt", "data", "message", "end")


@dataclass(frozen=True, slots=True)
class SMTPFault:
    """One fault of a :class:`MemorySMTPRelay` (see :data:`Stage`, :data:`Action`).
    ``recipient`` limits a ``rcpt`` fault to one address."""

    stage: Stage
    action: Action
    code: int = 0
    text: str = ""
    recipient: str | None = None


class _RelayServer(_RecordingESMTP):
    relay: MemorySMTPRelay
    _stalled = False  # hung: reads and ignores everything
    _muted = False
    _reply_instead: tuple[int, bytes] | None = None
    _last_code: int | None = None
    _illegal_line = False  # strict: this message has a line RFC 5321 forbids

    def sendCode(self, code: int, message: bytes = b"") -> None:
        if self._muted or self._stalled:
            return
        if self._reply_instead is not None:
            (code, message), self._reply_instead = self._reply_instead, None
        self._last_code = code
        super().sendCode(code, message)

    def connectionMade(self) -> None:
        fault = self.relay.fault_at("greeting")
        if fault is None or fault.action == "close":
            super().connectionMade()
            if fault is not None:
                self.transport.loseConnection()  # type: ignore[union-attr]
        elif fault.action == "hang":
            self._stalled = True
        elif fault.action == "drop":
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self._reply_instead = (fault.code, _text(fault))
            super().connectionMade()
            self.transport.loseConnection()  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> Any:
        if self._stalled:
            return None
        stage, recipient = self._stage_of(line)
        if stage == "message" and self.relay.strict and not _legal_line(line):
            self._illegal_line = True
        fault = self.relay.fault_at(stage, recipient) if stage else None
        if fault is None and stage == "end" and self._illegal_line:
            fault = SMTPFault("end", "refuse", 500, "5.5.2 Line too long")
        if stage == "end":
            self._illegal_line = False
        if fault is None:
            return self._received(stage, line)
        if fault.action == "hang":
            if stage == "end":
                self._received(stage, line, muted=True)  # taken, never answered
            self._stalled = True
        elif fault.action == "drop":
            if stage == "end":
                self._received(stage, line, muted=True)  # taken, then dropped
            self._stalled = True
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif fault.action == "close":
            self._received(stage, line)
            self._stalled = True
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif stage == "end":
            self._reply_instead = (fault.code, _text(fault))
            self._received(stage, line)
        else:
            self.sendCode(fault.code, _text(fault))
            if fault.code == 421:
                self._stalled = True
                self.transport.loseConnection()  # type: ignore[union-attr]
        return None

    def _received(self, stage: str | None, line: bytes, muted: bool = False) -> Any:
        self._muted = muted
        try:
            result = super().lineReceived(line)
        finally:
            self._muted = False
        if stage == "end" and self.current_mail is not None:
            self.current_mail.reply = None if muted else self._last_code
        return result

    def _stage_of(self, line: bytes) -> tuple[Stage | None, str | None]:
        if self.mode == smtp.DATA:
            return ("end" if line == b"." else "message"), None
        command = line.strip().split(None, 1)
        verb = command[0].upper() if command else b""
        if verb == b"MAIL":
            return "mail", None
        if verb == b"RCPT":
            rest = command[1] if len(command) > 1 else b""
            address = rest.partition(b"<")[2].partition(b">")[0]
            return "rcpt", address.decode("utf-8", "replace")
        if verb == b"DATA":
            return "data", None
        return None, None


def _legal_line(line: bytes) -> bool:
    """Whether a line of DATA (as sent, without its CRLF) is one RFC 5321
    allows: at most 998 octets (4.5.3.1.6), no CR or LF but in the CRLF
    that ends it (2.3.8)."""
    return len(line) <= 998 and b"\r" not in line and b"\n" not in line


def _text(fault: SMTPFault) -> bytes:
    return (fault.text or f"mm7tx test relay: {fault.action} at {fault.stage}").encode()


class MemorySMTPRelay:
    """Twisted's real ESMTP server, listening in memory on a
    :class:`MemoryReactor` at ``host:port`` (reach it with the endpoint
    string :attr:`endpoint`), keeping every transaction in :attr:`received`.
    It offers PIPELINING unless ``pipelining`` is false, and SMTPUTF8
    (RFC 6531: UTF-8 addresses) if ``smtputf8`` is true.  ``strict`` makes
    it refuse a message with a line RFC 5321 forbids (over 998 octets, or
    with a bare CR or LF) with ``500 5.5.2 Line too long`` after its final
    dot, as a strict relay does.

    Faults (:meth:`refuse`, :meth:`hang`, :meth:`drop`, :meth:`close_after`)
    apply to every later session and transaction until :meth:`clear`; the
    most recent matching one wins.  :meth:`stop` makes it unreachable.
    """

    def __init__(
        self,
        reactor: MemoryReactor,
        host: str = "relay.test",
        port: int = 25,
        *,
        pipelining: bool = True,
        smtputf8: bool = False,
        strict: bool = False,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.pipelining = pipelining
        self.smtputf8 = smtputf8
        self.strict = strict
        self.delivery = RecordingDelivery()
        self.faults: list[SMTPFault] = []
        self.sessions: list[_RelayServer] = []
        self._listening: _MemoryPort | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        """The client endpoint string for this relay, e.g. ``tcp:relay.test:25``."""
        return f"tcp:{self.host}:{self.port}"

    @property
    def received(self) -> list[ReceivedMail]:
        """Every transaction whose message came in whole, in order, each with
        the reply the relay gave it (``None`` if it never answered)."""
        return self.delivery.received

    @property
    def accepted(self) -> list[ReceivedMail]:
        """The messages the relay answered 250: those it is responsible for."""
        return [m for m in self.received if m.reply is not None and m.reply < 300]

    @property
    def open_sessions(self) -> list[_RelayServer]:
        """The sessions still connected."""
        return [
            s
            for s in self.sessions
            if s.transport is not None
            and not getattr(s.transport, "disconnected", False)
        ]

    # Up and down.

    def start(self) -> None:
        """Listen (again)."""
        if self._listening is None:
            self._listening = self.reactor.listenTCP(
                self.port, _RelayFactory(self), interface=self.host
            )

    def stop(self) -> None:
        """Stop listening and close every session: the relay is unreachable."""
        if self._listening is not None:
            self._listening.stopListening()
            self._listening = None
        for session in self.open_sessions:
            session.transport.loseConnection()  # type: ignore[union-attr]

    # Faults.

    def refuse(
        self, stage: Stage, code: int, text: str = "", recipient: str | None = None
    ) -> None:
        """Answer ``code`` at ``stage`` (``greeting``, ``mail``, ``rcpt``,
        ``data`` or ``end``, i.e. after the message); for ``rcpt``, only to
        ``recipient`` if given.  A 421 closes the connection too."""
        if stage == "message":
            raise ValueError("nothing is answered while the message comes in")
        self._add(SMTPFault(stage, "refuse", code, text, recipient))

    def hang(self, stage: Stage, recipient: str | None = None) -> None:
        """Never answer from ``stage`` on (``message``: mid-DATA; ``end``:
        after taking the message); the connection stays open."""
        self._add(SMTPFault(stage, "hang", recipient=recipient))

    def drop(self, stage: Stage, recipient: str | None = None) -> None:
        """Close the connection instead of answering at ``stage``
        (``message``: mid-DATA; ``end``: after taking the message, before
        answering 250)."""
        self._add(SMTPFault(stage, "drop", recipient=recipient))

    def close_after(self, stage: Stage) -> None:
        """Answer at ``stage`` as usual, then close (``end``: after 250)."""
        self._add(SMTPFault(stage, "close"))

    def clear(self) -> None:
        """No more faults."""
        self.faults.clear()

    def _add(self, fault: SMTPFault) -> None:
        if fault.stage not in _STAGES:
            raise ValueError(f"no SMTP stage {fault.stage!r}: one of {_STAGES}")
        self.faults.append(fault)

    def fault_at(self, stage: Stage, recipient: str | None = None) -> SMTPFault | None:
        """The fault that applies at ``stage`` (for ``recipient``), if any."""
        for fault in reversed(self.faults):
            if fault.stage == stage and fault.recipient in (None, recipient):
                return fault
        return None


@implementer(IProtocolFactory)
class _RelayFactory(smtp.SMTPFactory):
    def __init__(self, relay: MemorySMTPRelay) -> None:
        super().__init__()
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _RelayServer:
        relay = self.relay
        p = _RelayServer()
        p.factory = self
        p.relay = relay
        p.delivery = relay.delivery
        p.pipelining = relay.pipelining
        p.smtputf8 = relay.smtputf8
        p.host = relay.host.encode()
        # Its timeout on the test's clock.
        p.callLater = relay.reactor.callLater  # type: ignore[method-assign, assignment]
        relay.sessions.append(p)
        return p


# The whole gateway ---------------------------------------------------------------

_PROCESSOR_INTERFACES = (
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    ISubmitProcessor,
    ICancelProcessor,
    IReplaceProcessor,
)


def _mm7_resources(resource: Resource) -> Iterator[MM7Resource]:
    if isinstance(resource, MM7Resource):
        yield resource
        return
    for child in resource.children.values():
        yield from _mm7_resources(child)  # type: ignore[arg-type]


class MemoryGateway:
    """The whole gateway in memory: the real resources, processors, pooled
    ESMTP sender and ``MM7Site`` on a :class:`MemoryReactor`, mailing to a
    :class:`MemorySMTPRelay`.

    ``config`` is a :class:`~mm7tx.config.Config` or its text (default: the
    embedded one, VASP path ``/vasp/`` and MMSC path ``/mm7/``); its
    ``smtp_relay`` is replaced by the relay's endpoint.  ``processor``, a
    processor class (called as the configuration's processors are, with
    ``processor_options`` as its ``Options`` if it declares them) or a
    processor object, serves every path instead of the configured ones.
    ``pipelining`` and ``smtputf8`` say what the relay offers, ``strict``
    whether it refuses lines RFC 5321 forbids (:class:`MemorySMTPRelay`).  With
    ``metrics``, the configuration's ``metrics_listen`` (by default
    ``127.0.0.1:9107``, in memory) serves ``/metrics``, ``/healthz`` and
    ``/readyz`` (read them with :meth:`get`), and the relay is checked every
    10 s; without, nothing listens there and nothing checks the relay.

    Nothing moves until the test calls :meth:`flush` or :meth:`advance`
    (:meth:`post` and :meth:`result` flush for you).  :meth:`reload` swaps
    in another configuration as SIGHUP does.
    """

    def __init__(
        self,
        config: Config | str | None = None,
        *,
        processor: Any = None,
        processor_options: Mapping[str, Any] | None = None,
        pipelining: bool = True,
        smtputf8: bool = False,
        strict: bool = False,
        metrics: bool = False,
    ) -> None:
        if isinstance(config, str):
            config = load(config, "<MemoryGateway>")
        config = config if config is not None else EMBEDDED
        self.reactor = MemoryReactor()
        self.clock: Clock = self.reactor
        self.relay = MemorySMTPRelay(
            self.reactor, pipelining=pipelining, smtputf8=smtputf8, strict=strict
        )
        self._metrics = metrics
        self.service = build_service(
            self._to_relay(config), cast("IMM7Reactor", self.reactor)
        )
        self.site = self.service.site
        self.service.startService()
        if metrics:
            self.flush()  # the relay check at start
        self._processor = processor
        self._processor_options = processor_options
        if processor is not None:
            self._use(processor)
        self.url = self._base_url()

    def _to_relay(self, config: Config) -> Config:
        smtp_settings = dataclasses.replace(config.smtp, endpoint=self.relay.endpoint)
        return dataclasses.replace(
            config,
            smtp=smtp_settings,
            metrics_listen=config.metrics_listen if self._metrics else None,
        )

    @property
    def config(self) -> Config:
        """The running configuration (its relay this gateway's)."""
        return self.service.config

    @property
    def root(self) -> Resource:
        """The resource tree new requests go to."""
        return self.service.root

    @property
    def sender(self) -> ESMTPSender:
        """The pooled ESMTP sender of new transactions."""
        sender = self.service.sender
        assert isinstance(sender, ESMTPSender)
        return sender

    def reload(self, config: Config | str, source: str = "<MemoryGateway>") -> bool:
        """Reload as SIGHUP does, with ``config`` or its text (read as the
        file ``source``; a mistake in it is logged and changes nothing);
        whether it reloaded.  The relay stays this gateway's, and a
        ``processor`` given at the start serves again."""

        def read() -> Config:
            loaded = load(config, source) if isinstance(config, str) else config
            return self._to_relay(loaded)

        reloaded = self.service.reload_from(read)
        if reloaded and self._processor is not None:
            self._use(self._processor)
        return reloaded

    def _use(self, processor: Any) -> None:
        for resource in _mm7_resources(self.root):
            if any(i.providedBy(processor) for i in _PROCESSOR_INTERFACES):
                resource.processor = processor
                continue
            resource.processor = make_processor(
                processor,
                self.config,
                self.sender,
                self.service.reporter if resource.role == "mmsc" else None,
                self._processor_options,
            )

    def _base_url(self) -> str:
        for (interface, port), listening in self.reactor._listeners.items():
            # The site behind the endpoint's Listener (and its access guard).
            factory = getattr(listening.factory, "wrappedFactory", listening.factory)
            if getattr(factory, "site", None) is self.site:
                host = interface if interface not in ("", "0.0.0.0") else "127.0.0.1"
                return f"http://{host}:{port}"
        raise ValueError("the configuration listens on no TCP endpoint")

    @property
    def metrics_url(self) -> str:
        """``http://HOST:PORT`` of the metrics and health listener."""
        for (interface, port), listening in self.reactor._listeners.items():
            if listening.factory is self.service.monitor:
                return f"http://{interface or '127.0.0.1'}:{port}"
        raise ValueError("no metrics listener: MemoryGateway(metrics=True)?")

    def get(self, url: str) -> HTTPResponse:
        """GET ``url`` (a path: on the metrics listener); the answer must
        come without time passing."""
        if url.startswith("/"):
            url = self.metrics_url + url
        return self.result(get(self.agent(), url))

    # HTTP in.

    def agent(self, peer: str = "127.0.0.1") -> MemoryAgent:
        """An ``IAgent`` reaching this gateway (and anything else listening
        on its reactor) from the address ``peer``."""
        return MemoryAgent(self.reactor, peer)

    def client(
        self,
        path: str = "/mm7/",
        credentials: tuple[str, str] | None = None,
        *,
        peer: str = "127.0.0.1",
        **options: Any,
    ) -> MM7Client:
        """An :class:`~mm7tx.client.MM7Client` posting to ``path``, its
        timeouts on the gateway's clock; ``options`` go to ``MM7Client``."""
        return MM7Client(
            self.agent(peer),
            self.url + path,
            credentials,
            reactor=self.reactor,
            **options,
        )

    def post_later(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        peer: str = "127.0.0.1",
    ) -> defer.Deferred[HTTPResponse]:
        """POST to ``path``; fires with the answer as the test moves things."""
        return post(self.agent(peer), self.url + path, body, headers)

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        peer: str = "127.0.0.1",
    ) -> HTTPResponse:
        """POST to ``path`` and return the answer, which must come without
        time passing (use :meth:`post_later` and :meth:`advance` otherwise)."""
        return self.result(self.post_later(path, body, headers, peer=peer))

    # Moving things.

    def flush(self) -> None:
        """Move bytes over every connection until all are quiet."""
        self.reactor.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, every timer and its consequences in order."""
        self.reactor.advance(seconds)

    def result(self, d: defer.Deferred[T]) -> T:
        """Flush, then the result of ``d`` (its failure raised); an
        ``AssertionError`` if it is still waiting."""
        self.flush()
        return result_of(d)

    def stop(self) -> None:
        """Stop the service as ``twistd`` would (drain, close the HTTP
        connections and the SMTP pool), letting time pass as needed."""
        stopping = defer.ensureDeferred(self._stopping())
        self.flush()
        deadline = self.reactor.seconds() + self.config.drain_timeout + 60
        while not stopping.called and self.reactor.calls:
            if self.reactor.calls[0].getTime() > deadline:
                break
            self.advance(self.reactor.calls[0].getTime() - self.reactor.seconds())
        result_of(stopping)

    async def _stopping(self) -> None:
        await self.service.stopService()


__all__ = [
    "FakeMailSender",
    "HTTPResponse",
    "MemoryAgent",
    "MemoryGateway",
    "MemoryReactor",
    "MemorySMTPRelay",
    "ReceivedMail",
    "RecordingDelivery",
    "SMTPFault",
    "SentMail",
    "SynchronousThreadPool",
    "get",
    "http_post",
    "post",
    "result_of",
    "smtp_server_factory",
]
