"""The real service on loopback: real HTTP in, a real ESMTP server out (in
memory: tests/system/test_end_to_end.py)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from tests import samples
from tests.system.test_end_to_end import CONFIG, post, start


@pytest_twisted.ensureDeferred
async def test_every_deliver_sample_arrives_as_mail(relay, delivery):
    # Two of the samples are one transaction (the same TransactionID and
    # content, spelt differently): with a state store the second would be
    # answered as a retry, without a mail (tests/http/test_once.py).
    stateless = CONFIG.replace("}", '  state_store = "none"\n}')
    application, base = await start(relay, stateless)
    try:
        cases = [
            samples.http_message(samples.read("instantcom-mm7/deliver-req-post.txt")),
            *(
                samples.body_sample(f"instantcom-mm7/{name}")
                for name in (
                    "deliver-req1.txt",
                    "deliver-req2.txt",
                    "deliver-req3.txt",
                    "deliver-req4.txt",
                    "deliver-req5.txt",
                    "deliver-req6-hw.txt",
                    "caixin.txt",
                )
            ),
        ]
        for ctype, body in cases:
            code, answer = await post(base + "/photo_contest/", ctype, body)
            assert code == 200
            assert answer.message.status.code == 1000  # type: ignore[union-attr]
            sent = codec.decode(ctype, body)
            assert answer.transaction_id == sent.transaction_id
            assert answer.namespace == sent.namespace
            mail = delivery.received[-1]
            msg = mail.message
            assert msg["X-MM7-TransactionID"] == sent.transaction_id
            # Binary parts arrive byte for byte, text parts as the same text,
            # no line break added (this server stores LF line ends).
            content = [p for p in sent.message.content if not p.is_smil]  # type: ignore[union-attr]
            leaves = [p for p in msg.walk() if not p.is_multipart()]
            assert sorted(
                p.data for p in content if not p.media_type.startswith("text/")
            ) == sorted(
                p.get_content() for p in leaves if p.get_content_maintype() != "text"
            )
            assert sorted(
                p.data.decode(p.charset or "utf-8").replace("\r\n", "\n")
                for p in content
                if p.media_type.startswith("text/")
            ) == sorted(
                p.get_content().replace("\r\n", "\n")
                for p in leaves
                if p.get_content_maintype() == "text"
            )
        assert len(delivery.received) == len(cases)
        huawei = delivery.received[6]
        assert sorted(huawei.recipients) == [
            "13900000001@exampleto.com",
            "13900000002@exampleto.com",
            "13900000003@exampleto.com",
        ]
        assert huawei.sender == "13951900000@messagesystems.com"
    finally:
        await application.stopService().addTimeout(20, reactor)


@pytest_twisted.ensureDeferred
async def test_reports_arrive_as_reports(relay, delivery):
    application, base = await start(relay)
    try:
        raw = samples.blocks("skycore-api-docs/mm7DeliveryReport.examples.txt")[2]
        ctype, body = samples.http_message(raw)
        code, answer = await post(base + "/ringtones", ctype, body)
        assert code == 200 and isinstance(answer.message, m.DeliveryReportRsp)
        req = m.ReadReplyReq(
            message_id="M9",
            recipient=m.Address("+1555"),
            sender=m.Address("777"),
            mm_status="Deleted",
        )
        code, answer = await post(
            base + "/ringtones/", *codec.encode(m.Envelope("rr", req))
        )
        assert code == 200 and answer.message.status.code == 1000  # type: ignore[union-attr]
        dsn, mdn = (r.message for r in delivery.received)
        assert dsn.get_param("report-type") == "delivery-status"
        assert delivery.received[0].recipients == ["111122@exampleto.com"]
        assert mdn.get_param("report-type") == "disposition-notification"
        assert mdn.get_payload()[1].get_payload()[0]["Disposition"].endswith("deleted")
    finally:
        await application.stopService().addTimeout(20, reactor)
