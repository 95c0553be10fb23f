"""HTTP over a :class:`~mm7tx.testing.reactor.MemoryReactor`: an ``IAgent``
(:class:`MemoryAgent`), a GET and a POST read whole (:func:`get`,
:func:`post`), and :func:`http_post`, one POST to a resource on a ``Site``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
)
from twisted.web.client import Agent
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from mm7tx.http.client import QuietConnectionPool, _Body, read_body
from mm7tx.testing.reactor import MemoryReactor, result_of


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
