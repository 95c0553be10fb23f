"""An ESMTP server protocol on ``twisted.mail.smtp.ESMTP`` that leaves every
decision to an :class:`~mm7tx.interfaces.IMailPolicy` and keeps SMTP's
contract where Twisted's server does not (each fix marked below, with its
upstream draft in ``docs/upstream-twisted-*.md``).

It offers SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES, DSN, STARTTLS
(given a TLS context factory) and AUTH PLAIN/LOGIN (given a portal; only
over TLS unless the peer is on loopback; guessing bounded per connection
and, with a throttle, per address).  Time goes through the reactor it
is given."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.mail._cred import LOGINCredentials, PLAINCredentials
from twisted.mail._except import IllegalClientResponse
from twisted.mail.smtp import ESMTP, SMTP, Address, AddressError
from twisted.python.failure import Failure
from zope.interface import implementer

from mm7tx.interfaces import FailedLogins, IMailPolicy, ISMTPSession, ISMTPSubmitter
from mm7tx.smtp.parameters import (
    Envelope,
    ParameterError,
    SMTPReply,
    parse_mail_parameters,
    parse_rcpt_parameters,
)

log = Logger()

MAX_HOPS = 25  # RFC 5321 6.3: a loop is likely past this many Received:
MAX_RECIPIENTS = 1000  # RFC 5321 4.5.3.1.8 asks for at least 100
_COMMAND_LINE_MAX = 2048  # RFC 5321 says 512; lenient, still bounded
_AUTH_LINE_MAX = 12288  # RFC 4954 4
_DATA_LINE_MAX = 65536  # RFC 5322 says 998; longer lines pass if they fit
_PIECE = 65536  # the message is kept in pieces of about this size

# Default enhanced codes (RFC 3463) for replies given without one.
_ENHANCED_DEFAULTS = {
    221: b"2.0.0",
    250: b"2.0.0",
    235: b"2.7.0",
    220: b"2.0.0",
    421: b"4.3.0",
    451: b"4.3.0",
    454: b"4.7.0",
    500: b"5.5.2",
    501: b"5.5.4",
    502: b"5.5.1",
    503: b"5.5.1",
    504: b"5.5.4",
    535: b"5.7.8",
}
_HAS_ENHANCED = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}( |$)")


@implementer(ISMTPSession)
class Session:
    """One connection's state as the policy sees it (ISMTPSession)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.helo: str | None = None
        self.tls = False
        self.avatar: Any = None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ESMTPServer(ESMTP):
    """One SMTP connection.  The protocol is Twisted's; commands, the
    message and the replies are ours, so that every decision is the
    policy's and every reply is the one SMTP's contract asks for."""

    # The message being read, from DATA to the final dot.
    _pieces: list[bytes]
    _piece: bytearray
    _size: int
    _hops: int
    _in_headers: bool
    _data_error: SMTPReply | None

    def __init__(
        self,
        policy: IMailPolicy,
        reactor: IReactorTime,
        *,
        hostname: str,
        max_size: int,
        portal: Portal | None = None,
        tls: Any = None,
        timeout: int = 300,
        max_auth_failures: int = 3,
        throttle: FailedLogins | None = None,
    ) -> None:
        super().__init__({b"PLAIN": PLAINCredentials, b"LOGIN": LOGINCredentials}, tls)
        self.policy = policy
        self.reactor = reactor
        self.callLater = reactor.callLater  # type: ignore[method-assign,assignment]
        self.host = hostname.encode("idna")
        self.max_size = max_size
        self.portal = portal  # type: ignore[assignment]
        self.timeout = timeout
        self.max_auth_failures = max_auth_failures
        self.throttle = throttle
        self.session = Session("")
        self.envelope: Envelope | None = None
        self._buffer = b""
        self._waiting = False  # a reply is pending: lines stay in _buffer
        self._draining = False
        self._skipping = False  # discarding the rest of an overlong line
        self._discard_buffer = False
        self._lost = False
        self._auth_failures = 0
        self._greeted = False
        self._start_data()

    # -- connection --------------------------------------------------------

    @property
    def _t(self) -> Any:
        """The transport, typed loosely: TCP, TLS or a test's."""
        return self.transport

    def connectionMade(self) -> None:
        peer = self._t.getPeer()
        self.session = Session(str(getattr(peer, "host", peer)))
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        connections = getattr(self.factory, "connections", None)
        if connections is not None:
            connections.discard(self)
        self._pieces = []
        self._piece = bytearray()
        super().connectionLost(reason)

    @property
    def pending(self) -> bool:
        """Whether a reply is still to come (the policy is deciding)."""
        return self._waiting

    def shut_down(self) -> None:
        """The service stops: 421 4.3.2 and close, the policy's reply still
        pending (if any) never sent."""
        if self._lost or self._t.disconnecting:
            return
        self._reply(SMTPReply(421, "4.3.2", f"{self._name} shutting down"))
        self._lost = True
        self._t.loseConnection()

    def timeoutConnection(self) -> None:
        self._reply(SMTPReply(421, "4.4.2", f"{self._name} Idle timeout, closing"))
        self._t.loseConnection()

    @property
    def _name(self) -> str:
        return str(self.host.decode("ascii", "replace"))

    # -- Twisted fix: commands pipelined behind a pending reply ----------------
    # Twisted answers each line as it is parsed: a command pipelined behind
    # one whose answer is a Deferred (validateFrom, validateTo, eomReceived)
    # is answered first, or finds state not yet set (RCPT before MAIL's
    # validation: 503), and after the final dot it is back in command mode
    # at once.  Here no line is read while a reply is pending: they stay in
    # the buffer, the transport is paused, and reading resumes once the reply
    # is sent.  docs/upstream-twisted-pipelining-order.md

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._buffer += data
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        buffer, pos = self._buffer, 0
        try:
            while not (self._waiting or self._lost or self._t.disconnecting):
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break
                line, pos = buffer[pos:end], end + 2
                if self._skipping:
                    self._skipping = False
                elif len(line) > self._line_limit():
                    self._line_too_long()
                else:
                    self.lineReceived(line)
                if self._discard_buffer:
                    self._discard_buffer = False
                    pos = len(buffer)
        finally:
            self._buffer = buffer[pos:]
            self._draining = False
        if not self._waiting and len(self._buffer) > self._line_limit():
            self._buffer = b""
            if not self._skipping:
                self._skipping = True
                self._line_too_long()

    def _line_limit(self) -> int:
        if self.mode == "DATA":
            return _DATA_LINE_MAX
        return _AUTH_LINE_MAX if self.mode == "AUTH" else _COMMAND_LINE_MAX

    def _line_too_long(self) -> None:
        if self.mode == "DATA":
            self._data_error = self._data_error or SMTPReply(
                500, "5.5.2", f"Line too long (over {_DATA_LINE_MAX} bytes)"
            )
        else:
            self.mode = "COMMAND"
            self._reply(SMTPReply(500, "5.5.2", "Line too long"))

    def lineReceived(self, line: bytes) -> Any:
        return getattr(self, "state_" + self.mode)(line)

    def _ask(self, decide: Any, then: Any) -> None:
        """Hold further lines until ``decide()``'s reply is sent by ``then``."""
        self._waiting = True
        self.setTimeout(None)
        self._t.pauseProducing()
        d: Deferred[Any] = maybeDeferred(decide)
        d.addCallback(_checked)
        d.addErrback(self._policy_failed)
        d.addCallback(lambda reply: None if self._lost else then(reply))
        d.addErrback(lambda f: log.failure("ESMTP server: answering", f))
        d.addBoth(lambda _: self._resume())

    def _policy_failed(self, failure: Failure) -> SMTPReply:
        log.failure("ESMTP server: the mail policy failed", failure)
        return SMTPReply(451, "4.3.0", "Local error in processing, try again later")

    def _resume(self) -> None:
        self._waiting = False
        if self._lost or self._t.disconnecting:
            return
        self.setTimeout(self.timeout)
        self._t.resumeProducing()
        self._drain()

    # -- Twisted fix: enhanced status codes (RFC 2034) ---------------------------
    # Twisted's replies have none; every reply but the greeting, EHLO/HELO's,
    # 334 challenges and 354 gets one here, a default by code where the
    # text does not start with one.  docs/upstream-twisted-enhanced-codes.md

    def sendCode(self, code: int, message: bytes = b"") -> None:
        if code == 220 and not self._greeted:
            self._greeted = True  # the greeting has none (RFC 2034 3)
        elif code in _ENHANCED_DEFAULTS and not _HAS_ENHANCED.match(message):
            message = _ENHANCED_DEFAULTS[code] + b" " + message
        super().sendCode(code, message)

    def _reply(self, reply: SMTPReply) -> None:
        self.sendCode(reply.code, reply.line())

    def greeting(self) -> bytes:
        return bytes(self.host) + b" ESMTP"

    # -- HELO, EHLO -----------------------------------------------------------

    def extensions(self) -> dict[bytes, list[bytes] | None]:
        found: dict[bytes, list[bytes] | None] = {
            b"SIZE": [str(self.max_size).encode()],
            b"8BITMIME": None,
            b"PIPELINING": None,
            b"ENHANCEDSTATUSCODES": None,
            b"DSN": None,
        }
        if self.canStartTLS and not self.startedTLS:
            found[b"STARTTLS"] = None
        if self._auth_allowed() and not self.authenticated:
            found[b"AUTH"] = [b"PLAIN", b"LOGIN"]
        return found

    def _auth_allowed(self) -> bool:
        return self.portal is not None and (
            self.startedTLS or _is_loopback(self.session.peer)
        )

    def do_HELO(self, rest: bytes, extended: bool = False) -> None:
        if not rest.strip():
            self._reply(SMTPReply(501, "5.5.4", "HELO/EHLO needs a domain"))
            return
        self.envelope = None
        self.session.helo = rest.strip().decode("utf-8", "replace")

        def then(reply: SMTPReply) -> None:
            if not reply.positive:
                self.session.helo = None
                self._reply(reply)
                return
            text = self.host + b" Hello " + self.session.peer.encode("ascii", "replace")
            if extended:
                text += b"\n" + self.listExtensions()
            SMTP.sendCode(self, 250, text)

        self._ask(lambda: self.policy.helo(self.session), then)

    def do_EHLO(self, rest: bytes) -> None:
        self.do_HELO(rest, extended=True)

    def do_RSET(self, rest: bytes) -> None:
        self.envelope = None
        self._reply(SMTPReply(250, "2.0.0", "Reset"))

    def do_NOOP(self, rest: bytes) -> None:
        self._reply(SMTPReply(250, "2.0.0", "OK"))

    def do_QUIT(self, rest: bytes) -> None:
        self._reply(SMTPReply(221, "2.0.0", f"{self._name} closing connection"))
        self._t.loseConnection()

    def do_VRFY(self, rest: bytes) -> None:
        self._reply(SMTPReply(502, "5.5.1", "VRFY not implemented"))

    def do_UNKNOWN(self, rest: bytes) -> None:
        self._reply(SMTPReply(500, "5.5.2", "Command not recognized"))

    def sendSyntaxError(self) -> None:
        self._reply(SMTPReply(500, "5.5.2", "Syntax error"))

    # -- Twisted fix: MAIL and RCPT parameters -----------------------------------
    # Twisted's mail_re and rcpt_re match the parameters and drop them; here
    # they are parsed (mm7tx.smtp.parameters), refused when unknown (555
    # 5.5.4) and given to the policy.  docs/upstream-twisted-mail-parameters.md

    def do_MAIL(self, rest: bytes) -> None:
        if self.session.helo is None:
            self._reply(SMTPReply(503, "5.5.1", "Send HELO or EHLO first"))
            return
        if self.envelope is not None:
            self._reply(SMTPReply(503, "5.5.1", "Nested MAIL command"))
            return
        match = self.mail_re.match(rest)
        if match is None:
            self._reply(SMTPReply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        try:
            address = _address(match.group("path"))
            parameters = parse_mail_parameters(
                match.group("opts") or b"", self.max_size
            )
        except ParameterError as e:
            self._reply(e.reply)
            return

        def then(reply: SMTPReply) -> None:
            if reply.positive:
                self.envelope = Envelope(address, parameters)
            self._reply(reply)

        self._ask(
            lambda: self.policy.mail_from(self.session, address, parameters), then
        )

    def do_RCPT(self, rest: bytes) -> None:
        envelope = self.envelope
        if envelope is None:
            self._reply(SMTPReply(503, "5.5.1", "Need MAIL before RCPT"))
            return
        if len(envelope.recipients) >= MAX_RECIPIENTS:
            self._reply(SMTPReply(452, "4.5.3", "Too many recipients"))
            return
        match = self.rcpt_re.match(rest)
        if match is None:
            self._reply(SMTPReply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        try:
            address = _address(match.group("path"))
            parameters = parse_rcpt_parameters(match.group("opts") or b"")
        except ParameterError as e:
            self._reply(e.reply)
            return

        def then(reply: SMTPReply) -> None:
            if reply.positive and self.envelope is envelope:
                self.envelope = envelope.with_recipient(address, parameters)
            self._reply(reply)

        self._ask(
            lambda: self.policy.rcpt_to(self.session, envelope, address, parameters),
            then,
        )

    # -- DATA -----------------------------------------------------------------
    # The size is counted while reading and nothing is kept past the limit;
    # Received: headers are counted in the header section.

    def do_DATA(self, rest: bytes) -> None:
        if rest.strip():
            self._reply(SMTPReply(501, "5.5.4", "DATA takes no argument"))
            return
        if self.envelope is None or not self.envelope.recipients:
            self._reply(SMTPReply(554, "5.5.1", "No valid recipients"))
            return
        self._start_data()
        self._piece += self._received_header(self.envelope)
        self.mode = "DATA"
        SMTP.sendCode(self, 354, b"End data with <CR><LF>.<CR><LF>")

    def _start_data(self) -> None:
        self._pieces = []
        self._piece = bytearray()
        self._size = 0
        self._hops = 0
        self._in_headers = True
        self._data_error = None

    def state_DATA(self, line: bytes) -> None:
        if line[:1] == b".":
            if line == b".":
                self._end_data()
                return
            line = line[1:]
        self._size += len(line) + 2
        if self._in_headers:
            if not line:
                self._in_headers = False
            elif line[:9].lower() == b"received:":
                self._hops += 1
        if self._data_error is not None:
            return
        if self._size > self.max_size:
            self._data_error = SMTPReply(
                552, "5.3.4", f"Message too large: the limit is {self.max_size} bytes"
            )
            self._pieces, self._piece = [], bytearray()
        elif self._hops > MAX_HOPS:
            self._data_error = SMTPReply(
                554, "5.4.6", f"Too many hops (over {MAX_HOPS} Received: headers)"
            )
            self._pieces, self._piece = [], bytearray()
        else:
            self._piece += line
            self._piece += b"\r\n"
            if len(self._piece) >= _PIECE:
                self._pieces.append(bytes(self._piece))
                self._piece = bytearray()

    # -- Twisted fix: the reply to the message is the policy's -------------------
    # Twisted answers 550 to any failure of IMessage.eomReceived, so a
    # temporary failure bounces the mail.  Here the policy's reply is sent as
    # it gives it (4xx or 5xx, with its enhanced code); a failure of the
    # policy itself is 451 4.3.0.  docs/upstream-twisted-eom-reply.md

    def _end_data(self) -> None:
        self.mode = "COMMAND"
        envelope, self.envelope = self.envelope, None
        error = self._data_error
        pieces = (
            (*self._pieces, bytes(self._piece)) if self._piece else tuple(self._pieces)
        )
        self._start_data()
        if error is not None or envelope is None:
            self._reply(error or SMTPReply(503, "5.5.1", "No transaction"))
            return
        self._ask(
            lambda: self.policy.message(self.session, envelope, pieces), self._reply
        )

    def _received_header(self, envelope: Envelope) -> bytes:
        protocol = "ESMTP" + ("S" if self.startedTLS else "")
        protocol += "A" if self.session.avatar is not None else ""
        when = format_datetime(datetime.fromtimestamp(self.reactor.seconds(), UTC))
        helo = re.sub(r"[^\x21-\x7e]", "?", self.session.helo or "")
        recipient = ""
        if len(envelope.recipients) == 1:
            recipient = f"\r\n\tfor <{envelope.recipients[0][0]}>"
        text = (
            f"Received: from {helo} ([{self.session.peer}])\r\n"
            f"\tby {self._name} (mm7tx) with {protocol}{recipient};\r\n\t{when}\r\n"
        )
        return text.encode("utf-8", "replace")

    # -- STARTTLS and AUTH ----------------------------------------------------

    def ext_STARTTLS(self, rest: bytes) -> None:
        if rest.strip():
            self._reply(SMTPReply(501, "5.5.4", "STARTTLS takes no argument"))
            return
        if not self.startedTLS and self.ctx is not None and self.canStartTLS:
            # RFC 3207 4.2: forget all of the plain-text session, including
            # anything pipelined behind STARTTLS.
            self._discard_buffer = True
            self.envelope = None
            self.session.helo = None
            self.session.tls = True
        super().ext_STARTTLS(rest)

    def ext_AUTH(self, rest: bytes) -> None:
        if self.portal is None:
            self._reply(SMTPReply(502, "5.5.1", "AUTH not available"))
            return
        if not self._auth_allowed():
            self._reply(
                SMTPReply(538, "5.7.11", "Encryption required: use STARTTLS first")
            )
            return
        if self.authenticated or self.envelope is not None:
            self._reply(SMTPReply(503, "5.5.1", "AUTH not allowed now"))
            return
        locked = self._locked_out()
        if locked is not None:
            self._reply(locked)
            return
        parts = rest.split(None, 1)
        factory = self.challengers.get(parts[0].upper() if parts else b"")
        if factory is None:
            self._reply(SMTPReply(504, "5.5.4", "Use AUTH PLAIN or LOGIN"))
            return
        self.challenger = factory()
        self.mode = "AUTH"
        if len(parts) > 1:
            self.challenger.getChallenge()
            # RFC 4954 4: "=" is an empty initial response.
            self.state_AUTH(b"" if parts[1] == b"=" else parts[1])
        else:
            self.state_AUTH(None)

    def state_AUTH(self, response: bytes | None) -> None:
        challenger: Any = self.challenger
        if response is None:
            SMTP.sendCode(self, 334, base64.b64encode(challenger.getChallenge()))
            return
        self.mode = "COMMAND"
        if response == b"*":
            self._reply(SMTPReply(501, "5.0.0", "Authentication aborted"))
            return
        try:
            challenger.setResponse(base64.b64decode(response, validate=True))
        except (binascii.Error, IllegalClientResponse):
            self._reply(SMTPReply(501, "5.5.2", "Cannot decode the response"))
            return
        if challenger.moreChallenges():
            self.mode = "AUTH"
            SMTP.sendCode(self, 334, base64.b64encode(challenger.getChallenge()))
            return
        portal = self.portal
        assert portal is not None
        locked = self._locked_out()
        if locked is not None:
            # Locked out while this AUTH was under way (by another
            # connection): no password is checked for a guesser.
            self._reply(locked)
            return

        def then(reply: SMTPReply) -> None:
            self._reply(reply)
            if reply.code == 421:
                self._t.loseConnection()

        self._ask(
            lambda: portal.login(challenger, None, ISMTPSubmitter).addCallbacks(
                self._logged_in, self._login_failed
            ),
            then,
        )

    def _locked_out(self) -> SMTPReply | None:
        """454 4.7.0 while the peer's address is locked out for failed
        logins (on any connection, SMTP or HTTP)."""
        if self.throttle is None:
            return None
        locked = self.throttle.locked(self.session.peer)
        if not locked:
            return None
        wait = max(1, round(locked))
        return SMTPReply(454, "4.7.0", f"Too many failed logins, wait {wait} s")

    def _logged_in(self, result: tuple[Any, Any, Any]) -> SMTPReply:
        _, avatar, logout = result
        self.session.avatar = avatar
        self.authenticated = True
        self._onLogout = logout
        return SMTPReply(235, "2.7.0", "Authentication successful")

    def _login_failed(self, failure: Failure) -> SMTPReply:
        if not failure.check(UnauthorizedLogin):
            log.failure("ESMTP server: AUTH", failure)
            return SMTPReply(454, "4.7.0", "Temporary authentication failure")
        self._auth_failures += 1
        log.info(
            "ESMTP server: AUTH refused from {peer} ({count})",
            peer=self.session.peer,
            count=self._auth_failures,
        )
        if self.throttle is not None and self.throttle.failed(self.session.peer):
            log.warn(
                "ESMTP server: locking {peer} out for {lockout:g} s",
                peer=self.session.peer,
                lockout=self.throttle.lockout,
            )
            return SMTPReply(421, "4.7.0", "Too many failed authentications")
        if self._auth_failures >= self.max_auth_failures:
            return SMTPReply(421, "4.7.0", "Too many failed authentications")
        return SMTPReply(535, "5.7.8", "Authentication credentials invalid")


def _address(path: bytes) -> str:
    """The address of a MAIL/RCPT path (``""`` for ``<>``); 553 5.1.3 if
    Twisted's :class:`Address` cannot read it."""
    try:
        return str(Address(path))
    except (AddressError, UnicodeDecodeError) as e:
        raise ParameterError(SMTPReply(553, "5.1.3", f"Bad address: {e}")) from None


def _checked(reply: object) -> SMTPReply:
    if not isinstance(reply, SMTPReply):
        raise TypeError(f"the mail policy answered {reply!r}, not an SMTPReply")
    return reply


class ESMTPServerFactory(ServerFactory):
    """Builds an :class:`ESMTPServer` per connection, all sharing one
    policy, reactor, portal and TLS context factory; ``connections`` holds
    the open ones (:meth:`shut_down` ends them).  A new ``policy`` or
    ``portal`` set here applies to the connections made from then on."""

    # The service logs the listener it starts; "Starting factory <…>" says
    # nothing more.
    noisy = False

    def __init__(
        self,
        policy: IMailPolicy,
        reactor: IReactorTime,
        *,
        hostname: str,
        max_size: int,
        portal: Portal | None = None,
        tls: Any = None,
        timeout: int = 300,
        max_auth_failures: int = 3,
        throttle: FailedLogins | None = None,
    ) -> None:
        self.policy = policy
        self.reactor = reactor
        self.options: dict[str, Any] = {
            "hostname": hostname,
            "max_size": max_size,
            "portal": portal,
            "tls": tls,
            "timeout": timeout,
            "max_auth_failures": max_auth_failures,
            "throttle": throttle,
        }
        self.connections: set[ESMTPServer] = set()

    @property
    def portal(self) -> Portal | None:
        portal: Portal | None = self.options["portal"]
        return portal

    @portal.setter
    def portal(self, portal: Portal | None) -> None:
        self.options["portal"] = portal

    def buildProtocol(self, addr: Any) -> ESMTPServer:
        protocol = ESMTPServer(self.policy, self.reactor, **self.options)
        protocol.factory = self
        self.connections.add(protocol)
        return protocol

    def shut_down(self) -> None:
        """421 4.3.2 to every open connection, and close it."""
        for protocol in list(self.connections):
            protocol.shut_down()
