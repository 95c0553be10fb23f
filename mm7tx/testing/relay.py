"""An in-memory SMTP relay that can be told to refuse, hang or drop at any
stage: :class:`MemorySMTPRelay`, Twisted's ESMTP server on a
:class:`~mm7tx.testing.reactor.MemoryReactor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
)
from twisted.mail import smtp
from zope.interface import implementer

from mm7tx.testing.reactor import MemoryReactor
from mm7tx.testing.smtp import ReceivedMail, RecordingDelivery, RecordingESMTP

Stage = Literal["greeting", "mail", "rcpt", "data", "message", "end"]
"""Where a relay fault strikes: the greeting; the reply to MAIL FROM, to
RCPT TO or to the DATA command; while the message comes in (mid-DATA); the
reply after the message's final dot."""

Action = Literal["refuse", "hang", "drop", "close"]
"""``refuse``: answer ``code`` instead; ``hang``: never answer again (read
and ignore everything); ``drop``: close the connection instead of answering;
``close``: answer as usual, then close."""

_STAGES = ("greeting", "mail", "rcpt", "data", "message", "end")


@dataclass(frozen=True, slots=True)
class SMTPFault:
    """One fault of a :class:`MemorySMTPRelay` (see :data:`Stage`, :data:`Action`).
    ``recipient`` limits a ``rcpt`` fault to one address."""

    stage: Stage
    action: Action
    code: int = 0
    text: str = ""
    recipient: str | None = None


class _RelayServer(RecordingESMTP):
    relay: MemorySMTPRelay
    _stalled = False  # hung: reads and ignores everything
    _muted = False
    _reply_instead: tuple[int, bytes] | None = None
    _last_code: int | None = None
    _illegal_line = False  # strict: this message has a line RFC 5321 forbids

    def sendCode(self, code: int, message: bytes = b"") -> None:
        if self._muted or self._stalled:
            return
        if self._reply_instead is not None:
            (code, message), self._reply_instead = self._reply_instead, None
        self._last_code = code
        super().sendCode(code, message)

    def connectionMade(self) -> None:
        fault = self.relay.fault_at("greeting")
        if fault is None or fault.action == "close":
            super().connectionMade()
            if fault is not None:
                self.transport.loseConnection()  # type: ignore[union-attr]
        elif fault.action == "hang":
            self._stalled = True
        elif fault.action == "drop":
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self._reply_instead = (fault.code, _text(fault))
            super().connectionMade()
            self.transport.loseConnection()  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> Any:
        if self._stalled:
            return None
        stage, recipient = self._stage_of(line)
        if stage == "message" and self.relay.strict and not _legal_line(line):
            self._illegal_line = True
        fault = self.relay.fault_at(stage, recipient) if stage else None
        if fault is None and stage == "end" and self._illegal_line:
            fault = SMTPFault("end", "refuse", 500, "5.5.2 Line too long")
        if stage == "end":
            self._illegal_line = False
        if fault is None:
            return self._received(stage, line)
        if fault.action == "hang":
            if stage == "end":
                self._received(stage, line, muted=True)  # taken, never answered
            self._stalled = True
        elif fault.action == "drop":
            if stage == "end":
                self._received(stage, line, muted=True)  # taken, then dropped
            self._stalled = True
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif fault.action == "close":
            self._received(stage, line)
            self._stalled = True
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif stage == "end":
            self._reply_instead = (fault.code, _text(fault))
            self._received(stage, line)
        else:
            self.sendCode(fault.code, _text(fault))
            if fault.code == 421:
                self._stalled = True
                self.transport.loseConnection()  # type: ignore[union-attr]
        return None

    def _received(self, stage: str | None, line: bytes, muted: bool = False) -> Any:
        self._muted = muted
        try:
            result = super().lineReceived(line)
        finally:
            self._muted = False
        if stage == "end" and self.current_mail is not None:
            self.current_mail.reply = None if muted else self._last_code
        return result

    def _stage_of(self, line: bytes) -> tuple[Stage | None, str | None]:
        if self.mode == smtp.DATA:
            return ("end" if line == b"." else "message"), None
        command = line.strip().split(None, 1)
        verb = command[0].upper() if command else b""
        if verb == b"MAIL":
            return "mail", None
        if verb == b"RCPT":
            rest = command[1] if len(command) > 1 else b""
            address = rest.partition(b"<")[2].partition(b">")[0]
            return "rcpt", address.decode("utf-8", "replace")
        if verb == b"DATA":
            return "data", None
        return None, None


def _legal_line(line: bytes) -> bool:
    """Whether a line of DATA (as sent, without its CRLF) is one RFC 5321
    allows: at most 998 octets (4.5.3.1.6), no CR or LF but in the CRLF
    that ends it (2.3.8)."""
    return len(line) <= 998 and b"\r" not in line and b"\n" not in line


def _text(fault: SMTPFault) -> bytes:
    return (fault.text or f"mm7tx test relay: {fault.action} at {fault.stage}").encode()


