"""Replies both ways (issue 24, items 3 and 4), in memory on a Clock: the
ESMTP listener over a StringTransport submitting to a fake MMSC, the
memory store, and the VASP path's EmailProcessor with its conversations.

A handset's DeliverReq to the short code a mail came from goes back to
that mail's sender (the latest, by LinkedID first) with In-Reply-To and
References; a mail answering a mail made from a DeliverReq becomes a
SubmitReq to that handset with the DeliverReq's LinkedID; after
``mm7_reply_window`` both go where they went before; two gateways sharing
one store (a fleet) find each other's conversations."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mm7tx.gateway.conversations import (
    Conversation,
    Conversations,
    MailedMMS,
    conversation_key,
    referenced,
)
from mm7tx.gateway.mail_in import MailToMMS, Upstream
from mm7tx.gateway.processors import EmailProcessor
from mm7tx.http.settings import SubmitSettings
from mm7tx.mail.rules import AddressRules
from mm7tx.mm7 import messages as m
from mm7tx.mm7.peers import Account
from mm7tx.smtp.server import ESMTPServerFactory
from mm7tx.smtp.settings import MailInSettings
from mm7tx.store.memory import MemoryStore
from mm7tx.testing import FakeMailSender
from mm7tx.testing.reactor import result_of
from mm7tx.transaction import Transaction

HANDSET = "+15551234567"
SHORT_CODE = "12345"
WEEK = 604800.0


def mail_from(
    author: str, message_id: str, to: str = "15551234567@mms.example", extra: str = ""
) -> bytes:
    return (
        f"From: {author}\r\nTo: {to}\r\nSubject: hello\r\n"
        f"Message-ID: <{message_id}>\r\n{extra}\r\nHello, phone.\r\n"
    ).encode()


class FakeMMSC:
    """Answers each SubmitReq at once with 1000 and MessageID ``mmsc-N``
    (N counted across every gateway that shares it)."""

    def __init__(self) -> None:
        self.sent: list[m.SubmitReq] = []

    def send(
        self, request: m.Request, transaction_id: str | None = None
    ) -> defer.Deferred[m.Response]:
        assert isinstance(request, m.SubmitReq)
        self.sent.append(request)
        return defer.succeed(
            m.SubmitRsp(m.Status(1000, "ok"), message_id=f"mmsc-{len(self.sent)}")
        )


class Gateway:
    """One instance: its listener's policy and its VASP path's processor,
    on ``store`` (shared by a fleet) and ``clock``."""

    def __init__(
        self,
        clock: Clock,
        store: MemoryStore | None,
        mmsc: FakeMMSC,
        window: float = WEEK,
    ) -> None:
        conversations = (
            Conversations(store, window, clock=clock) if store is not None else None
        )
        self.policy = MailToMMS(
            MailInSettings(domains=("mms.example",)),
            [
                Upstream(
                    SubmitSettings(
                        "up", url="http://mmsc.example/", sender_address=SHORT_CODE
                    ),
                    mmsc,
                )
            ],
            clock,
            store=store,
            conversations=conversations,
        )
        self.factory = ESMTPServerFactory(
            self.policy, clock, hostname="mx.example", max_size=100000
        )
        self.mailer = FakeMailSender()
        self.processor = EmailProcessor(
            self.mailer,
            AddressRules(from_domain="mms.example", to_address="default@corp.example"),
        )
        self.processor.conversations = conversations

    def mail(self, body: bytes, rcpt: str = "15551234567@mms.example") -> list[str]:
        """``body`` through the listener from ann@example.org to ``rcpt``:
        the listener's replies."""
        server = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        server.makeConnection(transport)
        server.dataReceived(
            b"EHLO c.example\r\nMAIL FROM:<bounces@example.org>\r\n"
            + f"RCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        )
        server.dataReceived(body + b".\r\n")
        server.dataReceived(b"QUIT\r\n")
        lines: list[str] = transport.value().decode().splitlines()
        return lines

    def deliver(
        self,
        text: str = "Yes, please.",
        handset: str = HANDSET,
        short_code: str = SHORT_CODE,
        linked_id: str | None = None,
        account: Account | None = None,
    ) -> Message:
        """A DeliverReq from ``handset`` to ``short_code`` on the VASP path:
        the mail it became, as a mail client reads it."""
        request = m.DeliverReq(
            sender=m.Address(handset, "Number"),
            recipients=m.Recipients(to=(m.Address(short_code, "ShortCode"),)),
            linked_id=linked_id,
            subject="re",
            content=(
                m.ContentPart("text/plain", text.encode(), (("charset", "utf-8"),)),
            ),
        )
        rsp = result_of(
            self.processor.deliver(request, Transaction("t", "/vasp/", account=account))
        )
        assert isinstance(rsp, m.DeliverRsp) and rsp.status.code == 1000
        sent = self.mailer.sent[-1]
        mail = email.message_from_bytes(sent.message.as_bytes(), policy=default)
        mail["X-Envelope-To"] = ", ".join(sent.recipients)
        return mail


class Fleet:
    """``n`` gateways on one clock, one store and one upstream MMSC."""

    def __init__(self, n: int = 1, window: float = WEEK, store: bool = True) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock) if store else None
        self.mmsc = FakeMMSC()
        self.gateways = [
            Gateway(self.clock, self.store, self.mmsc, window) for _ in range(n)
        ]

    def close(self) -> None:
        if self.store is not None:
            result_of(self.store.close())


