"""The way back through the whole service in memory: mail to the ESMTP
listener becomes a SubmitReq to the gateway's own MMSC path (as the VASP
account ``mailin``), whose delivery report (Forwarded, posted to
``mailin``'s ``delivery_report_url``: our own VASP path) comes back as a
DSN to the mail's sender through the relay, from the null sender."""

from __future__ import annotations

import email
from email.policy import default

import pytest
from flufl.bounce import scan_message
from twisted.internet.protocol import ClientFactory
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.basic import LineReceiver

from mm7tx.logs import is_transaction
from mm7tx.store.memory import MemoryStore
from mm7tx.testing import MemoryGateway
from mm7tx.testing.reactor import result_of

CONFIG = """
mm7_serv {
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
  mms_domains = ("mms.example")
}
ESMTP_Listener { Listen "tcp:2525:interface=127.0.0.1" { } }
VASP "mailin" {
  password = "pw"
  delivery_report_url = "http://127.0.0.1:8080/vasp/"
}
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


def send(gateway: MemoryGateway, notify: str) -> list[str]:
    factory = ClientFactory.forProtocol(Client)
    gateway.reactor.connectTCP("127.0.0.1", 2525, factory)
    gateway.flush()
    client: Client = factory.client  # type: ignore[attr-defined]
    client.transport.write(  # type: ignore[union-attr]
        b"EHLO client.example\r\n"
        b"MAIL FROM:<ann@example.org> ENVID=E1\r\n"
        + f"RCPT TO:<15551234567@mms.example>{notify}\r\n".encode()
        + b"DATA\r\n"
        b"From: ann@example.org\r\nSubject: hi\r\nMessage-ID: <m1@example.org>\r\n"
        b"\r\nHello, phone.\r\n.\r\n"
    )
    gateway.flush()
    return client.lines


def gateway_with_a_store() -> MemoryGateway:
    gateway = MemoryGateway(CONFIG)
    gateway.service.shared.store = MemoryStore(gateway.clock)
    assert gateway.reload(CONFIG)  # the resources and the policy get the store
    return gateway


def test_the_mmscs_report_comes_back_as_a_dsn_to_the_mail_sender():
    gateway = gateway_with_a_store()
    with capturedLogs() as events:
        lines = send(gateway, " NOTIFY=SUCCESS")
        assert lines[-1].startswith("250 2.0.0 Ok: queued as "), lines
        gateway.advance(5)  # the delivery report is posted
    [line] = [
        formatEvent(e)
        for e in events
        if is_transaction(e) and e["operation"] == "DeliveryReportReq"
    ]
    assert "; DSN to a***@example.org" in line, line
    mms, dsn_mail = gateway.relay.accepted
    assert mms.recipients == ["15551234567@mms.example"]
    assert dsn_mail.sender == "" and dsn_mail.recipients == ["ann@example.org"]
    dsn = email.message_from_bytes(dsn_mail.data, policy=default)
    assert dsn.get_param("report-type") == "delivery-status"
    assert b"Action: relayed" in dsn_mail.data
    assert b"Original-Envelope-Id: E1" in dsn_mail.data
    assert b"Hello, phone." not in dsn_mail.data
    store = gateway.service.shared.store
    gateway.stop()
    assert store is not None
    result_of(store.close())


@pytest.mark.parametrize(
    ("helo", "name"), [(None, "localhost"), ("mx.example.net", "mx.example.net")]
)
def test_the_dsn_names_us_as_smtp_helo_does(helo, name):
    config = CONFIG
    if helo is not None:
        config = CONFIG.replace("mm7_serv {", f'mm7_serv {{\n  smtp_helo = "{helo}"')
    gateway = MemoryGateway(config)
    gateway.service.shared.store = MemoryStore(gateway.clock)
    assert gateway.reload(config)
    lines = send(gateway, " NOTIFY=SUCCESS")
    assert lines[0].startswith(f"220 {name} ")
    gateway.advance(5)
    _, dsn_mail = gateway.relay.accepted
    assert f"Reporting-MTA: dns; {name}".encode() in dsn_mail.data
    assert f"This is the MMS gateway at {name}.".encode() in dsn_mail.data
    store = gateway.service.shared.store
    gateway.stop()
    assert store is not None
    result_of(store.close())


def test_without_notify_a_forwarded_report_mails_nothing():
    gateway = gateway_with_a_store()
    send(gateway, "")
    gateway.advance(5)
    (mms,) = gateway.relay.accepted
    assert mms.recipients == ["15551234567@mms.example"]
    assert scan_message(email.message_from_bytes(mms.data)) == set()
    store = gateway.service.shared.store
    gateway.stop()
    assert store is not None
    result_of(store.close())


def test_without_a_store_the_report_is_mailed_as_before():
    stateless = CONFIG.replace("mm7_serv {", 'mm7_serv {\n  state_store = "none"', 1)
    gateway = MemoryGateway(stateless)
    send(gateway, " NOTIFY=SUCCESS")
    gateway.advance(5)
    _mms, report = gateway.relay.accepted
    assert report.recipients != ["ann@example.org"]
    gateway.stop()
