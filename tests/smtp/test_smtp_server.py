"""The ESMTP server protocol (mm7tx.smtp.server) over StringTransport on a
Clock: every reply it gives itself, and the policy's replies sent as given.
swaks talks to it over a real socket in tests/loopback/test_smtp_server.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from zope.interface import directlyProvides, implementer
from zope.interface.verify import verifyObject

from mm7tx.http.limits import LoginThrottle
from mm7tx.interfaces import IMailPolicy, ISMTPSession, ISMTPSubmitter
from mm7tx.smtp.parameters import (
    Envelope,
    MailParameters,
    ParameterError,
    RecipientParameters,
    SMTPReply,
    parse_mail_parameters,
    parse_rcpt_parameters,
    xtext_decode,
)
from mm7tx.smtp.server import ESMTPServerFactory

OK = SMTPReply(250, "2.0.0", "OK")


@implementer(IMailPolicy)
class Policy:
    """Answers 250 to everything, or what ``replies`` names per method;
    with ``delay``, each answer fires that many seconds later on ``clock``."""

    def __init__(self, clock: Clock, delay: float = 0, **replies: Any) -> None:
        self.clock = clock
        self.delay = delay
        self.replies = replies
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _answer(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        reply = self.replies.get(method, OK)
        if isinstance(reply, Exception):
            raise reply
        if not self.delay:
            return reply
        d: Deferred[SMTPReply] = Deferred()
        self.clock.callLater(self.delay, d.callback, reply)
        return d

    def helo(self, session: Any) -> Any:
        return self._answer("helo", session)

    def mail_from(self, session: Any, address: str, parameters: Any) -> Any:
        return self._answer("mail_from", address, parameters)

    def rcpt_to(
        self, session: Any, envelope: Any, address: str, parameters: Any
    ) -> Any:
        return self._answer("rcpt_to", envelope, address, parameters)

    def message(self, session: Any, envelope: Any, pieces: Any) -> Any:
        return self._answer("message", envelope, b"".join(pieces))

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]


@implementer(ISMTPSubmitter)
class Submitter:
    def __init__(self, name: str) -> None:
        self.name = name


class Realm:
    def requestAvatar(self, avatar_id: bytes, mind: Any, *interfaces: Any) -> Any:
        assert ISMTPSubmitter in interfaces
        return ISMTPSubmitter, Submitter(avatar_id.decode()), lambda: None


def portal() -> Portal:
    checker = InMemoryUsernamePasswordDatabaseDontUse(vasp=b"secret")
    return Portal(Realm(), [checker])  # type: ignore[arg-type]


class Conversation:
    """A server on a StringTransport; ``send`` writes, ``replies`` reads
    what was answered since the last read."""

    def __init__(
        self, policy: Policy | None = None, peer: str = "192.0.2.7", **kw: Any
    ) -> None:
        self.clock = Clock()
        self.policy = policy or Policy(self.clock)
        self.policy.clock = self.clock
        kw.setdefault("max_size", 1000)
        factory = ESMTPServerFactory(
            self.policy, self.clock, hostname="mx.example", **kw
        )
        self.server = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 1234))
        if kw.get("tls") is not None:
            directlyProvides(self.transport, ITLSTransport)
            self.transport.startTLS = lambda ctx: setattr(self, "tls_started", ctx)  # type: ignore[attr-defined]
        self.server.makeConnection(self.transport)
        assert self.replies() == ["220 mx.example ESMTP"]

    def send(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def replies(self) -> list[str]:
        text: str = self.transport.value().decode()
        self.transport.clear()
        return text.splitlines()

    def say(self, data: bytes) -> list[str]:
        self.send(data)
        return self.replies()

    def ehlo(self) -> list[str]:
        return self.say(b"EHLO client.example\r\n")

    def transaction(self) -> None:
        self.ehlo()
        assert self.say(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<1555@mms.example>\r\n")
        assert self.say(b"DATA\r\n")[0].startswith("354 ")


def offered(lines: list[str]) -> set[str]:
    """The extensions in an EHLO reply."""
    return {line[4:] for line in lines[1:]}


def test_starting_and_stopping_the_listener_logs_nothing_from_its_factory():
    factory = ESMTPServerFactory(
        Policy(Clock()), Clock(), hostname="mx.example", max_size=1000
    )
    with capturedLogs() as events:
        factory.doStart()
        factory.doStop()
    assert [formatEvent(e) for e in events] == []


def test_ehlo_offers_the_extensions():
    c = Conversation(max_size=20971520)
    assert c.ehlo() == [
        "250-mx.example Hello 192.0.2.7",
        "250-SIZE 20971520",
        "250-8BITMIME",
        "250-PIPELINING",
        "250-ENHANCEDSTATUSCODES",
        "250 DSN",
    ]
    [(session,)] = c.policy.called("helo")
    assert verifyObject(ISMTPSession, session)
    assert (session.peer, session.helo, session.tls) == (
        "192.0.2.7",
        "client.example",
        False,
    )


def test_starttls_and_auth_offered_as_configured():
    tls = Conversation(tls=object(), portal=portal())
    lines = tls.ehlo()
    assert "STARTTLS" in offered(lines)
    assert not any("AUTH" in line for line in lines)  # not in plain text
    assert tls.say(b"AUTH PLAIN\r\n") == [
        "538 5.7.11 Encryption required: use STARTTLS first"
    ]
    # RFC 3207: what was pipelined behind STARTTLS is not read; EHLO again.
    assert tls.say(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n") == [
        "220 2.0.0 Begin TLS negotiation now"
    ]
    assert tls.say(b"MAIL FROM:<a@b>\r\n") == ["503 5.5.1 Send HELO or EHLO first"]
    lines = tls.ehlo()
    assert "AUTH PLAIN LOGIN" in offered(lines)
    assert "STARTTLS" not in offered(lines)
    assert tls.server.session.tls
    loopback = Conversation(peer="127.0.0.1", portal=portal())
    assert "AUTH PLAIN LOGIN" in offered(loopback.ehlo())


def test_auth_plain_and_login_with_the_portal():
    c = Conversation(peer="127.0.0.1", portal=portal())
    c.ehlo()
    token = base64.b64encode(b"\0vasp\0secret")
    assert c.say(b"AUTH PLAIN " + token + b"\r\n") == [
        "235 2.7.0 Authentication successful"
    ]
    assert c.server.session.avatar.name == "vasp"
    assert c.say(b"AUTH PLAIN " + token + b"\r\n")[0].startswith("503 5.5.1")

    login = Conversation(peer="127.0.0.1", portal=portal())
    login.ehlo()
    assert login.say(b"AUTH LOGIN\r\n")[0].startswith("334 ")
    assert login.say(base64.b64encode(b"vasp") + b"\r\n")[0].startswith("334 ")
    assert login.say(base64.b64encode(b"secret") + b"\r\n") == [
        "235 2.7.0 Authentication successful"
    ]


def test_auth_guessing_is_bounded_per_connection():
    c = Conversation(peer="127.0.0.1", portal=portal(), max_auth_failures=3)
    c.ehlo()
    wrong = b"AUTH PLAIN " + base64.b64encode(b"\0vasp\0guess") + b"\r\n"
    assert c.say(wrong) == ["535 5.7.8 Authentication credentials invalid"]
    assert c.say(wrong) == ["535 5.7.8 Authentication credentials invalid"]
    assert not c.transport.disconnecting
    assert c.say(wrong) == ["421 4.7.0 Too many failed authentications"]
    assert c.transport.disconnecting
    assert c.say(b"AUTH PLAIN =\r\n*\r\nNOOP\r\n") == []
    bad = Conversation(peer="127.0.0.1", portal=portal())
    bad.ehlo()
    assert bad.say(b"AUTH PLAIN !!!\r\n") == ["501 5.5.2 Cannot decode the response"]
    assert bad.say(b"AUTH CRAM-MD5\r\n") == ["504 5.5.4 Use AUTH PLAIN or LOGIN"]
    assert bad.say(b"AUTH LOGIN\r\n*\r\n")[-1] == "501 5.0.0 Authentication aborted"


def test_auth_guessing_is_bounded_per_address_across_connections():
    # The HTTP side's LoginThrottle, shared: 3 failures within 60 s from one
    # address lock it out for 300 s, whichever connection they came on.
    clock = Clock()
    throttle = LoginThrottle(clock, max_failures=3, window=60, lockout=300)
    checks: list[bytes] = []
    checker = InMemoryUsernamePasswordDatabaseDontUse(vasp=b"secret")
    check = checker.requestAvatarId
    checker.requestAvatarId = lambda c: (checks.append(c.username), check(c))[1]  # type: ignore[method-assign]
    counted = Portal(Realm(), [checker])  # type: ignore[arg-type]

    def conversation(peer: str = "127.0.0.1") -> Conversation:
        c = Conversation(
            peer=peer, portal=counted, throttle=throttle, max_auth_failures=5
        )
        c.ehlo()
        return c

    wrong = b"AUTH PLAIN " + base64.b64encode(b"\0vasp\0guess") + b"\r\n"
    right = b"AUTH PLAIN " + base64.b64encode(b"\0vasp\0secret") + b"\r\n"
    first = conversation()
    assert (
        first.say(wrong + wrong) == ["535 5.7.8 Authentication credentials invalid"] * 2
    )
    second = conversation()
    # Within this connection's own bound of 5, but the address's third.
    login = second.say(b"AUTH LOGIN\r\n" + base64.b64encode(b"vasp") + b"\r\n")
    assert login[-1].startswith("334 ")
    assert second.say(base64.b64encode(b"guess") + b"\r\n") == [
        "421 4.7.0 Too many failed authentications"
    ]
    assert second.transport.disconnecting
    # Locked out: 454 at once, no password checked, the connection kept
    # (a relay-network client may still send without AUTH).
    assert len(checks) == 3
    locked = conversation()
    assert locked.say(right) == ["454 4.7.0 Too many failed logins, wait 300 s"]
    assert not locked.transport.disconnecting
    assert first.say(right) == ["454 4.7.0 Too many failed logins, wait 300 s"]
    assert len(checks) == 3
    # Another address is not locked out.
    other = conversation("127.0.0.2")
    assert other.say(right) == ["235 2.7.0 Authentication successful"]
    clock.advance(299)
    assert conversation().say(right)[0].startswith("454 4.7.0")
    clock.advance(1)
    assert conversation().say(right) == ["235 2.7.0 Authentication successful"]


def test_auth_locked_out_while_under_way_checks_no_password():
    clock = Clock()
    throttle = LoginThrottle(clock, max_failures=1, window=60, lockout=30)
    c = Conversation(peer="127.0.0.1", portal=portal(), throttle=throttle)
    c.ehlo()
    assert c.say(b"AUTH LOGIN\r\n" + base64.b64encode(b"vasp") + b"\r\n")[
        -1
    ].startswith("334 ")
    throttle.failed("127.0.0.1")  # a guess on another connection (or HTTP)
    assert c.say(base64.b64encode(b"secret") + b"\r\n") == [
        "454 4.7.0 Too many failed logins, wait 30 s"
    ]
    assert c.server.session.avatar is None


def test_the_policys_reply_to_the_message_is_sent_as_given():
    for reply in [
        SMTPReply(451, "4.4.1", "MMSC unreachable, try later"),
        SMTPReply(554, "5.6.0", "Cannot become an MMS"),
        SMTPReply(250, "2.0.0", "Ok: MessageID 12345"),
    ]:
        c = Conversation(Policy(Clock(), message=reply))
        c.transaction()
        assert c.say(b"Subject: x\r\n\r\nbody\r\n.\r\n") == [
            f"{reply.code} {reply.enhanced} {reply.text}"
        ]


def test_a_failing_policy_is_451_never_550():
    c = Conversation(Policy(Clock(), message=RuntimeError("boom")))
    c.transaction()
    assert c.say(b"x\r\n.\r\n") == [
        "451 4.3.0 Local error in processing, try again later"
    ]
    c = Conversation(Policy(Clock(), mail_from="not a reply"))
    c.ehlo()
    assert c.say(b"MAIL FROM:<a@b>\r\n")[0].startswith("451 4.3.0")


def test_commands_pipelined_after_the_dot_wait_for_the_data_reply():
    c = Conversation(Policy(Clock(), delay=30))
    c.send(b"EHLO client.example\r\n")
    c.clock.advance(30)
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<1555@mms.example>\r\nDATA\r\n")
    c.clock.advance(30)
    c.clock.advance(30)
    c.replies()
    c.send(b"Subject: hi\r\n\r\nbody\r\n")
    c.send(b".\r\nMAIL FROM:<a@b>\r\nQUIT\r\n")
    assert c.replies() == []  # nothing before the message's reply
    c.clock.advance(30)
    assert c.replies() == ["250 2.0.0 OK"]
    c.clock.advance(30)
    assert c.replies() == ["250 2.0.0 OK", "221 2.0.0 mx.example closing connection"]
    [(_envelope, data)] = c.policy.called("message")
    assert data.endswith(b"Subject: hi\r\n\r\nbody\r\n")
    assert data.startswith(b"Received: from client.example ([192.0.2.7])\r\n")
    assert [args[0] for args in c.policy.called("mail_from")] == ["a@b.example", "a@b"]


def test_asynchronous_decisions_with_pipelining():
    c = Conversation(Policy(Clock(), delay=5))
    c.send(b"EHLO client.example\r\n")
    c.clock.advance(5)
    c.replies()
    c.send(
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<1555@mms.example>\r\n"
        b"RCPT TO:<1666@mms.example>\r\nDATA\r\n"
    )
    assert c.replies() == []
    assert c.transport.producerState == "paused"
    for _ in range(3):
        c.clock.advance(5)
    assert c.replies() == [
        "250 2.0.0 OK",
        "250 2.0.0 OK",
        "250 2.0.0 OK",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert c.transport.producerState == "producing"
    envelope, _, _ = c.policy.called("rcpt_to")[1]
    assert envelope.recipients == (("1555@mms.example", RecipientParameters()),)
    c.send(b"x\r\n.\r\n")
    c.clock.advance(5)
    [(envelope, _)] = c.policy.called("message")
    assert [r for r, _ in envelope.recipients] == [
        "1555@mms.example",
        "1666@mms.example",
    ]


def test_a_refused_recipient_is_not_in_the_envelope():
    refused = SMTPReply(452, "4.5.3", "Try that one in a new transaction")
    c = Conversation(Policy(Clock(), rcpt_to=refused))
    c.ehlo()
    assert c.say(b"MAIL FROM:<>\r\nRCPT TO:<1@mms.example>\r\nDATA\r\n") == [
        "250 2.0.0 OK",
        "452 4.5.3 Try that one in a new transaction",
        "554 5.5.1 No valid recipients",
    ]
    assert c.policy.called("mail_from")[0][0] == ""


def test_mail_and_rcpt_parameters_reach_the_policy():
    c = Conversation()
    c.ehlo()
    assert c.say(
        b"MAIL FROM:<a@b.example> SIZE=500 BODY=8BITMIME RET=HDRS ENVID=QQ+2Bx+3D1\r\n"
        b"RCPT TO:<1555@mms.example> NOTIFY=SUCCESS,FAILURE"
        b" ORCPT=rfc822;x+2By@mms.example\r\n"
    ) == ["250 2.0.0 OK", "250 2.0.0 OK"]
    [(_, mail)] = c.policy.called("mail_from")
    assert mail == MailParameters(size=500, body="8BITMIME", ret="HDRS", envid="QQ+x=1")
    [(_, _, rcpt)] = c.policy.called("rcpt_to")
    assert rcpt == RecipientParameters(
        notify=("SUCCESS", "FAILURE"), orcpt=("rfc822", "x+y@mms.example")
    )


def test_parameters_refused():
    c = Conversation(max_size=1000)
    c.ehlo()
    assert c.say(b"MAIL FROM:<a@b> SMTPUTF8\r\n") == [
        "555 5.5.4 Parameter SMTPUTF8 not recognized or not implemented"
    ]
    assert c.say(b"MAIL FROM:<a@b> SIZE=1001\r\n") == [
        "552 5.3.4 Message too large: the limit is 1000 bytes"
    ]
    assert c.say(b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n")[0].startswith("501 5.5.4")
    assert c.policy.called("mail_from") == []
    assert c.say(b"MAIL FROM:<a@b> SIZE=1000\r\n") == ["250 2.0.0 OK"]
    assert c.say(b"RCPT TO:<1@mms.example> FOO=1\r\n")[0].startswith("555 5.5.4")
    assert c.say(b"RCPT TO:<1@mms.example> NOTIFY=NEVER,DELAY\r\n")[0].startswith(
        "501 5.5.4"
    )
    assert c.say(b"RCPT TO:<1@mms.example> ORCPT=rfc822;a+zz\r\n")[0].startswith(
        "501 5.5.4"
    )


def test_envelope_parsing_units():
    assert xtext_decode("ENVID", b"a+2B+3Db") == "a+=b"
    for bad in [b"a+2b", b"a=b", b"a b", b"+4"]:
        with pytest.raises(ParameterError):
            xtext_decode("ENVID", bad)
    assert parse_mail_parameters(b"size=7 body=7bit", 10) == MailParameters(
        size=7, body="7BIT"
    )
    for bad in [b"SIZE=-1", b"SIZE", b"SIZE=1 SIZE=1", b"=x", b"ENVID="]:
        with pytest.raises(ParameterError):
            parse_mail_parameters(bad, 10)
    assert parse_rcpt_parameters(b"NOTIFY=never").notify == ("NEVER",)
    with pytest.raises(ValueError):
        SMTPReply(250, "5.0.0", "mismatched")
    with pytest.raises(ValueError):
        SMTPReply(250, "2.0.0", "two\r\nlines")
    assert Envelope("a").with_recipient("b", RecipientParameters()).recipients == (
        ("b", RecipientParameters()),
    )


def test_data_over_the_size_limit_is_counted_not_kept():
    c = Conversation(max_size=1000)
    c.transaction()
    for _ in range(100):
        c.send(b"x" * 98 + b"\r\n")
        assert len(c.server._piece) < 1200
    assert c.say(b".\r\n") == ["552 5.3.4 Message too large: the limit is 1000 bytes"]
    assert c.policy.called("message") == []
    assert c.say(b"NOOP\r\n") == ["250 2.0.0 OK"]


def test_hop_count():
    for hops, reply in [
        (25, ["250 2.0.0 OK"]),
        (26, ["554 5.4.6 Too many hops (over 25 Received: headers)"]),
    ]:
        c = Conversation(max_size=100000)
        c.transaction()
        header = b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        # A Received: in the body is not a hop.
        c.send(header * hops + b"Subject: s\r\n\r\n" + header * 5)
        assert c.say(b".\r\n") == reply


def test_dot_stuffing_and_lines():
    c = Conversation()
    c.transaction()
    c.say(b"a\r\n..b\r\n.\r\n")
    [(_, data)] = c.policy.called("message")
    assert data.endswith(b"\r\n\r\na\r\n.b\r\n") or data.endswith(b"a\r\n.b\r\n")


def test_long_lines():
    c = Conversation()
    c.ehlo()
    assert c.say(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n") == [
        "500 5.5.2 Line too long",
        "250 2.0.0 OK",
    ]
    c = Conversation(max_size=10**6)
    c.transaction()
    c.send(b"y" * 70000)
    c.send(b"y" * 10 + b"\r\nz\r\n")
    assert c.say(b".\r\nNOOP\r\n") == [
        "500 5.5.2 Line too long (over 65536 bytes)",
        "250 2.0.0 OK",
    ]


def test_idle_timeout_is_421_on_the_clock_but_not_while_the_policy_decides():
    c = Conversation(Policy(Clock(), delay=400), timeout=300)
    c.send(b"EHLO client.example\r\n")
    c.clock.advance(399)
    assert not c.transport.disconnecting
    c.clock.advance(1)
    assert c.replies()[0].startswith("250-mx.example")
    c.clock.advance(299)
    assert not c.transport.disconnecting
    c.clock.advance(1)
    assert c.replies() == ["421 4.4.2 mx.example Idle timeout, closing"]
    assert c.transport.disconnecting


def test_twisteds_own_replies_carry_enhanced_codes():
    c = Conversation()
    assert c.say(b"MAIL FROM:<a@b>\r\n") == ["503 5.5.1 Send HELO or EHLO first"]
    assert c.say(b"HELO client.example\r\n") == ["250 mx.example Hello 192.0.2.7"]
    assert c.say(b"STARTTLS\r\n") == ["454 4.7.0 TLS not available"]
    assert c.say(b"RCPT TO:<a@b>\r\n") == ["503 5.5.1 Need MAIL before RCPT"]
    assert c.say(b"BDAT 10\r\n") == ["500 5.5.2 Command not recognized"]
    assert c.say(b"AUTH PLAIN\r\n") == ["502 5.5.1 AUTH not available"]
    assert c.say(b"MAIL FROM:<a b c>\r\n")[0].startswith("501 5.5.4")
    assert c.say(b"RSET\r\nQUIT\r\n") == [
        "250 2.0.0 Reset",
        "221 2.0.0 mx.example closing connection",
    ]


def test_lost_connection_while_the_policy_decides():
    c = Conversation(Policy(Clock(), delay=5))
    c.send(b"EHLO x\r\n")
    c.server.connectionLost(None)  # type: ignore[arg-type]
    c.clock.advance(5)
    assert c.replies() == []
