"""Submit end to end: a VASP submits over real HTTP, mail reaches a real SMTP
server, and the delivery report comes back to a real VASP endpoint."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from mm7tx import codec
from mm7tx import messages as m
from mm7tx.auth import Account
from mm7tx.client import HTTPError, MM7Client
from mm7tx.config import load
from mm7tx.reports import DeliveryReporter
from mm7tx.resource import build_root
from mm7tx.service import build_service
from tests import samples

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 100


async def free_port() -> int:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(protocol.Protocol)
    )
    number = int(port.getHost().port)
    await port.stopListening()
    return number


def config_text(http_port: int, relay: str) -> str:
    return samples.EXAMPLE_7_1.replace(
        "}",
        f"""  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "{relay}"
  smtp_starttls = off
}}
HTTP_Listener {{ Listen "tcp:{http_port}:interface=127.0.0.1" {{ }} }}
VASP "vasp1" {{
  password = "secret1"
  delivery_report_url = "http://127.0.0.1:{http_port}/ringtones/"
}}
""",
    )


@pytest_twisted.ensureDeferred
async def test_submit_mails_every_recipient_and_reports_back(relay, delivery):
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    http_port = await free_port()
    service = build_service(load(config_text(http_port, relay), "e2e.conf"), reactor)
    service.startService()
    client = MM7Client(reactor, f"http://127.0.0.1:{http_port}/mm7/vasp1=secret1")
    try:
        request = m.SubmitReq(
            sender_address=m.Address("12345", "ShortCode"),
            recipients=m.Recipients(
                to=(m.Address("+15551234567"),),
                cc=(m.Address("boss@example.com", "RFC2822Address"),),
                bcc=(m.Address("audit@example.com", "RFC2822Address"),),
            ),
            delivery_report=True,
            subject="Statement",
            content=(
                m.ContentPart(
                    "text/plain", b"Your statement", (("charset", "utf-8"),), "t"
                ),
                m.ContentPart("image/jpeg", JPEG, (("name", "s.jpg"),), "i", "s.jpg"),
            ),
        )
        response = await client.submit(request)
        assert response.status.code == 1000 and response.message_id
        reporter = service.root.children[b"mm7"].processor.reporter  # type: ignore[attr-defined]
        assert isinstance(reporter, DeliveryReporter)
        results = [await d for d in list(reporter.pending)]
        assert results == [True, True, True]
        mms, *reports = delivery.received
        assert sorted(mms.recipients) == [
            "15551234567@exampleto.com",
            "audit@example.com",
            "boss@example.com",
        ]
        msg = mms.message
        assert msg["To"] == "15551234567@exampleto.com"
        assert msg["Cc"] == "boss@example.com"
        assert msg["Bcc"] is None and b"audit" not in mms.data
        assert msg["From"] == "12345@messagesystems.com"
        assert msg["X-MM7-MessageID"] == response.message_id
        [jpeg] = list(msg.iter_attachments())
        assert jpeg.get_content() == JPEG
        # One report per recipient, posted to our own VASP path, mailed back
        # to the submitting short code.
        assert len(reports) == 3
        for report in reports:
            assert report.recipients == ["12345@exampleto.com"]
            dsn = report.message
            assert dsn["X-MM7-MessageID"] == response.message_id
            fields = dsn.get_payload()[1].get_payload()[1]
            assert fields["X-MM7-MMStatus"] == "Forwarded"
            assert fields["Action"] == "relayed"
        # The URI password is in no log line, not even the access log.
        logged = "\n".join(formatEvent(e) for e in events)
        assert "POST /mm7/vasp1=***" in logged
        assert "secret1" not in logged
    finally:
        globalLogPublisher.removeObserver(events.append)
        await client.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_refused_credentials_over_http(relay, delivery):
    http_port = await free_port()
    service = build_service(load(config_text(http_port, relay), "e2e.conf"), reactor)
    service.startService()
    client = MM7Client(reactor, f"http://127.0.0.1:{http_port}/mm7", ("vasp1", "nope"))
    try:
        with pytest.raises(HTTPError) as caught:
            await client.submit(
                m.SubmitReq(recipients=m.Recipients(to=(m.Address("1"),)))
            )
        assert caught.value.code == 401
        assert delivery.received == []
    finally:
        await client.close()
        await service.stopService()


class Flaky(Resource):
    """A VASP that answers 4006 twice, then takes the report."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[m.Envelope] = []

    def render_POST(self, request: Any) -> bytes:
        assert request.content is not None
        envelope = codec.decode(
            request.getHeader("content-type"), request.content.read()
        )
        self.seen.append(envelope)
        request.setHeader(b"content-type", b"text/xml")
        if len(self.seen) <= 2:
            request.setResponseCode(500)
            status = m.Status(4006, "Service unavailable")
            return codec.encode(
                m.Envelope(envelope.transaction_id, m.VASPErrorRsp(status))
            )[1]
        rsp = m.DeliveryReportRsp(m.Status(1000, "Success"))
        return codec.encode(m.Envelope(envelope.transaction_id, rsp))[1]


@pytest_twisted.ensureDeferred
async def test_delivery_reports_are_retried_with_backoff():
    vasp = Flaky()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(build_root({"/dr/": vasp}))
    )
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/dr/"
        reporter = DeliveryReporter(reactor, attempts=4, first_delay=0.05)
        account = Account("v", "p", delivery_report_url=url)
        report = m.DeliveryReportReq(
            message_id="M1", recipient=m.Address("1"), mm_status="Rejected"
        )
        assert await reporter.report(account, report, m.DEFAULT_NAMESPACE) is True
        assert len(vasp.seen) == 3
        assert vasp.seen[-1].message == report
        # An unreachable VASP: every attempt made, then it gives up.
        dead = DeliveryReporter(reactor, attempts=3, first_delay=0.01)
        gone = Account("v", "p", delivery_report_url="http://127.0.0.1:1/dr/")
        assert await dead.report(gone, report, m.DEFAULT_NAMESPACE) is False
    finally:
        await port.stopListening()
