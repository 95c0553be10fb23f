"""Issue 19, item 2: every line of every mail mm7tx writes is at most 998
octets, whatever a peer sends, and every header reads back as it was sent.

A word too long for a line (a Subject of one 990-character word, a long
StatusText) is written as RFC 2047 encoded words, which a reader joins back
into the word; checked here on the bytes as the relay gets them, with a
relay as strict as RFC 5321 (lines of at most 998 octets, no bare CR or LF).
"""

from __future__ import annotations

import email
import email.policy
import re
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, Message
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm7tx.gateway.processors import AddressRules, EmailProcessor, bounded
from mm7tx.mail.wire import WIRE_POLICY, fitted_words, wire_bytes
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
from mm7tx.testing import FakeMailSender, MemoryGateway
from mm7tx.transaction import Transaction
from tests.fuzzing import examples, must_reach, reached

RULES = AddressRules("f@from.example", "from.example", "t@to.example", "to.example")
HEADERS = HeaderRegistry()
SENDER = m.Address("+15551234567")
TO = m.Recipients(to=(m.Address("7255", "ShortCode"),))


def strict_lines(data: bytes) -> None:
    """``data`` (LF or CRLF line ends) has no bare CR or LF and no line over
    998 octets, as an RFC 5321-strict relay wants (2.3.8, 4.5.3.1.6)."""
    lines = data.split(b"\r\n") if b"\r\n" in data else data.split(b"\n")
    for number, line in enumerate(lines, 1):
        assert b"\r" not in line and b"\n" not in line, f"bare CR or LF, line {number}"
        assert len(line) <= 998, f"line {number}: {len(line)} octets: {line[:40]!r}"


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def spaced(text: str) -> str:
    """``text`` with its whitespace made single spaces: what a header keeps
    of its text across folding and cleaning."""
    return " ".join(text.split())


def header(message: Message, name: str) -> str:
    """The decoded value of header ``name`` in ``message`` or any of its
    parts and header blocks (a delivery-status holds those)."""
    for part in message.walk():
        if part[name] is not None:
            return str(part[name])
        if part.get_content_type() == "message/delivery-status":
            for block in part.get_payload():
                assert isinstance(block, Message)
                if block[name] is not None:
                    return str(block[name])
    raise AssertionError(f"no {name} header")


def mail_bytes(request: Any, transaction_id: str = "tx-1") -> bytes:
    """The mail the email processor makes of ``request``, as the senders
    write it."""
    processor = EmailProcessor(FakeMailSender(), RULES)
    tx = Transaction(transaction_id, "/vasp/")
    if isinstance(request, m.DeliverReq):
        mail = processor.deliver_message(request, tx)
    elif isinstance(request, m.SubmitReq):
        mail = processor.submit_message(request, tx, "MID")
    elif isinstance(request, m.DeliveryReportReq):
        mail = processor.delivery_report_message(request, tx)
    else:
        mail = processor.read_reply_message(request, tx)
    return wire_bytes(mail.message)


def _report(status_text: str, message_id: str = "M1") -> m.DeliveryReportReq:
    return m.DeliveryReportReq(
        message_id=message_id,
        recipient=m.Address("+1555"),
        sender=m.Address("7255", "ShortCode"),
        mm_status="Rejected",
        status_text=status_text,
    )


# The cases the issue found -------------------------------------------------


@pytest.mark.parametrize("length", [990, 991, 992, 998, 5000])
def test_a_subject_of_one_long_word_fits_the_lines_and_reads_back(length):
    data = mail_bytes(m.DeliverReq(sender=SENDER, recipients=TO, subject="x" * length))
    strict_lines(data)
    subject = "x" * min(length, 998)
    if length > 998:
        subject += f" [{length - 998} characters cut]"
    assert str(parsed(data)["Subject"]) == subject


@pytest.mark.parametrize("text", ["s" * 983, "s" * 998, "s" * 5000])
def test_a_long_status_text_fits_the_lines_and_reads_back(text):
    data = mail_bytes(_report(text))
    strict_lines(data)
    message = parsed(data)
    expected = bounded(text, "StatusText")
    assert header(message, "X-MM7-StatusText") == expected
    assert header(message, "Diagnostic-Code") == f"X-MM7; Rejected {expected}"


def test_a_read_reply_with_a_long_status_text_fits_the_lines():
    request = m.ReadReplyReq(
        message_id="M1",
        recipient=m.Address("+1555"),
        sender=m.Address("7255", "ShortCode"),
        mm_status="Read",
        status_text="r" * 990,
    )
    data = mail_bytes(request)
    strict_lines(data)
    assert header(parsed(data), "X-MM7-StatusText") == "r" * 990


