"""Issue 11, items 1, 8 and 10: what a request can put into a mail.

Header values are bounded per field and written in linear time (speed is
measured in bench/fuzz.py; these tests assert the bound and the output);
line separators and odd charsets are delivered; every mail mm7tx writes
parses back without defects, with no NUL and no line over 998 octets.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm7tx.gateway.processors import FIELD_LIMITS, AddressRules, EmailProcessor
from mm7tx.http.client import MM7Fault
from mm7tx.mail.wire import fold_words, wire_bytes
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
from mm7tx.testing import FakeMailSender, MemoryGateway
from mm7tx.transaction import Transaction
from tests.fuzzing import SAMPLES, examples, must_reach, reached

RULES = AddressRules("f@from.example", "from.example", "t@to.example", "to.example")
TX = Transaction("tx-1", "/vasp/")
# 256 KB of short words: the shape the email package folds in quadratic time.
WORDS = ("ab " * 90_000).strip()


def check_mail(data: bytes) -> EmailMessage:
    """``data`` (as the relay got it) parses without a defect on any part,
    has no NUL and no line over 998 octets; the parsed message."""
    assert b"\x00" not in data
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    assert max(len(line) for line in lines) <= 998
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    for part in parsed.walk():
        assert not part.defects, (part.defects, part.get_content_type())
        for name, value in part.items():  # every header parses, too
            assert not getattr(value, "defects", ()), (name, value.defects)
    assert isinstance(parsed, EmailMessage)
    return parsed


def deliver(gateway: MemoryGateway, request: Any) -> m.Status:
    client = gateway.client("/vasp/")
    answer: Any
    if isinstance(request, m.DeliveryReportReq):
        answer = gateway.result(client.delivery_report(request))
    elif isinstance(request, m.ReadReplyReq):
        answer = gateway.result(client.read_reply(request))
    else:
        answer = gateway.result(client.deliver(request))
    return answer.status  # type: ignore[no-any-return]


def _base(**fields: object) -> m.DeliverReq:
    fields.setdefault(
        "content",
        (m.ContentPart("text/plain", b"hello", (("charset", "utf-8"),)),),
    )
    return m.DeliverReq(
        sender=m.Address("+15551234567"),
        recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
        **fields,  # type: ignore[arg-type]
    )


def _image(**fields: object) -> m.DeliverReq:
    part = m.ContentPart("image/gif", b"GIF89a", **fields)  # type: ignore[arg-type]
    return _base(content=(m.ContentPart("text/plain", b"hi"), part))


PART_WORDS = "ab " * 4000

LONG_FIELDS = {
    "Subject": (_base(subject=WORDS), "Subject"),
    "LinkedID": (_base(linked_id=WORDS), "X-MM7-LinkedID"),
    "VASPID": (_base(vasp_id=WORDS), "X-MM7-VASPID"),
    "VASID": (_base(vas_id=WORDS), "X-MM7-VASID"),
    "MMSRelayServerID": (_base(mms_relay_server_id=WORDS), "X-MM7-MMSRelayServerID"),
    "StatusText": (
        m.DeliveryReportReq(
            message_id="M1",
            recipient=m.Address("+1555"),
            mm_status="Retrieved",
            status_text=WORDS,
        ),
        "X-MM7-StatusText",
    ),
    "ReadReply StatusText": (
        m.ReadReplyReq(
            message_id="M1",
            recipient=m.Address("+1555"),
            mm_status="Read",
            status_text=WORDS,
        ),
        "X-MM7-StatusText",
    ),
    # A part's headers are at most 16 KiB (MAX_PART_HEADERS): 12 KB here.
    "filename": (
        _image(params=(("name", PART_WORDS + ".gif"),)),
        "Content-Disposition",
    ),
    "Content-ID": (_image(content_id=PART_WORDS), "Content-ID"),
    "Content-Location": (
        _image(content_location=PART_WORDS + ".gif"),
        "Content-Disposition",
    ),
}


@pytest.mark.parametrize("field", LONG_FIELDS)
def test_a_long_field_is_cut_to_its_limit_and_delivered(field):
    request, header = LONG_FIELDS[field]
    gateway = MemoryGateway()
    assert deliver(gateway, request).code == 1000
    [mail] = gateway.relay.accepted
    parsed = check_mail(mail.data)
    # The whole mail is a few KB, not the 256 KB value folded.
    assert len(mail.data) < 16_000
    value = next(
        str(part[header]) for part in parsed.walk() if part[header] is not None
    )
    if header == "Content-Disposition":
        filename = next(p.get_filename() for p in parsed.walk() if p.get_filename())
        assert len(filename) == FIELD_LIMITS["filename"]
        assert filename.startswith("ab ab") and filename.endswith("\u2026.gif")
    else:
        assert " characters cut]" in value  # inside <> for a Content-ID
        assert len(value) <= max(FIELD_LIMITS.values()) + 40


def test_a_long_mm_status_is_refused_and_only_40_characters_of_it_shown():
    """MMStatus is enumerated: a long one is no value at all (2007), and
    never reaches a mail; the processor still cuts one given to it."""
    gateway = MemoryGateway()
    request = m.DeliveryReportReq(
        message_id="M1", recipient=m.Address("+1555"), mm_status=WORDS
    )
    with pytest.raises(MM7Fault) as caught:
        deliver(gateway, request)
    assert caught.value.status.code == 2007
    details = caught.value.status.details or ""
    assert details.startswith("MMStatus must be one of Expired, Retrieved")
    assert details.endswith(f"not {WORDS[:40]!r}")
    assert gateway.relay.accepted == []
    mail = EmailProcessor(FakeMailSender(), RULES).delivery_report_message(request, TX)
    assert " characters cut]" in str(mail.message["Subject"])


def test_the_cut_is_marked_with_what_was_cut_and_logged(caplog):
    from twisted.logger import globalLogPublisher

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        mail = EmailProcessor(FakeMailSender(), RULES).deliver_message(
            _base(subject="x" * 5000), TX
        )
    finally:
        globalLogPublisher.removeObserver(seen.append)
    subject = str(mail.message["Subject"])
    assert subject == "x" * 998 + " [4002 characters cut]"
    assert any(e.get("field") == "Subject" and e.get("length") == 5000 for e in seen)


def test_fields_within_their_limit_are_written_whole():
    subject = "Grüße aus Köln, " * 20  # 320 characters, non-ASCII
    mail = EmailProcessor(FakeMailSender(), RULES).deliver_message(
        _base(subject=subject, linked_id="L" * 256), TX
    )
    parsed = check_mail(wire_bytes(mail.message))
    assert str(parsed["Subject"]) == subject.strip()
    assert str(parsed["X-MM7-LinkedID"]) == "L" * 256


def test_an_address_longer_than_smtp_allows_is_an_address_error():
    processor = EmailProcessor(FakeMailSender(), RULES)
    with pytest.raises(MM7Error) as raised:
        processor.deliver_message(
            m.DeliverReq(
                sender=m.Address("a" * 300 + "@example.com", "RFC2822Address")
            ),
            TX,
        )
    assert raised.value.status.code == 2002


def test_thousands_of_recipients_are_all_in_the_headers_folded():
    to = tuple(m.Address(str(10**9 + i)) for i in range(5000))
    mail = EmailProcessor(FakeMailSender(), RULES).deliver_message(
        m.DeliverReq(sender=m.Address("1"), recipients=m.Recipients(to=to)), TX
    )
    parsed = check_mail(wire_bytes(mail.message))
    assert len(parsed["To"].addresses) == 5000
    assert len(mail.recipients) == 5000


def test_folding_is_before_spaces_and_loses_nothing():
    line = "Subject: " + " ".join(["word"] * 50) + "  two  spaces " + "x" * 100
    folded = fold_words(line, 78, "\n")
    assert folded.replace("\n", "") == line + ""
    lines = folded.splitlines()
    assert all(len(a) <= 78 for a in lines[:-2])
    assert lines[-1] == " " + "x" * 100  # a long word alone on its line


# Item 8: legal text, never 4000 ------------------------------------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_line_separators_in_header_fields_are_delivered(separator):
    gateway = MemoryGateway()
    request = _base(
        subject=f"one{separator}two",
        linked_id=f"L{separator}1",
        vasp_id=f"V{separator}",
    )
    assert deliver(gateway, request).code == 1000
    [mail] = gateway.relay.accepted
    parsed = check_mail(mail.data)
    assert str(parsed["Subject"]) == "one two"
    assert str(parsed["X-MM7-LinkedID"]) == "L 1"


def test_line_separators_in_a_report_are_delivered():
    gateway = MemoryGateway()
    request = m.DeliveryReportReq(
        message_id="M\u20281",
        recipient=m.Address("+1555"),
        mm_status="Retrieved\u2029",
        status_text="fine\x85really",
    )
    assert deliver(gateway, request).code == 1000
    check_mail(gateway.relay.accepted[0].data)


TEXT = b"Hello there.\n\nA second paragraph.\n"


@pytest.mark.parametrize(
    "charset", ["idna", "punycode", "rot13", "x-unknown", "base64", "undefined"]
)
def test_a_text_part_in_an_odd_charset_is_delivered_byte_for_byte(charset):
    gateway = MemoryGateway()
    text = m.ContentPart("text/plain", TEXT, (("charset", charset),))
    image = m.ContentPart("image/gif", b"GIF89a")
    assert deliver(gateway, _base(content=(text, image))).code == 1000
    parsed = check_mail(gateway.relay.accepted[0].data)
    [part] = [p for p in parsed.walk() if p.get_content_maintype() == "text"]
    assert part.get_payload(decode=True) == TEXT
    assert part.get_param("charset") == charset


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("utf-7", "Grüße, text.\n"),
        ("utf-16", "Grüße, text.\n"),
        ("iso-8859-1", "Grüße, text.\n"),
        ("shift_jis", "日本語のテキスト\n"),
    ],
)
def test_a_text_part_in_a_real_charset_is_delivered_as_text(charset, text):
    gateway = MemoryGateway()
    part = m.ContentPart("text/plain", text.encode(charset), (("charset", charset),))
    assert deliver(gateway, _base(content=(part,))).code == 1000
    parsed = check_mail(gateway.relay.accepted[0].data)
    assert parsed.get_content() == text


# Item 10: well-formed mail -------------------------------------------------


@pytest.mark.parametrize(
    "text", ["a\x00b\n", "one\u2028two\n", "form\x0cfeed\n", "lone\rcr\n"]
)
def test_a_text_with_nul_or_odd_breaks_goes_base64_exactly(text):
    gateway = MemoryGateway()
    part = m.ContentPart("text/plain", text.encode(), (("charset", "utf-8"),))
    assert deliver(gateway, _base(content=(part,))).code == 1000
    parsed = check_mail(gateway.relay.accepted[0].data)
    assert parsed["Content-Transfer-Encoding"] == "base64"
    assert parsed.get_payload(decode=True) == text.encode()


@pytest.mark.parametrize(
    "media", ["multipart/mixed", "multipart/related", "message/rfc822"]
)
def test_a_multipart_or_message_leaf_goes_as_octet_stream(media):
    gateway = MemoryGateway()
    data = b"Subject: inner\r\n\r\nhello\r\n" if media.startswith("message") else b"x"
    leaf = m.ContentPart(media, data)
    content = (m.ContentPart("text/plain", b"hi"), leaf)
    assert deliver(gateway, _base(content=content)).code == 1000
    parsed = check_mail(gateway.relay.accepted[0].data)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment["X-MM7-Content-Type"] == media
    assert attachment.get_content() == data
    if media == "message/rfc822":
        assert attachment.get_filename() == "message.eml"


def test_a_media_type_that_is_no_media_type_goes_as_octet_stream():
    mail = EmailProcessor(FakeMailSender(), RULES).deliver_message(
        _base(content=(m.ContentPart("text/" + "x" * 5000, b"hi"),)), TX
    )
    check_mail(wire_bytes(mail.message))


# Every mail parses back ----------------------------------------------------


def _mails(processor: EmailProcessor, message: object) -> list[bytes]:
    if isinstance(message, m.DeliverReq):
        mail = processor.deliver_message(message, TX)
    elif isinstance(message, m.SubmitReq):
        mail = processor.submit_message(message, TX, "MID")
    elif isinstance(message, m.DeliveryReportReq):
        mail = processor.delivery_report_message(message, TX)
    elif isinstance(message, m.ReadReplyReq):
        mail = processor.read_reply_message(message, TX)
    else:
        return []
    return [wire_bytes(mail.message)]


def test_every_reference_sample_makes_a_mail_without_defects():
    checked = 0
    for keep_smil in (False, True):
        processor = EmailProcessor(FakeMailSender(), RULES, keep_smil=keep_smil)
        for ctype, body in SAMPLES:
            try:
                message = codec.decode(ctype, body).message
            except MM7Error:
                continue
            for data in _mails(processor, message):
                check_mail(data)
                checked += 1
    assert checked >= 24


_ODD_TEXT = st.text(
    alphabet=st.sampled_from(
        [
            *'ab é漢 .-=?"<>\\;:@',
            "\x00",
            "\r",
            "\n",
            "\u2028",
            "\x85",
            "\t",
            "\U0001f600",
        ]
    ),
    max_size=300,
) | st.sampled_from(["", WORDS[:3000], "é " * 700, "漢" * 1200])
_CHARSETS = st.sampled_from(
    [None, "utf-8", "us-ascii", "iso-8859-1", "idna", "x-nope", "utf-16", "rot13"]
)
_MEDIA = st.sampled_from(
    [
        "text/plain",
        "text/html",
        "image/gif",
        "application/smil",
        "multipart/mixed",
        "message/rfc822",
        "audio/amr",
        "text/x-" + "y" * 200,
        "application/octet-stream",
    ]
)


@st.composite
def _parts(draw) -> m.ContentPart:
    media = draw(_MEDIA)
    charset = draw(_CHARSETS)
    text = draw(_ODD_TEXT)
    data = draw(
        st.one_of(
            st.binary(max_size=300),
            st.just(text.encode("utf-8", "surrogatepass")),
        )
    )
    params = [("charset", charset)] if charset else []
    if draw(st.booleans()):
        params.append(("name", draw(_ODD_TEXT)))
    return m.ContentPart(
        media,
        data,
        tuple(params),
        draw(st.none() | _ODD_TEXT),
        draw(st.none() | _ODD_TEXT),
    )


@st.composite
def _requests(draw) -> object:
    kind = draw(st.sampled_from(["deliver", "submit", "report", "read"]))
    sender = m.Address("+15551234567")
    to = m.Recipients(to=(m.Address("7255", "ShortCode"),))
    if kind == "deliver":
        return m.DeliverReq(
            sender=sender,
            recipients=to,
            subject=draw(_ODD_TEXT),
            linked_id=draw(_ODD_TEXT),
            vasp_id=draw(_ODD_TEXT),
            vas_id=draw(_ODD_TEXT),
            mms_relay_server_id=draw(_ODD_TEXT),
            priority=draw(_ODD_TEXT),
            content=tuple(draw(st.lists(_parts(), max_size=4))),
        )
    if kind == "submit":
        return m.SubmitReq(
            sender_address=sender,
            recipients=to,
            subject=draw(_ODD_TEXT),
            service_code=draw(_ODD_TEXT),
            content=tuple(draw(st.lists(_parts(), max_size=4))),
        )
    report = m.DeliveryReportReq if kind == "report" else m.ReadReplyReq
    return report(
        message_id=draw(_ODD_TEXT),
        recipient=sender,
        sender=m.Address("7255", "ShortCode"),
        mm_status=draw(_ODD_TEXT),
        status_text=draw(_ODD_TEXT),
        mms_relay_server_id=draw(_ODD_TEXT),
    )


@must_reach(0.95)
@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(request=_requests(), keep_smil=st.booleans())
def test_every_generated_request_makes_a_mail_without_defects(request, keep_smil):
    processor = EmailProcessor(FakeMailSender(), RULES, keep_smil=keep_smil)
    [data] = _mails(processor, request)
    reached()
    check_mail(data)


@pytest.mark.parametrize("field", ["filename", "Content-ID", "Content-Location"])
def test_a_part_with_headers_over_the_limit_is_2007(field):
    """Over 16 KiB of headers in one part is refused before any value is read."""
    from mm7tx.mm7.codec.mime import MAX_PART_HEADERS

    over = "ab " * 7000  # 21 KB: over the limit (the client writes it slowly)
    request = {
        "filename": _image(params=(("name", over + ".gif"),)),
        "Content-ID": _image(content_id=over),
        "Content-Location": _image(content_location=over + ".gif"),
    }[field]
    gateway = MemoryGateway()
    with pytest.raises(MM7Fault) as caught:
        deliver(gateway, request)
    assert caught.value.status.code == 2007
    assert caught.value.status.details == (
        f"a MIME part's headers are over {MAX_PART_HEADERS} bytes"
    )
    assert gateway.relay.received == []
