"""A reactor for tests: connections in memory, time on a ``Clock``.

:class:`MemoryReactor` connects, in memory, to whatever listens on it and
runs thread-pool work at once; ``flush()`` moves bytes until every
connection is quiet, ``advance(seconds)`` moves time timer by timer.
:func:`result_of` and :func:`fired` read the Deferreds it fires.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IConnector,
    IListeningPort,
    IReactorThreads,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.test import iosim
from zope.interface import implementer

T = TypeVar("T")


class SynchronousThreadPool(ThreadPool):
    """A stand-in for the reactor's thread pool that runs the work at once,
    in the caller's thread, and starts no thread (``deferToThreadPool`` then
    delivers the result through ``callFromThread``, on the next
    :meth:`MemoryReactor.flush`)."""

    # Work runs in the caller's thread: what mm7tx.app.wiring looks for to
    # keep the state store off the disk and inline (no thread of its own).
    synchronous = True

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
        key = (interface, port)
        if key in self._listeners:
            raise error.CannotListenError(interface, port, OSError("in use"))
        # Recorded in tcpServers once it listens.
        super().listenTCP(port, factory, backlog, interface)
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
