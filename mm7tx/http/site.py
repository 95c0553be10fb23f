"""The HTTP server side, hardened: a size limit, a deadline to receive each
request, an idle keep-alive timeout and the redacting access log.

``twisted.web`` has no request size limit and only an idle timeout (which a
client that sends a byte now and then never trips), so :class:`MM7Site` adds
both: a ``Content-Length`` over the limit gets 413 before the body is read,
a chunked body is cut off as soon as it passes the limit, and a request not
received whole within ``request_timeout`` gets 408 and the connection is
closed.  A refusal (408, 413) is written, then the connection half-closed and
what the client still sends read and dropped for a moment (a lingering close,
as Apache does): closing at once would answer the client's next bytes with a
reset, which can discard the refusal before the client reads it.

Open connections are bounded per listener (:class:`Listener`) and per source
address (:class:`MM7Site`): past either, a new connection is closed at once,
before a byte is read, counted in the metrics and warned of at most once a
minute per address or listener (a client that churns at the bound would
otherwise write a line per connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    INegotiated,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from mm7tx.http.ratelog import RateLimitedWarning
from mm7tx.http.settings import DEFAULT_IDLE_TIMEOUT as DEFAULT_IDLE_TIMEOUT
from mm7tx.http.settings import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from mm7tx.http.settings import (
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS as DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
)
from mm7tx.http.settings import DEFAULT_MAX_REQUEST_SIZE as DEFAULT_MAX_REQUEST_SIZE
from mm7tx.http.settings import DEFAULT_REQUEST_TIMEOUT as DEFAULT_REQUEST_TIMEOUT

if TYPE_CHECKING:
    from mm7tx.metrics import Metrics

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.site")

# Seconds a refused client has to read its 408 or 413 before a reset.
LINGER = 2.0


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with everything after its first ``=`` masked.

    ``/mm7/account=password``: the password runs to the end of the path,
    whatever it holds (``/``, ``"``, spaces, escapes), and the query, which
    MM7 never uses, may hold the rest of one with a raw ``?``.  Masking
    everything after the ``=`` is the only rule that cannot leak a part.
    """
    at = uri.find(b"=")
    return uri if at < 0 else uri[: at + 1] + b"***"


class _Redacted:
    """A request as the access log formatter sees it, its URI redacted."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact_uri(request.uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def access_log_formatter(timestamp: str, request: Any) -> str:
    """Twisted's combined log line, with ``/mm7/account=password`` redacted."""
    line: str = http.combinedLogFormatter(timestamp, _Redacted(request))
    return line


class LimitedRequest(server.Request):
    """A request that refuses a body over ``max_size`` (set by the site)."""

    max_size = DEFAULT_MAX_REQUEST_SIZE
    channel: MM7Channel
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.max_size:
            self._too_large(f"the request of {length} bytes is over the limit")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_size:
            self._too_large("the request body passed the limit")
            return
        super().handleContentChunk(data)

    def _too_large(self, why: str) -> None:
        self._refused = True
        log.info(
            "Refused a request from {peer}: {why} of {limit} bytes",
            peer=getattr(self.getClientAddress(), "host", "?"),
            why=why,
            limit=self.max_size,
        )
        self.channel.refuse(
            413, b"Payload Too Large", f"{why} of {self.max_size} bytes"
        )

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.channel.request_arrived()
        if self._refused:
            return
        self.notifyFinish().addBoth(self.channel.request_done)
        super().requestReceived(command, path, version)


