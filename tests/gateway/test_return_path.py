"""The way back (issue 24, items 1 and 2): a mail that became MMS through
the ESMTP listener has its envelope kept in the store, and the MMSC's
DeliveryReportReq and ReadReplyReq on it become a DSN (RFC 3464) and an
MDN (RFC 8098) to that mail's sender, all in memory on a Clock: the
listener over a StringTransport, a fake MMSC, the memory store and the
VASP path's EmailProcessor with its ReturnPath."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from flufl.bounce import all_failures, scan_message
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mm7tx.gateway.envelopes import SentMail, record_key
from mm7tx.gateway.mail_in import MailToMMS, Upstream
from mm7tx.gateway.processors import EmailProcessor
from mm7tx.gateway.return_path import ReturnPath
from mm7tx.http.settings import SubmitSettings
from mm7tx.mail.compose import DSN_ACTIONS
from mm7tx.mail.rules import AddressRules
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.peers import Account
from mm7tx.smtp.server import ESMTPServerFactory
from mm7tx.smtp.settings import MailInSettings
from mm7tx.store.memory import MemoryStore
from mm7tx.testing import FakeMailSender
from mm7tx.testing.reactor import result_of
from mm7tx.transaction import Transaction

MAIL = (
    b"From: Ann <ann@example.org>\r\n"
    b"To: 15551234567@mms.example\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"Hello, phone.\r\n"
)
WEEK = 604800.0


class FakeMMSC:
    """Answers each SubmitReq at once with ``code`` and MessageID ``mmsc-N``."""

    def __init__(self) -> None:
        self.sent: list[m.SubmitReq] = []
        self.code = 1000

    def send(
        self, request: m.Request, transaction_id: str | None = None
    ) -> defer.Deferred[m.Response]:
        assert isinstance(request, m.SubmitReq)
        self.sent.append(request)
        return defer.succeed(
            m.SubmitRsp(m.Status(self.code, "ok"), message_id=f"mmsc-{len(self.sent)}")
        )


class Way:
    """The listener on one connection, the store, and the VASP path's
    processor with its return path; ``store=False``: no store at all."""

    def __init__(self, store: bool = True, window: float = WEEK) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock) if store else None
        self.mmsc = FakeMMSC()
        self.policy = MailToMMS(
            MailInSettings(domains=("mms.example",)),
            [Upstream(SubmitSettings("up", url="http://mmsc.example/"), self.mmsc)],
            self.clock,
            store=self.store,
            report_window=window,
        )
        self.factory = ESMTPServerFactory(
            self.policy, self.clock, hostname="mx.example", max_size=100000
        )
        self.mailer = FakeMailSender()
        self.processor = EmailProcessor(
            self.mailer,
            AddressRules(from_domain="f.example", to_domain="t.example"),
        )
        if self.store is not None:
            self.processor.return_path = ReturnPath(
                self.store, self.mailer, self.clock, ["up"], reporting_mta="mx.example"
            )

    def close(self) -> None:
        if self.store is not None:
            result_of(self.store.close())

    def mail(
        self,
        rcpts: tuple[str, ...] = ("15551234567@mms.example",),
        body: bytes = MAIL,
        mail_params: str = "",
    ) -> list[str]:
        server = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        server.makeConnection(transport)
        lines = b"EHLO c.example\r\n"
        lines += f"MAIL FROM:<ann@example.org>{mail_params}\r\n".encode()
        for rcpt in rcpts:
            lines += f"RCPT TO:{rcpt}\r\n".encode()
        lines += b"DATA\r\n"
        server.dataReceived(lines)
        server.dataReceived(body + b".\r\n")
        server.dataReceived(b"QUIT\r\n")
        replies: list[str] = transport.value().decode().splitlines()
        return replies

    def report(
        self,
        status: str,
        number: str = "+15551234567",
        message_id: str = "mmsc-1",
        swapped: bool = False,
        text: str = "said so",
        account: Account | None = None,
    ) -> m.DeliveryReportRsp:
        handset = m.Address(number, "Number")
        short = m.Address("12345", "ShortCode")
        request = m.DeliveryReportReq(
            message_id=message_id,
            recipient=short if swapped else handset,
            sender=handset if swapped else short,
            date="2024-05-01T10:00:00Z",
            mm_status=status,
            status_text=text,
        )
        rsp = result_of(
            self.processor.delivery_report(
                request, Transaction("t", "/vasp/", account=account)
            )
        )
        assert isinstance(rsp, m.DeliveryReportRsp)
        return rsp

    def read(
        self, status: str = "Read", number: str = "+15551234567"
    ) -> m.ReadReplyRsp:
        request = m.ReadReplyReq(
            message_id="mmsc-1",
            recipient=m.Address("12345", "ShortCode"),
            sender=m.Address(number, "Number"),
            timestamp="2024-05-01T10:00:00Z",
            mm_status=status,
        )
        rsp = result_of(self.processor.read_reply(request, Transaction("t", "/vasp/")))
        assert isinstance(rsp, m.ReadReplyRsp)
        return rsp

    def notifications(self) -> list[Message]:
        """What was mailed, as a mail client would read it."""
        return [
            email.message_from_bytes(sent.message.as_bytes(), policy=default)
            for sent in self.mailer.sent
        ]


@pytest.fixture
def way() -> Any:
    made = Way()
    yield made
    made.close()


def _status_fields(dsn: Message) -> tuple[Message, Message]:
    part = next(
        p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"
    )
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) == 2
    first, second = blocks
    assert isinstance(first, Message) and isinstance(second, Message)
    return first, second


NOTIFY_ALL = "<15551234567@mms.example> NOTIFY=SUCCESS,FAILURE,DELAY"


# -- the SubmitReq and the envelope kept ------------------------------------


def test_the_envelope_is_kept_under_the_mmscs_message_id(way):
    replies = way.mail(
        ("<15551234567@mms.example> NOTIFY=FAILURE ORCPT=rfc822;bob@example.net",),
        mail_params=" RET=FULL ENVID=env+2B1",
    )
    assert any(line.startswith("250 2.0.0 Ok: queued") for line in replies)
    data = result_of(way.store.get(record_key("up", "mmsc-1")))
    record = SentMail.from_bytes(data)
    assert record.mail_from == "ann@example.org"
    assert record.envid == "env+1" and record.ret == "FULL"
    assert record.mail_message_id == "<m1@example.org>"
    (rcpt,) = record.recipients
    assert rcpt.notify == ("FAILURE",) and rcpt.orcpt == ("rfc822", "bob@example.net")
    assert record.header_bytes.endswith(b"Message-ID: <m1@example.org>\r\n")
    assert b"Hello, phone." not in data  # never the body
    assert way.mmsc.sent[0].delivery_report is True
    assert way.mmsc.sent[0].read_reply is None


def test_a_mail_with_bare_lf_line_endings_keeps_only_its_headers(way):
    # smtplib sends EmailMessage.as_bytes() as it is: lines ending in LF.
    lf_mail = MAIL.replace(b"\r\n", b"\n") + b"\r\n"
    replies = way.mail((NOTIFY_ALL,), body=lf_mail)
    assert any(line.startswith("250 2.0.0 Ok: queued") for line in replies)
    data = result_of(way.store.get(record_key("up", "mmsc-1")))
    assert b"Hello, phone." not in data
    record = SentMail.from_bytes(data)
    assert record.header_bytes.endswith(b"Message-ID: <m1@example.org>\n")
    way.report("Rejected")
    (dsn,) = way.notifications()
    headers = list(dsn.iter_parts())[2].get_content()
    assert "Message-ID: <m1@example.org>" in headers
    assert "Hello, phone." not in dsn.as_string()


def test_no_delivery_report_is_asked_for_when_every_recipient_said_never(way):
    way.mail(("<15551234567@mms.example> NOTIFY=NEVER",))
    assert way.mmsc.sent[0].delivery_report is False
    way.mail(("<15551234567@mms.example> NOTIFY=NEVER", "<15551234568@mms.example>"))
    assert way.mmsc.sent[1].delivery_report is True


def test_a_read_reply_is_asked_for_when_the_mail_asks_for_a_receipt(way):
    way.mail(body=b"Disposition-Notification-To: <ann@example.org>\r\n" + MAIL)
    assert way.mmsc.sent[0].read_reply is True


def test_without_a_store_nothing_is_kept_and_no_read_reply_is_asked_for():
    way = Way(store=False)
    way.mail(body=b"Disposition-Notification-To: <ann@example.org>\r\n" + MAIL)
    assert way.mmsc.sent[0].read_reply is None
    assert way.mmsc.sent[0].delivery_report is True


def test_a_refused_submit_keeps_nothing(way):
    way.mmsc.code = 2002
    assert any(line.startswith("550") for line in way.mail())
    assert result_of(way.store.get(record_key("up", "mmsc-1"))) is None


# -- the DSN -----------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(DSN_ACTIONS))
def test_every_mmstatus_becomes_its_action_and_status(status):
    way = Way()
    way.mail((NOTIFY_ALL,))
    assert way.report(status).status.code == 1000
    action, code = DSN_ACTIONS[status]
    (dsn,) = way.notifications()
    per_message, per_recipient = _status_fields(dsn)
    assert per_recipient["Action"] == action and per_recipient["Status"] == code
    assert per_recipient["Diagnostic-Code"] == f"X-MM7; {status} said so"
    assert per_recipient["Final-Recipient"] == "rfc822; 15551234567@mms.example"
    assert per_message["Reporting-MTA"] == "dns; mx.example"
    way.close()


def test_the_dsn_goes_to_the_mail_sender_from_the_null_sender_and_parses(way):
    way.mail(
        ("<15551234567@mms.example> ORCPT=rfc822;bob@example.net",),
        mail_params=" ENVID=E42",
    )
    way.report("Rejected", text="handset unknown")
    (sent,) = way.mailer.sent
    assert sent.sender == "" and sent.recipients == ["ann@example.org"]
    dsn = way.notifications()[0]
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["To"] == "ann@example.org"
    assert dsn["In-Reply-To"] == "<m1@example.org>"
    assert dsn["Message-ID"].endswith("@mms.example>")
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@mms.example>"
    kinds = [p.get_content_type() for p in dsn.iter_parts()]
    assert kinds == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    per_message, per_recipient = _status_fields(dsn)
    assert per_message["Original-Envelope-Id"] == "E42"
    assert per_message["Arrival-Date"] == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert per_recipient["Original-Recipient"] == "rfc822; bob@example.net"
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.0.0"
    assert "handset unknown" in per_recipient["Diagnostic-Code"]
    headers = list(dsn.iter_parts())[2].get_content()
    assert "Message-ID: <m1@example.org>" in headers
    assert "Hello, phone." not in dsn.as_string()


def test_flufl_bounce_reads_it_as_a_failure_for_that_recipient(way):
    way.mail(("<15551234567@mms.example>", "<15557654321@mms.example>"))
    way.report("Expired", number="+15557654321")
    (dsn,) = way.notifications()
    assert scan_message(dsn) == {b"15557654321@mms.example"}
    temporary, permanent = all_failures(dsn)
    assert permanent == {b"15557654321@mms.example"} and not temporary


def test_flufl_bounce_reads_the_original_recipient_when_one_was_given(way):
    way.mail(("<15551234567@mms.example> ORCPT=rfc822;bob@example.net",))
    way.report("Rejected")
    assert scan_message(way.notifications()[0]) == {b"bob@example.net"}


@pytest.mark.parametrize(
    "notify, statuses, actions",
    [
        ("", ["Forwarded", "Retrieved"], []),
        ("", ["Forwarded", "Expired"], ["failed"]),
        ("", ["Deferred", "Rejected"], ["failed"]),
        (" NOTIFY=NEVER", ["Rejected"], []),
        (" NOTIFY=SUCCESS", ["Forwarded", "Retrieved"], ["relayed", "delivered"]),
        (" NOTIFY=SUCCESS", ["Rejected"], []),
        (" NOTIFY=DELAY", ["Deferred", "Retrieved"], ["delayed"]),
        (" NOTIFY=FAILURE,DELAY", ["Deferred", "Unrecognised"], ["delayed", "failed"]),
        (
            " NOTIFY=SUCCESS,FAILURE,DELAY",
            ["Forwarded", "Retrieved", "Expired"],
            ["relayed", "delivered"],
        ),
        (
            " NOTIFY=SUCCESS,FAILURE,DELAY",
            ["Forwarded", "Forwarded", "Expired", "Expired"],
            ["relayed", "failed"],
        ),
        (" NOTIFY=DELAY", ["Deferred", "Forwarded", "Deferred"], ["delayed"]),
    ],
)
def test_notify_and_sequences_give_one_dsn_per_worthy_change(
    way, notify, statuses, actions
):
    way.mail((f"<15551234567@mms.example>{notify}",))
    for status in statuses:
        assert way.report(status).status.code == 1000
    sent = [_status_fields(dsn)[1]["Action"] for dsn in way.notifications()]
    assert sent == actions


def test_a_report_retried_after_its_dsn_sends_no_second_one(way):
    way.mail()
    way.report("Rejected")
    way.report("Rejected")
    assert len(way.mailer.sent) == 1


def test_a_swapped_sender_and_recipient_finds_the_handset(way):
    way.mail(("<15551234567@mms.example>", "<15557654321@mms.example>"))
    way.report("Rejected", number="+15557654321", swapped=True)
    (dsn,) = way.notifications()
    final = _status_fields(dsn)[1]["Final-Recipient"]
    assert final == "rfc822; 15557654321@mms.example"


# A DeliveryReportReq as Mbuni's mmsc sent it to mm7tx's VASP path in
# bench/mbuni_live.py (captured by its tap, the body as sent): Recipient and
# Sender swapped, every element prefixed mm7:, the MessageID as
# TransactionID, no StatusText; the MMStatus, the handset and the date are
# filled in per report, the MessageID is the fake MMSC's.
MBUNI_MMSC_REPORT = """<?xml version='1.0' encoding='UTF-8'?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">
<SOAP-ENV:Header>
<mm7:TransactionID xmlns:mm7="http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4" SOAP-ENV:mustUnderstand="1">w-n9-qf2327.1.x60.81@mmsc</mm7:TransactionID>
</SOAP-ENV:Header>
<SOAP-ENV:Body>
<mm7:DeliveryReportReq xmlns:mm7="http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4">
<mm7:MM7Version>6.8.0</mm7:MM7Version>
<mm7:Recipient>
<mm7:ShortCode>7255</mm7:ShortCode>
</mm7:Recipient>
<mm7:Sender><mm7:Number>447700900123</mm7:Number>
</mm7:Sender>
<mm7:MessageID>w-n9-qf2327.1.x60.81@mmsc</mm7:MessageID>
<mm7:Date>2026-12-07T19:38:48Z</mm7:Date>
<mm7:MMStatus>Rejected</mm7:MMStatus>
</mm7:DeliveryReportReq>
</SOAP-ENV:Body>
</SOAP-ENV:Envelope>
"""


def mbuni_mmsc_report(status: str, number: str, date: str) -> m.DeliveryReportReq:
    body = (
        MBUNI_MMSC_REPORT.replace("w-n9-qf2327.1.x60.81@mmsc", "mmsc-1")
        .replace("447700900123", number)
        .replace("2026-12-07T19:38:48Z", date)
        .replace("Rejected", status)
    )
    request = codec.decode("text/xml", body.encode()).message
    assert isinstance(request, m.DeliveryReportReq)
    return request


def test_mbunis_reports_on_one_message_id_bounce_each_recipient(way):
    way.mail(("<15551234567@mms.example>", "<447700900123@mms.example>"))
    for request in (
        mbuni_mmsc_report("Rejected", "447700900123", "2026-12-07T19:38:48Z"),
        mbuni_mmsc_report("Expired", "15551234567", "2026-12-07T19:39:08Z"),
    ):
        rsp = result_of(
            way.processor.delivery_report(request, Transaction("t", "/vasp/"))
        )
        assert isinstance(rsp, m.DeliveryReportRsp) and rsp.status.code == 1000
    rejected, expired = way.notifications()
    assert [
        (block["Final-Recipient"], block["Status"], block["Diagnostic-Code"])
        for block in (_status_fields(rejected)[1], _status_fields(expired)[1])
    ] == [
        ("rfc822; 447700900123@mms.example", "5.0.0", "X-MM7; Rejected"),
        ("rfc822; 15551234567@mms.example", "4.4.7", "X-MM7; Expired"),
    ]
    assert [sent.recipients for sent in way.mailer.sent] == [["ann@example.org"]] * 2
    for dsn, number in ((rejected, b"447700900123"), (expired, b"15551234567")):
        legacy = email.message_from_bytes(dsn.as_bytes())
        assert all_failures(legacy) == (
            frozenset(),
            frozenset({number + b"@mms.example"}),
        )


def test_each_recipient_has_its_own_status(way):
    way.mail(("<15551234567@mms.example>", "<15557654321@mms.example>"))
    way.report("Rejected", number="15551234567")
    way.report("Rejected", number="tel:+15557654321")
    finals = [_status_fields(d)[1]["Final-Recipient"] for d in way.notifications()]
    assert finals == [
        "rfc822; 15551234567@mms.example",
        "rfc822; 15557654321@mms.example",
    ]


def test_a_report_for_an_unknown_message_id_is_mailed_as_before(way):
    way.mail()
    way.report("Rejected", message_id="someone-elses")
    (sent,) = way.mailer.sent
    assert sent.recipients == ["12345@t.example"]  # today's report mail
    assert sent.message["X-MM7-MessageID"] == "someone-elses"


def test_the_envelope_expires_after_the_report_window():
    way = Way(window=3600)
    way.mail()
    way.clock.advance(3599)
    way.report("Forwarded")
    assert way.mailer.sent == []
    way.clock.advance(2)
    way.report("Rejected")
    (sent,) = way.mailer.sent
    assert sent.recipients == ["12345@t.example"]  # unknown now: today's mail
    way.close()


def test_an_update_keeps_the_record_only_for_the_rest_of_its_window():
    way = Way(window=3600)
    way.mail()
    way.clock.advance(3000)
    way.report("Forwarded")
    way.clock.advance(601)
    assert result_of(way.store.get(record_key("up", "mmsc-1"))) is None
    way.close()


def test_an_authenticated_mmsc_finds_only_its_own_envelopes(way):
    way.mail()
    other = Account("other", password="x")
    way.report("Rejected", account=other)
    assert way.mailer.sent[0].recipients == ["12345@t.example"]
    way.report("Rejected", account=Account("up", password="x"))
    assert way.mailer.sent[1].recipients == ["ann@example.org"]


def test_on_partial_success_the_refused_recipient_is_bounced_by_its_report(way):
    way.mmsc.code = 1100
    way.mail(("<15551234567@mms.example>", "<15557654321@mms.example>"))
    way.report("Retrieved", number="+15551234567")
    way.report("Rejected", number="+15557654321")
    (dsn,) = way.notifications()
    assert scan_message(dsn) == {b"15557654321@mms.example"}


class HeldSender(FakeMailSender):
    """Records every message and answers each only when the test fires
    its Deferred in ``held`` (a relay that answers later)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[defer.Deferred[Any]] = []

    def send(self, sender: str, recipients: list[str], message: Any) -> Any:
        sent = super().send(sender, recipients, message)
        held: defer.Deferred[Any] = defer.Deferred()
        self.held.append(held)
        held.addCallback(lambda _: sent)
        return held


