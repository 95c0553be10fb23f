"""Bounds on `haproxy:` listeners (found in review: each failed before its
fix); the 408 over real TLS is in tests/loopback/test_proxy_tls_edge.py."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy import proxyEndpoint
from twisted.web.resource import Resource

from mm7tx.http.auth import ListenAccess, ListenerGuard, network
from mm7tx.http.site import Listener, MM7Site


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
