"""Bounds on `haproxy:` listeners, and the 408 over TLS (found in review:
each failed before its fix)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    SSL4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy import proxyEndpoint
from twisted.web.resource import Resource

from mm7tx.http.auth import ListenAccess, ListenerGuard, network
from mm7tx.http.site import Listener, MM7Site
from tests.certs import make_certificate, server_options


def _behind_haproxy(factory):
    class Inner:
        def listen(self, wrapped):
            self.factory = wrapped
            return defer.succeed(None)

    inner = Inner()
    proxyEndpoint(inner).listen(factory)
    return inner.factory


def _open(factory, port):
    addr = IPv4Address("TCP", "10.0.0.1", port)
    protocol = factory.buildProtocol(addr)
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=addr)
    protocol.makeConnection(transport)  # AttributeError today past the bound
    return protocol, transport


def test_haproxy_listener_past_its_bound_closes_the_connection():
    """`haproxy:` + mm7_max_connections: the Listener's None is wrapped by
    HAProxyWrappingFactory; makeConnection raises, the socket stays open
    (tcp.Server is already reading), uncounted: the bound does not hold."""
    site = MM7Site(Resource(), Clock())
    factory = _behind_haproxy(Listener(site, "haproxy:tcp:8080", max_connections=1))
    _open(factory, 1)
    protocol, transport = _open(factory, 2)
    assert protocol is None or transport.disconnecting


def test_haproxy_listener_with_guard_past_its_bound_closes_the_connection():
    site = MM7Site(Resource(), Clock())
    guard = ListenerGuard(
        Listener(site, "haproxy:tcp:8080", max_connections=1),
        ListenAccess(deny=(network("203.0.113.0/24"),)),
        proxied=True,
    )
    factory = _behind_haproxy(guard)
    _open(factory, 1)
    protocol, transport = _open(factory, 2)
    assert protocol is None or transport.disconnecting


def test_haproxy_per_address_bound_closes_the_connection():
    site = MM7Site(Resource(), Clock(), max_connections_per_address=1)
    factory = _behind_haproxy(Listener(site, "haproxy:tcp:8080"))
    _open(factory, 1)
    protocol, transport = _open(factory, 2)
    assert protocol is None or transport.disconnecting


# 408 over TLS ---------------------------------------------------------------


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


@pytest.mark.loopback
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