def _report(number: str, status: str = "Rejected") -> m.DeliveryReportReq:
    return m.DeliveryReportReq(
        message_id="mmsc-1",
        recipient=m.Address(number, "Number"),
        sender=m.Address("12345", "ShortCode"),
        date="2024-05-01T10:00:00Z",
        mm_status=status,
    )


def test_reports_arriving_together_keep_both_recipients_states(way):
    way.mail(("<15551234567@mms.example>", "<15557654321@mms.example>"))
    held = HeldSender()
    assert way.processor.return_path is not None
    way.processor.return_path.sender = held
    first, second = (
        way.processor.delivery_report(_report(number), Transaction("t", "/vasp/"))
        for number in ("+15551234567", "+15557654321")
    )
    # Both are in flight before the relay answers either DSN; then it
    # answers every DSN handed to it until none is left waiting.
    for _ in range(3):
        for pending in [d for d in held.held if not d.called]:
            pending.callback(None)
    for answered in (first, second):
        rsp = result_of(answered)
        assert isinstance(rsp, m.DeliveryReportRsp) and rsp.status.code == 1000
    record = SentMail.from_bytes(result_of(way.store.get(record_key("up", "mmsc-1"))))
    assert [(r.state, r.sent) for r in record.recipients] == [
        ("failed", ("failed",)),
        ("failed", ("failed",)),
    ]
    assert len(held.sent) == 2
    assert way.processor.return_path._locks == {}  # none kept once idle
    way.processor.return_path.sender = way.mailer
    way.report("Rejected", number="+15551234567")
    way.report("Rejected", number="+15557654321")
    assert way.mailer.sent == []  # neither retry sends a second DSN


