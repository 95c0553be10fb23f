"""Issue 11 at the SMTP edge, through the whole gateway in memory: a silent
relay answered in time, addresses checked before a session takes the
message, an exception in a session confined to its message.  Each test runs
against a relay offering PIPELINING and one that does not."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from mm7tx.config import EMBEDDED
from mm7tx.http.client import MM7Fault
from mm7tx.mm7 import messages as m
from mm7tx.testing import MemoryGateway, fired

DELIVER = m.DeliverReq(
    sender=m.Address("+44 7700 900123"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    subject="Entry",
    content=(m.ContentPart("text/plain", b"my photo", (("charset", "utf-8"),)),),
)

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  smtp_starttls = off
}
"""


@pytest.fixture(params=["pipelining", "one-by-one"])
def gateway(request) -> MemoryGateway:
    """The gateway on default timeouts, with a relay offering PIPELINING or not."""
    return MemoryGateway(CONFIG, pipelining=request.param == "pipelining")


def answer(gateway: MemoryGateway, d: defer.Deferred[Any]) -> m.Status:
    """The MM7 status a client call ended with (a response or a fault)."""
    try:
        status: m.Status = gateway.result(d).status
    except MM7Fault as fault:
        return fault.status
    return status


# A silent relay: the peer gets its 4006 in under 30 s ------------------------------


def test_the_default_timeouts_chain_under_the_clients_30_s():
    smtp = EMBEDDED.smtp
    assert smtp.connect_timeout < smtp.total_timeout
    assert smtp.command_timeout < smtp.total_timeout
    # The whole message bounds everything, with room for the HTTP answer
    # before a client's 30 s (mm7tx's own client's default).
    assert smtp.total_timeout <= 25
    assert EMBEDDED.drain_timeout >= smtp.total_timeout


@pytest.mark.parametrize("stage", ["greeting", "mail", "rcpt", "message", "end"])
def test_a_silent_relay_gets_the_peer_its_4006_in_under_30_s(gateway, stage):
    gateway.relay.hang(stage)  # accepts, then never says a word from there on
    smtp = gateway.config.smtp
    # The mm7tx client with its default timeout, 30 s, as many peers have.
    d = gateway.client("/vasp/").deliver(DELIVER)
    gateway.advance(smtp.command_timeout - 0.1)
    assert not fired(d)  # a slow relay has the whole command timeout
    gateway.advance(smtp.total_timeout - smtp.command_timeout + 0.1)
    status = answer(gateway, d)  # not the client's own timeout: the gateway's 4006
    assert status.code == 4006
    assert status.details == "the mail relay timed out"
    assert gateway.reactor.seconds() < 30


def test_a_silent_relay_on_a_reused_session_is_4006_in_under_30_s(gateway):
    client = gateway.client("/vasp/")
    assert answer(gateway, client.deliver(DELIVER)).code == 1000
    gateway.relay.hang("mail")
    start = gateway.reactor.seconds()
    d = client.deliver(DELIVER)
    gateway.advance(29.9)
    assert answer(gateway, d).code == 4006
    assert gateway.reactor.seconds() - start < 30


# Every To, Cc and Bcc counts ------------------------------------------------------


def test_a_deliver_with_repeated_to_cc_and_bcc_mails_every_recipient(gateway):
    from tests.mm7.test_recipients import RECIPIENTS, envelope

    response = gateway.post(
        "/vasp/",
        envelope("DeliverReq", RECIPIENTS),
        {"Content-Type": "text/xml", "SOAPAction": '""'},
    )
    assert response.code == 200 and b"<StatusCode>1000<" in response.body
    [mail] = gateway.relay.accepted
    assert sorted(mail.recipients) == sorted(
        [f"{n}@to.example" for n in (111, 222, 333, 444, 555, 666, 777)]
        + ["c@to.example"]
    )
    # Bcc: in the envelope only (777@ rather than 777, which a random
    # Message-ID may hold).
    assert "777@" not in str(mail.message)


# A Number or ShortCode is digits -------------------------------------------------


@pytest.mark.parametrize("kind", ["Number", "ShortCode"])
def test_an_address_in_a_number_is_2002_and_never_reaches_the_relay(gateway, kind):
    recipients = (
        f"<Recipients><To><{kind}>&lt;root@localhost&gt;</{kind}></To></Recipients>"
    )
    from tests.mm7.test_recipients import envelope

    response = gateway.post(
        "/vasp/",
        envelope("DeliverReq", recipients),
        {"Content-Type": "text/xml", "SOAPAction": '""'},
    )
    assert b"<StatusCode>2002<" in response.body
    assert b"is not a number" in response.body
    assert gateway.relay.sessions == []


# A non-ASCII address: SMTPUTF8 where offered, 2002 otherwise ------------------------

UTF8 = m.Address("üser@example.com", "RFC2822Address")


def utf8_deliveries() -> list[m.DeliverReq]:
    return [
        m.DeliverReq(
            sender=UTF8, recipients=DELIVER.recipients, content=DELIVER.content
        ),
        m.DeliverReq(
            sender=DELIVER.sender,
            recipients=m.Recipients(to=(UTF8,)),
            content=DELIVER.content,
        ),
    ]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
@pytest.mark.parametrize("which", [0, 1], ids=["sender", "recipient"])
def test_a_non_ascii_address_is_delivered_with_smtputf8(pipelining, which):
    gateway = MemoryGateway(CONFIG, pipelining=pipelining, smtputf8=True)
    client = gateway.client("/vasp/")
    assert answer(gateway, client.deliver(utf8_deliveries()[which])).code == 1000
    [mail] = gateway.relay.accepted
    assert "üser@example.com" in [mail.sender, *mail.recipients]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
@pytest.mark.parametrize("which", [0, 1], ids=["sender", "recipient"])
def test_a_non_ascii_address_without_smtputf8_is_2002_and_delays_nothing(
    pipelining, which
):
    gateway = MemoryGateway(CONFIG, pipelining=pipelining)
    client = gateway.client("/vasp/")
    assert answer(gateway, client.deliver(DELIVER)).code == 1000  # a session, idle
    bad = client.deliver(utf8_deliveries()[which])
    legit = client.deliver(DELIVER)
    status = answer(gateway, bad)  # no time passes
    assert status.code == 2002  # for good: never 4000, never 4006
    assert "SMTPUTF8" in (status.details or "")
    assert answer(gateway, legit).code == 1000
    assert len(gateway.relay.accepted) == 2 and len(gateway.relay.sessions) == 1
