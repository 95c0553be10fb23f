"""The pooled ESMTP sender, in memory and on a clock.

Twisted's real ESMTP server runs as a :class:`MemorySMTPRelay` on a
:class:`MemoryReactor`: no socket, no sleep, no global reactor.  A 60 s
timeout is ``reactor.advance(60)``, checked quiet at 59.9 s.  Tests taking
the ``relay`` fixture run twice: against a relay that offers PIPELINING and
against one that does not.  What needs real sockets or real TLS is in
test_smtp_loopback.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mm7tx.gateway.processors import BUILD_POLICY
from mm7tx.interfaces import IMailSender, SendResult
from mm7tx.mail.wire import wire_bytes
from mm7tx.mm7.errors import MM7Error
from mm7tx.smtp import envelope, stuffing
from mm7tx.smtp.esmtp import ESMTPSender
from mm7tx.smtp.session import SMTPClient
from mm7tx.smtp.settings import SMTPSettings
from mm7tx.smtp.stuffing import ONE_WRITE, stuffed
from mm7tx.testing import MemoryReactor, MemorySMTPRelay, fired, result_of
from mm7tx.testing.relay import _RelayServer


def message(body: bytes = b"\x00\x01binary\r\n.\r\n..dots") -> EmailMessage:
    msg = EmailMessage(policy=BUILD_POLICY)
    msg["From"] = "a@from.example"
    msg["To"] = "b@to.example"
    msg["Subject"] = "test"
    msg.set_content("line one\n.leading dot\n")
    msg.add_attachment(
        body, maintype="application", subtype="octet-stream", filename="x.bin"
    )
    return msg


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def pipelining(request) -> bool:
    """Whether the relay offers PIPELINING (RFC 2920)."""
    return bool(request.param)


@pytest.fixture
def reactor() -> MemoryReactor:
    return MemoryReactor()


@pytest.fixture
def relay(reactor, pipelining) -> MemorySMTPRelay:
    """The relay in memory (this module's ``relay``, not conftest's loopback one)."""
    return MemorySMTPRelay(reactor, pipelining=pipelining)


@pytest.fixture
def reads(monkeypatch) -> list[bytes]:
    """What each read of every relay session held, in order: how the
    client grouped its writes."""
    seen: list[bytes] = []
    received = _RelayServer.dataReceived

    def recording(self, data: bytes) -> Any:
        seen.append(data)
        return received(self, data)

    monkeypatch.setattr(_RelayServer, "dataReceived", recording)
    return seen


def sender_for(reactor: Any, relay: MemorySMTPRelay | str, **kw: Any) -> ESMTPSender:
    endpoint = relay if isinstance(relay, str) else relay.endpoint
    kw.setdefault("starttls", "off")
    return ESMTPSender(reactor, SMTPSettings(endpoint=endpoint, **kw))


def send(
    sender: ESMTPSender, recipients: list[str], msg: EmailMessage | None = None
) -> defer.Deferred[SendResult]:
    return sender.send("a@from.example", recipients, msg or message())


def failure(d: defer.Deferred[Any]) -> MM7Error:
    """The MM7Error ``d`` failed with (an AssertionError if it succeeded
    or still waits).  Once only: ``result_of`` takes the result."""
    with pytest.raises(MM7Error) as caught:
        result_of(d)
    return caught.value


def sent(reactor: MemoryReactor, d: defer.Deferred[SendResult]) -> SendResult:
    reactor.flush()
    return result_of(d)


def status(reactor: MemoryReactor, d: defer.Deferred[Any]) -> int:
    return refused(reactor, d).status.code


def refused(reactor: MemoryReactor, d: defer.Deferred[Any]) -> MM7Error:
    reactor.flush()
    return failure(d)


def nothing_left(reactor: MemoryReactor, relay: MemorySMTPRelay | None) -> None:
    """No timer, no connection: the sender (and the relay) are gone."""
    assert reactor.getDelayedCalls() == []
    assert reactor.connections == 0
    if relay is not None:
        assert relay.open_sessions == []


# Delivery and the status of each refusal ------------------------------------------


def test_the_sender_provides_imailsender(reactor):
    assert verifyObject(IMailSender, sender_for(reactor, "tcp:relay.test:25"))


def test_delivers_with_bytes_intact(reactor, relay):
    result = sent(reactor, send(sender_for(reactor, relay), ["b@to.example", "c@to"]))
    [mail] = relay.accepted
    # The relay's reply to the data, with its queue id, is kept for the log.
    reply = f"250 2.0.0 Ok: queued as {mail.queue_id}"
    assert result == SendResult(("b@to.example", "c@to"), reply=reply)
    assert mail.sender == "a@from.example"
    assert sorted(mail.recipients) == ["b@to.example", "c@to"]
    msg = mail.message
    assert msg.get_body(("plain",)).get_content() == "line one\n.leading dot\n"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content() == b"\x00\x01binary\r\n.\r\n..dots"


def test_some_recipients_refused_is_partial(reactor, relay):
    relay.refuse("rcpt", 550, recipient="bad@to.example")
    result = sent(reactor, send(sender_for(reactor, relay), ["b@to", "bad@to.example"]))
    assert result.accepted == ("b@to",)
    assert [(a, c) for a, c, _ in result.refused] == [("bad@to.example", 550)]
    assert [m.recipients for m in relay.accepted] == [["b@to"]]


def test_every_recipient_refused_for_good_is_address_error(reactor, relay):
    relay.refuse("rcpt", 550)
    d = send(sender_for(reactor, relay), ["bad@to.example", "worse@to.example"])
    assert status(reactor, d) == 2002
    assert relay.received == []


def test_a_temporary_refusal_of_the_recipient_is_transient(reactor, relay):
    relay.refuse("rcpt", 451)
    assert status(reactor, send(sender_for(reactor, relay), ["busy@to"])) == 4006


def test_451_to_mail_from_is_transient_and_the_session_survives(reactor, relay):
    sender = sender_for(reactor, relay)
    relay.refuse("mail", 451)
    assert status(reactor, send(sender, ["b@to.example"])) == 4006
    relay.clear()
    assert sent(reactor, send(sender, ["b@to.example"])).accepted == ("b@to.example",)
    assert len(relay.sessions) == 1


def test_5xx_after_the_data_is_message_rejected(reactor, relay):
    relay.refuse("end", 554)
    assert status(reactor, send(sender_for(reactor, relay), ["b@to"])) == 3002
    assert [m.reply for m in relay.received] == [554]


def test_relay_down_is_transient(reactor, relay):
    relay.stop()
    error = refused(reactor, send(sender_for(reactor, relay), ["b@to.example"]))
    assert error.status.code == 4006
    assert "unreachable" in (error.status.details or "")


def test_421_greeting_is_transient(reactor, relay):
    relay.refuse("greeting", 421, "too busy")
    assert status(reactor, send(sender_for(reactor, relay), ["b@to"])) == 4006
    assert relay.received == []


def test_starttls_required_but_not_offered_is_transient(reactor, relay):
    sender = sender_for(reactor, relay, starttls="required")
    error = refused(reactor, send(sender, ["b@to.example"]))
    assert error.status.code == 4006
    assert "STARTTLS" in (error.status.details or "")
    assert relay.received == []


def test_auth_required_but_not_offered_is_transient(reactor, relay):
    sender = sender_for(reactor, relay, username="u", password="secret-pw")
    error = refused(reactor, send(sender, ["b@to.example"]))
    assert error.status.code == 4006
    assert "secret-pw" not in str(error)
    assert "secret-pw" not in repr(SMTPSettings(password="secret-pw"))
    assert relay.received == []


def test_opportunistic_tls_without_starttls_offer_sends_in_clear(reactor, relay):
    sender = sender_for(reactor, relay, starttls="opportunistic")
    assert sent(reactor, send(sender, ["b@to.example"])).accepted == ("b@to.example",)
    assert relay.delivery.tls == [False]


def test_a_mail_without_recipients_is_an_address_error(reactor, relay):
    d = send(sender_for(reactor, relay), [])
    assert failure(d).status.code == 2002  # at once: no connection, no time
    assert reactor.tcpClients == []


def test_host_from_endpoint():
    assert SMTPSettings(endpoint="tcp:mail.example:25").host == "mail.example"
    assert (
        SMTPSettings(endpoint="tcp:host=relay.example:port=587").host == "relay.example"
    )
    assert SMTPSettings(endpoint="tcp:x:25", tls_hostname="y").host == "y"


# Timeouts, on the clock ------------------------------------------------------------


def test_a_silent_relay_is_transient_after_the_command_timeout(reactor, relay):
    relay.hang("greeting")  # connects, never says a word
    sender = sender_for(reactor, relay, command_timeout=60, total_timeout=120)
    d = send(sender, ["b@to.example"])
    reactor.advance(59.9)
    assert not fired(d)
    reactor.advance(0.1)
    error = failure(d)
    assert error.status.code == 4006
    assert error.status.details == "the mail relay timed out"
    nothing_left(reactor, None)


def test_a_hang_mid_data_is_transient_after_the_command_timeout(reactor, relay):
    relay.hang("message")
    sender = sender_for(reactor, relay, command_timeout=60, total_timeout=120)
    d = send(sender, ["b@to.example"])
    reactor.advance(59.9)
    assert not fired(d)
    reactor.advance(0.1)
    assert failure(d).status.code == 4006
    assert relay.received == []


def test_a_hang_after_the_data_is_never_a_success(reactor, relay):
    relay.hang("end")  # took the message, never says 250
    sender = sender_for(reactor, relay, command_timeout=60, total_timeout=120)
    d = send(sender, ["b@to.example"])
    reactor.advance(59.9)
    assert not fired(d)
    assert [m.reply for m in relay.received] == [None]
    reactor.advance(0.1)
    assert failure(d).status.code == 4006


def test_a_close_after_the_data_before_250_is_transient(reactor, relay):
    relay.drop("end")
    assert status(reactor, send(sender_for(reactor, relay), ["b@to"])) == 4006
    assert [m.reply for m in relay.received] == [None]  # the relay has it


def test_a_close_after_250_is_a_success_and_the_next_mail_opens_a_session(
    reactor, relay
):
    sender = sender_for(reactor, relay)
    relay.close_after("end")
    assert sent(reactor, send(sender, ["b@to"])).accepted == ("b@to",)
    relay.clear()
    assert sent(reactor, send(sender, ["c@to"])).accepted == ("c@to",)
    assert len(relay.sessions) == 2 and len(relay.accepted) == 2


def test_the_connect_timeout_on_the_clock():
    # A plain MemoryReactorClock: its connectTCP records the attempt and
    # never completes it, like a SYN into a black hole.
    clock = MemoryReactorClock()
    sender = sender_for(clock, "tcp:relay.test:25", connect_timeout=10)
    both = [send(sender, ["b@to"]), send(sender, ["c@to"])]
    assert len(clock.tcpClients) == 2  # an attempt for each
    clock.advance(9.9)
    assert not any(fired(d) for d in both)
    clock.advance(0.1)
    for d in both:
        error = failure(d)
        assert error.status.code == 4006
        assert "unreachable" in (error.status.details or "")
    assert all(c.stoppedConnecting for c in clock.connectors)
    assert len(clock.tcpClients) == 2  # and no new attempt for nothing
    assert clock.getDelayedCalls() == []


def test_the_total_timeout_bounds_a_message_on_a_session(reactor, relay):
    relay.hang("message")
    sender = sender_for(reactor, relay, command_timeout=60, total_timeout=30)
    d = send(sender, ["b@to.example"])
    reactor.advance(29.9)
    assert not fired(d)
    reactor.advance(0.1)
    error = failure(d)
    assert error.status.code == 4006
    assert error.status.details == "the mail relay timed out"
    assert relay.open_sessions == []  # the session carrying it was cut
    assert sender.connections == 0


def test_the_total_timeout_counts_the_wait_for_a_session(reactor, relay):
    relay.hang("message")
    sender = sender_for(
        reactor, relay, command_timeout=60, total_timeout=30, max_connections=1
    )
    first = send(sender, ["b@to.example"])
    reactor.advance(10)
    second = send(sender, ["c@to.example"])  # queued behind the first
    reactor.advance(19.9)
    assert not fired(first) and not fired(second)
    reactor.advance(0.1)
    assert failure(first).status.code == 4006
    assert not fired(second)  # now on a session of its own, hung too
    reactor.advance(9.9)
    assert not fired(second)
    reactor.advance(0.1)
    assert failure(second).status.details == "the mail relay timed out"


# The pool: sessions, their reuse, their number ---------------------------------------


def test_at_most_max_connections_to_the_relay(reactor, relay):
    relay.hang("message")  # the first ones keep their sessions busy
    sender = sender_for(reactor, relay, max_connections=2)
    results = [send(sender, [f"r{i}@to.example"]) for i in range(6)]
    reactor.flush()
    assert len(relay.sessions) == 2 and sender.connections == 2
    assert not any(fired(d) for d in results)
    relay.clear()
    reactor.advance(60)  # the two hung ones time out; the others go, two at once
    assert [fired(d) for d in results] == [True] * 6
    assert [d for d in results if failure_or_none(d)] == results[:2]
    assert len(relay.accepted) == 4
    assert len(relay.sessions) == 4 and len(reactor.tcpClients) == 4


def failure_or_none(d: defer.Deferred[Any]) -> MM7Error | None:
    try:
        result_of(d)
    except MM7Error as error:
        return error
    return None


def test_messages_share_a_persistent_session(reactor, relay):
    sender = sender_for(reactor, relay, max_connections=1)
    for i in range(3):
        sent(reactor, send(sender, [f"one{i}@to.example"]))
    together = [send(sender, [f"two{i}@to.example"]) for i in range(4)]
    reactor.flush()
    assert all(result_of(d).accepted for d in together)
    assert len(relay.accepted) == 7
    assert len(relay.sessions) == 1  # one TCP connection, seven transactions
    # The relay closes the idle session: the next message opens a new one.
    relay.sessions[0].transport.loseConnection()
    reactor.flush()
    assert sender.connections == 0
    sent(reactor, send(sender, ["three@to.example"]))
    assert len(relay.sessions) == 2 and len(relay.accepted) == 8


def test_an_idle_session_quits_after_the_idle_timeout(reactor, relay, reads):
    sender = sender_for(reactor, relay, idle_timeout=30)
    sent(reactor, send(sender, ["b@to.example"]))
    reactor.advance(29.9)
    assert sender.connections == 1 and len(relay.open_sessions) == 1
    reactor.advance(0.1)
    assert reads[-1] == b"QUIT\r\n"
    assert sender.connections == 0
    nothing_left(reactor, relay)


def test_the_relay_timing_out_an_idle_session_delays_nothing(reactor, relay):
    # The relay's idle timeout (Twisted's server: 600 s, then "421" and
    # close) is shorter than the pool's: the next message must not wait on
    # the dead session.
    sender = sender_for(reactor, relay, idle_timeout=900)
    sent(reactor, send(sender, ["b@to.example"]))
    reactor.advance(600)
    assert relay.open_sessions == [] and sender.connections == 0
    assert reactor.getDelayedCalls() == []  # nothing of the dead session
    assert sent(reactor, send(sender, ["c@to.example"])).accepted == ("c@to.example",)
    assert len(relay.sessions) == 2


def test_a_reused_session_lost_before_mail_from_is_answered_sends_again(reactor, relay):
    sender = sender_for(reactor, relay)
    sent(reactor, send(sender, ["b@to.example"]))
    d = send(sender, ["c@to.example"])  # MAIL FROM goes out on the idle session...
    relay.sessions[0].transport.loseConnection()  # ...as the relay closes it
    assert sent(reactor, d).accepted == ("c@to.example",)
    assert len(relay.sessions) == 2
    assert [m.recipients for m in relay.received] == [
        ["b@to.example"],
        ["c@to.example"],
    ]


def test_a_message_is_sent_again_only_once(reactor, relay):
    sender = sender_for(reactor, relay, max_connections=2)
    first = [send(sender, [f"r{i}@to.example"]) for i in range(2)]
    reactor.flush()
    assert all(result_of(d) for d in first) and len(relay.sessions) == 2
    relay.drop("mail")  # both reused sessions close when MAIL FROM comes
    d = send(sender, ["c@to.example"])
    assert status(reactor, d) == 4006
    assert len(relay.sessions) == 2  # tried on both idle sessions, no third
    assert sender.connections == 0


def test_a_fresh_session_lost_before_mail_from_is_answered_is_not_retried(
    reactor, relay
):
    relay.drop("mail")
    assert status(reactor, send(sender_for(reactor, relay), ["b@to"])) == 4006
    assert len(relay.sessions) == 1


# PIPELINING -------------------------------------------------------------------------


def test_how_the_commands_of_a_message_are_grouped(reactor, relay, reads, pipelining):
    sender = sender_for(reactor, relay, max_connections=1)
    for i in range(3):
        sent(reactor, send(sender, [f"b{i}@to.example", f"c{i}@to.example"]))
    assert len(relay.sessions) == 1 and len(relay.accepted) == 3
    with_mail = [r for r in reads if b"MAIL FROM" in r]
    assert len(with_mail) == 3
    if pipelining:
        assert all(
            r.startswith(b"MAIL FROM")
            and r.count(b"RCPT TO") == 2
            and r.endswith(b"DATA\r\n")
            for r in with_mail
        )
        # No RSET between messages that went through: two writes per message.
        assert not any(b"RSET" in r for r in reads)
    else:
        commands = [r for r in reads if r.startswith((b"MAIL", b"RCPT", b"DATA"))]
        assert all(r.count(b"\r\n") == 1 for r in commands)  # one at a time
        assert sum(r == b"RSET\r\n" for r in reads) == 3
    msg = relay.accepted[0].message
    assert msg.get_body(("plain",)).get_content() == "line one\n.leading dot\n"


def test_refusals_leave_the_session_usable(reactor, relay, reads, pipelining):
    sender = sender_for(reactor, relay, max_connections=1)
    relay.refuse("mail", 451)
    assert status(reactor, send(sender, ["b@to.example"])) == 4006
    relay.clear()
    relay.refuse("rcpt", 550, recipient="bad@to.example")
    # Every RCPT refused (and, pipelined, DATA too).
    assert status(reactor, send(sender, ["bad@to.example"])) == 2002
    relay.refuse("rcpt", 451, recipient="busy@to.example")
    # One of them may work later.
    assert status(reactor, send(sender, ["bad@to.example", "busy@to.example"])) == 4006
    result = sent(reactor, send(sender, ["b@to.example", "bad@to.example"]))
    assert result.accepted == ("b@to.example",)
    assert [(a, c) for a, c, _ in result.refused] == [("bad@to.example", 550)]
    assert len(relay.sessions) == 1 and len(relay.accepted) == 1
    # An RSET after each refusal; Twisted's one-by-one client after a success too.
    assert sum(r.count(b"RSET") for r in reads) == (3 if pipelining else 4)


# Big messages and dots --------------------------------------------------------------


def _smtp_data(data: bytes) -> bytes:
    """The message as SMTP DATA, with the final dot."""
    return stuffed(data) + b".\r\n"


def test_smtp_data_ends_lines_with_crlf_and_doubles_leading_dots():
    assert _smtp_data(b"a\n.b\n..c\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert _smtp_data(b".x") == b"..x\r\n.\r\n"
    assert _smtp_data(b"") == b".\r\n"


def _reference_smtp_data(data: bytes) -> bytes:
    """What _smtp_data wrote before its dots were found with ``find``."""
    wire = data.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    if wire.startswith(b"."):
        wire = b"." + wire
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return wire + b".\r\n"


@given(
    st.lists(
        st.sampled_from([b".", b"..", b"\n", b"\r", b"\r\n", b"a", b"x.y", b"\n."]),
        max_size=200,
    )
)
def test_smtp_data_equals_the_plain_replace(pieces):
    data = b"".join(pieces)
    assert _smtp_data(data) == _reference_smtp_data(data)


@pytest.mark.parametrize(
    "dots", [0, 1, stuffing.DOTS_LOOKED_AT - 1, stuffing.DOTS_LOOKED_AT, 500]
)
@pytest.mark.parametrize("tail", [b"\n.end", b"\n", b".\n.", b""])
def test_smtp_data_finds_a_leading_dot_after_many_others(dots, tail):
    # Dots inside lines first (a text's sentences), then perhaps one that
    # starts a line, before or past the dots looked at one by one.
    data = b"a.b " * dots + tail
    assert _smtp_data(data) == _reference_smtp_data(data)
    assert (b"\r\n..end" in _smtp_data(data)) == (tail == b"\n.end")


def test_a_big_message_arrives_whole(reactor, relay):
    # Over 256 KiB: the pipelined path sends it in chunks as the connection
    # takes them.
    big = bytes(range(256)) * 3000 + b"\r\n.\r\n.."
    result = sent(reactor, send(sender_for(reactor, relay), ["b@to"], message(big)))
    assert result.accepted == ("b@to",)
    [attachment] = list(relay.accepted[0].message.iter_attachments())
    assert attachment.get_content() == big


def test_a_big_message_goes_in_chunks_each_restarting_the_timeout(reactor):
    client = SMTPClient(sender_for(reactor, "tcp:relay.test:25", command_timeout=60))
    transport = StringTransport()
    client.makeConnection(transport)  # the command timeout starts
    transport.clear()
    small = _smtp_data(b"x" * 1000)
    client._send_data([small])
    assert transport.value() == small and transport.producer is None
    transport.clear()
    wire = _smtp_data(b"line\n" * (ONE_WRITE // 4))
    client._send_data([wire[:1000], wire[1000:]])
    takes = 0
    while transport.producer is not None:
        reactor.advance(59)  # a slow link: it takes a chunk every 59 s
        assert not transport.disconnecting
        transport.producer.resumeProducing()
        takes += 1
    assert transport.value() == wire
    # Two chunks, then the take that finds the end: 177 s in all.
    assert takes - 1 == -(-len(wire) // ONE_WRITE) >= 2
    reactor.advance(0.9)
    assert not transport.disconnecting
    reactor.advance(0.1)  # 60 s after the last chunk: the relay is silent
    assert transport.disconnecting


@functools.cache
def _dot_at_chunk_boundary() -> EmailMessage:
    """A text whose line "." starts exactly at byte 16384 of the message as
    handed to the SMTP client: where Twisted's FileSender starts a chunk."""
    for lines in range(250, 270):
        for pad in range(61):
            msg = EmailMessage(policy=BUILD_POLICY)
            msg["From"] = "a@from.example"
            msg["To"] = "b@to.example"
            msg["Subject"] = "dots"
            text = ("x" * 60 + "\n") * lines + "y" * pad
            msg.set_content(text + "\n.\nRCPT TO:<evil@to.example>\n")
            if wire_bytes(msg).find(b"\n.\n") == 2**14 - 1:
                return msg
    raise AssertionError("no padding puts the dot at the chunk boundary")


