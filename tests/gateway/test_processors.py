"""The email processor: what each MM7 transaction becomes as email."""

from __future__ import annotations

import email
import email.policy
from copy import deepcopy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.interfaces import (
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IMailSender,
    IReadReplyProcessor,
    SendResult,
)
from mm7tx.mail.wire import wire_bytes
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.smtp.maildir import MaildirSender
from mm7tx.testing import FakeMailSender
from mm7tx.transaction import Transaction
from tests import samples

RULES = AddressRules(
    "test@messagesystems.com",
    "messagesystems.com",
    "test@exampleto.com",
    "exampleto.com",
)
TX = Transaction("tx-9", "/photo_contest/")


def result(d: Deferred):  # type: ignore[type-arg]
    out: list[object] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


@pytest.fixture
def sender() -> FakeMailSender:
    return FakeMailSender()


@pytest.fixture
def processor(sender: FakeMailSender) -> EmailProcessor:
    return EmailProcessor(sender, RULES)


def test_interfaces(processor, sender, tmp_path):
    assert verifyObject(IDeliverProcessor, processor)
    assert verifyObject(IDeliveryReportProcessor, processor)
    assert verifyObject(IReadReplyProcessor, processor)
    assert verifyObject(IMailSender, sender)
    assert verifyObject(IMailSender, MaildirSender(str(tmp_path / "md")))


@pytest.mark.parametrize(
    "address, expected",
    [
        (m.Address("a@b.example", "RFC2822Address"), "a@b.example"),
        (m.Address("+44 7700/TYPE=PLMN"), "447700@messagesystems.com"),
        (m.Address("12345", "ShortCode"), "12345@messagesystems.com"),
        (None, "test@messagesystems.com"),
    ],
)
def test_sender_rules(processor, address, expected):
    assert processor.sender_address(address) == expected


def test_sender_without_domain_uses_the_default_address(sender):
    p = EmailProcessor(
        sender, AddressRules(from_address="x@y.example", to_domain="t.example")
    )
    assert p.sender_address(m.Address("+1555")) == "x@y.example"
    assert p.recipient_address(m.Address("+1555")) == "1555@t.example"


def test_no_mapping_possible_is_an_address_error(sender):
    p = EmailProcessor(sender, AddressRules())
    with pytest.raises(MM7Error) as caught:
        p.recipient_address(m.Address("1"))
    assert caught.value.status.code == 2002


def test_deliver_email(processor, sender):
    env = codec.decode(*samples.body_sample("instantcom-mm7/deliver-req6-hw.txt"))
    rsp = result(processor.deliver(env.message, TX))
    assert rsp == m.DeliverRsp(m.Status(1000, "Success"), "6.8.0")
    [mail] = sender.sent
    assert mail.sender == "13951900000@messagesystems.com"
    assert mail.recipients == [
        "13900000001@exampleto.com",
        "13900000003@exampleto.com",
        "13900000002@exampleto.com",
    ]
    msg = mail.message
    assert msg["To"] == "13900000001@exampleto.com"
    assert msg["Cc"] == "13900000003@exampleto.com"
    assert "13900000002" not in str(msg)  # Bcc only in the envelope
    assert msg["Subject"] == "This is a test"
    assert msg["Date"] == "Thu, 19 Nov 2015 16:44:37 +0800"
    assert msg["X-MM7-TransactionID"] == "tx-9"
    assert msg["X-MM7-LinkedID"] == "9999"
    assert msg["X-MM7-Path"] == "/photo_contest/"
    [gif] = [p for p in msg.iter_attachments()]
    assert gif.get_content_type() == "image/gif"
    assert gif.get_filename() == "Bomb.gif"
    assert gif.get_content() == env.message.content[1].data  # type: ignore[union-attr]