def test_the_words_that_fit_stay_plain_text():
    """Only a word that cannot fit a line is encoded: the words around it
    are written as they are (Diagnostic-Code keeps its ``X-MM7;`` type
    readable)."""
    report = mail_bytes(_report("w" * 998))
    strict_lines(report)
    assert re.search(rb"\nDiagnostic-Code: X-MM7; Rejected\n? =\?utf-8\?", report)
    deliver = mail_bytes(
        m.DeliverReq(sender=SENDER, recipients=TO, subject="w" * 990 + " after")
    )
    strict_lines(deliver)
    assert b"\nSubject: =?utf-8?" in deliver
    assert re.search(rb"\?=\n? after\n", deliver)
    assert str(parsed(deliver)["Subject"]) == "w" * 990 + " after"


# The end to end: a strict relay takes them ----------------------------------


def test_the_strict_relay_refuses_a_line_over_998_octets():
    """The in-memory relay in strict mode refuses what a strict relay does
    (500 after the data), which mm7tx answers as a permanent refusal."""
    gateway = MemoryGateway(strict=True)
    message = EmailMessage(policy=WIRE_POLICY)
    message["Subject"] = "a body line too long"
    message["Content-Transfer-Encoding"] = "7bit"
    message.set_payload("b" * 999 + "\n")
    d = gateway.sender.send("f@from.example", ["t@to.example"], message)
    failure = gateway.result(d.addErrback(lambda f: f.value))
    assert isinstance(failure, MM7Error), failure
    assert failure.status.code == 3002
    [mail] = gateway.relay.received
    assert mail.reply == 500
    assert gateway.relay.accepted == []


@pytest.mark.parametrize("length", [990, 992, 5000])
def test_a_deliver_req_with_a_long_word_subject_is_taken_by_a_strict_relay(length):
    gateway = MemoryGateway(strict=True)
    request = m.DeliverReq(sender=SENDER, recipients=TO, subject="x" * length)
    answer = gateway.result(gateway.client("/vasp/").deliver(request))
    assert answer.status.code == 1000
    [mail] = gateway.relay.accepted
    strict_lines(mail.data)
    assert str(mail.message["Subject"]).startswith("x" * min(length, 998))


def test_a_delivery_report_with_a_long_status_text_is_taken_by_a_strict_relay():
    gateway = MemoryGateway(strict=True)
    answer = gateway.result(
        gateway.client("/vasp/").delivery_report(_report("s" * 983))
    )
    assert answer.status.code == 1000
    [mail] = gateway.relay.accepted
    strict_lines(mail.data)
    assert header(mail.message, "X-MM7-StatusText") == "s" * 983


# Any value --------------------------------------------------------------------

# Word lengths around every limit: a folded line (78), the fields cut at
# 256, one line (998, less a header's name), the fields cut at 998.
_LENGTHS = [1, 5, 60, 76, 77, 78, 200, 256, 900, 960, 975, 980, 990, 998, 999, 1200]


# Printable ASCII, a tab and controls (which become spaces); any other
# character but the surrogates, which no text holds.
_ASCII = st.sampled_from([chr(c) for c in range(0x20, 0x7F)] + ["\t", "\x00", "\x1b"])
_UNICODE = st.characters(min_codepoint=0x80, max_codepoint=0xD7FF) | st.characters(
    min_codepoint=0xE000
)