def test_a_dot_line_at_a_chunk_boundary_is_still_doubled(reactor, relay):
    msg = _dot_at_chunk_boundary()
    text = msg.get_content()
    result = sent(reactor, send(sender_for(reactor, relay), ["b@to.example"], msg))
    assert result.accepted == ("b@to.example",)
    [mail] = relay.received
    assert mail.recipients == ["b@to.example"]
    assert mail.message.get_content() == text


# close() ---------------------------------------------------------------------------


def test_close_quits_idle_sessions_and_leaves_nothing_behind(reactor, relay, reads):
    sender = sender_for(reactor, relay)
    two = [send(sender, [f"r{i}@to.example"]) for i in range(2)]
    reactor.flush()
    assert all(result_of(d) for d in two) and len(relay.open_sessions) == 2
    closing = sender.close()
    assert not fired(closing)  # the QUITs are not answered yet
    reactor.flush()
    assert result_of(closing) is None
    assert reads.count(b"QUIT\r\n") == 2
    nothing_left(reactor, relay)
    error = failure(send(sender, ["b@to.example"]))  # at once
    assert error.status.code == 4006
    assert error.status.details == "the server is stopping"
    assert len(reactor.tcpClients) == 2


def test_close_fails_the_queue_cancels_attempts_and_cuts_busy_sessions(reactor, relay):
    relay.hang("message")
    sender = sender_for(reactor, relay, max_connections=2)
    busy = send(sender, ["busy@to.example"])
    reactor.flush()  # on a session, hung mid-DATA
    connecting = send(sender, ["c@to.example"])  # a second session on its way
    queued = send(sender, ["q@to.example"])  # no third one: it waits
    assert sender.connections == 2 and len(reactor.tcpClients) == 2
    closing = sender.close()
    gone_when_closed: list[int] = []
    closing.addCallback(lambda _: gone_when_closed.append(sender.connections))
    for d in (connecting, queued):  # at once, without waiting for anything
        assert failure(d).status.details == "the server is stopping"
    assert not fired(busy) and not fired(closing)
    reactor.flush()
    assert failure(busy).status.code == 4006
    assert gone_when_closed == [0]
    assert len(relay.sessions) == 1  # the attempt in progress never connected
    nothing_left(reactor, relay)


