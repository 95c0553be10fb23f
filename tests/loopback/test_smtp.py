"""The ESMTP sender over REAL loopback sockets, against Twisted's ESMTP server.

Only what needs a real TCP stack or real TLS is here: bytes intact through
the kernel, STARTTLS (opportunistic and required, with a real certificate),
implicit TLS and AUTH.  Every other behaviour of the sender is tested in
memory, on a clock, in test_smtp.py.
"""

from __future__ import annotations

import base64
from email.message import EmailMessage

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.logger import formatEvent, globalLogPublisher

from mm7tx.interfaces import SendResult
from mm7tx.mm7.errors import MM7Error
from mm7tx.smtp.esmtp import ESMTPSender
from mm7tx.smtp.settings import SMTPSettings
from mm7tx.testing import RecordingDelivery, smtp_server_factory
from tests.certs import make_certificate, server_options
from tests.smtp.test_smtp import message


def sender_for(endpoint: str, **kw) -> ESMTPSender:
    kw.setdefault("starttls", "off")
    return ESMTPSender(reactor, SMTPSettings(endpoint=endpoint, **kw))


async def send(
    sender: ESMTPSender, recipients: list[str], msg: EmailMessage | None = None
):
    d = sender.send("a@from.example", recipients, msg or message())
    return await d.addTimeout(10, reactor)


async def listen(factory) -> tuple[object, int]:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port, port.getHost().port


@pytest.fixture
def certificate(tmp_path):
    cert, key = make_certificate(tmp_path / "tls")
    server = server_options(cert, key)
    return cert, server


@pytest_twisted.ensureDeferred
async def test_delivers_with_bytes_intact_over_loopback(relay, delivery):
    # ``relay`` (tests/conftest.py): with and without PIPELINING.
    sender = sender_for(relay)
    result = await send(sender, ["b@to.example", "c@to.example"])
    [mail] = delivery.received
    reply = f"250 2.0.0 Ok: queued as {mail.queue_id}"
    assert result == SendResult(("b@to.example", "c@to.example"), reply=reply)
    assert sorted(mail.recipients) == ["b@to.example", "c@to.example"]
    msg = mail.message
    assert msg.get_body(("plain",)).get_content() == "line one\n.leading dot\n"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content() == b"\x00\x01binary\r\n.\r\n..dots"
    await sender.close()


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
        await sender.close()
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
        trusted = sender_for(
            f"tcp:127.0.0.1:{number}",
            starttls="required",
            ca_file=str(certificate[0]),
            tls_hostname="localhost",
        )
        await send(trusted, ["b@to.example"])
        assert delivery.tls == [True]
        untrusted = sender_for(
            f"tcp:127.0.0.1:{number}", starttls="required", tls_hostname="localhost"
        )
        with pytest.raises(MM7Error) as caught:
            await send(untrusted, ["c@to.example"])
        assert caught.value.status.code == 4006
        assert len(delivery.received) == 1
        await trusted.close()
        await untrusted.close()
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
        sender = sender_for(f"tls:localhost:{port.getHost().port}:trustRoots={roots}")
        await send(sender, ["b@to.example"])
        assert delivery.tls == [True]
        await sender.close()
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
        await good.close()
        await bad.close()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    logged = " ".join(formatEvent(e) + repr(e) for e in events)
    for secret in ("s3cret-Pa55", "wrong-Pa55"):
        assert secret not in logged
        assert base64.b64encode(secret.encode()).decode() not in logged
