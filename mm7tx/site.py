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

from twisted.logger import Logger
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


def _refuse(channel: Any, code: int, phrase: bytes, text: str) -> None:
    """Answer and close, whatever state the request is in."""
    body = text.encode() + b"\n"
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (code, phrase, len(body), body)
    )
    channel.loseConnection()
    timer = getattr(channel, "_mm7_deadline", None)
    if timer is not None and timer.active():
        timer.cancel()


class LimitedRequest(server.Request):
    """A request that refuses a body over ``max_size`` (set by the site)."""

    max_size = DEFAULT_MAX_REQUEST_SIZE
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
        _refuse(
            self.channel, 413, b"Payload Too Large", f"{why} of {self.max_size} bytes"
        )

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        channel: Any = self.channel
        timer = getattr(channel, "_mm7_deadline", None)
        if timer is not None and timer.active():
            timer.cancel()
        if self._refused:
            return
        channel._mm7_busy = True

        def idle(_: object) -> None:
            channel._mm7_busy = False

        self.notifyFinish().addBoth(idle)
        super().requestReceived(command, path, version)


class MM7Site(server.Site):
    """A ``Site`` with a request size limit, a request deadline and an idle
    keep-alive timeout, logging with passwords in URIs redacted."""

    def __init__(
        self,
        resource: Resource,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        reactor: Any = None,
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

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is None:
            return None
        inner = getattr(channel, "_channel", channel)
        inner._mm7_deadline = None
        inner._mm7_busy = False
        forward = channel.dataReceived

        def dataReceived(data: bytes) -> None:
            # Every request must arrive whole within request_timeout of its
            # first byte, however slowly a client drips it in.
            timer = inner._mm7_deadline
            if not inner._mm7_busy and (timer is None or not timer.active()):
                inner._mm7_deadline = inner.callLater(self.request_timeout, too_slow)
            forward(data)

        def too_slow() -> None:
            log.info(
                "Cut off a client sending too slowly: {peer}",
                peer=str(inner.transport.getPeer()),
            )
            _refuse(
                inner,
                408,
                b"Request Timeout",
                f"the request was not received within {self.request_timeout:g} s",
            )
            inner.transport.abortConnection()

        lost = channel.connectionLost

        def connectionLost(reason: Any) -> None:
            timer = inner._mm7_deadline
            if timer is not None and timer.active():
                timer.cancel()
            lost(reason)

        channel.dataReceived = dataReceived
        channel.connectionLost = connectionLost
        return channel
