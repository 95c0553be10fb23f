"""An MM7 client for Twisted code: send Submit, Deliver and report requests.

    client = MM7Client(reactor, "http://mmsc.example:8080/mm7", ("vasp1", "secret"))
    response = await client.submit(SubmitReq(...))

Every call returns a Deferred of the parsed response.  A SOAP fault becomes
:class:`MM7Fault` (carrying the MM7 status), and every other failure one of
the :class:`MM7ClientError` subclasses below with a message a person can read.
Connections are reused through an ``HTTPConnectionPool``.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.internet import defer, error, ssl
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from mm7tx import codec
from mm7tx import messages as m
from mm7tx.errors import MM7Error

R = TypeVar("R")

NAMESPACE_BASE = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/"


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietConnectionPool(HTTPConnectionPool):
    """An ``HTTPConnectionPool`` whose connections are not logged: Twisted's
    logs "Starting factory _HTTP11ClientFactory(…)" and its "Stopping" twin
    for each one, which say nothing a reader can use (twisted/twisted#9330)."""

    _factory = _QuietHTTP11ClientFactory


class MM7ClientError(Exception):
    """A request that did not get an MM7 success or partial success."""


class Unreachable(MM7ClientError):
    """The server could not be reached, or went away before answering."""


class TimedOut(MM7ClientError):
    """No answer within the timeout."""


class HTTPError(MM7ClientError):
    """An HTTP error that is not an MM7 fault (401, 404, 502...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code


class NotMM7(MM7ClientError):
    """The server answered something that is not an MM7 message."""


class MM7Fault(MM7ClientError):
    """The server answered a SOAP fault with an MM7 status."""

    def __init__(self, envelope: m.Envelope) -> None:
        message: Any = envelope.message
        status: m.Status = message.status
        super().__init__(
            f"{status.code} {status.text}"
            + (f": {status.details}" if status.details else "")
        )
        self.status = status
        self.envelope = envelope


def url_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its userinfo, and the ``(user, password)`` that was
    there, percent-decoded (``None`` when it had none): Mbuni writes its
    URLs ``http://user:pass@host/mm7``, and they mean HTTP Basic."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    bare = urlunsplit(parts._replace(netloc=host))
    return bare, (unquote(user), unquote(password))


def namespace_uri(name: str) -> str:
    """``REL-6-MM7-1-4`` or a full URI, as a full namespace URI."""
    return name if ":" in name else NAMESPACE_BASE + name


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory: written in one go, length known."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BodyReader(Protocol):
    """Reads a response body whole, like ``readBody``, but cancelling it
    closes the connection.  ``readBody`` means to, but the transport an
    ``Agent``'s response hands its protocol (a ``TransportProxyProducer``)
    has no ``abortConnection``, so a timeout while the body trickles in
    would leave the connection open (Twisted issue #8227); see
    ``docs/upstream-twisted-readbody-abort.md``."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return  # cancelled
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    def _cancel(self, _: object) -> None:
        # The proxy's producer is the connection's transport (TCP or TLS).
        connection = getattr(self.transport, "_producer", None)
        abort = getattr(connection, "abortConnection", None)
        if abort is not None:
            abort()


def _read_body(response: Any) -> defer.Deferred[bytes]:
    reader = _BodyReader()
    response.deliverBody(reader)
    return reader.done


class MM7Client:
    """Sends MM7 requests to one URL.

    ``agent_or_reactor`` is a reactor, for which the client makes an
    ``Agent`` with a persistent ``HTTPConnectionPool`` of ``connections`` per
    host, checking HTTPS certificates against the system CAs or ``ca_file``
    (PEM); or an ``IAgent`` (yours, with your TLS policy and pool, or
    :mod:`mm7tx.testing`'s in-memory one), and then ``reactor`` is the clock
    for the timeout.
    ``credentials`` is ``(user, password)`` for HTTP Basic; a URL's
    ``user:password@`` is taken as them (and never sent in the URL or shown
    in an error), but not both at once (``ValueError``).
    """

    def __init__(
        self,
        agent_or_reactor: IAgent | IReactorTime,
        url: str,
        credentials: tuple[str, str] | None = None,
        *,
        namespace: str = m.DEFAULT_NAMESPACE,
        mm7_version: str = m.DEFAULT_MM7_VERSION,
        timeout: float = 30.0,
        connections: int = 2,
        ca_file: str | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        self.pool: HTTPConnectionPool | None
        if IAgent.providedBy(agent_or_reactor):
            self.agent: IAgent = agent_or_reactor  # type: ignore[assignment]
            self.pool = None
            if reactor is None:
                raise TypeError(
                    "MM7Client with an agent needs reactor= for its timeout"
                )
        else:
            reactor = agent_or_reactor  # type: ignore[assignment]
            self.pool = QuietConnectionPool(reactor, persistent=True)
            self.pool.maxPersistentPerHost = connections
            self.pool.retryAutomatically = False
            policy = BrowserLikePolicyForHTTPS()
            if ca_file is not None:
                with open(ca_file, "rb") as f:
                    policy = BrowserLikePolicyForHTTPS(
                        trustRoot=ssl.Certificate.loadPEM(f.read())
                    )
            self.agent = Agent(reactor, contextFactory=policy, pool=self.pool)
        self.reactor = reactor
        url, in_url = url_credentials(url)
        if in_url is not None:
            if credentials is not None:
                raise ValueError(
                    "credentials both in the URL and given apart: give one"
                )
            credentials = in_url
        self.url = url
        self.namespace = namespace_uri(namespace)
        self.mm7_version = m.version_for(self.namespace, mm7_version)
        self.timeout = timeout
        self._authorization = None
        if credentials is not None:
            user, password = credentials
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {token}".encode("ascii")

    def close(self) -> defer.Deferred[None]:
        """Close the pooled connections (only those this client made)."""
        if self.pool is None:
            return defer.succeed(None)
        closing: defer.Deferred[None] = self.pool.closeCachedConnections()
        return closing

    def submit(self, request: m.SubmitReq) -> defer.Deferred[m.SubmitRsp]:
        return self.send(request)  # type: ignore[return-value]

    def deliver(self, request: m.DeliverReq) -> defer.Deferred[m.DeliverRsp]:
        return self.send(request)  # type: ignore[return-value]

    def delivery_report(
        self, request: m.DeliveryReportReq
    ) -> defer.Deferred[m.DeliveryReportRsp]:
        return self.send(request)  # type: ignore[return-value]

    def read_reply(self, request: m.ReadReplyReq) -> defer.Deferred[m.ReadReplyRsp]:
        return self.send(request)  # type: ignore[return-value]

    def cancel(self, request: m.CancelReq) -> defer.Deferred[m.CancelRsp]:
        return self.send(request)  # type: ignore[return-value]

    def replace(self, request: m.ReplaceReq) -> defer.Deferred[m.ReplaceRsp]:
        return self.send(request)  # type: ignore[return-value]

    def send(
        self, request: m.Request, transaction_id: str | None = None
    ) -> defer.Deferred[m.Response]:
        """Send any request; fire with its response (see the module doc)."""
        version = getattr(request, "mm7_version", None)
        if version == m.DEFAULT_MM7_VERSION:
            version = self.mm7_version
        if version is not None:
            # Never a version of another release than the namespace's.
            version = m.version_for(self.namespace, version)
            request = dataclasses.replace(request, mm7_version=version)
        envelope = m.Envelope(
            transaction_id or uuid.uuid4().hex, request, self.namespace
        )
        content_type, body = codec.encode(envelope)
        headers = Headers(
            {
                b"Content-Type": [content_type.encode("ascii")],
                b"SOAPAction": [b'""'],
                b"User-Agent": [b"mm7tx"],
            }
        )
        if self._authorization is not None:
            headers.addRawHeader(b"Authorization", self._authorization)
        d: Any = self.agent.request(
            b"POST", self.url.encode("utf-8"), headers, _Body(body)
        )
        d.addCallback(self._answer, envelope)
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=self._timed_out)
        d.addErrback(self._transport_error)
        answer: defer.Deferred[m.Response] = d
        return answer

    def _answer(self, response: Any, sent: m.Envelope) -> defer.Deferred[m.Response]:
        return defer.ensureDeferred(self._parse(response, sent))

    async def _parse(self, response: Any, sent: m.Envelope) -> m.Response:
        data: bytes = await _read_body(response)
        code = response.code
        if code == http.UNAUTHORIZED:
            raise HTTPError(code, "the server refused our credentials")
        types = response.headers.getRawHeaders(b"content-type") or [b""]
        content_type = types[0].decode("latin-1")
        try:
            envelope = codec.decode(content_type, data)
        except MM7Error as e:
            snippet = data[:120].decode("utf-8", "replace")
            if code != http.OK:
                raise HTTPError(
                    code, f"{response.phrase.decode('latin-1')}: {snippet!r}"
                ) from None
            raise NotMM7(
                f"HTTP {code} with an answer that is not MM7 ({e.status.details}): {snippet!r}"
            ) from None
        if envelope.is_fault:
            raise MM7Fault(envelope)
        asked: Any = type(sent.message)
        expected = m.RESPONSE_FOR[asked]
        if not isinstance(envelope.message, expected):
            raise NotMM7(
                f"asked {type(sent.message).__name__}, answered "
                f"{type(envelope.message).__name__}"
            )
        if code != http.OK:
            raise HTTPError(code, "an MM7 answer with an HTTP error status")
        return envelope.message

    def _timed_out(self, result: Any, timeout: float) -> Any:
        raise TimedOut(f"no answer from {self.url} within {timeout:g} s")

    def _transport_error(self, reason: Any) -> Any:
        if reason.check(MM7ClientError):
            return reason
        if reason.check(error.ConnectError, error.DNSLookupError):
            raise Unreachable(
                f"cannot connect to {self.url}: {reason.getErrorMessage()}"
            )
        if reason.check(ResponseFailed):
            inner = [r.getErrorMessage() for r in getattr(reason.value, "reasons", [])]
            tls = [text for text in inner if "certificate" in text or "SSL" in text]
            if tls:
                raise Unreachable(f"TLS with {self.url} failed: {tls[0]}")
            raise Unreachable(f"{self.url} closed the connection without an answer")
        if reason.check(error.ConnectionLost, error.ConnectionDone):
            raise Unreachable(f"{self.url} closed the connection without an answer")
        return reason
