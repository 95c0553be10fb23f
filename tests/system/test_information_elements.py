"""Mandatory information elements and enumerated values (issue 12): what a
request means nothing without is refused 4004 naming it, what survives falls
back (README, "What is refused and what falls back"); enumerated values are
read in any case and kept in the schema's spelling, anything else is 2007."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from zope.interface import implementer

from mm7tx.interfaces import (
    ICancelProcessor,
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    IReplaceProcessor,
    ISubmitProcessor,
)
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
from mm7tx.testing import FakeMailSender, http_post
from tests.http.test_mmsc import basic, mmsc
from tests.http.test_resource import tree

NS = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"


def envelope(kind: str, elements: str, tid: str = "tid-1") -> bytes:
    """A bare ``text/xml`` request: ``elements`` after MM7Version."""
    return f"""<?xml version="1.0"?>
<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">
<env:Header><mm7:TransactionID xmlns:mm7="{NS}">{tid}</mm7:TransactionID></env:Header>
<env:Body><{kind} xmlns="{NS}"><MM7Version>6.8.0</MM7Version>
{elements}
</{kind}></env:Body></env:Envelope>""".encode()


MESSAGE_ID = "<MessageID>M-1</MessageID>"
RECIPIENT = "<Recipient><Number>+15551234567</Number></Recipient>"
SENDER = "<Sender><ShortCode>7255</ShortCode></Sender>"
DATE = "<Date>2024-05-01T12:00:00Z</Date>"
STAMP = "<TimeStamp>2024-05-01T12:00:00Z</TimeStamp>"
RETRIEVED = "<MMStatus>Retrieved</MMStatus>"
READ = "<MMStatus>Read</MMStatus>"
TO = "<Recipients><To><Number>1</Number></To></Recipients>"


@implementer(
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    ISubmitProcessor,
    ICancelProcessor,
    IReplaceProcessor,
)
class Recorder:
    """A processor for every operation that keeps what it is given."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def _answer(self, request: Any, transaction: Any) -> Any:
        self.seen.append(request)
        return m.RESPONSE_FOR[type(request)](m.Status(1000, "Success"))  # type: ignore[call-arg]

    deliver = delivery_report = read_reply = submit = cancel = replace = _answer


def post(kind: str, body: bytes, processor: Any = None) -> tuple[int, m.Envelope]:
    """Post a request where it goes (MMSC side with Basic auth for Submit,
    Cancel and Replace); the HTTP code and the decoded answer."""
    headers = {"Content-Type": "text/xml"}
    sender = FakeMailSender()
    if kind in ("SubmitReq", "CancelReq", "ReplaceReq"):
        headers.update(basic("vasp1", "secret1"))
        answer = http_post(mmsc(sender, processor), "/mm7", body, headers)
    else:
        root = tree(sender)
        if processor is not None:
            root.children[b"ringtones"].processor = processor  # type: ignore[attr-defined]
        answer = http_post(root, "/ringtones/", body, headers)
    return answer.code, codec.decode(answer.headers["content-type"], answer.body)


# Mandatory elements --------------------------------------------------------

MISSING = [
    ("DeliveryReportReq", SENDER + DATE, "MessageID, Recipient, MMStatus"),
    ("DeliveryReportReq", RECIPIENT + SENDER + DATE + RETRIEVED, "MessageID"),
    ("DeliveryReportReq", MESSAGE_ID + SENDER + DATE + RETRIEVED, "Recipient"),
    ("DeliveryReportReq", MESSAGE_ID + RECIPIENT + SENDER + DATE, "MMStatus"),
    ("ReadReplyReq", "", "MessageID, Recipient, MMStatus"),
    ("ReadReplyReq", RECIPIENT + SENDER + STAMP + READ, "MessageID"),
    ("ReadReplyReq", MESSAGE_ID + SENDER + STAMP + READ, "Recipient"),
    ("ReadReplyReq", MESSAGE_ID + RECIPIENT + SENDER + STAMP, "MMStatus"),
    ("CancelReq", "", "MessageID"),
    ("ReplaceReq", "<ServiceCode>s</ServiceCode>", "MessageID"),
    # Present but empty is missing too.
    ("DeliveryReportReq", "<MessageID> </MessageID>" + RECIPIENT + RETRIEVED, "MessageID"),
    ("DeliveryReportReq", MESSAGE_ID + "<Recipient><Number/></Recipient>" + RETRIEVED, "Recipient"),
    ("ReadReplyReq", MESSAGE_ID + RECIPIENT + "<MMStatus></MMStatus>", "MMStatus"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "elements", "missing"), MISSING)
