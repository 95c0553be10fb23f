"""The 408 over real TLS on loopback (in memory:
tests/http/test_proxy_tls_edge.py)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    SSL4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource

from mm7tx.http.site import Listener, MM7Site
from tests.certs import make_certificate, server_options


class _Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(
            b"POST /v/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab"
        )

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_the_408_reaches_a_slow_client_over_tls(tmp_path):
    """A TLS transport forwards ``loseWriteConnection`` to the TCP one: the
    refusal must not half-close the TCP stream under the TLS layer (the 408,
    still buffered in it, was never sent)."""
    cert, key = make_certificate(tmp_path)
    options = server_options(cert, key)
    site = MM7Site(Resource(), reactor, request_timeout=0.3)
    port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(
        Listener(site, "ssl:0")
    )
    try:
        client = _Collect()
        await connectProtocol(
            SSL4ClientEndpoint(
                reactor, "127.0.0.1", port.getHost().port, ssl.CertificateOptions()
            ),
            client,
        )
        timeout = reactor.callLater(5, client.transport.abortConnection)
        await client.lost
        if timeout.active():
            timeout.cancel()
        assert client.data.startswith(b"HTTP/1.1 408")
    finally:
        await port.stopListening()
