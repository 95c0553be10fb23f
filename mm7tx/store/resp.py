"""A small Redis client on Twisted: RESP2 over any stream endpoint, on the
reactor it is given.

(``txredisapi`` takes the global reactor at import and in its factories, so
a gateway co-hosted on another reactor, or tested on a ``Clock``, could not
use it; what the store needs of Redis is a few commands and ``EVAL``.)

One connection, commands pipelined on it and answered in order.  It
connects on the first command (``AUTH`` and ``SELECT`` first) and again
after a loss; a command not answered within ``timeout`` seconds fails, and
drops the connection, whose answers would now come out of order.  After a
connection that could not be made, commands fail at once for
:data:`RETRY_AFTER` seconds rather than each trying again (a refused
connection takes ``HostnameEndpoint`` 0.3 s to report)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import (
    IHandshakeListener,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from mm7tx.store.records import StoreError

# A command's answer: bytes, an int, None, or a list of them.
Reply = Any

# How long commands fail at once after a connection could not be made.
RETRY_AFTER = 1.0


class RedisError(StoreError):
    """Redis answered with an error (``-ERR …``)."""


class _Incomplete(Exception):
    """More bytes are needed for the next reply."""


def encode(*args: bytes | str | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        else:
            data = repr(arg).encode("ascii")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buffer: bytes, at: int = 0) -> tuple[Reply, int]:
    """The reply that starts at ``at`` and where the next starts;
    :class:`_Incomplete` if ``buffer`` ends first."""
    end = buffer.find(b"\r\n", at)
    if end < 0:
        raise _Incomplete()
    kind, line = buffer[at : at + 1], buffer[at + 1 : end]
    at = end + 2
    if kind == b"+":
        return line, at
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), at
    if kind == b":":
        return int(line), at
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, at
        if len(buffer) < at + length + 2:
            raise _Incomplete()
        return buffer[at : at + length], at + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, at
        items = []
        for _ in range(count):
            item, at = parse(buffer, at)
            items.append(item)
        return items, at
    raise RedisError(f"not a Redis reply: {kind!r}")


@implementer(IHandshakeListener)
class RedisProtocol(protocol.Protocol):
    """Sends commands and fires their Deferreds with the replies, in order."""

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: deque[defer.Deferred[Reply]] = deque()
        self.lost: defer.Deferred[None] = defer.Deferred()
        # Whether the connection is TLS (the client says), and whether its
        # handshake is done (TLSMemoryBIOProtocol tells an IHandshakeListener).
        self.tls = False
        self.handshake_done = False

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def command(self, *args: bytes | str | int | float) -> defer.Deferred[Reply]:
        answer: defer.Deferred[Reply] = defer.Deferred()
        self._waiting.append(answer)
        assert self.transport is not None
        self.transport.write(encode(*args))
        return answer

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        at = 0
        try:
            while at < len(self._buffer):
                reply, at = parse(self._buffer, at)
                answer = self._waiting.popleft()
                if isinstance(reply, RedisError):
                    answer.errback(Failure(reply))
                else:
                    answer.callback(reply)
        except _Incomplete:
            pass
        except (ValueError, IndexError, RedisError):
            # Bytes that are no reply, or a reply nobody asked for.
            self._buffer = b""
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self._buffer = self._buffer[at:]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        waiting, self._waiting = self._waiting, deque()
        why = f"Redis connection lost: {reason.value}"
        if self.tls and not self.handshake_done:
            why = f"TLS handshake failed: {reason.value}"
        for answer in waiting:
            answer.errback(Failure(StoreError(why)))
        if not self.lost.called:
            self.lost.callback(None)

    def abandon(self, why: str) -> None:
        """Fail every command waiting, and drop the connection (its answers
        would now come out of order)."""
        waiting, self._waiting = self._waiting, deque()
        for answer in waiting:
            answer.errback(Failure(StoreError(why)))
        if self.transport is not None:
            abort = getattr(self.transport, "abortConnection", None)
            (abort or self.transport.loseConnection)()
        if not self.lost.called:
            self.lost.callback(None)


class RedisClient:
    """Commands to one Redis server, through ``endpoint``."""

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        description: str,
        setup: Callable[[], list[tuple[bytes | str | int, ...]]] = list,
        timeout: float = 2.0,
        tls: bool = False,
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self.description = description
        self._setup = setup
        self._timeout = timeout
        # Whether the endpoint speaks TLS (each connection is told, so that
        # one failing before its handshake is done says so).
        self._tls = tls
        self._protocol: RedisProtocol | None = None
        # The commands waiting for a connection being made.
        self._waiting: list[defer.Deferred[RedisProtocol]] = []
        # After a connection that could not be made: why, and until when
        # commands fail with that at once.
        self._down: tuple[StoreError, float] | None = None

    def command(self, *args: bytes | str | int | float) -> defer.Deferred[Reply]:
        """Send one command; its reply, or :class:`StoreError`."""
        if self._protocol is not None:
            sent = self._protocol.command(*args)
            return self._within_timeout(sent, self._protocol)
        if self._down is not None:
            error, until = self._down
            if self._clock.seconds() < until:
                return defer.fail(error)
            self._down = None
        connected = self._connect()
        return connected.addCallback(
            lambda proto: self._within_timeout(proto.command(*args), proto)
        )

    def _within_timeout(
        self, sent: defer.Deferred[Reply], proto: RedisProtocol
    ) -> defer.Deferred[Reply]:
        def expired() -> None:
            if proto.tls and not proto.handshake_done:
                proto.abandon(
                    f"{self.description}: TLS handshake failed: no TLS answer "
                    f"in {self._timeout} s (does the server speak TLS?)"
                )
            else:
                proto.abandon(f"{self.description}: no answer in {self._timeout} s")

        call = self._clock.callLater(self._timeout, expired)

        def answered(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return sent.addBoth(answered)

    def _connect(self) -> defer.Deferred[RedisProtocol]:
        ready: defer.Deferred[RedisProtocol] = defer.Deferred()
        self._waiting.append(ready)
        if len(self._waiting) == 1:
            self._open().addBoth(self._opened)
        return ready

    def _opened(self, result: Any) -> None:
        if isinstance(result, Failure) and isinstance(result.value, StoreError):
            self._down = (result.value, self._clock.seconds() + RETRY_AFTER)
        waiting, self._waiting = self._waiting, []
        for ready in waiting:
            if isinstance(result, Failure):
                ready.errback(result)
            else:
                ready.callback(result)

    @defer.inlineCallbacks
    def _open(self) -> Any:
        factory = protocol.Factory.forProtocol(RedisProtocol)
        factory.noisy = False  # no "Starting factory" at each reconnection
        attempt = self._endpoint.connect(factory)
        timer = self._clock.callLater(self._timeout, attempt.cancel)
        try:
            proto = yield attempt
            proto.tls = self._tls
        except Exception as error:
            raise StoreError(f"{self.description}: cannot connect: {error}") from None
        finally:
            if timer.active():
                timer.cancel()
        try:
            for setup_command in self._setup():
                yield self._within_timeout(proto.command(*setup_command), proto)
        except StoreError as error:
            proto.transport.loseConnection()
            raise StoreError(f"{self.description}: {error}") from None
        self._protocol = proto
        proto.lost.addCallback(self._forget, proto)
        return proto

    def _forget(self, _: None, proto: RedisProtocol) -> None:
        if self._protocol is proto:
            self._protocol = None

    def close(self) -> defer.Deferred[None]:
        """Drop the connection; fires once it is closed."""
        proto = self._protocol
        if proto is None or proto.transport is None:
            return defer.succeed(None)
        proto.transport.loseConnection()
        return proto.lost
