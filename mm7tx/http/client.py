"""An MM7 client for Twisted code: send Submit, Deliver and report requests.

    client = MM7Client(reactor, "http://mmsc.example:8080/mm7", ("vasp1", "secret"))
    response = await client.submit(SubmitReq(...))

Every call returns a Deferred of the parsed response.  A SOAP fault becomes
:class:`MM7Fault` (carrying the MM7 status), and every other failure one of
the :class:`MM7ClientError` subclasses below with a message a person can read.
Connections are reused through an ``HTTPConnectionPool``.  An answer is
read within bounds: its status line and headers at most
:data:`MAX_ANSWER_HEADERS`, its body at most ``max_answer_size``, the whole
exchange within ``timeout``.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import uuid
from typing import Any, TypeVar
from urllib.parse import urlsplit

from twisted.internet import defer, error, ssl
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol
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

from mm7tx.http.settings import DEFAULT_MAX_ANSWER_SIZE as DEFAULT_MAX_ANSWER_SIZE
from mm7tx.http.settings import url_credentials as url_credentials
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error

R = TypeVar("R")

NAMESPACE_BASE = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/"

# The most of an answer's status line and headers read, interim 1xx answers
# included: the bound Twisted's own server puts on a request's headers
# (``HTTPChannel.totalHeadersSize``).  No more than Twisted's line bound
# (``HTTPParser.MAX_LENGTH``, also 16 KiB), so that one endless header line
# gets this error too rather than a close without a word.
MAX_ANSWER_HEADERS = 16 * 1024


def format_size(size: int) -> str:
    """``1048576`` as ``1 MiB``, ``65536`` as ``64 KiB``, others in bytes."""
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietConnectionPool(HTTPConnectionPool):
    """An ``HTTPConnectionPool`` whose connections are not logged: Twisted's
    logs "Starting factory _HTTP11ClientFactory(…)" and its "Stopping" twin
    for each one, which say nothing a reader can use (twisted/twisted#9330)."""

    _factory = _QuietHTTP11ClientFactory


class _OverLimit(Exception):
    """An answer went over a bound, where the URL is not known:
    :class:`MM7Client` makes it an :class:`AnswerTooLarge` naming it."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _BoundedHTTP11ClientProtocol(HTTP11ClientProtocol):
    """An ``HTTP11ClientProtocol`` that reads at most ``max_header_size``
    bytes of an answer's status line and headers.

    Twisted's parser (``HTTPClientParser``, a ``LineReceiver``) bounds each
    line but neither how many there are nor how many interim 1xx answers
    come first: a server sending header lines, continuation lines or
    ``100 Continue`` without end is read, and its headers kept, for as long
    as it sends (see ``docs/upstream-twisted-client-headers.md``).  Here
    the parser is fed at most the bytes left under the bound while it reads
    a status line or headers; past it the connection is aborted and the
    request fails with :class:`_OverLimit`.  Bytes after the headers (the
    body, which :class:`_BodyReader` bounds) pass as they are.
    """

    def __init__(self, quiescentCallback: Any, max_header_size: int) -> None:
        super().__init__(quiescentCallback)
        self.max_header_size = max_header_size
        self._header_bytes = 0
        self._over = False

    def request(self, request: Any) -> defer.Deferred[Any]:
        self._header_bytes = 0
        answer: defer.Deferred[Any] = super().request(request)
        return answer

    def dataReceived(self, data: bytes) -> None:
        if self._over:
            return  # aborted: what was already on its way is dropped
        while data and self._reading_head():
            room = self.max_header_size - self._header_bytes
            if room <= 0:
                self._over = True
                connection: Any = self.transport  # TCP or TLS: either aborts
                connection.abortConnection()
                limit = format_size(self.max_header_size)
                self._giveUp(Failure(_OverLimit(f"has headers over {limit}")))
                return
            piece, data = data[:room], data[room:]
            self._header_bytes += len(piece)
            super().dataReceived(piece)
        if data:
            super().dataReceived(data)

    def _reading_head(self) -> bool:
        """Whether the parser is reading a status line or headers."""
        return self._parser is not None and self._parser.state in (STATUS, HEADER)


class _BoundedHTTP11ClientFactory(_QuietHTTP11ClientFactory):
    def __init__(
        self, quiescentCallback: Any, metadata: Any, max_header_size: int
    ) -> None:
        super().__init__(quiescentCallback, metadata)
        self.max_header_size = max_header_size

    def buildProtocol(self, addr: Any) -> _BoundedHTTP11ClientProtocol:
        return _BoundedHTTP11ClientProtocol(
            self._quiescentCallback, self.max_header_size
        )


class BoundedConnectionPool(QuietConnectionPool):
    """A :class:`QuietConnectionPool` whose connections read at most
    ``max_header_size`` bytes of an answer's status line and headers
    (:class:`_BoundedHTTP11ClientProtocol`)."""

    max_header_size = MAX_ANSWER_HEADERS

    # HTTPConnectionPool makes each connection's factory with
    # ``self._factory(quiescentCallback, metadata)``: a method here, to pass
    # the bound on.
    def _factory(  # type: ignore[override]
        self, quiescentCallback: Any, metadata: Any
    ) -> _BoundedHTTP11ClientFactory:
        return _BoundedHTTP11ClientFactory(
            quiescentCallback, metadata, self.max_header_size
        )


class MM7ClientError(Exception):
    """A request that did not get an MM7 success or partial success."""


class Unreachable(MM7ClientError):
    """The server could not be reached, or went away before answering."""


class TimedOut(MM7ClientError):
    """No answer within the timeout."""


class HTTPError(MM7ClientError):
    """An HTTP error that is not an MM7 fault (401, 404, 502...); its
    message is one line, never the answer's body (an HTML error page)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotMM7(MM7ClientError):
    """The server answered something that is not an MM7 message."""


class AnswerTooLarge(MM7ClientError):
    """The answer's headers or body went over the client's bound; the
    connection was aborted there, and nothing of it is kept."""


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


# account=password in a URL's path: the password runs to the end of the
# path (a "/" in it is its own), less a trailing "/", as the server reads it.
_PATH_PASSWORD = re.compile(r"^([^?#]*?/[^/?#=]*=)[^?#]*?(/?(?:[?#].*)?)$")


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
    ``docs/upstream-twisted-readbody-abort.md``.

    With a ``limit``, a body of more bytes fails with :class:`_OverLimit`
    and aborts the connection: at once when its ``length``
    (``Content-Length``) says so, else as the first byte over arrives
    (chunked, or read until the server closes)."""

    def __init__(self, limit: int | None = None, length: object = None) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.limit = limit
        self.length = length
        self.done: defer.Deferred[bytes] = defer.Deferred(self._abort)

    def connectionMade(self) -> None:
        length = self.length
        if self.limit is not None and isinstance(length, int) and length > self.limit:
            self._refuse(f" (Content-Length: {length})")

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return  # refused or cancelled: dropped
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self._refuse("")
            return
        self.chunks.append(data)

    def _refuse(self, detail: str) -> None:
        assert self.limit is not None
        self.chunks = []
        self._abort()
        self.done.errback(_OverLimit(f"is over {format_size(self.limit)}{detail}"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return  # cancelled
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    def _abort(self, _: object = None) -> None:
        # The proxy's producer is the connection's transport (TCP or TLS).
        connection = getattr(self.transport, "_producer", None)
        abort = getattr(connection, "abortConnection", None)
        if abort is not None:
            abort()


def read_body(response: Any, limit: int | None = None) -> defer.Deferred[bytes]:
    """``response``'s body, whole; with a ``limit``, at most that many bytes
    (see :class:`_BodyReader`)."""
    # Every IResponse has a length (UNKNOWN_LENGTH without Content-Length);
    # a stand-in with only deliverBody is read as one without.
    reader = _BodyReader(limit, getattr(response, "length", None))
    response.deliverBody(reader)
    return reader.done


def _why_refused(response: Any, data: bytes) -> str:
    """What a 401's fault says beyond "no valid credentials" (a lockout,
    a network the account may not post from), as ``: why``; else ""."""
    types = response.headers.getRawHeaders(b"content-type") or [b""]
    try:
        envelope = codec.decode(types[0].decode("latin-1"), data)
    except MM7Error:
        return ""
    details = getattr(getattr(envelope.message, "status", None), "details", None)
    if not details or details.startswith("no valid"):
        return ""
    return f": {details[:200]}"


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
    An answer's body is read up to ``max_answer_size`` bytes, its status
    line and headers up to :data:`MAX_ANSWER_HEADERS` (on the client's own
    pool; with your agent, your pool's bound), and the whole exchange,
    from connecting to the body's last byte, within ``timeout`` seconds:
    past any of them the connection is aborted and the call fails with
    :class:`AnswerTooLarge` or :class:`TimedOut`.
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
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
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
            self.pool = BoundedConnectionPool(reactor, persistent=True)
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
        if max_answer_size < 1:
            raise ValueError("max_answer_size must be at least 1 byte")
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
        self.max_answer_size = max_answer_size
        self._authorization = None
        if credentials is not None:
            user, password = credentials
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {token}".encode("ascii")

    @property
    def shown_url(self) -> str:
        """The URL as messages show it: a password in its path
        (``/mm7/account=password``) masked."""
        return _PATH_PASSWORD.sub(r"\1***\2", self.url)

    @property
    def sends_credentials(self) -> bool:
        """Whether requests carry credentials: HTTP Basic, or
        ``account=password`` in the URL's path (NowSMS's way)."""
        return self._authorization is not None or "=" in urlsplit(self.url).path

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
        data: bytes = await read_body(response, self.max_answer_size)
        code = response.code
        if code == http.UNAUTHORIZED:
            why = _why_refused(response, data)
            if self.sends_credentials:
                raise HTTPError(
                    code, f"HTTP 401: the server refused our credentials{why}"
                )
            raise HTTPError(code, f"HTTP 401: no credentials were sent{why}")
        types = response.headers.getRawHeaders(b"content-type") or [b""]
        content_type = types[0].decode("latin-1")
        try:
            envelope = codec.decode(content_type, data)
        except MM7Error as e:
            answered = (
                f"{self.shown_url} answered {code} {response.phrase.decode('latin-1')}"
            )
            if code != http.OK:
                # An error page (Twisted's 404 is HTML): the status says it.
                hint = (
                    "not an MM7 path?"
                    if code == http.NOT_FOUND
                    else "not an MM7 answer"
                )
                raise HTTPError(code, f"{answered} ({hint})") from None
            snippet = data[:120].decode("utf-8", "replace")
            if "html" in content_type.lower() or snippet.lstrip().lower().startswith(
                ("<!doctype html", "<html")
            ):
                # An HTML page: its type says enough, its markup would not.
                shown = content_type or "no Content-Type"
            else:
                shown = repr(snippet)
            raise NotMM7(
                f"{answered} with an answer that is not MM7 ({e.status.details}): "
                f"{shown}"
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
            raise HTTPError(
                code, f"HTTP {code}: an MM7 answer with an HTTP error status"
            )
        return envelope.message

    def _timed_out(self, result: Any, timeout: float) -> Any:
        raise TimedOut(f"no answer from {self.shown_url} within {timeout:g} s")

    def _transport_error(self, reason: Any) -> Any:
        if reason.check(MM7ClientError):
            return reason
        # Over a bound: raised by the body's reader, or inside the
        # ResponseFailed of a connection that gave up on the headers.
        for over in [reason, *getattr(reason.value, "reasons", [])]:
            if over.check(_OverLimit):
                raise AnswerTooLarge(
                    f"the answer from {self.shown_url} {over.value.what}"
                )
        if reason.check(error.ConnectError, error.DNSLookupError):
            raise Unreachable(
                f"cannot connect to {self.shown_url}: {reason.getErrorMessage()}"
            )
        if reason.check(ResponseFailed):
            inner = [r.getErrorMessage() for r in getattr(reason.value, "reasons", [])]
            tls = [text for text in inner if "certificate" in text or "SSL" in text]
            if tls:
                raise Unreachable(f"TLS with {self.shown_url} failed: {tls[0]}")
            raise Unreachable(
                f"{self.shown_url} closed the connection without an answer"
            )
        if reason.check(error.ConnectionLost, error.ConnectionDone):
            raise Unreachable(
                f"{self.shown_url} closed the connection without an answer"
            )
        return reason
