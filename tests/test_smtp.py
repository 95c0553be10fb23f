"""The ESMTP sender against Twisted's real ESMTP server on loopback."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from mm7tx.errors import MM7Error
from mm7tx.esmtp import ESMTPSender, SMTPSettings
from mm7tx.interfaces import IMailSender, SendResult
from mm7tx.processors import BUILD_POLICY
from mm7tx.testing import RecordingDelivery, smtp_server_factory
from tests.certs import make_certificate


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


def sender_for(endpoint: str, **kw) -> ESMTPSender:
    return ESMTPSender(reactor, SMTPSettings(endpoint=endpoint, starttls="off", **kw))


async def send(
    sender: ESMTPSender, recipients: list[str], msg: EmailMessage | None = None
):
    d = sender.send("a@from.example", recipients, msg or message())
    return await d.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_delivers_with_bytes_intact(relay, delivery):
    sender = sender_for(relay)
    assert verifyObject(IMailSender, sender)
    result = await send(sender, ["b@to.example", "c@to.example"])
    assert result == SendResult(("b@to.example", "c@to.example"))
    [mail] = delivery.received
    assert mail.sender == "a@from.example"
    assert sorted(mail.recipients) == ["b@to.example", "c@to.example"]
    msg = mail.message
    assert msg.get_body(("plain",)).get_content() == "line one\n.leading dot\n"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content() == b"\x00\x01binary\r\n.\r\n..dots"


@pytest_twisted.ensureDeferred
async def test_some_recipients_refused_is_partial(relay, delivery):
    delivery.refuse["bad@to.example"] = 550
    result = await send(sender_for(relay), ["b@to.example", "bad@to.example"])
    assert result.accepted == ("b@to.example",)
    assert [(a, c) for a, c, _ in result.refused] == [("bad@to.example", 550)]
    assert delivery.received[0].recipients == ["b@to.example"]


@pytest_twisted.ensureDeferred
async def test_every_recipient_refused_for_good_is_address_error(relay, delivery):
    delivery.refuse["bad@to.example"] = 550
    with pytest.raises(MM7Error) as caught:
        await send(sender_for(relay), ["bad@to.example"])
    assert caught.value.status.code == 2002
    assert delivery.received == []


@pytest_twisted.ensureDeferred
async def test_temporary_refusal_is_transient(relay, delivery):
    delivery.refuse["busy@to.example"] = 451
    with pytest.raises(MM7Error) as caught:
        await send(sender_for(relay), ["busy@to.example"])
    assert caught.value.status.code == 4006


@pytest_twisted.ensureDeferred
async def test_relay_down_is_transient():
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(protocol.Protocol)
    )
    number = port.getHost().port
    await port.stopListening()
    with pytest.raises(MM7Error) as caught:
        await send(sender_for(f"tcp:127.0.0.1:{number}"), ["b@to.example"])
    assert caught.value.status.code == 4006
    assert "unreachable" in (caught.value.status.details or "")


class Silent(protocol.Protocol):
    """Accepts the connection and never says a word."""


@pytest_twisted.ensureDeferred
async def test_a_silent_relay_times_out_as_transient():
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Silent)
    )
    try:
        sender = sender_for(f"tcp:127.0.0.1:{port.getHost().port}", command_timeout=0.3)
        with pytest.raises(MM7Error) as caught:
            await send(sender, ["b@to.example"])
        assert caught.value.status.code == 4006
        sender = sender_for(
            f"tcp:127.0.0.1:{port.getHost().port}",
            command_timeout=30,
            total_timeout=0.3,
        )
        with pytest.raises(MM7Error) as caught:
            await send(sender, ["b@to.example"])
        assert caught.value.status.details == "the mail relay timed out"
    finally:
        await port.stopListening()


class Refuses421(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"421 too busy\r\n")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_421_greeting_is_transient():
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Refuses421)
    )
    try:
        with pytest.raises(MM7Error) as caught:
            await send(
                sender_for(f"tcp:127.0.0.1:{port.getHost().port}"), ["b@to.example"]
            )
        assert caught.value.status.code == 4006
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_starttls_required_but_not_offered_is_transient(relay, delivery):
    sender = ESMTPSender(reactor, SMTPSettings(endpoint=relay, starttls="required"))
    with pytest.raises(MM7Error) as caught:
        await send(sender, ["b@to.example"])
    assert caught.value.status.code == 4006
    assert "STARTTLS" in (caught.value.status.details or "")
    assert delivery.received == []


@pytest_twisted.ensureDeferred
async def test_auth_required_but_not_offered_is_transient(relay, delivery):
    sender = sender_for(relay, username="u", password="secret-pw")
    with pytest.raises(MM7Error) as caught:
        await send(sender, ["b@to.example"])
    assert caught.value.status.code == 4006
    assert "secret-pw" not in str(caught.value)
    assert "secret-pw" not in repr(SMTPSettings(password="secret-pw"))


@pytest_twisted.ensureDeferred
async def test_opportunistic_tls_without_starttls_offer_sends_in_clear(relay, delivery):
    sender = ESMTPSender(
        reactor, SMTPSettings(endpoint=relay, starttls="opportunistic")
    )
    await send(sender, ["b@to.example"])
    assert len(delivery.received) == 1


def test_host_from_endpoint():
    assert SMTPSettings(endpoint="tcp:mail.example:25").host == "mail.example"
    assert (
        SMTPSettings(endpoint="tcp:host=relay.example:port=587").host == "relay.example"
    )
    assert SMTPSettings(endpoint="tcp:x:25", tls_hostname="y").host == "y"


# TLS and AUTH against the real server ---------------------------------------


@pytest.fixture
def certificate(tmp_path):
    cert, key = make_certificate(tmp_path / "tls")
    server = ssl.PrivateCertificate.loadPEM(
        key.read_text() + cert.read_text()
    ).options()
    return cert, server


async def listen(factory) -> tuple[object, int]:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port, port.getHost().port


@pytest.mark.parametrize("pipelining", [False, True])
@pytest_twisted.ensureDeferred
async def test_opportunistic_starttls_encrypts_when_offered(certificate, pipelining):
    delivery = RecordingDelivery()
    port, number = await listen(
        smtp_server_factory(delivery, tls=certificate[1], pipelining=pipelining)
    )
    try:
        sender = ESMTPSender(reactor, SMTPSettings(endpoint=f"tcp:127.0.0.1:{number}"))
        await send(sender, ["b@to.example"])
        assert delivery.tls == [True]
        assert len(delivery.received) == 1
    finally:
        await port.stopListening()


@pytest.mark.parametrize("pipelining", [False, True])
@pytest_twisted.ensureDeferred
async def test_required_starttls_checks_the_certificate(certificate, pipelining):
    delivery = RecordingDelivery()
    port, number = await listen(
        smtp_server_factory(delivery, tls=certificate[1], pipelining=pipelining)
    )
    try:
        trusted = ESMTPSender(
            reactor,
            SMTPSettings(
                endpoint=f"tcp:127.0.0.1:{number}",
                starttls="required",
                ca_file=str(certificate[0]),
                tls_hostname="localhost",
            ),
        )
        await send(trusted, ["b@to.example"])
        assert delivery.tls == [True]
        untrusted = ESMTPSender(
            reactor,
            SMTPSettings(
                endpoint=f"tcp:127.0.0.1:{number}",
                starttls="required",
                tls_hostname="localhost",
            ),
        )
        with pytest.raises(MM7Error) as caught:
            await send(untrusted, ["c@to.example"])
        assert caught.value.status.code == 4006
        assert len(delivery.received) == 1
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_implicit_tls_endpoint(certificate):
    delivery = RecordingDelivery()
    endpoint = SSL4ServerEndpoint(reactor, 0, certificate[1], interface="127.0.0.1")
    port = await endpoint.listen(smtp_server_factory(delivery))
    try:
        roots = certificate[0].parent / "roots"
        roots.mkdir()
        (roots / "ca.pem").write_bytes(certificate[0].read_bytes())
        sender = ESMTPSender(
            reactor,
            SMTPSettings(
                endpoint=f"tls:localhost:{port.getHost().port}:trustRoots={roots}",
                starttls="off",
            ),
        )
        await send(sender, ["b@to.example"])
        assert delivery.tls == [True]
    finally:
        await port.stopListening()


@pytest.mark.parametrize("pipelining", [False, True])
@pytest_twisted.ensureDeferred
async def test_auth_with_the_right_password_and_never_logs_it(pipelining):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    delivery = RecordingDelivery()
    users = {b"mm7": b"s3cret-Pa55"}
    port, number = await listen(
        smtp_server_factory(delivery, users=users, pipelining=pipelining)
    )
    try:
        good = sender_for(
            f"tcp:127.0.0.1:{number}", username="mm7", password="s3cret-Pa55"
        )
        await send(good, ["b@to.example"])
        assert delivery.authenticated == [b"mm7"]
        assert len(delivery.received) == 1
        bad = sender_for(
            f"tcp:127.0.0.1:{number}", username="mm7", password="wrong-Pa55"
        )
        with pytest.raises(MM7Error) as caught:
            await send(bad, ["c@to.example"])
        assert caught.value.status.code == 4006
        assert len(delivery.received) == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    logged = " ".join(formatEvent(e) + repr(e) for e in events)
    for secret in ("s3cret-Pa55", "wrong-Pa55"):
        assert secret not in logged
        assert base64.b64encode(secret.encode()).decode() not in logged


@pytest_twisted.ensureDeferred
async def test_at_most_max_connections_to_the_relay():
    delivery = RecordingDelivery()
    factory = smtp_server_factory(delivery)
    open_now, most = [0], [0]
    build = factory.buildProtocol

    def counting(addr):
        protocol = build(addr)
        made, lost = protocol.connectionMade, protocol.connectionLost

        def connectionMade():
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])
            made()

        def connectionLost(reason):
            open_now[0] -= 1
            lost(reason)

        protocol.connectionMade, protocol.connectionLost = (
            connectionMade,
            connectionLost,
        )
        return protocol

    factory.buildProtocol = counting  # type: ignore[method-assign]
    port, number = await listen(factory)
    try:
        sender = sender_for(f"tcp:127.0.0.1:{number}", max_connections=2)
        results = await defer.gatherResults(
            [
                sender.send("a@from.example", [f"r{i}@to.example"], message())
                for i in range(6)
            ]
        ).addTimeout(20, reactor)
        assert len(results) == 6 and len(delivery.received) == 6
        assert most[0] == 2
    finally:
        await port.stopListening()


def counting_factory(delivery: RecordingDelivery, pipelining: bool = False):
    """The test server, remembering its protocols (open or not) and, in
    ``factory.reads``, what each read from the client held."""
    factory = smtp_server_factory(delivery, pipelining=pipelining)
    made: list[Any] = []
    factory.reads = []  # type: ignore[attr-defined]
    build = factory.buildProtocol

    def remember(addr):
        protocol = build(addr)
        made.append(protocol)
        received = protocol.dataReceived

        def record(data):
            factory.reads.append(data)  # type: ignore[attr-defined]
            received(data)

        protocol.dataReceived = record
        return protocol

    factory.buildProtocol = remember  # type: ignore[method-assign]
    return factory, made


@pytest_twisted.ensureDeferred
async def test_messages_share_a_persistent_session():
    delivery = RecordingDelivery()
    factory, made = counting_factory(delivery)
    port, number = await listen(factory)
    try:
        sender = sender_for(f"tcp:127.0.0.1:{number}", max_connections=1)
        for i in range(3):
            await send(sender, [f"one{i}@to.example"])
        await defer.gatherResults(
            [
                sender.send("a@from.example", [f"two{i}@to.example"], message())
                for i in range(4)
            ]
        ).addTimeout(10, reactor)
        assert len(delivery.received) == 7
        assert len(made) == 1  # one TCP connection, seven transactions
        # The relay closes the idle session: the next message opens a new one.
        made[0].transport.loseConnection()
        await task.deferLater(reactor, 0.05)
        await send(sender, ["three@to.example"])
        assert len(made) == 2 and len(delivery.received) == 8
    finally:
        sender.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_idle_session_is_closed_after_the_idle_timeout():
    delivery = RecordingDelivery()
    factory, made = counting_factory(delivery)
    port, number = await listen(factory)
    try:
        sender = sender_for(f"tcp:127.0.0.1:{number}", idle_timeout=0.2)
        await send(sender, ["b@to.example"])
        assert sender.connections == 1
        await task.deferLater(reactor, 0.5)
        assert sender.connections == 0
        assert made[0].transport is None or made[0].transport.disconnected
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_pipelining_sends_the_commands_of_a_message_together():
    delivery = RecordingDelivery()
    factory, made = counting_factory(delivery, pipelining=True)
    port, number = await listen(factory)
    try:
        sender = sender_for(f"tcp:127.0.0.1:{number}", max_connections=1)
        for i in range(3):
            await send(sender, [f"b{i}@to.example", f"c{i}@to.example"])
        assert len(made) == 1 and len(delivery.received) == 3
        reads = factory.reads
        grouped = [r for r in reads if r.startswith(b"MAIL FROM")]
        assert len(grouped) == 3
        assert all(
            r.count(b"RCPT TO") == 2 and r.endswith(b"DATA\r\n") for r in grouped
        )
        # No RSET between messages that went through: two writes per message.
        assert not any(b"RSET" in r for r in reads)
        msg = delivery.received[0].message
        assert msg.get_body(("plain",)).get_content() == "line one\n.leading dot\n"
    finally:
        sender.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_pipelining_refusals_leave_the_session_usable():
    delivery = RecordingDelivery()
    delivery.refuse_senders["a@from.example"] = 451
    factory, made = counting_factory(delivery, pipelining=True)
    port, number = await listen(factory)
    try:
        sender = sender_for(f"tcp:127.0.0.1:{number}", max_connections=1)
        with pytest.raises(MM7Error) as caught:
            await send(sender, ["b@to.example"])
        assert caught.value.status.code == 4006  # MAIL FROM refused for now
        del delivery.refuse_senders["a@from.example"]
        delivery.refuse["bad@to.example"] = 550
        with pytest.raises(MM7Error) as caught:
            await send(sender, ["bad@to.example"])
        assert caught.value.status.code == 2002  # every RCPT refused, DATA too
        delivery.refuse["busy@to.example"] = 451
        with pytest.raises(MM7Error) as caught:
            await send(sender, ["bad@to.example", "busy@to.example"])
        assert caught.value.status.code == 4006  # one of them may work later
        result = await send(sender, ["b@to.example", "bad@to.example"])
        assert result.accepted == ("b@to.example",)
        assert [(a, c) for a, c, _ in result.refused] == [("bad@to.example", 550)]
        assert len(made) == 1 and len(delivery.received) == 1
        assert sum(r.count(b"RSET") for r in factory.reads) == 3
    finally:
        sender.close()
        await port.stopListening()


def test_smtp_data_ends_lines_with_crlf_and_doubles_leading_dots():
    from mm7tx.esmtp import _smtp_data

    assert _smtp_data(b"a\n.b\n..c\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert _smtp_data(b".x") == b"..x\r\n.\r\n"
    assert _smtp_data(b"") == b".\r\n"


@pytest_twisted.ensureDeferred
async def test_a_big_message_arrives_whole(relay, delivery):
    # Over 256 KiB: the pipelined path sends it in chunks as the connection
    # takes them.
    big = bytes(range(256)) * 3000 + b"\r\n.\r\n.."
    result = await send(sender_for(relay), ["b@to.example"], message(big))
    assert result.accepted == ("b@to.example",)
    [attachment] = list(delivery.received[0].message.iter_attachments())
    assert attachment.get_content() == big


def test_a_big_message_goes_in_chunks_each_restarting_the_timeout():
    from twisted.internet.testing import StringTransport

    from mm7tx.esmtp import _ONE_WRITE, _smtp_data, _SMTPClient

    client = _SMTPClient(sender_for("tcp:127.0.0.1:1"))
    transport = StringTransport()
    client.transport = transport
    resets: list[None] = []
    client.resetTimeout = lambda: resets.append(None)  # type: ignore[method-assign]
    small = _smtp_data(b"x" * 1000)
    client._send_data(small)
    assert transport.value() == small and transport.producer is None
    transport.clear()
    wire = _smtp_data(b"line\n" * (_ONE_WRITE // 4))
    client._send_data(wire)
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert transport.value() == wire
    assert len(resets) == -(-len(wire) // _ONE_WRITE) >= 2  # one per chunk taken


@pytest_twisted.ensureDeferred
async def test_a_mail_without_recipients_is_an_address_error(relay, delivery):
    with pytest.raises(MM7Error) as caught:
        await send(sender_for(relay), [])
    assert caught.value.status.code == 2002
    assert delivery.received == []


def _dot_at_chunk_boundary() -> EmailMessage:
    """A text whose line "." starts exactly at byte 16384 of the message as
    handed to the SMTP client: where Twisted's FileSender starts a chunk."""
    from mm7tx.wire import wire_bytes

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


@pytest_twisted.ensureDeferred
async def test_a_dot_line_at_a_chunk_boundary_is_still_doubled(relay, delivery):
    msg = _dot_at_chunk_boundary()
    text = msg.get_content()
    result = await send(sender_for(relay), ["b@to.example"], msg)
    assert result.accepted == ("b@to.example",)
    [mail] = delivery.received
    assert mail.recipients == ["b@to.example"]
    assert mail.message.get_content() == text