def test_deliver_text_and_image_keep_their_bytes(processor, sender):
    req = m.DeliverReq(
        sender=m.Address("+1555"),
        subject="\u65e5\u672c Subject",
        content=(
            m.ContentPart("application/smil", b"<smil/>", (), "s"),
            m.ContentPart(
                "image/jpeg", b"\xff\xd8\x00\r\n\n\r" * 100, (("name", "a.jpg"),)
            ),
            m.ContentPart(
                "text/plain",
                "h\u00e9llo".encode("iso-8859-1"),
                (("charset", "iso-8859-1"),),
            ),
        ),
    )
    result(processor.deliver(req, TX))
    msg = sender.sent[0].message
    assert msg["Subject"] == "\u65e5\u672c Subject"
    body = msg.get_body(("plain",))
    assert body.get_content() == "h\u00e9llo"  # type: ignore[union-attr]
    assert body.get_content_charset() == "iso-8859-1"  # type: ignore[union-attr]
    assert body.get_payload(decode=True) == "h\u00e9llo".encode("iso-8859-1")  # type: ignore[union-attr]
    jpeg = next(
        p for p in msg.iter_attachments() if p.get_content_type() == "image/jpeg"
    )
    assert jpeg.get_content() == b"\xff\xd8\x00\r\n\n\r" * 100
    assert "application/smil" not in msg.as_string()
    assert msg.as_bytes().isascii()


def test_header_injection_is_neutralised(processor, sender):
    req = m.DeliverReq(
        sender=m.Address("+1555"),
        subject="hi\r\nBcc: victim@evil.example",
        linked_id="x\nX-Evil: 1",
    )
    result(processor.deliver(req, TX))
    msg = sender.sent[0].message
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "hi Bcc: victim@evil.example"


def test_a_bad_email_address_is_refused(processor):
    req = m.DeliverReq(sender=m.Address("not an address", "RFC2822Address"))
    with pytest.raises(MM7Error) as caught:
        processor.deliver(req, TX)
    assert caught.value.status.code == 2002


def test_delivery_report_is_a_dsn(processor, sender):
    raw = samples.blocks("skycore-api-docs/mm7DeliveryReport.examples.txt")[0]
    env = codec.decode("text/xml", raw)
    rsp = result(processor.delivery_report(env.message, TX))
    assert rsp.status.code == 1000
    [mail] = sender.sent
    assert mail.recipients == ["111122@exampleto.com"]  # to the original sender
    assert mail.sender == ""  # the null sender: a bounce of it goes nowhere
    msg = mail.message
    assert msg["From"] == "16175550123@messagesystems.com"  # from the handset
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Subject"] == "Delivery report: Retrieved"
    human, status = list(msg.iter_parts())
    text = human.get_content()
    for word in ("369500617770864640", "16175550123", "Retrieved", "Success"):
        assert word in text
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Original-Envelope-Id"] == "369500617770864640"
    assert blocks[1]["Action"] == "delivered" and blocks[1]["Status"] == "2.0.0"
    assert blocks[1]["Final-Recipient"] == "rfc822; 16175550123@messagesystems.com"
    assert blocks[1]["X-MM7-MMStatus"] == "Retrieved"
    assert blocks[1]["X-MM7-StatusText"] == "Success"


@pytest.mark.parametrize(
    "mm_status, action, code",
    [
        ("Expired", "failed", "4.4.7"),
        ("Rejected", "failed", "5.0.0"),
        ("Forwarded", "relayed", "2.0.0"),
    ],
)
def test_delivery_report_status_mapping(processor, sender, mm_status, action, code):
    req = m.DeliveryReportReq(
        message_id="1",
        recipient=m.Address("1"),
        sender=m.Address("2"),
        mm_status=mm_status,
    )
    result(processor.delivery_report(req, TX))
    block = sender.sent[0].message.get_payload()[1].get_payload()[1]
    assert (block["Action"], block["Status"]) == (action, code)


def test_read_reply_is_an_mdn(processor, sender):
    req = m.ReadReplyReq(
        message_id="MID-7",
        recipient=m.Address("+15551234567"),
        sender=m.Address("12345", "ShortCode"),
        timestamp="2026-01-01T10:00:00Z",
        mm_status="Read",
        status_text="read it",
    )
    rsp = result(processor.read_reply(req, TX))
    assert rsp == m.ReadReplyRsp(m.Status(1000, "Success"), "6.8.0")
    msg = sender.sent[0].message
    assert sender.sent[0].recipients == ["12345@exampleto.com"]
    assert msg.get_param("report-type") == "disposition-notification"
    assert msg["Subject"] == "Read reply: Read"
    human, mdn = list(msg.iter_parts())
    assert "MID-7" in human.get_content() and "read it" in human.get_content()
    assert mdn.get_content_type() == "message/disposition-notification"
    fields = mdn.get_payload()[0]
    assert fields["Original-Message-ID"] == "<MID-7>"
    assert fields["Disposition"].endswith("; displayed")
    assert fields["Final-Recipient"] == "rfc822; 15551234567@messagesystems.com"


