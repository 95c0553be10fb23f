"""Issue 20, item 2: a mail that reports on another message (a delivery
report, a read reply) goes from the null sender, ``MAIL FROM:<>``, and says
``Auto-Submitted: auto-replied`` (RFC 3834), so that a bounce of it goes
nowhere instead of back into the system; ``mm7_report_mail_from`` names a
real envelope sender for relays that refuse the null one."""

from __future__ import annotations

from typing import Any

import pytest

from mm7tx.config import ConfigError, load
from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.mm7 import messages as m
from mm7tx.smtp.maildir import MaildirSender
from mm7tx.testing import MemoryGateway, result_of
from mm7tx.transaction import Transaction

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_starttls = off
%s}
VASP "vasp1" { password = "secret1" }
"""
HANDSET = m.Address("+15551234567")
ORIGINATOR = m.Address("7255", "ShortCode")
REPORT = m.DeliveryReportReq(
    message_id="mmsc-42",
    recipient=HANDSET,
    sender=ORIGINATOR,
    mm_status="Retrieved",
)
READ_REPLY = m.ReadReplyReq(
    message_id="mmsc-42",
    recipient=HANDSET,
    sender=ORIGINATOR,
    mm_status="Read",
)
CONTENT = (m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),)
DELIVER = m.DeliverReq(
    sender=HANDSET, recipients=m.Recipients(to=(ORIGINATOR,)), content=CONTENT
)
SUBMIT = m.SubmitReq(
    sender_address=ORIGINATOR,
    recipients=m.Recipients(to=(HANDSET,)),
    content=CONTENT,
)


def gateway(option: str = "", pipelining: bool = True) -> MemoryGateway:
    return MemoryGateway(CONFIG % option, pipelining=pipelining)


def report(gw: MemoryGateway, request: Any) -> None:
    client = gw.client("/vasp/")
    if isinstance(request, m.DeliveryReportReq):
        code = gw.result(client.delivery_report(request)).status.code
    else:
        code = gw.result(client.read_reply(request)).status.code
    assert code == 1000


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
@pytest.mark.parametrize("request_", [REPORT, READ_REPLY], ids=["dr", "rr"])
def test_a_report_goes_from_the_null_sender_and_says_it_is_auto_replied(
    request_, pipelining
):
    gw = gateway(pipelining=pipelining)
    report(gw, request_)
    [mail] = gw.relay.accepted
    assert mail.sender == ""  # MAIL FROM:<>
    assert mail.recipients == ["7255@to.example"]
    message = mail.message
    assert message["Auto-Submitted"] == "auto-replied"
    # The From header stays the handset's mapped address.
    assert message["From"] == "15551234567@from.example"
    gw.stop()


@pytest.mark.parametrize("request_", [REPORT, READ_REPLY], ids=["dr", "rr"])
def test_mm7_report_mail_from_names_a_real_envelope_sender(request_):
    gw = gateway('  mm7_report_mail_from = "bounces@gw.example"\n')
    report(gw, request_)
    [mail] = gw.relay.accepted
    assert mail.sender == "bounces@gw.example"
    assert mail.message["Auto-Submitted"] == "auto-replied"
    assert mail.message["From"] == "15551234567@from.example"
    gw.stop()


def test_an_mms_keeps_its_sender_and_is_not_auto_submitted():
    gw = gateway('  mm7_report_mail_from = "bounces@gw.example"\n')
    answer = gw.result(gw.client("/vasp/").deliver(DELIVER))
    assert answer.status.code == 1000
    submitted = gw.result(gw.client("/mm7/", ("vasp1", "secret1")).submit(SUBMIT))
    assert submitted.status.code == 1000
    deliver, submit = gw.relay.accepted
    assert deliver.sender == "15551234567@from.example"
    assert submit.sender == "7255@from.example"
    for mail in (deliver, submit):
        assert mail.message["Auto-Submitted"] is None
    gw.stop()


def test_the_maildir_writes_the_null_sender_as_an_empty_return_path(tmp_path):
    processor = EmailProcessor(
        MaildirSender(str(tmp_path / "Maildir")),
        AddressRules(from_domain="from.example", to_domain="to.example"),
    )
    answer = result_of(processor.delivery_report(REPORT, Transaction("t", "/vasp/")))
    assert answer.status.code == 1000
    [stored] = (tmp_path / "Maildir" / "new").iterdir()
    headers = stored.read_bytes().split(b"\n\n", 1)[0].split(b"\n")
    assert b"Return-Path: <>" in headers
    assert b"Auto-Submitted: auto-replied" in headers


@pytest.mark.parametrize(
    ("value", "sender"),
    [('""', ""), ('"<>"', ""), ('"<b@gw.example>"', "b@gw.example")],
)
def test_an_empty_report_mail_from_is_the_null_sender(value, sender):
    config = load(CONFIG % f"  mm7_report_mail_from = {value}\n")
    assert config.rules.report_mail_from == sender
    assert load(CONFIG % "").rules.report_mail_from == ""


@pytest.mark.parametrize(
    "value",
    ['"not an address"', '"a@b@c"', '"<x@y"', '"x\ty@z.example"', "(a b)"],
)
def test_a_report_mail_from_that_is_no_address_is_refused_with_its_line(value):
    with pytest.raises(ConfigError) as caught:
        load(CONFIG % f"  mm7_report_mail_from = {value}\n", "gw.conf")
    assert str(caught.value).startswith("gw.conf, line 8: mm7_report_mail_from")