def test_close_fails_at_once_a_message_of_a_reused_session_it_cuts(reactor, relay):
    # Cut before the relay answered MAIL FROM, the message would otherwise
    # be queued again (to a pool that takes nothing more) until its timeout.
    sender = sender_for(reactor, relay)
    sent(reactor, send(sender, ["b@to.example"]))
    relay.hang("mail")
    busy = send(sender, ["c@to.example"])
    reactor.flush()
    closing = sender.close()
    reactor.flush()
    assert result_of(closing) is None
    assert failure(busy).status.code == 4006
    nothing_left(reactor, relay)


def test_close_cuts_the_sessions_that_never_answer_quit(reactor, relay):
    sender = sender_for(reactor, relay)
    sent(reactor, send(sender, ["b@to.example"]))
    relay.sessions[0].lineReceived = lambda line: None  # a relay gone deaf
    closing = sender.close(timeout=5)
    gone_when_closed: list[int] = []
    closing.addCallback(lambda _: gone_when_closed.append(sender.connections))
    reactor.advance(4.9)
    assert not fired(closing)
    reactor.advance(0.1)
    assert gone_when_closed == [0]  # fired once the cut sessions were gone
    nothing_left(reactor, relay)


def test_close_with_nothing_open_fires_at_once(reactor, relay):
    sender = sender_for(reactor, relay)
    assert result_of(sender.close()) is None
    nothing_left(reactor, relay)