def test_partial_success_when_some_recipients_are_refused(processor):
    class Partial(FakeMailSender):
        def send(self, sender, recipients, message):
            d: Deferred[SendResult] = Deferred()
            d.callback(
                SendResult((recipients[0],), (("b@x.example", 550, "no such user"),))
            )
            return d

    p = EmailProcessor(Partial(), RULES)
    rsp = result(p.deliver(m.DeliverReq(sender=m.Address("1")), TX))
    assert rsp.status.code == StatusCode.PARTIAL_SUCCESS
    assert "b@x.example 550" in rsp.status.details


def test_a_failing_sender_fails_the_transaction():
    p = EmailProcessor(FakeMailSender(MM7Error(StatusCode.SERVICE_UNAVAILABLE)), RULES)
    failure = result(p.deliver(m.DeliverReq(sender=m.Address("1")), TX))
    assert failure.value.status.code == 4006


def test_maildir_sender_writes_whole_messages(tmp_path, processor):
    maildir = MaildirSender(str(tmp_path / "Maildir"))
    p = EmailProcessor(maildir, RULES)
    result(p.deliver(m.DeliverReq(sender=m.Address("1"), subject="to disk"), TX))
    [path] = list((tmp_path / "Maildir" / "new").iterdir())
    data = path.read_bytes()
    assert (
        b"Subject: to disk" in data and b"Return-Path: <1@messagesystems.com>" in data
    )


def test_the_fast_generator_writes_what_the_standard_one_does():
    from mm7tx.mail.wire import WIRE_POLICY as _WIRE_POLICY
    from tests.fuzzing import SAMPLES

    processor = EmailProcessor(FakeMailSender(), RULES, keep_smil=True)
    checked = 0
    for ctype, body in SAMPLES:
        try:
            message = codec.decode(ctype, body).message
        except MM7Error:
            continue
        if isinstance(message, m.DeliverReq):
            mail = processor.deliver_message(message, TX)
        elif isinstance(message, m.SubmitReq):
            mail = processor.submit_message(message, TX, "MID")
        elif isinstance(message, m.DeliveryReportReq):
            mail = processor.delivery_report_message(message, TX)
        else:
            continue
        assert wire_bytes(mail.message) == mail.message.as_bytes(policy=_WIRE_POLICY)
        # Headers stored raw are written as policy.default writes them
        # parsed (and folded).
        assert wire_bytes(mail.message) == _parsed_copy(mail.message).as_bytes(
            policy=email.policy.default.clone(linesep="\n")
        )
        checked += 1
    assert checked >= 12


def _parsed_copy(message):
    """The message with every header parsed as policy.default stores it."""
    copy = deepcopy(message)
    default = email.policy.default.clone(cte_type="7bit")
    for part in copy.walk():
        part.policy = default
        part._headers = [
            (name, default.header_store_parse(name, str(value))[1])
            for name, value in part._headers
        ]
    return copy


def test_headers_stored_raw_read_back_structured():
    mail = EmailProcessor(FakeMailSender(), RULES).deliver_message(
        m.DeliverReq(
            sender=m.Address("+15551234567"),
            recipients=m.Recipients(to=(m.Address("+15557654321"),)),
            subject="Hi",
            content=(m.ContentPart("image/gif", b"GIF89a", (("name", "a.gif"),), "a"),),
        ),
        TX,
    )
    msg = mail.message
    assert msg["To"].addresses[0].domain == "exampleto.com"
    assert msg["Content-Type"].content_type == "multipart/mixed"
    assert msg["Content-Type"].params["boundary"].startswith("mm7tx-")
    assert msg.get_boundary() == msg["Content-Type"].params["boundary"]
    gif = next(msg.iter_attachments())
    assert gif["Content-Type"].maintype == "image"
    assert gif.get_content() == b"GIF89a"


