"""What real peers send, kept accepted (README, "Peer quirks mm7tx
tolerates"): instantcom-mm7's Java dates and ``Content`` without ``href``
(its captured requests are run by test_samples), and requests shaped as
Mbuni's mmsbox (a VASP submitting) and mmsc (an MMSC reporting) send them,
through the whole gateway in memory."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest

from mm7tx.gateway.processors import EmailProcessor
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import FakeMailSender, MemoryGateway, http_post
from mm7tx.transaction import Transaction
from tests import samples
from tests.http.test_mmsc import basic, mmsc
from tests.http.test_resource import RULES

REL_6 = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"
# Mbuni's default namespace.
REL_5 = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-5-MM7-1-0"


# instantcom-mm7 ------------------------------------------------------------------

WHEN = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("java", "iso"),
    [
        ("Tue Nov 14 22:13:20 UTC 2023", "2023-11-14T22:13:20+00:00"),
        ("Tue Nov 14 22:13:20 GMT 2023", "2023-11-14T22:13:20+00:00"),
        ("Tue Nov 14 23:13:20 CET 2023", "2023-11-14T23:13:20+01:00"),
        ("Tue Nov 14 14:13:20 PST 2023", "2023-11-14T14:13:20-08:00"),
        ("Tue Nov 14 17:13:20 EST 2023", "2023-11-14T17:13:20-05:00"),
        ("Wed Nov 15 07:13:20 JST 2023", "2023-11-15T07:13:20+09:00"),
        ("Wed Nov 15 03:43:20 GMT+05:30 2023", "2023-11-15T03:43:20+05:30"),
    ],
)
def test_a_java_date_is_read_as_xsd_datetime_and_dates_the_mail(java, iso):
    message = _deliver_with_timestamp(java)
    assert message.timestamp == iso
    mail = EmailProcessor(FakeMailSender(), RULES).deliver_message(
        message, Transaction("t", "/vasp/")
    )
    assert parsedate_to_datetime(mail.message["Date"]) == WHEN


@pytest.mark.parametrize(
    ("java", "iso"),
    [
        # Summer time, as the JVM prints it then.
        ("Sat Jul 01 14:00:00 CEST 2023", "2023-07-01T14:00:00+02:00"),
        ("Sat Jul 01 05:00:00 PDT 2023", "2023-07-01T05:00:00-07:00"),
        # Anything else is kept as sent: the mail is then dated when it came.
        ("Tue Nov 14 22:13:20 XYZ 2023", "Tue Nov 14 22:13:20 XYZ 2023"),
        ("Thu Feb 30 22:13:20 UTC 2023", "Thu Feb 30 22:13:20 UTC 2023"),
        ("2023-11-14T22:13:20.000Z", "2023-11-14T22:13:20.000Z"),
    ],
)
def test_other_dates(java, iso):
    assert _deliver_with_timestamp(java).timestamp == iso


def _deliver_with_timestamp(text: str) -> m.DeliverReq:
    body = f"""<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">
<env:Body><DeliverReq xmlns="{REL_6}"><MM7Version>6.7.0</MM7Version>
<Sender><Number>+385911111111</Number></Sender>
<TimeStamp>{text}</TimeStamp></DeliverReq></env:Body></env:Envelope>""".encode()
    message = codec.decode("text/xml", body).message
    assert isinstance(message, m.DeliverReq)
    return message


def test_content_without_href_is_the_part_after_the_soap_part():
    """instantcom-mm7 writes ``<Content />`` and its part's Content-ID is
    no help: the content is every part after the SOAP part."""
    body = (
        b"--b\r\nContent-Type: text/xml\r\nContent-ID: <soap>\r\n\r\n"
        b'<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<env:Body><DeliverReq xmlns="' + REL_6.encode() + b'">'
        b"<Sender><Number>1</Number></Sender><Content /></DeliverReq>"
        b"</env:Body></env:Envelope>\r\n"
        b"--b\r\nContent-Type: multipart/mixed; boundary=inner\r\n"
        b"Content-ID: <somewhere-else>\r\n\r\n"
        b"--inner\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--inner\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\n" + base64.b64encode(b"GIF89a\x00\x01") + b"\r\n--inner--\r\n--b--"
    )
    envelope = codec.decode('multipart/related; type="text/xml"; boundary=b', body)
    message = envelope.message
    assert isinstance(message, m.DeliverReq)
    assert envelope.content_href is None
    assert [(p.media_type, p.data) for p in message.content] == [
        ("text/plain", b"hello"),
        ("image/gif", b"GIF89a\x00\x01"),
    ]


def test_the_instantcom_namespace_is_answered_in():
    """REL-6-MM7-6-7 is no namespace 3GPP published; instantcom-mm7 sends it
    and reads the answer in it."""
    ctype, body = samples.http_message(
        samples.read("instantcom-client/submit-delivery-report.http")
    )
    sender = FakeMailSender()
    headers = {"Content-Type": ctype or "", **basic("vasp1", "secret1")}
    answer = http_post(mmsc(sender), "/mm7", body, headers)
    env = codec.decode(answer.headers["content-type"], answer.body)
    assert answer.code == 200 and env.message.status.code == 1000  # type: ignore[union-attr]
    assert env.namespace.endswith("/REL-6-MM7-6-7")
    assert env.transaction_id == "IC-submit-dr"


# Mbuni ------------------------------------------------------------------------------

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_server_default_email_to_address = "reports@to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
}
VASP "mbuni" { password = "pw" }
"""