class MemorySMTPRelay:
    """Twisted's real ESMTP server, listening in memory on a
    :class:`MemoryReactor` at ``host:port`` (reach it with the endpoint
    string :attr:`endpoint`), keeping every transaction in :attr:`received`.
    It offers PIPELINING unless ``pipelining`` is false, and SMTPUTF8
    (RFC 6531: UTF-8 addresses) if ``smtputf8`` is true.  ``strict`` makes
    it refuse a message with a line RFC 5321 forbids (over 998 octets, or
    with a bare CR or LF) with ``500 5.5.2 Line too long`` after its final
    dot, as a strict relay does.

    Faults (:meth:`refuse`, :meth:`hang`, :meth:`drop`, :meth:`close_after`)
    apply to every later session and transaction until :meth:`clear`; the
    most recent matching one wins.  :meth:`stop` makes it unreachable.
    """

    def __init__(
        self,
        reactor: MemoryReactor,
        host: str = "relay.test",
        port: int = 25,
        *,
        pipelining: bool = True,
        smtputf8: bool = False,
        strict: bool = False,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.pipelining = pipelining
        self.smtputf8 = smtputf8
        self.strict = strict
        self.delivery = RecordingDelivery()
        self.faults: list[SMTPFault] = []
        self.sessions: list[_RelayServer] = []
        self._listening: IListeningPort | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        """The client endpoint string for this relay, e.g. ``tcp:relay.test:25``."""
        return f"tcp:{self.host}:{self.port}"

    @property
    def received(self) -> list[ReceivedMail]:
        """Every transaction whose message came in whole, in order, each with
        the reply the relay gave it (``None`` if it never answered)."""
        return self.delivery.received

    @property
    def accepted(self) -> list[ReceivedMail]:
        """The messages the relay answered 250: those it is responsible for."""
        return [m for m in self.received if m.reply is not None and m.reply < 300]

    @property
    def open_sessions(self) -> list[_RelayServer]:
        """The sessions still connected."""
        return [
            s
            for s in self.sessions
            if s.transport is not None
            and not getattr(s.transport, "disconnected", False)
        ]

    # Up and down.

    def start(self) -> None:
        """Listen (again)."""
        if self._listening is None:
            self._listening = self.reactor.listenTCP(
                self.port, _RelayFactory(self), interface=self.host
            )

    def stop(self) -> None:
        """Stop listening and close every session: the relay is unreachable."""
        if self._listening is not None:
            self._listening.stopListening()
            self._listening = None
        for session in self.open_sessions:
            session.transport.loseConnection()  # type: ignore[union-attr]

    # Faults.

    def refuse(
        self, stage: Stage, code: int, text: str = "", recipient: str | None = None
    ) -> None:
        """Answer ``code`` at ``stage`` (``greeting``, ``mail``, ``rcpt``,
        ``data`` or ``end``, i.e. after the message); for ``rcpt``, only to
        ``recipient`` if given.  A 421 closes the connection too."""
        if stage == "message":
            raise ValueError("nothing is answered while the message comes in")
        self._add(SMTPFault(stage, "refuse", code, text, recipient))

    def hang(self, stage: Stage, recipient: str | None = None) -> None:
        """Never answer from ``stage`` on (``message``: mid-DATA; ``end``:
        after taking the message); the connection stays open."""
        self._add(SMTPFault(stage, "hang", recipient=recipient))

    def drop(self, stage: Stage, recipient: str | None = None) -> None:
        """Close the connection instead of answering at ``stage``
        (``message``: mid-DATA; ``end``: after taking the message, before
        answering 250)."""
        self._add(SMTPFault(stage, "drop", recipient=recipient))

    def close_after(self, stage: Stage) -> None:
        """Answer at ``stage`` as usual, then close (``end``: after 250)."""
        self._add(SMTPFault(stage, "close"))

    def clear(self) -> None:
        """No more faults."""
        self.faults.clear()

    def _add(self, fault: SMTPFault) -> None:
        if fault.stage not in _STAGES:
            raise ValueError(f"no SMTP stage {fault.stage!r}: one of {_STAGES}")
        self.faults.append(fault)

    def fault_at(self, stage: Stage, recipient: str | None = None) -> SMTPFault | None:
        """The fault that applies at ``stage`` (for ``recipient``), if any."""
        for fault in reversed(self.faults):
            if fault.stage == stage and fault.recipient in (None, recipient):
                return fault
        return None


@implementer(IProtocolFactory)
class _RelayFactory(smtp.SMTPFactory):
    def __init__(self, relay: MemorySMTPRelay) -> None:
        super().__init__()
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _RelayServer:
        relay = self.relay
        p = _RelayServer()
        p.factory = self
        p.relay = relay
        p.delivery = relay.delivery
        p.pipelining = relay.pipelining
        p.smtputf8 = relay.smtputf8
        p.host = relay.host.encode()
        # Its timeout on the test's clock.
        p.callLater = relay.reactor.callLater  # type: ignore[method-assign, assignment]
        relay.sessions.append(p)
        return p
