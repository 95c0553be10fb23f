"""Mail to MMS through the whole service in memory: the ESMTP listener
started from ``ESMTP_Listener``, submitting to the gateway's own MMSC path
(``/mm7/``, as the VASP account ``mailin``), whose mail reaches the
in-memory relay; a reload's new domains; the drain's 421 4.3.2."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from twisted.internet.protocol import ClientFactory
from twisted.protocols.basic import LineReceiver

from mm7tx.config import ConfigError, Listener, check_shared, load, with_overrides
from mm7tx.testing import MemoryGateway

CONFIG = """
mm7_serv {
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
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

MAIL = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<ann@example.org>\r\n"
    b"RCPT TO:<15551234567@mms.example>\r\n"
    b"DATA\r\n"
    b"From: ann@example.org\r\nSubject: hi\r\n\r\nHello, phone.\r\n.\r\n"
)


class Client(LineReceiver):
    def connectionMade(self) -> None:
        self.factory.client = self  # type: ignore[attr-defined]
        self.lines: list[str] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line.decode())


def connect(gateway: MemoryGateway) -> Client:
    factory = ClientFactory.forProtocol(Client)
    gateway.reactor.connectTCP("127.0.0.1", 2525, factory)
    gateway.flush()
    client: Client = factory.client  # type: ignore[attr-defined]
    return client


def test_mail_becomes_a_submit_req_to_the_mmsc_and_250_with_its_message_id():
    gateway = MemoryGateway(CONFIG)
    client = connect(gateway)
    assert client.lines[0].startswith("220 ")
    client.transport.write(MAIL)  # type: ignore[union-attr]
    gateway.flush()
    final = client.lines[-1]
    assert final.startswith("250 2.0.0 Ok: queued as "), client.lines
    assert "MessageID " in final
    # The MMSC path made the SubmitReq a mail to 15551234567@mms.example.
    [mail] = gateway.relay.accepted
    assert "15551234567@mms.example" in mail.recipients
    gateway.stop()


def test_an_address_locked_out_on_http_is_locked_out_of_smtp_auth():
    gateway = MemoryGateway(CONFIG)
    client = connect(gateway)
    [server] = gateway.service.mail_factory.connections  # type: ignore[union-attr]
    throttle = gateway.service.throttle
    for _ in range(throttle.max_failures):
        throttle.failed(server.session.peer)  # as the HTTP resource counts them
    auth = b"AUTH PLAIN " + base64.b64encode(b"\0mailin\0pw") + b"\r\n"
    client.transport.write(b"EHLO client.example\r\n" + auth)  # type: ignore[union-attr]
    gateway.flush()
    assert client.lines[-1].startswith("454 4.7.0 Too many failed logins"), client.lines
    gateway.advance(throttle.lockout)
    client = connect(gateway)
    client.transport.write(b"EHLO client.example\r\n" + auth)  # type: ignore[union-attr]
    gateway.flush()
    assert client.lines[-1] == "235 2.7.0 Authentication successful", client.lines
    gateway.stop()


def test_a_reload_applies_new_domains():
    gateway = MemoryGateway(CONFIG)
    gateway.reload(
        CONFIG.replace(
            'mms_domains = ("mms.example")', 'mms_domains = ("other.example")'
        )
    )
    client = connect(gateway)
    client.transport.write(MAIL)  # type: ignore[union-attr]
    gateway.flush()
    assert any(line.startswith("550 5.7.1 ") for line in client.lines), client.lines
    gateway.stop()


def test_the_drain_ends_a_pending_mail_with_421():
    config = CONFIG.replace("127.0.0.1:8080/mm7/", "192.0.2.1:9/mm7/")
    gateway = MemoryGateway(config)
    client = connect(gateway)
    client.transport.write(MAIL)  # type: ignore[union-attr]
    gateway.flush()
    assert client.lines[-1].startswith("354 ")
    gateway.service.gate.close()
    stopping = gateway.service.stopService()
    gateway.flush()
    assert client.lines[-1].startswith("354 ")  # not before the drain's end
    gateway.advance(gateway.config.drain_timeout)
    gateway.flush()
    assert client.lines[-1].startswith("421 4.3.2 "), client.lines
    assert client.lines[-2].startswith("354 ")  # no other answer came first
    gateway.advance(60)
    assert stopping.called


def test_readyz_names_an_esmtp_listener_that_does_not_listen():
    gateway = MemoryGateway(CONFIG)
    assert gateway.service.problem() is None
    gateway.service.mail_factory.numPorts = 0  # type: ignore[union-attr]
    assert gateway.service.problem() == "not listening on every ESMTP listener"
    gateway.stop()


def test_workers_with_an_esmtp_listener_share_it_unless_they_cannot():
    config = with_overrides(load(CONFIG, "mail.conf"), workers="2")
    assert config.workers == 2 and len(config.esmtp_listeners) == 1
    # An endpoint the parent could not pass on (here a plugin's, by its
    # name: none is installed that parses) is still refused.
    unshared = replace(
        config, esmtp_listeners=(Listener("tor:25", "mail.conf, line 8"),)
    )
    with pytest.raises(ConfigError) as caught:
        check_shared(unshared)
    assert str(caught.value) == (
        "mail.conf, line 8: ESMTP_Listener Listen 'tor:25' cannot be shared by "
        "workers (workers = 2): with workers, listen on tcp, tcp6, ssl, unix, "
        "systemd (or haproxy: over one of them)"
    )