def _mbuni_envelope(tid: str, body: str) -> bytes:
    """The envelope as Mbuni writes it: single-quoted XML declaration,
    ``SOAP-ENV:`` prefix, the MM7 namespace as the default of the header's
    TransactionID and of the request element."""
    return f"""<?xml version='1.0' encoding='UTF-8'?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">
<SOAP-ENV:Header>
<TransactionID xmlns="{REL_5}" SOAP-ENV:mustUnderstand="1">{tid}</TransactionID>
</SOAP-ENV:Header>
<SOAP-ENV:Body>
{body}
</SOAP-ENV:Body>
</SOAP-ENV:Envelope>
""".encode()


def mbuni_submit(tid: str, sender: str, recipient: str) -> tuple[str, bytes]:
    """One of mmsbox's SubmitReqs: one recipient each, content by cid."""
    soap = _mbuni_envelope(
        tid,
        f"""<SubmitReq xmlns="{REL_5}">
<MM7Version>5.3.0</MM7Version>
<SenderIdentification>
<VASPID>mbuni</VASPID>
<SenderAddress>{sender}</SenderAddress>
</SenderIdentification>
<Recipients>
<To>
<Number>{recipient}</Number>
</To>
</Recipients>
<DeliveryReport>true</DeliveryReport>
<Subject>weather</Subject>
<Content href="cid:mbuni-content"/>
</SubmitReq>""",
    )
    body = (
        b"--mbuni\r\nContent-Type: text/xml\r\nContent-ID: <mbuni-soap>\r\n\r\n"
        + soap
        + b"\r\n--mbuni\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-ID: <mbuni-content>\r\n\r\nsunny\r\n--mbuni--\r\n"
    )
    ctype = 'multipart/related; type="text/xml"; start="<mbuni-soap>"; boundary=mbuni'
    return ctype, body


def test_mbuni_one_submit_per_recipient_with_one_transaction_id():
    """mmsbox sends a message to two recipients as two SubmitReqs with the
    same TransactionID, and writes the sender of the second as a
    digits-only RFC2822Address: both are mailed, from the same address."""
    gateway = MemoryGateway(CONFIG)
    auth = basic("mbuni", "pw")
    senders = ("<Number>7255</Number>", "<RFC2822Address>7255</RFC2822Address>")
    recipients = ("+15551230001", "+15551230002")
    answers = []
    for sender, recipient in zip(senders, recipients, strict=True):
        ctype, body = mbuni_submit("mbuni-42", sender, recipient)
        answer = gateway.post("/mm7", body, {"Content-Type": ctype, **auth})
        env = codec.decode(answer.headers["content-type"], answer.body)
        assert answer.code == 200, env
        assert (env.transaction_id, env.namespace) == ("mbuni-42", REL_5)
        assert isinstance(env.message, m.SubmitRsp)
        assert env.message.status.code == 1000
        answers.append(env.message.message_id)
    assert len(set(answers)) == 2  # two messages, whatever the TransactionID
    mails = gateway.relay.accepted
    assert [mail.recipients for mail in mails] == [
        ["15551230001@to.example"],
        ["15551230002@to.example"],
    ]
    assert [mail.sender for mail in mails] == ["7255@from.example"] * 2
    for mail in mails:
        assert mail.message["X-MM7-TransactionID"] == "mbuni-42"
        assert mail.message.get_body().get_content().strip() == "sunny"  # type: ignore[union-attr]
    gateway.stop()


def mbuni_delivery_report(mm_status: str, extra: str = "") -> bytes:
    """mmsc's DeliveryReportReq: a bare text/xml body, no multipart."""
    return _mbuni_envelope(
        "mbuni-dr-7",
        f"""<DeliveryReportReq xmlns="{REL_5}">
<MM7Version>5.3.0</MM7Version>
<MMSRelayServerID>mbuni-mmsc</MMSRelayServerID>
<MessageID>0.20231114.2213.1@mmsc</MessageID>
<Recipient>
<Number>+15551230001</Number>
</Recipient>
<Sender>
<RFC2822Address>7255</RFC2822Address>
</Sender>
<Date>2023-11-14T22:13:20+00:00</Date>
<MMStatus>{mm_status}</MMStatus>
{extra}
</DeliveryReportReq>""",
    )


def test_mbuni_delivery_report_as_bare_xml():
    gateway = MemoryGateway(CONFIG)
    answer = gateway.post(
        "/vasp/", mbuni_delivery_report("Retrieved"), {"Content-Type": "text/xml"}
    )
    env = codec.decode(answer.headers["content-type"], answer.body)
    assert answer.code == 200, env
    assert isinstance(env.message, m.DeliveryReportRsp)
    assert env.message.status.code == 1000
    assert (env.transaction_id, env.namespace) == ("mbuni-dr-7", REL_5)
    [mail] = gateway.relay.accepted
    # From the handset, to the report's Sender (a digits-only RFC2822Address),
    # from the null sender in the envelope.
    assert (mail.sender, mail.recipients) == ("", ["7255@to.example"])
    report = mail.message
    assert report["From"] == "15551230001@from.example"
    assert report.get_content_type() == "multipart/report"
    assert report["Subject"] == "Delivery report: Retrieved"
    assert parsedate_to_datetime(report["Date"]) == WHEN
    gateway.stop()


def test_mbuni_delivery_report_without_mm_status_is_refused():
    gateway = MemoryGateway(CONFIG)
    body = mbuni_delivery_report("")
    answer = gateway.post("/vasp/", body, {"Content-Type": "text/xml"})
    env = codec.decode(answer.headers["content-type"], answer.body)
    assert answer.code == 500 and isinstance(env.message, m.VASPErrorRsp)
    assert env.message.status == m.Status(
        4004, "Validation error", "DeliveryReportReq has no MMStatus"
    )
    assert gateway.relay.accepted == []
    gateway.stop()
