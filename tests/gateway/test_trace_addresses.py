"""Issue 20, item 7: "my MMS from +1555…" can be traced.

Every mail made from an MM7 request names the request's MM7 sender and its
To and Cc recipients (never Bcc) in ``X-MM7-Sender`` and
``X-MM7-Recipients``, whatever the address defaults; the transaction's log
event has them too, masked by default (``mm7_log_addresses``)."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger, capturedLogs, formatEvent

from mm7tx import logs
from mm7tx.config import ConfigError, load
from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.mail.wire import wire_bytes
from mm7tx.mm7 import messages as m
from mm7tx.testing import FakeMailSender, MemoryGateway
from mm7tx.transaction import Transaction
from tests.mail.test_mail_lines import parsed, strict_lines

# The defaults a new operator starts with: no from domain, so the sender's
# number is in no address of the mail.
DEFAULTS = AddressRules(from_address="mm7tx@localhost", to_address="pm@localhost")
CONTENT = (m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),)
SENDER = m.Address("+15551234567")
TO = (m.Address("7255", "ShortCode"), m.Address("+44 7700 900123"))
CC = (m.Address('"Doe, Jane" <jane.doe@example.com>', "RFC2822Address"),)
BCC = (m.Address("+19998887777"), m.Address("secret@hidden.example", "RFC2822Address"))
RECIPIENTS = m.Recipients(to=TO, cc=CC, bcc=BCC)
NAMED = "7255 (ShortCode), +44 7700 900123, jane.doe@example.com"


def mail_of(request: Any, rules: AddressRules = DEFAULTS) -> tuple[Any, bytes]:
    processor = EmailProcessor(FakeMailSender(), rules)
    tx = Transaction("tx-1", "/p/")
    if isinstance(request, m.DeliverReq):
        mail = processor.deliver_message(request, tx)
    elif isinstance(request, m.SubmitReq):
        mail = processor.submit_message(request, tx, "MID")
    elif isinstance(request, m.DeliveryReportReq):
        mail = processor.delivery_report_message(request, tx)
    else:
        mail = processor.read_reply_message(request, tx)
    return mail, wire_bytes(mail.message)


# The headers -------------------------------------------------------------------


def test_a_deliver_req_names_its_sender_and_to_and_cc_on_default_addresses():
    request = m.DeliverReq(sender=SENDER, recipients=RECIPIENTS, content=CONTENT)
    mail, data = mail_of(request)
    message = parsed(data)
    assert message["From"] == "mm7tx@localhost"  # the number is nowhere else
    assert message["X-MM7-Sender"] == "+15551234567"
    assert message["X-MM7-Recipients"] == NAMED
    assert b"9998887777" not in data and b"hidden.example" not in data
    assert "pm@localhost" in mail.recipients


def test_a_submit_req_never_names_its_bcc_recipients():
    gateway = MemoryGateway(
        """
        mm7_serv {
          mm7_server_default_email_from_address = "mm7tx@localhost"
          mm7_server_default_email_to_domain = "to.example"
          mm7_vasp_uri_paths = ("/vasp/")
          mm7_mmsc_uri_paths = ("/mm7/")
          smtp_starttls = off
        }
        VASP "vasp1" { password = "secret1" }
        """
    )
    request = m.SubmitReq(
        sender_address=m.Address("12345", "ShortCode"),
        recipients=RECIPIENTS,
        content=CONTENT,
    )
    client = gateway.client("/mm7/", ("vasp1", "secret1"))
    assert gateway.result(client.submit(request)).status.code == 1000
    [mail] = gateway.relay.accepted
    # Bcc in the envelope only.
    assert "19998887777@to.example" in mail.recipients
    assert "secret@hidden.example" in mail.recipients
    assert b"9998887777" not in mail.data and b"hidden.example" not in mail.data
    assert mail.message["X-MM7-Sender"] == "12345 (ShortCode)"
    assert mail.message["X-MM7-Recipients"] == NAMED
    strict_lines(mail.data)
    gateway.stop()


@pytest.mark.parametrize("kind", [m.DeliveryReportReq, m.ReadReplyReq])
def test_a_report_names_the_requests_sender_and_recipient(kind):
    request = kind(
        message_id="M1",
        recipient=m.Address("+15551234567"),
        sender=m.Address("7255", "ShortCode"),
        mm_status="Retrieved" if kind is m.DeliveryReportReq else "Read",
    )
    _, data = mail_of(request)
    message = parsed(data)
    assert message["X-MM7-Sender"] == "7255 (ShortCode)"
    assert message["X-MM7-Recipients"] == "+15551234567"


def test_no_empty_header_for_a_request_without_addresses():
    request = m.DeliverReq(content=CONTENT)
    _, data = mail_of(request)
    message = parsed(data)
    assert message["X-MM7-Sender"] is None
    assert message["X-MM7-Recipients"] is None


def test_thousands_of_recipients_make_one_bounded_header_marked_as_cut():
    to = tuple(m.Address(f"+1555{n:07d}") for n in range(5000))
    request = m.SubmitReq(
        sender_address=SENDER, recipients=m.Recipients(to=to), content=CONTENT
    )
    _, data = mail_of(request)
    strict_lines(data)
    value = str(parsed(data)["X-MM7-Recipients"])
    named, _, marker = value.rpartition(" [")
    shown = named.split(", ")
    assert shown == [a.value for a in to[: len(shown)]]
    assert marker == f"{5000 - len(shown)} more recipients]"
    assert 900 < len(named) <= 998


def test_a_huge_number_is_cut_in_the_header_as_other_fields_are():
    long = "+" + "5" * 5000
    request = m.DeliverReq(
        sender=m.Address(long),
        recipients=m.Recipients(to=(m.Address(long), m.Address("7255", "ShortCode"))),
        content=CONTENT,
    )
    _, data = mail_of(request)
    strict_lines(data)
    message = parsed(data)
    cut = "+" + "5" * 255 + " [4745 characters cut]"
    assert message["X-MM7-Sender"] == cut
    assert message["X-MM7-Recipients"] == f"{cut}, 7255 (ShortCode)"


def test_a_value_cannot_add_a_header():
    request = m.DeliverReq(
        sender=m.Address("x@y.example\r\nBcc: evil@z.example", "RFC2822Address"),
        recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
        content=CONTENT,
    )
    # The mapping refuses such an address (2002); a subclass that maps
    # addresses its own way still gets one clean header line.

    class Lenient(EmailProcessor):
        def sender_address(self, address: m.Address | None) -> str:
            return "a@b.example"

    mail = Lenient(FakeMailSender(), DEFAULTS).deliver_message(
        request, Transaction("t", "/p/")
    )
    data = wire_bytes(mail.message)
    strict_lines(data)
    assert b"\nBcc:" not in data
    assert parsed(data)["Bcc"] is None


# The transaction's log event ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("+15551234567", "*******4567"),
        ("+44 7700 900123/TYPE=PLMN", "********0123"),
        ("(555) 123-4567", "******4567"),
        ("7255", "7255"),
        ("12", "12"),
        ("jane.doe@example.com", "j***@example.com"),
        ('"Doe, Jane" <jane.doe@example.com>', "j***@example.com"),
        ("jd@example.com", "***@example.com"),
        ("no digits at all", "***"),
        ("+1555\r\n1234567", "*******4567"),
    ],
)
def test_the_masking_rules(value, masked):
    assert logs.mask_address(value) == masked


def test_a_masked_value_is_one_line_and_bounded():
    for value in ("x@y.example\nfake line", "a\u2028b@c.example", "+1\r\n" * 9000):
        masked = logs.mask_address(value)
        assert masked.isprintable() and len(masked) <= 300, masked
    assert logs.mask_address("x@" + "y" * 9000).endswith("(9004 characters)")


CONFIG = """
mm7_serv {
  mm7_server_default_email_from_address = "mm7tx@localhost"
  mm7_server_default_email_to_address = "pm@localhost"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_starttls = off
%s}
VASP "vasp1" { password = "secret1" }
"""
SUBMIT = m.SubmitReq(
    sender_address=SENDER,
    recipients=m.Recipients(to=TO, cc=CC, bcc=BCC),
    content=CONTENT,
)


def transaction_event(option: str, request: Any = SUBMIT) -> dict[str, Any]:
    gateway = MemoryGateway(CONFIG % option)
    with capturedLogs() as events:
        if isinstance(request, m.SubmitReq):
            client = gateway.client("/mm7/", ("vasp1", "secret1"))
            code = gateway.result(client.submit(request)).status.code
        else:
            report = gateway.client("/vasp/").delivery_report(request)
            code = gateway.result(report).status.code
    assert code == 1000
    gateway.stop()
    [event] = [e for e in events if logs.is_transaction(e)]
    return event


def as_json(event: dict[str, Any]) -> dict[str, Any]:
    out = StringIO()
    logs.json_lines_observer(out)(event)
    record: dict[str, Any] = json.loads(out.getvalue())
    return record


@pytest.mark.parametrize("option", ["", "  mm7_log_addresses = masked\n"])
def test_the_event_names_sender_and_to_cc_masked_by_default(option):
    event = transaction_event(option)
    expected = {
        "sender": "*******4567",
        "recipients": ["7255", "********0123", "j***@example.com"],
        "recipient_count": 3,  # To and Cc: Bcc is not counted
    }
    assert {k: event[k] for k in expected} == expected
    assert {k: as_json(event)[k] for k in expected} == expected
    line = formatEvent(event)
    assert "; sender *******4567; to 7255, ********0123, j***@example.com" in line
    for hidden in ("9998887777", "7777", "hidden", "1234567", "jane"):
        assert hidden not in line and hidden not in json.dumps(as_json(event))


def test_full_logs_the_addresses_as_sent_and_none_logs_none():
    event = transaction_event("  mm7_log_addresses = full\n")
    assert event["sender"] == "+15551234567"
    assert event["recipients"] == [
        "7255",
        "+44 7700 900123",
        '"Doe, Jane" <jane.doe@example.com>',
    ]
    assert event["recipient_count"] == 3
    assert "9998887777" not in formatEvent(event)
    event = transaction_event("  mm7_log_addresses = NONE\n")
    assert (event["sender"], event["recipients"]) == (None, None)
    assert event["recipient_count"] == 3
    assert "sender" not in formatEvent(event) and "7255" not in formatEvent(event)


def test_many_recipients_log_the_first_few_and_the_count():
    to = tuple(m.Address(f"+1555{n:07d}") for n in range(1000))
    event = transaction_event(
        "", m.SubmitReq(sender_address=SENDER, recipients=m.Recipients(to=to))
    )
    assert event["recipients"] == [
        "*******0000",
        "*******0001",
        "*******0002",
        "*******0003",
        "*******0004",
    ]
    assert event["recipient_count"] == 1000
    assert "*******0004 and 995 more" in formatEvent(event)
    assert len(formatEvent(event)) < 400


def test_a_report_logs_its_sender_and_recipient():
    report = m.DeliveryReportReq(
        message_id="M1",
        recipient=m.Address("+15551234567"),
        sender=m.Address("7255", "ShortCode"),
        mm_status="Retrieved",
    )
    event = transaction_event("", report)
    assert (event["sender"], event["recipients"], event["recipient_count"]) == (
        "7255",
        ["*******4567"],
        1,
    )


@pytest.mark.parametrize("value", ["partial", '""', "yes"])
def test_another_log_addresses_value_is_refused_with_its_line(value):
    with pytest.raises(ConfigError) as caught:
        load(CONFIG % f"  mm7_log_addresses = {value}\n", "gw.conf")
    assert str(caught.value).startswith(
        "gw.conf, line 8: mm7_log_addresses must be masked, full or none"
    )


README = Path(__file__).resolve().parents[2] / "README.md"
README_MARK = "<!-- tests/gateway/test_trace_addresses.py checks these lines -->"


def test_the_readmes_log_lines_are_what_mm7tx_logs():
    """The README's example lines (one log line may wrap over several)."""
    text = README.read_text(encoding="utf-8")
    found = re.search(re.escape(README_MARK) + r"\n\n((?:    .*\n)+)", text)
    assert found, f"README.md has no indented block after {README_MARK}"
    shown = " ".join(line.strip() for line in found.group(1).splitlines())
    deliver = m.DeliverReq(
        sender=m.Address("+1 555 123-4567"),
        recipients=m.Recipients(
            to=(m.Address("7255", "ShortCode"),),
            cc=(m.Address("jane.doe@example.com", "RFC2822Address"),),
            bcc=(m.Address("+19998887777"),),
        ),
    )
    with capturedLogs() as events:
        log = Logger(namespace="mm7tx.resource")
        logs.log_transaction(
            log,
            path="/vasp/",
            peer="192.0.2.1",
            status=1000,
            status_text="Success",
            ms=3.8,
            request_bytes=1,
            operation="DeliverReq",
            transaction_id="tx-1",
            account="mmsc1",
            relay_reply="250 2.0.0 Ok: queued as 4F3A2B01",
            **logs.logged_addresses(deliver, "masked"),
        )
        logs.log_transaction(
            log,
            path="/mm7/",
            peer="192.0.2.1",
            status=4001,
            status_text="no valid VASP credentials",
            ms=0.1,
            request_bytes=1,
            fault=True,
        )
    assert shown == " ".join(formatEvent(e) for e in events)