@pytest.fixture
def fleet() -> Any:
    made = Fleet()
    yield made
    made.close()


@pytest.fixture
def two() -> Any:
    made = Fleet(2)
    yield made
    made.close()


def test_a_handsets_reply_goes_to_the_last_mail_sender(fleet: Fleet) -> None:
    (gw,) = fleet.gateways
    assert gw.mail(mail_from("Ann <ann@example.org>", "a1@example.org"))[-2].startswith(
        "250 2.0.0"
    )
    fleet.clock.advance(60)
    gw.mail(mail_from("Bob <bob@example.org>", "b1@example.org"))
    fleet.clock.advance(60)
    reply = gw.deliver()
    assert reply["To"] == "bob@example.org"
    assert reply["X-Envelope-To"] == "bob@example.org"
    assert reply["In-Reply-To"] == "<b1@example.org>"
    assert reply["References"] == "<b1@example.org>"
    assert reply["From"] == "15551234567@mms.example"
    assert "Yes, please." in reply.as_string()


def test_a_reply_goes_to_reply_to_before_from(fleet: Fleet) -> None:
    (gw,) = fleet.gateways
    gw.mail(
        mail_from(
            "Ann <ann@example.org>",
            "a1@example.org",
            extra="Reply-To: Team <team@example.org>\r\n",
        )
    )
    assert gw.deliver()["To"] == "team@example.org"


def test_the_linked_id_is_looked_up_first(fleet: Fleet) -> None:
    (gw,) = fleet.gateways
    gw.mail(mail_from("ann@example.org", "a1@example.org"))  # MessageID mmsc-1
    gw.mail(mail_from("bob@example.org", "b1@example.org"))  # mmsc-2, the latest
    reply = gw.deliver(linked_id="mmsc-1")
    assert reply["To"] == "ann@example.org"
    assert reply["In-Reply-To"] == "<a1@example.org>"
    # A LinkedID naming no conversation of this handset: the latest.
    assert gw.deliver(linked_id="mmsc-unknown")["To"] == "bob@example.org"


def test_another_handset_or_short_code_gets_the_defaults(fleet: Fleet) -> None:
    (gw,) = fleet.gateways
    gw.mail(mail_from("ann@example.org", "a1@example.org"))
    other = gw.deliver(handset="+15550000000")
    assert other["To"] == "default@corp.example"
    assert other["In-Reply-To"] is None
    assert gw.deliver(short_code="54321")["To"] == "default@corp.example"
    # Another handset's LinkedID does not carry a stranger's reply there.
    assert (
        gw.deliver(handset="+15550000000", linked_id="mmsc-1")["To"]
        == "default@corp.example"
    )


def test_after_the_reply_window_the_defaults_again() -> None:
    fleet = Fleet(window=3600)
    (gw,) = fleet.gateways
    gw.mail(mail_from("ann@example.org", "a1@example.org"))
    fleet.clock.advance(3599)
    assert gw.deliver()["To"] == "ann@example.org"
    fleet.clock.advance(2)
    late = gw.deliver(linked_id="mmsc-1")
    assert late["To"] == "default@corp.example"
    assert late["In-Reply-To"] is None
    fleet.close()


def test_a_mail_answering_an_mms_goes_to_its_handset_with_the_linked_id(
    fleet: Fleet,
) -> None:
    (gw,) = fleet.gateways
    mms = gw.deliver(linked_id="L-77")  # no conversation: to the defaults
    assert mms["To"] == "default@corp.example"
    answer = mail_from(
        "Carol <carol@corp.example>",
        "c1@corp.example",
        to=str(mms["From"]),
        extra=f"In-Reply-To: {mms['Message-ID']}\r\n",
    )
    lines = gw.mail(answer, rcpt=str(mms["From"]))
    assert lines[-2].startswith("250 2.0.0"), lines
    (submit,) = fleet.mmsc.sent
    assert submit.recipients.to == (m.Address(HANDSET, "Number"),)
    assert submit.linked_id == "L-77"
    assert submit.sender_address == m.Address(SHORT_CODE, "ShortCode")
    # And the handset's answer to that goes back to Carol.
    assert gw.deliver(linked_id="mmsc-1")["To"] == "carol@corp.example"