def test_a_message_sent_as_an_idle_session_quits_goes_on_a_new_one(
    reactor, relay, pipelining
):
    """The idle timer sends QUIT; a message sent in the same instant, before
    the relay's 221, must not start on that session (the 221 once answered
    its MAIL FROM, and the message was taken for sent: 1000 with no mail)."""
    sender = sender_for(reactor, relay, idle_timeout=30)
    assert sent(reactor, send(sender, ["b@to.example"])).accepted == ("b@to.example",)
    later: list[defer.Deferred[SendResult]] = []
    reactor.callLater(30, lambda: later.append(send(sender, ["c@to.example"])))
    reactor.advance(30)
    (d,) = later
    assert sent(reactor, d).accepted == ("c@to.example",)
    assert [mail.recipients for mail in relay.accepted] == [
        ["b@to.example"],
        ["c@to.example"],
    ]
    assert len(relay.sessions) == 2


# Addresses: checked before a session takes the message -----------------------------


@pytest.fixture
def utf8_relay(reactor, pipelining) -> MemorySMTPRelay:
    """The relay offering SMTPUTF8 (RFC 6531), with PIPELINING or not."""
    return MemorySMTPRelay(reactor, pipelining=pipelining, smtputf8=True)


def test_a_non_ascii_address_goes_with_smtputf8_where_offered(
    reactor, utf8_relay, reads
):
    sender = sender_for(reactor, utf8_relay)
    d = sender.send("üser@example.com", ["b@to.example", "dëst@exämple.com"], message())
    assert sent(reactor, d).accepted == ("b@to.example", "dëst@exämple.com")
    [mail] = utf8_relay.accepted
    assert mail.sender == "üser@example.com"
    assert mail.recipients == ["b@to.example", "dëst@exämple.com"]
    [mail_from] = [r for r in reads if r.startswith(b"MAIL FROM")]
    assert mail_from.startswith("MAIL FROM:<üser@example.com> SMTPUTF8\r\n".encode())
    # An ASCII message on the same session goes without the parameter.
    assert sent(reactor, send(sender, ["c@to.example"])).accepted == ("c@to.example",)
    assert b"MAIL FROM:<a@from.example>\r\n" in b"".join(reads)
    assert len(utf8_relay.sessions) == 1


