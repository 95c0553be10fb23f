"""Replies both ways through the whole service in memory: mail to the
ESMTP listener becomes a SubmitReq to the gateway's own MMSC path (as the
VASP account ``mailin``, from the short code 12345); the handset's
DeliverReq to 12345 on our VASP path is mailed through the relay to the
mail's sender as a reply; that sender's answer to it becomes a SubmitReq to
the handset with the DeliverReq's LinkedID.  Two services sharing one
store (a fleet) each finish what the other started."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default

from twisted.internet.protocol import ClientFactory
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.basic import LineReceiver

from mm7tx.logs import is_transaction
from mm7tx.mm7 import messages as m
from mm7tx.store.memory import MemoryStore
from mm7tx.testing import MemoryGateway

CONFIG = """
mm7_serv {
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "handsets.example"
  mms_domains = ("mms.example")
}
ESMTP_Listener { Listen "tcp:2525:interface=127.0.0.1" { } }
VASP "mailin" { password = "pw" }
MMSC "self" {
  submit_url = "http://mailin:pw@127.0.0.1:8080/mm7/"
  vasp_id = "mailin"
  sender_address = "12345"
}
"""


class Client(LineReceiver):
    def connectionMade(self) -> None:
        self.factory.client = self  # type: ignore[attr-defined]
        self.lines: list[str] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line.decode())


def mail(gateway: MemoryGateway, rcpt: str, headers: str) -> list[str]:
    factory = ClientFactory.forProtocol(Client)
    gateway.reactor.connectTCP("127.0.0.1", 2525, factory)
    gateway.flush()
    client: Client = factory.client  # type: ignore[attr-defined]
    client.transport.write(  # type: ignore[union-attr]
        b"EHLO client.example\r\nMAIL FROM:<ann@example.org>\r\n"
        + f"RCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        + f"From: Ann <ann@example.org>\r\n{headers}\r\nHello.\r\n.\r\n".encode()
    )
    gateway.flush()
    return client.lines


def deliver(gateway: MemoryGateway, linked_id: str) -> None:
    request = m.DeliverReq(
        sender=m.Address("+15551234567", "Number"),
        recipients=m.Recipients(to=(m.Address("12345", "ShortCode"),)),
        linked_id=linked_id,
        content=(m.ContentPart("text/plain", b"Yes, please."),),
    )
    rsp = gateway.result(gateway.client("/vasp/").send(request))
    assert isinstance(rsp, m.DeliverRsp) and rsp.status.code == 1000


def relayed(gateway: MemoryGateway) -> tuple[list[str], Message]:
    last = gateway.relay.accepted[-1]
    return last.recipients, email.message_from_bytes(last.data, policy=default)


def with_store(store: MemoryStore | None = None) -> MemoryGateway:
    gateway = MemoryGateway(CONFIG)
    gateway.service.shared.store = store or MemoryStore(gateway.clock)
    assert gateway.reload(CONFIG)  # the resources and the policy get the store
    return gateway


def test_replies_both_ways_through_the_service() -> None:
    gateway = with_store()
    lines = mail(
        gateway,
        "15551234567@mms.example",
        "Subject: hi\r\nMessage-ID: <a1@example.org>\r\n",
    )
    assert lines[-1].startswith("250 2.0.0"), lines
    to, _mms = relayed(gateway)
    assert to == ["15551234567@handsets.example"]

    with capturedLogs() as events:
        deliver(gateway, "L-5")
    to, reply = relayed(gateway)
    assert to == ["ann@example.org"]
    [line] = [formatEvent(e) for e in events if is_transaction(e)]
    assert line.endswith("; reply in a conversation to a***@example.org"), line
    assert reply["In-Reply-To"] == "<a1@example.org>"
    assert reply["From"] == "15551234567@mms.example"

    lines = mail(
        gateway,
        str(reply["From"]),
        f"Subject: Re: hi\r\nIn-Reply-To: {reply['Message-ID']}\r\n",
    )
    assert lines[-1].startswith("250 2.0.0"), lines
    to, mms = relayed(gateway)
    assert to == ["15551234567@handsets.example"]
    assert mms["X-MM7-LinkedID"] == "L-5"
    assert mms["X-MM7-Sender"] == "12345 (ShortCode)"
    gateway.stop()


def test_without_a_store_the_handsets_mms_goes_to_the_defaults() -> None:
    stateless = CONFIG.replace("mm7_serv {", 'mm7_serv {\n  state_store = "none"', 1)
    gateway = MemoryGateway(stateless)
    mail(gateway, "15551234567@mms.example", "Message-ID: <a1@example.org>\r\n")
    deliver(gateway, "L-5")
    to, reply = relayed(gateway)
    assert to == ["12345@handsets.example"]
    assert reply["In-Reply-To"] is None
    gateway.stop()


def test_two_services_sharing_one_store() -> None:
    first = with_store()
    store = first.service.shared.store
    assert isinstance(store, MemoryStore)
    second = with_store(store)
    mail(first, "15551234567@mms.example", "Message-ID: <a1@example.org>\r\n")
    deliver(second, "L-6")  # the handset's answer reaches the other instance
    to, reply = relayed(second)
    assert to == ["ann@example.org"]
    assert reply["In-Reply-To"] == "<a1@example.org>"
    lines = mail(
        first, "anything@mms.example", f"In-Reply-To: {reply['Message-ID']}\r\n"
    )
    assert lines[-1].startswith("250 2.0.0"), lines
    to, mms = relayed(first)
    assert to == ["15551234567@handsets.example"]
    assert mms["X-MM7-LinkedID"] == "L-6"
    second.stop()
    first.stop()