def _boundaries(message):
    return [
        p.get_boundary()
        for p in message.walk()
        if p.get_content_maintype() == "multipart"
    ]


def test_boundaries_are_distinct_and_text_cannot_collide_with_them():
    from mm7tx.mail.compose import BOUNDARY

    processor = EmailProcessor(FakeMailSender(), RULES)
    image = m.ContentPart("image/gif", b"GIF89a", (), "a")

    def mms(text: bytes):
        request = m.DeliverReq(
            sender=m.Address("+15551234567"),
            content=(m.ContentPart("text/plain", text, (), "t"), image),
        )
        return processor.deliver_message(request, TX).message

    plain = mms(b"hello")
    report = processor.delivery_report_message(
        m.DeliveryReportReq(
            message_id="1", recipient=m.Address("+1555"), mm_status="Retrieved"
        ),
        TX,
    ).message
    status = next(
        p for p in report.walk() if p.get_content_type().startswith("message/")
    )
    assert status.get_boundary() is None  # a list of header blocks, not a multipart
    for msg in (plain, report):
        found = _boundaries(msg)
        assert len(set(found)) == len(found) >= 1
        assert all(b.startswith(BOUNDARY) for b in found)
    # A text that quotes the boundary line (with CRLF line breaks, so that
    # it goes as it is, not base64): the email gets fresh boundaries and
    # parses back with the text whole.
    hostile = f"--{BOUNDARY}-00\r\n--{BOUNDARY}-00--\r\n"
    msg = mms(hostile.encode())
    assert not any(b.startswith(BOUNDARY) for b in _boundaries(msg))
    back = email.message_from_bytes(
        wire_bytes(msg).replace(b"\n", b"\r\n"), policy=email.policy.default
    )
    parts = list(back.iter_parts())
    assert len(parts) == 2
    assert parts[0]["Content-Transfer-Encoding"] == "7bit"
    assert parts[0].get_content() == hostile
    assert parts[1].get_content() == b"GIF89a"


# Text parts arrive byte for byte ---------------------------------------------


def _over_smtp(message) -> email.message.EmailMessage:  # type: ignore[no-untyped-def]
    """The message as a relay gets it (CRLF line ends, the data ending in
    one, as the SMTP client makes it), parsed by the email package."""
    data = wire_bytes(message).replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return email.message_from_bytes(data, policy=email.policy.default)


def _texts(message) -> list:  # type: ignore[no-untyped-def, type-arg]
    return [p for p in message.walk() if p.get_content_maintype() == "text"]


TEXTS = [
    (b"hello", "quoted-printable"),  # no final line break: a soft one
    (b"hello\r\n", "7bit"),
    (b"two\r\nlines\r\n\r\n", "7bit"),
    (b".\r\nFrom me\r\n..\r\n", "7bit"),
    (b"", "7bit"),
    (b"a = b \t\r\ntrailing space \r\n", "quoted-printable"),
    (b"x" * 200 + b"\r\n" + "\u00e9".encode() * 10, "quoted-printable"),
    ("\u6e2c\u8a66\u2028\u0085\r\n".encode(), "base64"),  # shorter so
    # A bare LF or CR is no MIME text line break: base64 keeps it.
    (b"Text from instantcom \xe2\x9c\x93\nline 2", "base64"),
    (b"bare\rCR\r\n", "base64"),
    (b"\n", "base64"),
]


@pytest.mark.parametrize("data, cte", TEXTS)
@pytest.mark.parametrize("alone", [True, False])
def test_a_text_part_arrives_byte_for_byte(data, cte, alone):
    processor = EmailProcessor(FakeMailSender(), RULES)
    parts = [m.ContentPart("text/plain", data, (("charset", "utf-8"),), "t")]
    if not alone:
        parts.append(m.ContentPart("image/gif", b"GIF89a", (), "g"))
    request = m.DeliverReq(sender=m.Address("+1555"), content=tuple(parts))
    sent = processor.deliver_message(request, TX).message
    [text] = _texts(_over_smtp(sent))
    assert text.get_payload(decode=True) == data
    assert text.get_content_charset() == "utf-8"
    assert text["Content-Transfer-Encoding"] == cte


