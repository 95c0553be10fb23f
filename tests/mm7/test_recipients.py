"""Every To, Cc and Bcc element counts (issue 11 #4): the MM7 schema lets
each repeat inside ``Recipients``, and each holds one or more addresses."""

from __future__ import annotations

import pytest

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m

NS = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"

RECIPIENTS = """<Recipients>
  <To><Number>111</Number></To>
  <Cc><Number>444</Number></Cc>
  <To><Number>222</Number><RFC2822Address>c@to.example</RFC2822Address></To>
  <Bcc><ShortCode>666</ShortCode></Bcc>
  <Cc><Number>555</Number></Cc>
  <To><Number>333</Number></To>
  <Bcc><Number>777</Number></Bcc>
</Recipients>"""

EXPECTED = m.Recipients(
    to=(
        m.Address("111"),
        m.Address("222"),
        m.Address("c@to.example", "RFC2822Address"),
        m.Address("333"),
    ),
    cc=(m.Address("444"), m.Address("555")),
    bcc=(m.Address("666", "ShortCode"), m.Address("777")),
)


def envelope(kind: str, recipients: str) -> bytes:
    sender = (
        "<SenderIdentification><VASPID>v</VASPID></SenderIdentification>"
        if kind == "SubmitReq"
        else "<Sender><Number>999</Number></Sender>"
    )
    return f"""<?xml version="1.0"?>
<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">
<env:Header><mm7:TransactionID xmlns:mm7="{NS}">t1</mm7:TransactionID></env:Header>
<env:Body><{kind} xmlns="{NS}"><MM7Version>6.8.0</MM7Version>
{sender}{recipients}
</{kind}></env:Body></env:Envelope>""".encode()


@pytest.mark.parametrize("kind", ["SubmitReq", "DeliverReq"])
def test_repeated_to_cc_and_bcc_all_count(kind):
    message = codec.decode("text/xml", envelope(kind, RECIPIENTS)).message
    assert message.recipients == EXPECTED  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["SubmitReq", "DeliverReq"])
def test_repeated_recipients_blocks_all_count(kind):
    two = (
        "<Recipients><To><Number>111</Number></To><Bcc><Number>3</Number></Bcc>"
        "</Recipients><Subject>between</Subject>"
        "<Recipients><To><Number>222</Number></To><Cc><Number>4</Number></Cc>"
        "</Recipients>"
    )
    message = codec.decode("text/xml", envelope(kind, two)).message
    assert message.recipients == m.Recipients(  # type: ignore[union-attr]
        to=(m.Address("111"), m.Address("222")),
        cc=(m.Address("4"),),
        bcc=(m.Address("3"),),
    )
    assert message.subject == "between"  # type: ignore[union-attr]


@pytest.mark.parametrize("cls", [m.SubmitReq, m.DeliverReq])
def test_every_recipient_round_trips_through_the_encoder(cls):
    extra = {"vasp_id": "v"} if cls is m.SubmitReq else {"sender": m.Address("999")}
    message = cls(recipients=EXPECTED, **extra)
    sent = m.Envelope("t1", message, namespace=NS)
    decoded = codec.decode(*codec.encode(sent)).message
    assert decoded.recipients == EXPECTED  # type: ignore[attr-defined]