@pytest.mark.parametrize(
    ("sender_address", "recipient"),
    [("üser@example.com", "b@to.example"), ("a@from.example", "üser@example.com")],
)
def test_a_non_ascii_address_without_smtputf8_is_2002_and_the_session_goes_on(
    reactor, relay, reads, sender_address, recipient
):
    sender = sender_for(reactor, relay, max_connections=1)
    sent(reactor, send(sender, ["b@to.example"]))  # a session, idle
    bad = sender.send(sender_address, [recipient], message())
    legit = send(sender, ["c@to.example"])
    reactor.flush()  # no time passes
    error = failure(bad)
    assert error.status.code == 2002
    assert "SMTPUTF8" in (error.status.details or "")
    assert result_of(legit).accepted == ("c@to.example",)
    assert not any(b"\xc3" in r for r in reads)  # not a byte of it was sent
    assert len(relay.sessions) == 1 and len(relay.accepted) == 2
    # A fresh session learns that the relay does not offer SMTPUTF8 first.
    fresh = sender_for(reactor, relay)
    assert status(reactor, fresh.send(sender_address, [recipient], message())) == 2002


@pytest.mark.parametrize(
    ("sender_address", "recipient"),
    [
        ("a@from.example", "two words@to.example"),
        ("a@from.example", "<root@localhost>@to.example"),
        ("a@from.example", "a <b@to.example> c@to.example"),
        ("a@from.example", "a <b@to.example> <c@to.example>"),
        ("a@from.example", "b@to.example>\r\nRCPT TO:<evil@to.example"),
        ("a@from.example", "b@to.example\x00"),
        ("a@from.example", "b\u2028@to.example"),
        ("a@from.example", "no-domain"),
        ("a@from.example", ""),
        ("a@from.example", "\udcff@to.example"),  # a lone surrogate: no UTF-8
        ("a@b@from.example", "b@to.example"),
        ("a@from.example>", "b@to.example"),
    ],
)
def test_an_address_that_cannot_go_in_an_envelope_is_2002_at_once(
    reactor, relay, sender_address, recipient
):
    d = sender_for(reactor, relay).send(sender_address, [recipient], message())
    error = failure(d)  # at once: no connection, no time
    assert error.status.code == 2002
    assert reactor.tcpClients == []