@given(
    text=st.lists(
        st.sampled_from(
            [
                *("a", " ", "\t", "=", ".", "From ", "\r\n", "\n", "\r"),
                *("\u00e9", "\u2713", "\x00", "\x85", "\u2028", "x" * 80, "-" * 30),
            ]
        ),
        max_size=40,
    ).map("".join),
    charset=st.sampled_from([None, "utf-8", "iso-8859-1", "utf-16", "shift_jis"]),
    alone=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_text_parts_decode_to_their_bytes(text, charset, alone):
    try:
        data = text.encode(charset or "utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8")
        charset = "utf-8"
    processor = EmailProcessor(FakeMailSender(), RULES)
    params = (("charset", charset),) if charset else ()
    parts = [m.ContentPart("text/plain", data, params, "t")]
    if not alone:
        parts.append(m.ContentPart("image/gif", b"GIF89a", (), "g"))
    request = m.DeliverReq(sender=m.Address("+1555"), content=tuple(parts))
    sent = processor.deliver_message(request, TX).message
    [back] = _texts(_over_smtp(sent))
    assert back.get_payload(decode=True) == data
    assert back.get_content_charset() == (charset or "utf-8")
    # What the Maildir sender writes (LF line ends) reads back as the same
    # text, line breaks in the local convention.
    [local] = _texts(
        email.message_from_bytes(wire_bytes(sent), policy=email.policy.default)
    )
    assert local.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")


# No empty X-MM7-* headers ------------------------------------------------------

BLANK = "\r\n"  # nothing once cleaned


def _blank_requests() -> list[tuple[str, object]]:
    parts = (
        m.ContentPart("text/plain", b"hi", (), BLANK),
        m.ContentPart("no type", b"\x00", (), None),
    )
    recipients = m.Recipients(to=(m.Address("+1555"),))
    return [
        (
            "deliver",
            m.DeliverReq(
                sender=m.Address("+1666"),
                recipients=recipients,
                linked_id=BLANK,
                mms_relay_server_id=" ",
                vasp_id="",
                vas_id=BLANK,
                priority=BLANK,
                subject=BLANK,
                content=parts,
            ),
        ),
        (
            "submit",
            m.SubmitReq(
                sender_address=m.Address("+1666"),
                recipients=recipients,
                vasp_id=BLANK,
                vas_id="",
                service_code=" ",
                linked_id=BLANK,
                priority=BLANK,
                subject=None,
                content=parts,
            ),
        ),
        (
            "delivery_report",
            m.DeliveryReportReq(
                message_id=BLANK,
                recipient=m.Address("+1555"),
                sender=m.Address("+1666"),
                mms_relay_server_id=BLANK,
                mm_status="Retrieved",
                status_text=BLANK,
            ),
        ),
        (
            "read_reply",
            m.ReadReplyReq(
                message_id=BLANK,
                recipient=m.Address("+1555"),
                sender=m.Address("+1666"),
                mms_relay_server_id=BLANK,
                mm_status="Read",
                status_text=" ",
            ),
        ),
    ]


@pytest.mark.parametrize("kind, request_", _blank_requests())
@pytest.mark.parametrize("transaction_id", ["", BLANK])
def test_no_empty_x_mm7_header_in_any_email(
    processor, sender, kind, request_, transaction_id
):
    tx = Transaction(transaction_id, "/p/", account=None)
    result(getattr(processor, kind)(request_, tx))
    [mail] = sender.sent
    written = email.message_from_bytes(
        wire_bytes(mail.message), policy=email.policy.default
    )
    fields = [
        (name, str(value))
        for part in written.walk()
        for name, value in part.items()
        if name.lower().startswith("x-mm7-")
    ]
    assert ("X-MM7-Path", "/p/") in fields  # the check sees X-MM7-* headers
    assert [(name, value) for name, value in fields if not value.strip()] == []
    assert "X-MM7-TransactionID" not in dict(fields)
    # Nor an empty Subject for an MMS without one.
    assert [v for v in written.get_all("Subject", []) if not str(v).strip()] == []
