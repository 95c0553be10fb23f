"""mm7tx.testing itself: the in-memory gateway, its relay's faults and the MM7
status each one gives, its agent, its reactor."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest
from twisted.internet import defer, protocol
from twisted.internet.interfaces import (
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from mm7tx.http.auth import hash_password
from mm7tx.http.client import MM7Fault
from mm7tx.mm7 import messages as m
from mm7tx.smtp.esmtp import ESMTPSender
from mm7tx.smtp.settings import SMTPSettings
from mm7tx.testing import (
    MemoryAgent,
    MemoryGateway,
    MemoryReactor,
    MemorySMTPRelay,
    RecordingDelivery,
    fired,
    http_post,
    post,
    result_of,
    smtp_server_factory,
)

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:relay.test:25"
  smtp_starttls = off
  smtp_command_timeout = 60
  smtp_timeout = 120
}
VASP "vasp1" { password = "secret1" }
"""

DELIVER = m.DeliverReq(
    sender=m.Address("+44 7700 900123"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    subject="Entry",
    content=(m.ContentPart("text/plain", b"my photo", (("charset", "utf-8"),)),),
)


@pytest.fixture(params=["pipelining", "one-by-one"])
def gateway(request) -> MemoryGateway:
    """The gateway; tests using it run against a relay offering PIPELINING
    and against one that does not."""
    return MemoryGateway(CONFIG, pipelining=request.param == "pipelining")


def deliver(gateway: MemoryGateway, req: m.DeliverReq = DELIVER):
    # The client waits longer than the relay's command timeout.
    return gateway.client("/vasp/", timeout=300).deliver(req)


def status_of(gateway: MemoryGateway, d: defer.Deferred[Any]) -> int:
    """The MM7 status the Deferred of a client call ends with."""
    try:
        answer = gateway.result(d)
    except MM7Fault as fault:
        return fault.status.code
    code: int = answer.status.code
    return code


# The interfaces --------------------------------------------------------------


def test_the_pieces_provide_their_interfaces():
    reactor = MemoryReactor()
    for interface in (IReactorTime, IReactorTCP, IReactorThreads):
        assert verifyObject(interface, reactor)
    assert verifyObject(IAgent, MemoryAgent(reactor))


# Success: 1000 only after the relay said 250 ----------------------------------


def test_1000_only_once_the_relay_said_250_with_the_mail_recorded(gateway):
    d = deliver(gateway)
    replies_when_answered: list[list[int | None]] = []
    d.addCallback(
        lambda answer: (
            replies_when_answered.append([r.reply for r in gateway.relay.received])
            or answer
        )
    )
    answer = gateway.result(d)
    assert answer.status.code == 1000
    assert replies_when_answered == [[250]]
    [mail] = gateway.relay.accepted
    assert mail.sender == "447700900123@from.example"
    assert mail.recipients == ["7255@to.example"]
    assert mail.message["Subject"] == "Entry"
    assert mail.message.get_body(("plain",)).get_content() == "my photo"


def test_a_hang_after_the_data_is_never_1000(gateway):
    gateway.relay.hang("end")  # took the message, never says 250
    d = deliver(gateway)
    gateway.advance(59)
    assert not fired(d)
    assert [r.reply for r in gateway.relay.received] == [None]
    gateway.advance(1)
    assert status_of(gateway, d) == 4006


def test_a_submit_with_credentials_reaches_every_recipient(gateway):
    submit = m.SubmitReq(
        sender_address=m.Address("12345", "ShortCode"),
        recipients=m.Recipients(
            to=(m.Address("+15551234567"),),
            bcc=(m.Address("hidden@example.com", "RFC2822Address"),),
        ),
        subject="Hello",
        content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
    )
    client = gateway.client("/mm7/", ("vasp1", "secret1"))
    answer = gateway.result(client.submit(submit))
    assert answer.status.code == 1000 and answer.message_id
    [mail] = gateway.relay.accepted
    assert sorted(mail.recipients) == ["15551234567@to.example", "hidden@example.com"]
    assert "hidden" not in mail.data.decode()


# Each fault and its MM7 status ------------------------------------------------


def test_relay_stopped_is_4006(gateway):
    gateway.relay.stop()
    assert status_of(gateway, deliver(gateway)) == 4006
    gateway.relay.start()
    assert status_of(gateway, deliver(gateway)) == 1000


def test_421_at_the_greeting_is_4006(gateway):
    gateway.relay.refuse("greeting", 421)
    assert status_of(gateway, deliver(gateway)) == 4006
    assert gateway.relay.received == []


def test_451_at_mail_from_is_4006_until_cleared(gateway):
    gateway.relay.refuse("mail", 451)
    assert status_of(gateway, deliver(gateway)) == 4006
    assert status_of(gateway, deliver(gateway)) == 4006  # still refusing
    gateway.relay.clear()
    assert status_of(gateway, deliver(gateway)) == 1000
    assert len(gateway.relay.sessions) == 1  # the session survived refusals


def test_5xx_for_every_recipient_is_2002(gateway):
    gateway.relay.refuse("rcpt", 550)
    assert status_of(gateway, deliver(gateway)) == 2002
    assert gateway.relay.received == []


def test_5xx_for_one_recipient_is_a_partial_success(gateway):
    gateway.relay.refuse("rcpt", 550, recipient="7255@to.example")
    req = m.DeliverReq(
        sender=DELIVER.sender,
        recipients=m.Recipients(to=(m.Address("7255"), m.Address("7256"))),
        content=DELIVER.content,
    )
    assert status_of(gateway, deliver(gateway, req)) == 1100
    [mail] = gateway.relay.accepted
    assert mail.recipients == ["7256@to.example"]


def test_5xx_after_the_data_is_3002(gateway):
    gateway.relay.refuse("end", 554)
    assert status_of(gateway, deliver(gateway)) == 3002
    assert [r.reply for r in gateway.relay.received] == [554]
    assert gateway.relay.accepted == []


def test_a_hang_mid_data_is_4006_after_the_command_timeout(gateway):
    gateway.relay.hang("message")
    d = deliver(gateway)
    gateway.advance(59.9)
    assert not fired(d)
    gateway.advance(0.1)
    assert status_of(gateway, d) == 4006
    assert gateway.relay.received == []


def test_a_drop_mid_data_is_4006(gateway):
    gateway.relay.drop("message")
    assert status_of(gateway, deliver(gateway)) == 4006
    assert gateway.relay.received == []


def test_a_close_after_the_data_before_250_is_4006(gateway):
    gateway.relay.drop("end")
    assert status_of(gateway, deliver(gateway)) == 4006
    # The relay has the message, unanswered: the MMSC will send it again.
    assert [r.reply for r in gateway.relay.received] == [None]


def test_a_close_after_250_is_1000_and_the_next_mail_opens_a_session(gateway):
    gateway.relay.close_after("end")
    assert status_of(gateway, deliver(gateway)) == 1000
    gateway.relay.clear()
    assert status_of(gateway, deliver(gateway)) == 1000
    assert len(gateway.relay.sessions) == 2
    assert len(gateway.relay.accepted) == 2


def test_a_hang_at_the_greeting_is_4006_after_the_command_timeout(gateway):
    gateway.relay.hang("greeting")
    d = deliver(gateway)
    gateway.advance(59)
    assert not fired(d)
    gateway.advance(1)
    assert status_of(gateway, d) == 4006


# Recording -----------------------------------------------------------------------


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "a@from.example"
    msg["Subject"] = "same"
    msg.set_content("same bytes\n")
    return msg


@pytest.mark.parametrize("pipelining", [True, False])
def test_two_equal_messages_on_one_session_are_two_records(pipelining):
    reactor = MemoryReactor()
    relay = MemorySMTPRelay(reactor, pipelining=pipelining)
    sender = ESMTPSender(
        reactor,
        SMTPSettings(endpoint=relay.endpoint, starttls="off", max_connections=1),
    )
    sent = [sender.send("a@from.example", ["b@to.example"], message()) for _ in "12"]
    reactor.flush()
    assert [len(result_of(d).accepted) for d in sent] == [1, 1]
    assert len(relay.sessions) == 1
    assert len(relay.received) == 2
    assert relay.received[0].data == relay.received[1].data


def test_the_loopback_server_records_equal_messages_twice_too():
    # smtp_server_factory, as the loopback tests use it, over the memory reactor.
    reactor = MemoryReactor()
    delivery = RecordingDelivery()
    reactor.listenTCP(2525, smtp_server_factory(delivery), interface="127.0.0.1")
    sender = ESMTPSender(
        reactor,
        SMTPSettings(endpoint="tcp:127.0.0.1:2525", starttls="off", max_connections=1),
    )
    sent = [
        sender.send("a@from.example", ["b@to.example", "c@to.example"], message())
        for _ in "12"
    ]
    reactor.flush()
    for d in sent:
        result_of(d)
    assert [sorted(r.recipients) for r in delivery.received] == [
        ["b@to.example", "c@to.example"]
    ] * 2


# Time, threads, the agent --------------------------------------------------------


class CountingFactory(protocol.ClientFactory):
    protocol = protocol.Protocol

    def __init__(self) -> None:
        self.started = self.stopped = 0

    def startFactory(self) -> None:
        self.started += 1

    def stopFactory(self) -> None:
        self.stopped += 1


def test_a_client_factory_is_started_and_stopped_as_a_real_reactor_does():
    """Started when connecting, stopped once the connection is closed or
    refused (a noisy factory logs each, as over TCP)."""
    reactor = MemoryReactor()
    reactor.listenTCP(
        25, protocol.Factory.forProtocol(protocol.Protocol), interface="x.test"
    )
    factory = CountingFactory()
    reactor.connectTCP("x.test", 25, factory)
    assert (factory.started, factory.stopped) == (1, 0)
    reactor.flush()
    assert (factory.started, factory.stopped) == (1, 0)
    [pump] = reactor._pumps
    pump.client.transport.loseConnection()
    reactor.flush()
    assert (factory.started, factory.stopped) == (1, 1)
    reactor.connectTCP("nothing.test", 25, factory)
    reactor.flush()
    assert (factory.started, factory.stopped) == (2, 2)
    reactor.connectTCP("x.test", 25, factory).stopConnecting()
    assert (factory.started, factory.stopped) == (3, 3)


def test_an_idle_smtp_session_closes_on_the_clock(gateway):
    assert status_of(gateway, deliver(gateway)) == 1000
    assert len(gateway.relay.open_sessions) == 1
    gateway.advance(gateway.config.smtp.idle_timeout)
    assert gateway.relay.open_sessions == []
    assert gateway.sender.connections == 0


def test_a_scrypt_password_is_checked_in_the_thread_pool_then_cached():
    hashed = hash_password("s3cret", salt=b"0123456789abcdef")
    gateway = MemoryGateway(CONFIG.replace('"secret1"', f'"{hashed}"'))
    pool = gateway.reactor.getThreadPool()
    calls: list[object] = []
    run = pool.callInThreadWithCallback

    def counting(*args, **kw):
        calls.append(args[1])
        run(*args, **kw)

    pool.callInThreadWithCallback = counting  # type: ignore[method-assign]
    submit = m.SubmitReq(
        sender_address=m.Address("12345", "ShortCode"),
        recipients=m.Recipients(to=(m.Address("+15551234567"),)),
        content=DELIVER.content,
    )
    right = gateway.client("/mm7/", ("vasp1", "s3cret"))
    assert gateway.result(right.submit(submit)).status.code == 1000
    assert gateway.result(right.submit(submit)).status.code == 1000
    assert len(calls) == 1  # the second check came from the cache
    wrong = gateway.client("/mm7/", ("vasp1", "wrong"))
    with pytest.raises(Exception, match="401"):
        gateway.result(wrong.submit(submit))
    assert len(calls) == 2


class Later(Resource):
    """Answers each POST five seconds later."""

    isLeaf = True

    def __init__(self, reactor: MemoryReactor) -> None:
        super().__init__()
        self.reactor = reactor

    def render_POST(self, request):
        def answer() -> None:
            request.write(b"later: " + request.content.read())
            request.finish()

        self.reactor.callLater(5, answer)
        return NOT_DONE_YET


def test_the_agent_waits_for_resources_that_answer_later():
    reactor = MemoryReactor()
    reactor.listenTCP(80, Site(Later(reactor), reactor=reactor), interface="x.test")
    answer = post(MemoryAgent(reactor), "http://x.test/", b"hi")
    reactor.advance(4.9)
    assert not fired(answer)
    reactor.advance(0.1)
    assert result_of(answer).body == b"later: hi"


def test_http_post_needs_an_answer_without_time():
    with pytest.raises(AssertionError, match="has not fired"):
        http_post(Later(MemoryReactor()), "/", b"hi")


def test_the_request_deadline_of_mm7site_runs_on_the_clock(gateway):
    # A client that sends half a request and stops is cut off with 408.
    from twisted.internet.testing import StringTransport

    channel = gateway.site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /vasp/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n")
    gateway.advance(gateway.config.request_timeout)
    assert transport.value().startswith(b"HTTP/1.1 408")


def test_post_gives_code_headers_and_body(gateway):
    answer = gateway.post("/vasp/", b"<not-xml", {"Content-Type": "text/xml"})
    assert answer.code == 500
    assert answer.headers["content-type"] == "text/xml; charset=utf-8"
    assert b"Fault" in answer.body


def test_stop_drains_and_closes_everything(gateway):
    assert status_of(gateway, deliver(gateway)) == 1000
    gateway.stop()
    assert gateway.relay.open_sessions == []
    assert gateway.reactor.connections == 0


def test_result_of_leaves_a_result_for_later_callbacks() -> None:
    from mm7tx.testing import result_of

    d: defer.Deferred[int] = defer.succeed(7)
    assert result_of(d) == 7
    assert result_of(d) == 7
    failing: defer.Deferred[int] = defer.fail(ValueError("no"))
    with pytest.raises(ValueError):
        result_of(failing)
    waiting: defer.Deferred[int] = defer.Deferred()
    with pytest.raises(AssertionError):
        result_of(waiting)
    # Asked too early, it still gives the failure that comes later.
    waiting.errback(ValueError("later"))
    with pytest.raises(ValueError):
        result_of(waiting)
