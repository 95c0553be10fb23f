"""The HTTP server side, hardened: a size limit, a deadline to receive each
request, an idle keep-alive timeout and the redacting access log.

``twisted.web`` has no request size limit and only an idle timeout (which a
client that sends a byte now and then never trips), so :class:`MM7Site` adds
both: a ``Content-Length`` over the limit gets 413 before the body is read,
a chunked body is cut off as soon as it passes the limit, and a request not
received whole within ``request_timeout`` gets 408 and the connection is
closed.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

log = Logger()

DEFAULT_MAX_REQUEST_SIZE = 5 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 60.0

_SECRET_IN_PATH = re.compile(r"(/[^/\s?\"=]*=)[^/\s?\"]*")


def access_log_formatter(timestamp: str, request: Any) -> str:
    """Twisted's combined log line, with ``/mm7/account=password`` redacted."""
    return _SECRET_IN_PATH.sub(r"\1***", http.combinedLogFormatter(timestamp, request))


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
    _deadline: IDelayedCall | None = None
    _busy = False  # a request is being answered: no deadline meanwhile

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    def dataReceived(self, data: bytes) -> None:
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
        """Answer and close, whatever state the request is in."""
        body = text.encode() + b"\n"
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, phrase, len(body), body)
        )
        self.loseConnection()
        self._cancel_deadline()

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
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_deadline()
        super().connectionLost(reason)
        self.site.channel_closed(self)


class MM7Site(server.Site):
    """A ``Site`` with a request size limit, a request deadline and an idle
    keep-alive timeout, logging with passwords in URIs redacted.

    It speaks HTTP/1.1 only (MM7 is HTTP/1.1; Twisted's HTTP/2 negotiation
    is left out with its generic channel).
    """

    protocol = MM7Channel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Resource,
        reactor: IReactorTime,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        request = type("Request", (LimitedRequest,), {"max_size": max_request_size})
        super().__init__(
            resource,
            requestFactory=request,
            timeout=idle_timeout,
            logFormatter=access_log_formatter,
            reactor=reactor,
            # MM7 is never an HTML form: without this, Twisted parses the
            # Content-Type of every POST with the email package (8% of a
            # transaction in a profile) to look for one.
            parsePOSTFormSubmission=False,
        )
        self.request_timeout = request_timeout
        self.channels: set[MM7Channel] = set()
        self._closed: list[defer.Deferred[None]] = []

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
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._closed = self._closed, []
            for closed in waiting:
                if not closed.called:
                    closed.callback(None)
