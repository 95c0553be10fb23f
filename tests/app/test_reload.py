"""Reloading the configuration (SIGHUP): new transactions get the new one,
those in flight finish with the one they started with, a bad file or a
listener change leaves the running one in place and says so."""

from __future__ import annotations

import gc
import signal
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent

from mm7tx.app import wiring
from mm7tx.app.service import IMM7Reactor, build_service
from mm7tx.config import Config, load
from mm7tx.gateway.processors import EmailProcessor
from mm7tx.http.auth import hash_password
from mm7tx.http.client import HTTPError, MM7Fault, TimedOut
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.store.memory import MemoryStore
from mm7tx.testing import (
    MemoryGateway,
    MemoryReactor,
    MemorySMTPRelay,
    fired,
    result_of,
)

CONFIG = """
HTTP_Listener {{ Listen "tcp:8080:interface=127.0.0.1" {{ }} }}
mm7_serv {{
  mm7_server_default_email_from_domain = "{domain}"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:relay.test:25"
  smtp_starttls = off
  {extra}
}}
{accounts}
"""


def config(
    domain: str = "old.example",
    extra: str = "",
    accounts: str = 'VASP "vasp1" { password = "secret1" }',
) -> str:
    return CONFIG.format(domain=domain, extra=extra, accounts=accounts)


SUBMIT = m.SubmitReq(
    sender_address=m.Address("12345", "ShortCode"),
    recipients=m.Recipients(to=(m.Address("+15551234567"),)),
    subject="Hello",
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
)