def test_the_recipient_of_a_mail_reply_comes_from_the_record(fleet: Fleet) -> None:
    (gw,) = fleet.gateways
    mms = gw.deliver(linked_id="L-1")
    # Sent to another address in mms_domains, named by References alone.
    answer = mail_from(
        "carol@corp.example",
        "c1@corp.example",
        to="mms-replies@mms.example",
        extra=f"References: <x@corp.example> {mms['Message-ID']}\r\n",
    )
    lines = gw.mail(answer, rcpt="mms-replies@mms.example")
    assert lines[-2].startswith("250 2.0.0"), lines
    (submit,) = fleet.mmsc.sent
    assert submit.recipients.to == (m.Address(HANDSET, "Number"),)
    assert submit.linked_id == "L-1"


def test_a_mail_to_a_name_answering_nothing_is_refused(fleet: Fleet) -> None:
    (gw,) = fleet.gateways
    lines = gw.mail(
        mail_from("carol@corp.example", "c1@corp.example", to="x@mms.example"),
        rcpt="x@mms.example",
    )
    assert lines[-2].startswith("550 5.1.1"), lines
    assert fleet.mmsc.sent == []


def test_without_a_store_no_conversation_and_names_refused_at_rcpt() -> None:
    fleet = Fleet(store=False)
    (gw,) = fleet.gateways
    gw.mail(mail_from("ann@example.org", "a1@example.org"))
    assert gw.deliver()["To"] == "default@corp.example"
    lines = gw.mail(
        mail_from("c@corp.example", "c1@corp.example"), rcpt="x@mms.example"
    )
    assert any(line.startswith("550 5.1.1") for line in lines), lines


def test_a_fleet_shares_its_conversations(two: Fleet) -> None:
    first, second = two.gateways
    first.mail(mail_from("ann@example.org", "a1@example.org"))
    two.clock.advance(10)
    reply = second.deliver(linked_id="L-9")
    assert reply["To"] == "ann@example.org"
    assert reply["In-Reply-To"] == "<a1@example.org>"
    # Ann's answer reaches the first instance and still finds the handset.
    answer = mail_from(
        "ann@example.org",
        "a2@example.org",
        to=str(reply["From"]),
        extra=f"In-Reply-To: {reply['Message-ID']}\r\n",
    )
    assert first.mail(answer, rcpt=str(reply["From"]))[-2].startswith("250 2.0.0")
    submit = two.mmsc.sent[-1]
    assert submit.recipients.to == (m.Address(HANDSET, "Number"),)
    assert submit.linked_id == "L-9"


class FailingStore(MemoryStore):
    def get(self, key: str) -> defer.Deferred[bytes | None]:
        return defer.fail(OSError("store down"))

    def put(self, key: str, value: bytes, ttl: float) -> defer.Deferred[None]:
        return defer.fail(OSError("store down"))


def test_a_failing_store_means_the_defaults() -> None:
    clock = Clock()
    store = FailingStore(clock)
    gw = Gateway(clock, store, FakeMMSC())
    lines = gw.mail(mail_from("ann@example.org", "a1@example.org"))
    assert lines[-2].startswith("250 2.0.0"), lines
    assert gw.deliver()["To"] == "default@corp.example"
    result_of(store.close())


def test_records_read_back_and_unreadable_ones_count_as_none() -> None:
    c = Conversation(SHORT_CODE, HANDSET, "ann@example.org", "up", "mmsc-1", "a1@x")
    assert Conversation.from_bytes(c.to_bytes()) == c
    r = MailedMMS(HANDSET, linked_id="L")
    assert MailedMMS.from_bytes(r.to_bytes()) == r
    clock = Clock()
    store = MemoryStore(clock)
    result_of(store.put(conversation_key(SHORT_CODE, HANDSET), b"[1]", 60))
    conversations = Conversations(store, clock=clock)
    request = m.DeliverReq(
        sender=m.Address(HANDSET, "Number"),
        recipients=m.Recipients(to=(m.Address(SHORT_CODE, "ShortCode"),)),
    )
    assert result_of(defer.ensureDeferred(conversations.for_deliver(request))) is None
    result_of(store.close())


def test_referenced_reads_in_reply_to_then_references_latest_first() -> None:
    headers = {"In-Reply-To": "<a@x>", "References": "<r1@x> <r2@x>\r\n <a@x>"}
    assert referenced(headers) == ["a@x", "r2@x", "r1@x"]
    assert referenced({}) == []


def test_a_name_in_the_mms_domain_goes_in_a_transaction_of_its_own(
    fleet: Fleet,
) -> None:
    (gw,) = fleet.gateways
    server = gw.factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    server.makeConnection(transport)
    server.dataReceived(
        b"EHLO c.example\r\nMAIL FROM:<c@corp.example>\r\n"
        b"RCPT TO:<15551234567@mms.example>\r\nRCPT TO:<x@mms.example>\r\n"
        b"RSET\r\nMAIL FROM:<c@corp.example>\r\n"
        b"RCPT TO:<x@mms.example>\r\nRCPT TO:<15551234567@mms.example>\r\nQUIT\r\n"
    )
    replies = [
        line[:9] for line in transport.value().decode().splitlines() if line[:1] != "2"
    ]
    assert replies == ["452 4.5.3", "452 4.5.3"]