@st.composite
def _words(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["short", "long", "unicode", "long unicode"]))
    if kind == "short":
        return draw(st.text(_ASCII, min_size=1, max_size=12))
    length = draw(st.sampled_from(_LENGTHS))
    if kind == "long":
        letter = draw(st.sampled_from("xX0-.@<>\"'=?;:,()[]"))
        return letter * length
    if kind == "unicode":
        return draw(st.text(_ASCII | _UNICODE, min_size=1, max_size=12))
    return draw(st.sampled_from(["é", "漢", "\U0001f600", "ü"])) * (length // 2 + 1)


@st.composite
def header_values(draw: st.DrawFn) -> str:
    """A header value as a peer may send one: words of every length (many
    too long for a line), ASCII and not, controls other than CR and LF, runs
    of spaces and tabs between them.  A value never holds ``=?``: text that
    looks like an RFC 2047 encoded word is read as one by mail readers
    whoever writes it, and is no line-length matter."""
    words = draw(st.lists(_words(), min_size=1, max_size=5))
    value = words[0]
    for word in words[1:]:
        value += draw(st.sampled_from([" ", "  ", "\t", " " * 40])) + word
    return value.replace("=?", "= ?")


@st.composite
def _content(draw: st.DrawFn) -> tuple[m.ContentPart, ...]:
    """A text and an attachment whose filename, Content-ID, Content-Location
    and media type are any header value (their lines are checked; how each
    is carried is tests/mail/test_mail_hostile.py's)."""
    media = draw(st.sampled_from(["image/gif", "text/plain", "x/" + "y" * 990]))
    return (
        m.ContentPart("text/plain", b"hi"),
        m.ContentPart(
            media,
            b"GIF89a",
            (("name", draw(header_values())),),
            draw(header_values()),
            draw(header_values()),
        ),
        m.ContentPart("image/gif", b"GIF89a", (), None, draw(header_values())),
    )


# The headers each request's values land in, with the value a reader must
# get back (cleaned and cut as the processor documents: bounded()).
def _deliver(draw: st.DrawFn) -> tuple[Any, dict[str, str]]:
    values = {
        name: draw(header_values())
        for name in ("subject", "linked_id", "vasp_id", "vas_id", "relay", "priority")
    }
    request = m.DeliverReq(
        sender=SENDER,
        recipients=TO,
        subject=values["subject"],
        linked_id=values["linked_id"],
        vasp_id=values["vasp_id"],
        vas_id=values["vas_id"],
        mms_relay_server_id=values["relay"],
        priority=values["priority"],
        content=draw(_content()),
    )
    expected = {
        "Subject": bounded(values["subject"], "Subject"),
        "X-MM7-LinkedID": bounded(values["linked_id"], "LinkedID"),
        "X-MM7-VASPID": bounded(values["vasp_id"], "VASPID"),
        "X-MM7-VASID": bounded(values["vas_id"], "VASID"),
        "X-MM7-MMSRelayServerID": bounded(values["relay"], "MMSRelayServerID"),
        "X-MM7-Priority": bounded(values["priority"], "Priority"),
    }
    return request, expected


def _submit(draw: st.DrawFn) -> tuple[Any, dict[str, str]]:
    subject, service_code = draw(header_values()), draw(header_values())
    request = m.SubmitReq(
        sender_address=SENDER,
        recipients=TO,
        subject=subject,
        service_code=service_code,
    )
    return request, {
        "Subject": bounded(subject, "Subject"),
        "X-MM7-ServiceCode": bounded(service_code, "ServiceCode"),
    }


def _delivery_report(draw: st.DrawFn) -> tuple[Any, dict[str, str]]:
    text, message_id = draw(header_values()), draw(header_values())
    request = _report(text, message_id=message_id)
    status_text = bounded(text, "StatusText")
    return request, {
        "X-MM7-StatusText": status_text,
        "Diagnostic-Code": f"X-MM7; Rejected {status_text}".strip(),
        "X-MM7-MessageID": bounded(message_id, "MessageID"),
    }


def _read_reply(draw: st.DrawFn) -> tuple[Any, dict[str, str]]:
    text = draw(header_values())
    request = m.ReadReplyReq(
        message_id="M1",
        recipient=m.Address("+1555"),
        sender=m.Address("7255", "ShortCode"),
        mm_status="Read",
        status_text=text,
    )
    return request, {"X-MM7-StatusText": bounded(text, "StatusText")}


@st.composite
def requests(draw: st.DrawFn) -> tuple[Any, str, dict[str, str]]:
    """A request, a TransactionID, and the headers its mail must hold."""
    make = draw(st.sampled_from([_deliver, _submit, _delivery_report, _read_reply]))
    request, expected = make(draw)
    if make in (_deliver, _submit):
        expected["X-MM7-Sender"] = "+15551234567"
        expected["X-MM7-Recipients"] = "7255 (ShortCode)"
    else:
        expected["X-MM7-Sender"] = "7255 (ShortCode)"
        expected["X-MM7-Recipients"] = "+1555"
    transaction_id = draw(header_values())
    expected["X-MM7-TransactionID"] = bounded(transaction_id, "TransactionID")
    return request, transaction_id, {k: v for k, v in expected.items() if v}


@must_reach(0.95)
@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=requests())
def test_every_header_fits_the_lines_and_reads_back(case):
    request, transaction_id, expected = case
    data = mail_bytes(request, transaction_id)
    message = parsed(data)
    reached()
    strict_lines(data)
    for name, value in expected.items():
        assert spaced(header(message, name)) == spaced(value), name


@settings(max_examples=examples(200), deadline=None, derandomize=True)
@given(
    value=st.text(st.sampled_from("ab= ?x"), min_size=1, max_size=120).map(
        lambda v: v.replace("=?", "= ?").strip() or "a"
    ),
    room=st.integers(1, 40),
)
def test_fitted_words_keep_the_text_exactly(value, room):
    """Every word of what :func:`fitted_words` gives, with the spaces
    before it, fits ``room``; a reader gets the value back space for space."""
    fitted = fitted_words(value, room)
    for unit in re.findall(" *[^ ]+", fitted):
        word = unit.lstrip(" ")
        if word.startswith("=?utf-8?b?"):
            assert len(word) <= 75 and len(unit) - len(word) <= 1, unit
        else:
            assert len(unit) <= room, unit
    assert str(HEADERS("Subject", fitted)) == value