def test_a_named_address_goes_as_its_address(reactor, relay, reads):
    # A configured default From may have a display name (Twisted's quoteaddr
    # took it off; so do we).
    sender = sender_for(reactor, relay)
    d = sender.send("mm7tx <a@from.example>", ["B <b@to.example> "], message())
    assert sent(reactor, d).accepted == ("b@to.example",)
    assert [(m.sender, m.recipients) for m in relay.accepted] == [
        ("a@from.example", ["b@to.example"])
    ]


def test_the_null_sender_goes_as_an_empty_path(reactor, relay, reads):
    d = sender_for(reactor, relay).send("", ["b@to.example"], message())
    assert sent(reactor, d).accepted == ("b@to.example",)
    assert any(r.startswith(b"MAIL FROM:<>") for r in reads)


# An exception in a session fails its message alone ---------------------------------


@pytest.fixture
def logged_failures() -> Iterator[list[Failure]]:
    """The failures logged (with their tracebacks) while the test runs."""
    found: list[Failure] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            found.append(event["log_failure"])

    observer = cast("ILogObserver", observe)
    globalLogPublisher.addObserver(observer)
    yield found
    globalLogPublisher.removeObserver(observer)


def test_an_exception_as_a_session_takes_a_message_fails_it_alone(
    reactor, relay, monkeypatch, logged_failures
):
    sender = sender_for(reactor, relay, max_connections=1)
    sent(reactor, send(sender, ["b@to.example"]))  # a session, idle
    real: Callable[[bytes], bytes] = envelope.path

    def path(address: bytes) -> bytes:
        if address == b"boom@from.example":
            raise RuntimeError("a bug")
        return real(address)

    monkeypatch.setattr(envelope, "path", path)
    bad = sender.send("boom@from.example", ["b@to.example"], message())
    legit = send(sender, ["c@to.example"])
    reactor.flush()  # no time passes: nothing waits for the command timeout
    error = failure(bad)
    assert error.status.code == 4000
    assert result_of(legit).accepted == ("c@to.example",)
    assert [m.recipients for m in relay.accepted] == [
        ["b@to.example"],
        ["c@to.example"],
    ]
    assert len(relay.open_sessions) == 1 and sender.connections == 1
    [logged] = logged_failures  # with its traceback
    assert logged.check(RuntimeError)