def test_a_request_without_what_it_means_is_refused_4004_naming_it(
    kind, elements, missing
):
    body = envelope(kind, elements)
    with pytest.raises(MM7Error) as caught:
        codec.decode("text/xml", body)
    expected = m.Status(4004, "Validation error", f"{kind} has no {missing}")
    assert caught.value.status == expected
    # Through the resource: a fault, and the processor never sees it.
    processor = Recorder()
    code, answer = post(kind, body, processor)
    assert code == 500 and answer.is_fault
    assert answer.message.status == expected  # type: ignore[union-attr]
    assert processor.seen == []


@pytest.mark.parametrize(
    ("kind", "elements"),
    [
        ("DeliveryReportReq", MESSAGE_ID + RECIPIENT + SENDER + DATE + RETRIEVED),
        ("ReadReplyReq", MESSAGE_ID + RECIPIENT + SENDER + STAMP + READ),
        ("CancelReq", MESSAGE_ID),
        ("ReplaceReq", MESSAGE_ID),
        ("DeliverReq", SENDER),
        ("SubmitReq", TO),
    ],
)
def test_a_request_with_its_mandatory_elements_reaches_the_processor(kind, elements):
    processor = Recorder()
    code, answer = post(kind, envelope(kind, elements), processor)
    assert code == 200 and answer.message.status.code == 1000  # type: ignore[union-attr]
    [request] = processor.seen
    assert type(request).__name__ == kind


# Fallbacks -------------------------------------------------------------------


def mailed(kind: str, elements: str) -> Any:
    """The one email the email processor makes of a VASP-side request."""
    sender = FakeMailSender()
    headers = {"Content-Type": "text/xml"}
    answer = http_post(tree(sender), "/ringtones/", envelope(kind, elements), headers)
    env = codec.decode(answer.headers["content-type"], answer.body)
    assert answer.code == 200 and env.message.status.code == 1000  # type: ignore[union-attr]
    [mail] = sender.sent
    return mail


def received_now(date_header: str, before: datetime) -> bool:
    """The Date header names a time from ``before`` to now (whole seconds)."""
    when = parsedate_to_datetime(date_header)
    return before.replace(microsecond=0) <= when <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("kind", "elements"),
    [
        ("DeliveryReportReq", MESSAGE_ID + RECIPIENT + RETRIEVED),
        ("ReadReplyReq", MESSAGE_ID + RECIPIENT + READ),
    ],
)
def test_a_report_without_sender_or_date_goes_to_the_default_address_dated_now(
    kind, elements
):
    before = datetime.now(UTC)
    mail = mailed(kind, elements)
    assert mail.recipients == ["t@to.example"]  # mm7_server_default_email_to_address
    assert mail.sender == ""  # a report goes from the null sender
    assert mail.message["From"] == "15551234567@from.example"
    assert received_now(mail.message["Date"], before)


def test_a_report_with_its_date_keeps_it():
    mail = mailed(
        "DeliveryReportReq", MESSAGE_ID + RECIPIENT + SENDER + DATE + RETRIEVED
    )
    assert mail.recipients == ["7255@to.example"]
    assert parsedate_to_datetime(mail.message["Date"]) == datetime(
        2024, 5, 1, 12, tzinfo=UTC
    )


def test_a_deliver_req_without_sender_comes_from_the_default_address():
    """The instantcom-mm7/deliver-req4.txt shape: the message survives, from
    mm7_server_default_email_from_address."""
    mail = mailed("DeliverReq", TO)
    assert mail.sender == "f@from.example"
    assert mail.message["From"] == "f@from.example"


