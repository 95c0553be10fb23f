"""Submit end to end on real sockets: a VASP submits, mail reaches the relay,
and the delivery reports come back (in memory:
tests/system/test_mmsc_end_to_end.py)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import formatEvent, globalLogPublisher

from mm7tx.app.service import build_service
from mm7tx.config import load
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.http.client import MM7Client
from mm7tx.mm7 import messages as m
from tests import samples
from tests.system.test_mmsc_end_to_end import JPEG


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
  mm7_access_log = true
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
        results = [await d.addTimeout(20, reactor) for d in list(reporter.pending)]
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
        await service.stopService().addTimeout(20, reactor)