def test_an_exception_while_a_session_handles_a_reply_fails_its_message_alone(
    reactor, relay, pipelining, monkeypatch, logged_failures
):
    sender = sender_for(reactor, relay, max_connections=1)
    sent(reactor, send(sender, ["b@to.example"]))  # a session, idle
    # The handler of the reply to MAIL FROM, in either mode.
    name = "_pipelined_reply" if pipelining else "smtpState_to"
    real = getattr(SMTPClient, name)

    def handler(self: SMTPClient, code: int, resp: bytes) -> Any:
        if self.job is not None and self.job.recipients == [b"boom@to.example"]:
            raise RuntimeError("a bug")
        return real(self, code, resp)

    monkeypatch.setattr(SMTPClient, name, handler)
    bad = send(sender, ["boom@to.example"])
    legit = send(sender, ["c@to.example"])
    reactor.flush()  # no time passes: the broken session was closed at once
    assert failure(bad).status.code == 4000
    assert result_of(legit).accepted == ("c@to.example",)
    assert [m.recipients for m in relay.accepted] == [
        ["b@to.example"],
        ["c@to.example"],
    ]
    assert len(relay.sessions) == 2 and len(relay.open_sessions) == 1
    [logged] = logged_failures
    assert logged.check(RuntimeError)
    nothing_left_but_the_idle_session(reactor)