DELIVER = m.DeliverReq(
    sender=m.Address("+447700900123"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    subject="Entry",
    content=(m.ContentPart("text/plain", b"my photo", (("charset", "utf-8"),)),),
)


def submit(gateway: MemoryGateway, account: str, password: str) -> int:
    """The status a SubmitReq from ``account`` gets (401 for its credentials)."""
    client = gateway.client("/mm7/", (account, password))
    try:
        return gateway.result(client.submit(SUBMIT)).status.code
    except HTTPError as refused:
        return refused.code


def logged(events: Sequence[dict[str, Any]]) -> list[str]:
    """What the service logged."""
    return [formatEvent(e) for e in events if e.get("log_namespace") == "mm7tx.service"]


def test_a_reload_adds_an_account_that_then_works_and_drops_a_removed_one() -> None:
    gateway = MemoryGateway(config())
    sender, root = gateway.sender, gateway.root
    assert submit(gateway, "vasp2", "secret2") == 401
    with capturedLogs() as events:
        assert gateway.reload(
            config(
                extra="mm7_max_transactions = 7\nmm7_max_request_size = 100K",
                accounts='VASP "vasp2" { password = "secret2" }',
            )
        )
    assert logged(events) == [
        "Reloaded <MemoryGateway>: VASP paths /vasp/, MMSC paths /mm7/ for 1 VASP "
        "accounts, mail to SMTP relay tcp:relay.test:25"
    ]
    assert gateway.root is not root
    assert submit(gateway, "vasp2", "secret2") == 1000
    assert submit(gateway, "vasp1", "secret1") == 401
    # The same relay settings: the same sender, its session still open.
    assert gateway.sender is sender and len(gateway.relay.open_sessions) == 1
    # The limits apply too.
    assert gateway.service.gate.limit == 7
    assert gateway.site.requestFactory.max_size == 102400  # type: ignore[attr-defined]
    gateway.stop()


class Held(EmailProcessor):
    """An email processor that holds each DeliverReq until the test lets it go."""

    waiting: list[defer.Deferred[None]] = []

    def deliver(self, request: m.DeliverReq, transaction: Any) -> Any:
        held: defer.Deferred[None] = defer.Deferred()
        Held.waiting.append(held)
        return held.addCallback(
            lambda _: super(Held, self).deliver(request, transaction)
        )


HELD = 'mm7_processor = "tests.app.test_reload.Held"'


def test_a_transaction_in_flight_finishes_with_the_configuration_it_started_with() -> (
    None
):
    Held.waiting.clear()
    gateway = MemoryGateway(config("old.example", HELD))
    old_sender = gateway.sender
    first = gateway.client("/vasp/").deliver(DELIVER)
    gateway.flush()
    assert len(Held.waiting) == 1
    # A new relay setting: a new sender for new transactions.
    assert gateway.reload(config("new.example", HELD + "\nsmtp_helo = new.example"))
    assert gateway.sender is not old_sender
    second = gateway.client("/vasp/").deliver(DELIVER)
    gateway.flush()
    assert len(Held.waiting) == 2
    # Old and new count together against the bound on transactions.
    assert gateway.service.gate.in_flight == 2

    Held.waiting[1].callback(None)
    assert gateway.result(second).status.code == 1000
    assert [mail.sender for mail in gateway.relay.accepted] == [
        "447700900123@new.example"
    ]
    # The old sender is still open for the transaction still in flight.
    assert not fired(first)
    assert old_sender.connections == 0  # it has not needed a session yet

    with capturedLogs() as events:
        Held.waiting[0].callback(None)
        assert gateway.result(first).status.code == 1000
    # With the old configuration, through the old sender, which it then closes.
    assert [mail.sender for mail in gateway.relay.accepted][1:] == [
        "447700900123@old.example"
    ]
    assert [mail.reply for mail in gateway.relay.received] == [250, 250]
    assert old_sender.connections == 0
    assert logged(events) == [
        "Closed the previous configuration's SMTP relay tcp:relay.test:25"
    ]
    # The new sender's session is still open, the old one's closed by QUIT.
    assert len(gateway.relay.open_sessions) == 1
    assert gateway.service.gate.in_flight == 0
    gateway.stop()


def test_a_sender_kept_by_one_reload_waits_for_every_configuration_using_it() -> None:
    """A reload that keeps the relay settings keeps the sender; the next one
    that changes them closes it only once the transactions of both earlier
    configurations are done, not just those of the one it replaces."""
    Held.waiting.clear()
    gateway = MemoryGateway(config("old.example", HELD))
    first = gateway.client("/vasp/").deliver(DELIVER)
    gateway.flush()
    assert len(Held.waiting) == 1
    assert gateway.reload(config("old.example", HELD + "\nmm7_max_transactions = 50"))
    assert gateway.reload(config("new.example", HELD + "\nsmtp_helo = new.example"))
    gateway.flush()
    Held.waiting[0].callback(None)
    assert gateway.result(first).status.code == 1000
    assert [(r.sender, r.reply) for r in gateway.relay.received] == [
        ("447700900123@old.example", 250)
    ]
    assert gateway.service.gate.in_flight == 0
    gateway.stop()


def test_a_transaction_whose_client_left_keeps_the_old_sender_open() -> None:
    """The request is gone, the transaction is not: its mail still goes out
    through the old sender (the peer will send again, and the relay takes a
    duplicate rather than a half-sent message being cut)."""
    Held.waiting.clear()
    gateway = MemoryGateway(config("old.example", HELD))
    old_sender = gateway.sender
    content_type, body = codec.encode(m.Envelope("gone-1", DELIVER))
    posted = gateway.post_later("/vasp/", body, {"Content-Type": content_type})
    gateway.flush()
    assert len(Held.waiting) == 1
    posted.cancel()
    gateway.flush()
    assert gateway.service._current.requests == 0
    assert gateway.reload(config("new.example", HELD + "\nsmtp_helo = new.example"))
    gateway.flush()
    Held.waiting[0].callback(None)
    gateway.flush()
    assert [(r.sender, r.reply) for r in gateway.relay.received] == [
        ("447700900123@old.example", 250)
    ]
    assert old_sender.connections == 0 and gateway.service.gate.in_flight == 0
    gateway.stop()


def test_a_request_still_authenticating_keeps_the_old_sender_open() -> None:
    """The old sender is closed once no request routed to its configuration
    is left, not only no transaction: a login still being checked has not
    taken a place at the gate yet."""
    hashed = hash_password("secret1", salt=b"0123456789abcdef")
    gateway = MemoryGateway(
        config(accounts=f'VASP "vasp1" {{ password = "{hashed}" }}')
    )
    old_sender = gateway.sender
    # Every scrypt check busy: the login waits.
    scrypt = gateway.service.scrypt
    for _ in range(scrypt.limit):
        scrypt.acquire()
    answer = gateway.client("/mm7/", ("vasp1", "secret1")).submit(SUBMIT)
    gateway.flush()
    assert not fired(answer) and gateway.service.gate.in_flight == 0
    assert gateway.reload(
        config(
            extra="smtp_helo = new.example",
            accounts=f'VASP "vasp1" {{ password = "{hashed}" }}',
        )
    )
    gateway.flush()
    for _ in range(scrypt.limit):
        scrypt.release()
    assert gateway.result(answer).status.code == 1000
    assert [mail.sender for mail in gateway.relay.accepted] == ["12345@old.example"]
    assert old_sender.connections == 0  # closed after it
    gateway.stop()


def test_a_bad_file_changes_nothing_and_says_where() -> None:
    gateway = MemoryGateway(config())
    root, running = gateway.root, gateway.config
    bad = config(extra='nonsense = "x"', accounts='VASP "vasp2" { password = "p" }')
    with capturedLogs() as events:
        assert not gateway.reload(bad, "/etc/mm7tx/mm7tx.conf")
    assert logged(events) == [
        "Not reloading, the running configuration is kept: /etc/mm7tx/mm7tx.conf, "
        "line 10: unknown mm7_serv option 'nonsense'"
    ]
    assert gateway.root is root and gateway.config is running
    assert submit(gateway, "vasp1", "secret1") == 1000
    assert submit(gateway, "vasp2", "p") == 401
    gateway.stop()


class Broken(EmailProcessor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cannot make this processor")


def test_a_configuration_that_cannot_be_built_changes_nothing() -> None:
    gateway = MemoryGateway(config())
    root = gateway.root
    broken = config(
        "new.example",
        'mm7_processor = "tests.app.test_reload.Broken"\nsmtp_helo = new.example',
    )
    with capturedLogs() as events:
        assert not gateway.reload(broken)
    [event] = events
    assert formatEvent(event) == (
        "Not reloading <MemoryGateway>: the running configuration is kept"
    )
    assert "cannot make this processor" in str(event["log_failure"].value)
    assert gateway.root is root
    assert submit(gateway, "vasp1", "secret1") == 1000
    gateway.stop()


def test_a_listener_change_is_logged_as_needing_a_restart() -> None:
    gateway = MemoryGateway(config())
    moved = config(accounts='VASP "vasp2" { password = "secret2" }').replace(
        'Listen "tcp:8080:interface=127.0.0.1" { }',
        'Listen "tcp:9090" { always_allow = ("192.0.2.0/24") }',
    )
    with capturedLogs() as events:
        assert gateway.reload(moved)
    assert logged(events)[0] == (
        "Reloading <MemoryGateway>: Listen (tcp:8080:interface=127.0.0.1 -> "
        "tcp:9090) and always_allow/always_deny changed, which takes a restart; "
        "the running listeners are kept"
    )
    # Still where it was, open to all; the rest of the file applies.
    assert gateway.config.listen == ("tcp:8080:interface=127.0.0.1",)
    assert [key[1] for key in gateway.reactor._listeners] == [25, 8080]
    assert submit(gateway, "vasp2", "secret2") == 1000
    # The same file again: still a change from what runs, logged again.
    with capturedLogs() as events:
        assert gateway.reload(moved)
    assert "takes a restart" in logged(events)[0]
    gateway.stop()


def test_no_reload_once_stopping() -> None:
    gateway = MemoryGateway(config())
    gateway.stop()
    with capturedLogs() as events:
        assert not gateway.reload(config(accounts=""))
    assert logged(events) == ["Not reloading <MemoryGateway>: the service is stopping"]


@pytest.fixture
def sighup() -> Any:
    """SIGHUP's handler, put back after the test."""
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_sighup_reloads_only_when_asked_and_the_handler_goes_with_the_service(
    sighup: None,
) -> None:
    def mine(signum: int, frame: Any) -> None:
        pass

    signal.signal(signal.SIGHUP, mine)
    reactor = MemoryReactor()
    MemorySMTPRelay(reactor)
    co_hosted = build_service(load(config(), "a.conf"), cast(IMM7Reactor, reactor))
    co_hosted.startService()
    assert signal.getsignal(signal.SIGHUP) is mine  # not asked: not taken

    reloads: list[str] = []

    def read() -> Config:
        reloads.append("read")
        return load(config(accounts=""), "b.conf")

    other = MemoryReactor()
    MemorySMTPRelay(other)
    service = build_service(load(config(), "b.conf"), cast(IMM7Reactor, other))
    service.reload_on_sighup(read)
    service.startService()
    assert signal.getsignal(signal.SIGHUP) is not mine
    signal.raise_signal(signal.SIGHUP)
    # The handler only hands it to the reactor.
    assert reloads == [] and len(service.config.vasps) == 1
    other.advance(0)
    assert reloads == ["read"] and len(service.config.vasps) == 0

    for running, clock in ((service, other), (co_hosted, reactor)):
        stopped = running.stopService()
        clock.flush()
        assert fired(stopped)
    assert signal.getsignal(signal.SIGHUP) is mine


def test_a_stop_closes_the_senders_of_earlier_configurations_too() -> None:
    Held.waiting.clear()
    gateway = MemoryGateway(config("old.example", HELD))
    old_sender = gateway.sender
    held = gateway.client("/vasp/").deliver(DELIVER)
    gateway.flush()
    assert gateway.reload(config("new.example", HELD + "\nsmtp_helo = new.example"))
    with capturedLogs() as events:
        gateway.stop()  # the held transaction outlives the drain
    assert "Stopped with 1 transactions still in flight" in logged(events)
    for sender in (old_sender, gateway.sender):
        refused = sender.send("a@example.com", ["b@example.com"], EmailMessage())
        assert "stopping" in str(result_of(refused.addErrback(lambda f: f.value)))
    # Its client gave up waiting (its own 30 s), having had no answer.
    assert isinstance(result_of(held.addErrback(lambda f: f.value)), TimedOut)


def smtp_connections(gateway: MemoryGateway) -> float:
    """The ``mm7tx_smtp_connections`` gauge, as scraped."""
    text = gateway.get("/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mm7tx_smtp_connections":
                return float(sample.value)
    raise AssertionError("no mm7tx_smtp_connections")


def test_metrics_and_readyz_follow_the_new_relay_settings() -> None:
    gateway = MemoryGateway(config(), metrics=True)
    # A message in flight on the old sender: the relay never answers its end.
    gateway.relay.hang("end")
    answer = gateway.client("/vasp/", timeout=300).deliver(DELIVER)
    gateway.flush()
    old_sender = gateway.sender
    assert old_sender.connections == 1
    assert gateway.reload(config(extra="smtp_helo = new.example"))
    watch = gateway.service.relay_watch
    assert watch is not None and watch.sender is gateway.sender
    assert smtp_connections(gateway) == 1  # the old sender's session counts
    gateway.advance(30)  # its relay timeout: 4006, and the old sender closes
    with pytest.raises(MM7Fault) as fault:
        gateway.result(answer)
    assert fault.value.status.code == 4006
    gateway.advance(10)
    assert old_sender.connections == 0 and smtp_connections(gateway) == 0
    # /readyz now watches the new sender's relay.
    assert gateway.get("/readyz").code == 200
    gateway.relay.stop()
    gateway.advance(10)
    assert gateway.get("/readyz").code == 503
    gateway.stop()


def test_a_maildir_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    reactor = MemoryReactor()
    text = config().replace("tcp:relay.test:25", f"maildir:{tmp_path / 'Maildir'}")
    service = build_service(load(text, "a.conf"), cast(IMM7Reactor, reactor))
    service.startService()
    sender = service.sender
    (tmp_path / "file").write_text("")
    bad = text.replace(str(tmp_path / "Maildir"), str(tmp_path / "file" / "Maildir"))
    with capturedLogs() as events:
        assert not service.reload_from(lambda: load(bad, "a.conf"))
    line = bad[: bad.index("smtp_relay")].count("\n") + 1
    assert logged(events) == [
        f"Not reloading a.conf: a.conf, line {line}: cannot deliver into the "
        f"Maildir {tmp_path / 'file' / 'Maildir'}: Not a directory; the running "
        "configuration is kept"
    ]
    assert service.sender is sender
    stopped = service.stopService()
    reactor.flush()
    assert fired(stopped)


class CloseFails(MemoryStore):
    """A store in memory whose close fails."""

    def close(self) -> defer.Deferred[None]:
        return defer.fail(OSError("the store would not close"))


def test_a_store_a_failed_reload_opened_that_will_not_close_is_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reactor = MemoryReactor()
    service = build_service(load(config(), "a.conf"), cast(IMM7Reactor, reactor))
    service.startService()
    monkeypatch.setattr(
        wiring, "open_configured_store", lambda spec, reactor: CloseFails(reactor)
    )
    # Opens a new store, then fails to build its processor.
    broken = config(
        extra='state_store = "memory"\nmm7_processor = "tests.app.test_reload.Broken"'
    )
    with capturedLogs() as events:
        assert not service.reload_from(lambda: load(broken, "a.conf"))
        gc.collect()  # a failure left unhandled is logged once collected
    assert [e["log_format"] for e in events if "log_failure" in e] == [
        "Not reloading {source}: the running configuration is kept",
        "Closing the state store {store} a failed reload opened",
    ]
    assert "the store would not close" in str(events[-1]["log_failure"].value)
    stopped = service.stopService()
    reactor.flush()
    assert fired(stopped)
