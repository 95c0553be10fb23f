"""A real SMTP server for bench/faults.py, whose behaviour can be switched.

    python bench/smtp_sink.py --port 2525 --dir OUT --control MODEFILE

Each accepted message is written to OUT as one ``.eml`` file.  The first word
of MODEFILE, read at every step, picks the behaviour: ``ok``; ``busy`` (451 to
MAIL FROM); ``greet421`` (421 at once, then close); ``hang`` (take the data,
never answer the final dot, keep nothing).  ``--delay SECONDS`` answers the
final dot that much later (a relay writing to a slow disk), keeping the
message only as it answers 250, so that a message is kept exactly when its
sender was told so.
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, reactor, task
from twisted.mail import smtp
from zope.interface import implementer


def mode(control: Path) -> str:
    try:
        return control.read_text().split()[0]
    except (OSError, IndexError):
        return "ok"


@implementer(smtp.IMessage)
class Message:
    def __init__(self, out: Path, control: Path, delay: float = 0.0) -> None:
        self.out, self.control, self.delay = out, control, delay
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[bytes]:
        if mode(self.control) == "hang":
            return defer.Deferred()  # never answered
        if self.delay:
            return task.deferLater(reactor, self.delay, self._keep)
        return defer.succeed(self._keep())

    def _keep(self) -> bytes:
        path = self.out / f"{uuid.uuid4().hex}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"\n".join(self.lines) + b"\n")
        os.replace(tmp, path)
        return b"kept"

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class Delivery:
    def __init__(self, out: Path, control: Path, delay: float = 0.0) -> None:
        self.out, self.control, self.delay = out, control, delay

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: by smtp_sink"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        if mode(self.control) == "busy":
            raise smtp.SMTPServerError(451, "busy, try later")
        return origin

    def validateTo(self, user: Any) -> Any:
        # One file per message, not per recipient: keep only the first.
        if getattr(user.protocol, "_kept_one", False):
            return lambda: Discard()
        user.protocol._kept_one = True
        return lambda: Message(self.out, self.control, self.delay)


@implementer(smtp.IMessage)
class Discard:
    def lineReceived(self, line: bytes) -> None:
        pass

    def eomReceived(self) -> defer.Deferred[bytes]:
        return defer.succeed(b"ok")

    def connectionLost(self) -> None:
        pass


class Server(smtp.ESMTP):
    def connectionMade(self) -> None:
        if mode(self.factory.control) == "greet421":
            assert self.transport is not None
            self.transport.write(b"421 closing, try later\r\n")
            self.transport.loseConnection()
            return
        super().connectionMade()

    def extensions(self) -> dict[bytes, Any]:
        offered: dict[bytes, Any] = super().extensions()
        if self.factory.pipelining:
            offered[b"PIPELINING"] = None
        return offered

    def do_MAIL(self, rest: bytes) -> Any:
        self._kept_one = False
        return super().do_MAIL(rest)


def main(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    out, control = Path(args.dir), Path(args.control)
    out.mkdir(parents=True, exist_ok=True)
    factory = smtp.SMTPFactory()
    factory.protocol = Server
    factory.control = control  # type: ignore[attr-defined]
    factory.pipelining = args.pipelining  # type: ignore[attr-defined]
    delivery = Delivery(out, control, args.delay)
    build = factory.buildProtocol

    def buildProtocol(addr: Any) -> Any:
        p = build(addr)
        p.delivery = delivery
        return p

    factory.buildProtocol = buildProtocol  # type: ignore[method-assign]
    endpoint = endpoints.TCP4ServerEndpoint(reactor, args.port, interface="127.0.0.1")
    endpoint.listen(factory)
    return defer.Deferred()  # run until killed


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--pipelining", action="store_true", help="offer PIPELINING")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds before each final 250"
    )
    task.react(main, (parser.parse_args(),))
    _ = reactor