def nothing_left_but_the_idle_session(reactor: MemoryReactor) -> None:
    # The idle session's idle timeout and its relay session's own (600 s):
    # nothing of the broken one.
    assert sorted(
        c.getTime() - reactor.seconds() for c in reactor.getDelayedCalls()
    ) == [
        30,
        600,
    ]


def test_an_exception_while_sending_the_data_fails_its_message_alone(
    reactor, relay, monkeypatch, logged_failures
):
    sender = sender_for(reactor, relay, max_connections=1)
    sent(reactor, send(sender, ["b@to.example"]))  # a session, idle
    real: Callable[[SMTPClient, bytes], bytes] = SMTPClient.transformChunk

    def transform(self: SMTPClient, chunk: bytes) -> bytes:
        if self.job is not None and self.job.recipients == [b"boom@to.example"]:
            raise RuntimeError("a bug")
        return real(self, chunk)

    monkeypatch.setattr(SMTPClient, "transformChunk", transform)
    big = message(b"x" * (ONE_WRITE + 1))  # sent in chunks, each transformed
    bad = send(sender, ["boom@to.example"], big)
    legit = send(sender, ["c@to.example"])
    reactor.flush()  # no time passes: the broken session was closed at once
    assert failure(bad).status.code in (4000, 4006)
    assert result_of(legit).accepted == ("c@to.example",)
    assert [m.recipients for m in relay.accepted] == [
        ["b@to.example"],
        ["c@to.example"],
    ]