# -- the MDN -----------------------------------------------------------------

RECEIPT = b"Disposition-Notification-To: Ann <ann+receipts@example.org>\r\n" + MAIL


@pytest.mark.parametrize(
    "status, disposition", [("Read", "displayed"), ("Deleted", "deleted")]
)
def test_a_read_reply_becomes_an_mdn_to_the_address_that_asked(
    way, status, disposition
):
    way.mail(body=RECEIPT)
    assert way.read(status).status.code == 1000
    (sent,) = way.mailer.sent
    assert sent.sender == "" and sent.recipients == ["ann+receipts@example.org"]
    (mdn,) = way.notifications()
    assert mdn.get_content_type() == "multipart/report"
    assert mdn.get_param("report-type") == "disposition-notification"
    part = next(
        p
        for p in mdn.walk()
        if p.get_content_type() == "message/disposition-notification"
    )
    fields = email.message_from_string(
        part.get_payload()[0].as_string(), policy=default
    )
    assert fields["Final-Recipient"] == "rfc822; 15551234567@mms.example"
    assert fields["Original-Message-ID"] == "<m1@example.org>"
    assert fields["Disposition"] == (
        f"automatic-action/MDN-sent-automatically; {disposition}"
    )


def test_one_mdn_per_recipient_and_none_unasked(way):
    way.mail(body=RECEIPT)
    way.read("Read")
    way.read("Deleted")
    assert len(way.mailer.sent) == 1
    way.mail()
    request = m.ReadReplyReq(message_id="mmsc-2", mm_status="Read")
    result_of(way.processor.read_reply(request, Transaction("t", "/vasp/")))
    assert len(way.mailer.sent) == 1  # that mail asked for no receipt


def test_a_read_reply_for_an_unknown_message_id_is_mailed_as_before(way):
    way.read("Read")
    (sent,) = way.mailer.sent
    assert sent.recipients == ["15551234567@t.example"]  # today's read reply mail


def test_the_readme_table_is_dsn_actions():
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Delivery status back to the mail's sender", 1)[1]
    rows = {}
    for line in section.split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1] in (
            "delivered",
            "relayed",
            "delayed",
            "failed",
        ):
            rows[cells[0].lower()] = (cells[1], cells[2])
    assert rows.pop("any other") == ("failed", "5.0.0")
    assert rows == DSN_ACTIONS