class MM7Channel(http.HTTPChannel):
    """An ``HTTPChannel`` with a deadline for each request to arrive whole.

    Twisted's idle timeout restarts on every byte, so a client that drips a
    byte now and then holds a connection for ever; here the request must
    arrive whole within the site's ``request_timeout`` of its first byte,
    else 408 and the connection closes.  The site keeps the set of open
    channels, to close them when the service stops.
    """

    site: MM7Site
    listener: Listener | None = None
    peer_host: str | None = None
    _deadline: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _busy = False  # a request is being answered: no deadline meanwhile
    _refused = False  # a 408 or 413 was written: the rest is dropped

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channel_opened(self)
        if self.listener is not None:
            self.listener.channels.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._busy and (self._deadline is None or not self._deadline.active()):
            self._deadline = self.callLater(self.site.request_timeout, self._too_slow)
        super().dataReceived(data)

    def request_arrived(self) -> None:
        """The whole request is here: its deadline is met."""
        self._cancel_deadline()
        self._busy = True

    def request_done(self, _: object = None) -> None:
        self._busy = False

    def refuse(self, code: int, phrase: bytes, text: str) -> None:
        """Answer and close, whatever state the request is in.

        The answer goes out with a FIN (``loseWriteConnection``); what the
        client still sends is read and dropped, and the connection is reset
        only after :data:`LINGER` seconds, if the client has not closed by
        then.  Over TLS, which cannot half-close, it is closed at once.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        self.setTimeout(None)
        body = text.encode() + b"\n"
        transport: Any = self.transport
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, phrase, len(body), body)
        )
        self._networkProducer.unregisterProducer()  # type: ignore[attr-defined]
        # A TLS transport forwards attributes to the TCP one beneath it, so
        # it seems to half-close: it cannot (the TLS layer would be cut off
        # under its unsent records, the answer with them).
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None or INegotiated.providedBy(transport):
            transport.loseConnection()
        else:
            half_close()
        self._linger = self.callLater(LINGER, transport.abortConnection)

    def _send100Continue(self) -> None:
        """No ``100 Continue`` after a final status: ``gotLength`` may have
        refused the request (413) just before ``allHeadersReceived`` sends it.

        Upstream (twisted.web.http.HTTPChannel.allHeadersReceived): it sends
        ``100 Continue`` for every ``Expect: 100-continue`` once
        ``gotLength`` returns, even when the request was answered in it or
        the transport is closing; it could check ``_handlingRequest`` /
        ``transport.disconnecting`` first.
        """
        if not self._refused:
            super()._send100Continue()

    def _too_slow(self) -> None:
        log.info(
            "Cut off a client sending too slowly: {peer}",
            peer=str(self.transport.getPeer()),  # type: ignore[union-attr]
        )
        self.refuse(
            408,
            b"Request Timeout",
            f"the request was not received within {self.site.request_timeout:g} s",
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)
        if self.listener is not None:
            self.listener.channels.discard(self)
        self.site.channel_closed(self)


class MM7Site(server.Site):
    """A ``Site`` with a request size limit, a request deadline, an idle
    keep-alive timeout and a bound on open connections from one source
    address, logging with passwords in URIs redacted.

    It speaks HTTP/1.1 only (MM7 is HTTP/1.1; Twisted's HTTP/2 negotiation
    is left out with its generic channel).  A connection refused for a
    bound is counted in ``metrics`` (if given) under the listener it came
    to: a :class:`Listener`'s endpoint, else ``name``.
    """

    protocol = MM7Channel  # type: ignore[assignment]
    noisy = False  # the start log line says where it listens
    # The warning for an address at its bound, once a minute per address.
    refusing = (
        "Refusing connections from {peer}: {count} open, the limit "
        "(mm7_max_connections_per_address)"
    )

    def __init__(
        self,
        resource: Resource,
        reactor: IReactorTime,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        access_log: bool = False,
        metrics: Metrics | None = None,
        name: str = "http",
    ) -> None:
        super().__init__(
            resource,
            logFormatter=access_log_formatter,
            reactor=reactor,
            # MM7 is never an HTML form: without this, Twisted parses the
            # Content-Type of every POST with the email package (8% of a
            # transaction in a profile) to look for one.
            parsePOSTFormSubmission=False,
        )
        self.set_limits(
            max_request_size, request_timeout, idle_timeout, max_connections_per_address
        )
        # Twisted's combined access line per request (``mm7_access_log``):
        # off by default, the transaction event (mm7tx.logs) says as much.
        self.access_log = access_log
        self.channels: set[MM7Channel] = set()
        self._closed: list[defer.Deferred[None]] = []
        self._by_address: dict[str, int] = {}
        self.metrics = metrics
        self.name = name
        self._refusing = RateLimitedWarning(
            log, reactor, self.refusing, suppressed="refused"
        )

    def set_limits(
        self,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        """The limits, for the requests and connections from now on (a
        reload changes them; those under way keep theirs)."""
        self.requestFactory = type(  # type: ignore[assignment]
            "Request", (LimitedRequest,), {"max_size": max_request_size}
        )
        self.timeOut = idle_timeout
        self.request_timeout = request_timeout
        self.max_connections_per_address = max_connections_per_address

    def log(self, request: http.Request) -> None:
        """The access line, only if ``access_log`` is on: it goes through
        the legacy log and the text observer, about 6% of a transaction's
        CPU for what the transaction event already says."""
        if self.access_log:
            super().log(request)

    def buildProtocol(self, addr: IAddress) -> MM7Channel | None:  # type: ignore[override]
        """A channel, or None (the port then closes the connection at once)
        for an address already at ``max_connections_per_address``."""
        return self.channel_for(addr, self.name)

    def channel_for(self, addr: IAddress, listener: str) -> MM7Channel | None:
        """:meth:`buildProtocol` for a connection to ``listener`` (the name
        a refusal is counted under)."""
        host = getattr(addr, "host", None)
        if host is not None:
            count = self._by_address.get(host, 0)
            if count >= self.max_connections_per_address:
                self.count_refused(listener, "per_address")
                self._refusing(host, peer=host, count=count)
                return None
        channel: MM7Channel = super().buildProtocol(addr)
        channel.peer_host = host
        return channel

    def count_refused(self, listener: str, reason: str) -> None:
        """A connection to ``listener`` closed at once for a bound
        (``per_address`` or ``per_listener``), in the metrics if any."""
        if self.metrics is not None:
            self.metrics.connection_refused(listener, reason)

    def channel_opened(self, channel: MM7Channel) -> None:
        self.channels.add(channel)
        if channel.peer_host is not None:
            host = channel.peer_host
            self._by_address[host] = self._by_address.get(host, 0) + 1

    def acceptableProtocols(self) -> list[bytes]:
        # HTTP/1.1 only (see the class docstring): never offer h2 in ALPN.
        return [b"http/1.1"]

    def close_connections(self, abort: bool = False) -> defer.Deferred[None]:
        """Close every connection (on stop, once the transactions in flight
        are done): each once its answers are written, since
        ``loseConnection`` flushes first; or at once with ``abort``.  Fires
        when all are closed."""
        if not self.channels:
            return defer.succeed(None)
        closed: defer.Deferred[None] = defer.Deferred()
        self._closed.append(closed)
        for channel in list(self.channels):
            if abort and channel.transport is not None:
                channel.transport.abortConnection()  # type: ignore[attr-defined]
            else:
                channel.loseConnection()
        return closed

    def channel_closed(self, channel: MM7Channel) -> None:
        if channel not in self.channels:
            return
        self.channels.discard(channel)
        host = channel.peer_host
        if host is not None:
            left = self._by_address.pop(host, 1) - 1
            if left > 0:
                self._by_address[host] = left
        if not self.channels:
            waiting, self._closed = self._closed, []
            for closed in waiting:
                if not closed.called:
                    closed.callback(None)


class Listener(Factory):
    """The factory one endpoint listens with: the site's channels, at most
    ``max_connections`` of them open at once on this endpoint.

    Past the bound a new connection is closed at once (``buildProtocol``
    returns None), so idle or slow clients cannot take every file
    descriptor and lock the others out; each refusal is counted in the
    site's metrics, and warned of at most once a minute.
    """

    def __init__(
        self,
        site: MM7Site,
        endpoint: str,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.site = site
        self.endpoint = endpoint
        self.max_connections = max_connections
        self.channels: set[MM7Channel] = set()
        self._refusing = RateLimitedWarning(
            log,
            site.reactor,
            "Refusing connections on {endpoint}: {count} open, the limit "
            "(mm7_max_connections)",
            suppressed="refused",
        )

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def logPrefix(self) -> str:
        return str(self.site.logPrefix())

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        channel = self._build(addr)
        if channel is None and self.endpoint.startswith("haproxy:"):
            # Twisted's PROXY wrapper wraps whatever it gets, None too (and
            # then fails on every call, the connection left open): give it
            # a protocol that closes the connection instead.
            return _Refused()
        return channel

    def _build(self, addr: IAddress) -> MM7Channel | None:
        if len(self.channels) >= self.max_connections:
            self.site.count_refused(self.endpoint, "per_listener")
            self._refusing(
                self.endpoint, endpoint=self.endpoint, count=len(self.channels)
            )
            return None
        channel = self.site.channel_for(addr, self.endpoint)
        if channel is not None:
            channel.listener = self
        return channel


class _Refused(Protocol):
    """A connection a bound refuses, where a wrapper cannot take None for
    an answer: closed as soon as it is made, its bytes ignored."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        abort = getattr(transport, "abortConnection", None)
        (abort if abort is not None else transport.loseConnection)()

    def dataReceived(self, data: bytes) -> None:
        pass