# Enumerated values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "elements", "attribute", "kept"),
    [
        ("DeliveryReportReq", "<MMStatus>retrieved</MMStatus>", "mm_status", "Retrieved"),
        ("DeliveryReportReq", "<MMStatus>EXPIRED</MMStatus>", "mm_status", "Expired"),
        ("DeliveryReportReq", "<MMStatus>Unrecognized</MMStatus>", "mm_status", "Unrecognised"),
        ("DeliveryReportReq", "<MMStatus>deliveryconditionnotmet</MMStatus>", "mm_status", "DeliveryConditionNotMet"),
        ("ReadReplyReq", "<MMStatus>READ</MMStatus>", "mm_status", "Read"),
        ("ReadReplyReq", "<MMStatus> deleted </MMStatus>", "mm_status", "Deleted"),
        ("DeliverReq", "<Priority>high</Priority>", "priority", "High"),
        ("SubmitReq", "<MessageClass>informational</MessageClass><Priority>LOW</Priority>", "message_class", "Informational"),
        ("SubmitReq", "<Priority>LOW</Priority>", "priority", "Low"),
    ],
)  # fmt: skip
def test_enumerated_values_are_read_in_any_case_and_kept_in_the_schema_spelling(
    kind, elements, attribute, kept
):
    mandatory = {
        "DeliveryReportReq": MESSAGE_ID + RECIPIENT,
        "ReadReplyReq": MESSAGE_ID + RECIPIENT,
        "DeliverReq": SENDER,
        "SubmitReq": TO,
    }[kind]
    message = codec.decode("text/xml", envelope(kind, mandatory + elements)).message
    assert getattr(message, attribute) == kept


@pytest.mark.parametrize(
    ("kind", "elements", "details"),
    [
        ("DeliveryReportReq", MESSAGE_ID + RECIPIENT + "<MMStatus>Delivered</MMStatus>",
         "MMStatus must be one of Expired, Retrieved, Rejected, Deferred, Unrecognised, "
         "Indeterminate, Forwarded, Unreachable, DeliveryConditionNotMet, NotSupported, "
         "not 'Delivered'"),
        # A delivery report's status is no read reply's.
        ("ReadReplyReq", MESSAGE_ID + RECIPIENT + RETRIEVED,
         "MMStatus must be one of Read, Deleted, Indeterminate, not 'Retrieved'"),
        ("DeliverReq", SENDER + "<Priority>Urgent</Priority>",
         "Priority must be one of Normal, High, Low, not 'Urgent'"),
        ("SubmitReq", TO + "<MessageClass>Spam</MessageClass>",
         "MessageClass must be one of Personal, Informational, Advertisement, Auto, "
         "not 'Spam'"),
        ("SubmitReq", TO + "<DeliveryReport>maybe</DeliveryReport>",
         "DeliveryReport must be true or false, not 'maybe'"),
    ],
)  # fmt: skip
def test_an_unknown_enumerated_value_is_refused_2007_naming_it(kind, elements, details):
    body = envelope(kind, elements)
    expected = m.Status(2007, "Message format corrupt", details)
    with pytest.raises(MM7Error) as caught:
        codec.decode("text/xml", body)
    assert caught.value.status == expected
    code, answer = post(kind, body)
    assert code == 500 and answer.message.status == expected  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("True", True),  # instantcom-mm7
        ("TRUE", True),
        ("1", True),
        ("false", False),
        ("False", False),  # instantcom-mm7
        ("FALSE", False),
        ("0", False),
        (" true ", True),
    ],
)
def test_booleans_are_read_in_any_case(text, value):
    elements = (
        f"{TO}<DeliveryReport>{text}</DeliveryReport><ReadReply>{text}</ReadReply>"
        f"<DistributionIndicator>{text}</DistributionIndicator>"
    )
    message = codec.decode("text/xml", envelope("SubmitReq", elements)).message
    assert message.delivery_report is value  # type: ignore[union-attr]
    assert message.read_reply is value  # type: ignore[union-attr]
    assert message.distribution_indicator is value  # type: ignore[union-attr]
    # Written back in the schema's spelling.
    _, written = codec.encode(m.Envelope("t", message))
    assert f"<DeliveryReport>{str(value).lower()}</DeliveryReport>".encode() in written
