"""The mail side's store calls, in memory on a Clock: a store that fails
or does not answer within 2 s never bounces a handset's reply for good
(451, try later), is logged once per outage without keys, and holds
neither a mail nor a report past the bound."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from mm7tx.gateway.mail_once import StoredDedup
from mm7tx.gateway.return_path import ReturnPath
from mm7tx.gateway.store_calls import StoreTimeout, bounded
from mm7tx.mm7 import messages as m
from mm7tx.store.memory import MemoryStore
from mm7tx.testing import FakeMailSender
from mm7tx.testing.reactor import result_of
from mm7tx.transaction import Transaction
from tests.gateway.test_conversations import FakeMMSC, Gateway, mail_from


class BrokenStore(MemoryStore):
    """A memory store whose record calls fail (``down``) or never answer
    (``hung``) while told to."""

    down = False
    hung = False

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        if self.hung:
            return defer.Deferred()
        if self.down:
            return defer.fail(OSError("store down"))
        return super().get(key)

    def put(self, key: str, value: bytes, ttl: float) -> defer.Deferred[None]:
        if self.hung:
            return defer.Deferred()
        if self.down:
            return defer.fail(OSError("store down"))
        return super().put(key, value, ttl)


def _reply_to_a_name() -> bytes:
    return mail_from(
        "carol@corp.example",
        "c1@corp.example",
        to="x@mms.example",
        extra="In-Reply-To: <m1@mms.example>\r\n",
    )


def test_a_reply_to_a_name_is_deferred_while_the_store_fails() -> None:
    clock = Clock()
    store = BrokenStore(clock)
    store.down = True
    mmsc = FakeMMSC()
    gw = Gateway(clock, store, mmsc)
    lines = gw.mail(_reply_to_a_name(), rcpt="x@mms.example")
    assert lines[-2].startswith("451 4.3.0"), lines
    assert mmsc.sent == []
    result_of(store.close())


def test_a_reply_to_a_name_is_deferred_when_the_store_does_not_answer() -> None:
    clock = Clock()
    store = BrokenStore(clock)
    store.hung = True
    gw = Gateway(clock, store, FakeMMSC())
    server = gw.factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    server.makeConnection(transport)
    server.dataReceived(
        b"EHLO c.example\r\nMAIL FROM:<bounces@example.org>\r\n"
        b"RCPT TO:<x@mms.example>\r\nDATA\r\n" + _reply_to_a_name() + b".\r\n"
    )
    assert transport.value().decode().splitlines()[-1].startswith("354")
    clock.advance(2)
    assert transport.value().decode().splitlines()[-1].startswith("451 4.3.0")
    server.dataReceived(b"QUIT\r\n")
    result_of(store.close())


def _store_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "mm7tx.conversations"]


def test_a_failing_store_is_logged_once_per_outage_without_keys() -> None:
    clock = Clock()
    store = BrokenStore(clock)
    gw = Gateway(clock, store, FakeMMSC())
    store.down = True
    with capturedLogs() as events:
        gw.mail(_reply_to_a_name(), rcpt="x@mms.example")
        gw.mail(_reply_to_a_name(), rcpt="x@mms.example")
        gw.deliver()
        store.down = False
        gw.mail(mail_from("ann@example.org", "a1@example.org"))
        store.down = True
        gw.deliver()
    logged = _store_events(events)
    assert [e["log_level"].name for e in logged] == ["warn", "info", "warn"], logged
    assert "answers again" in logged[1]["log_format"]
    for event in logged:
        text = repr(event)
        for secret in ("c1@corp.example", "m1@mms.example", "5551234567", "12345"):
            assert secret not in text, event
    result_of(store.close())


def test_the_stored_dedup_counts_a_hung_store_as_none() -> None:
    clock = Clock()
    store = BrokenStore(clock)
    store.hung = True
    dedup = StoredDedup(store, 60, clock)
    with capturedLogs() as events:
        seen = dedup.seen("k")
        taken = dedup.taken("k", "mid")
        assert not seen.called and not taken.called
        clock.advance(2)
        assert result_of(seen) is None
        assert result_of(taken) is None
    warned = [e for e in events if "state store failed" in e["log_format"]]
    assert len(warned) == 1 and "within 2 s" in warned[0]["error"]
    result_of(store.close())


def test_the_return_path_counts_a_hung_store_as_no_envelope() -> None:
    clock = Clock()
    store = BrokenStore(clock)
    store.hung = True
    path = ReturnPath(store, FakeMailSender(), clock, ["up"])
    found = path.delivery_report(
        m.DeliveryReportReq(message_id="mmsc-1"), Transaction("t", "/vasp/")
    )
    assert not found.called
    clock.advance(2)
    assert result_of(found) is False
    result_of(store.close())


def test_bounded_passes_an_answer_and_times_out_a_silence() -> None:
    clock = Clock()
    answered: defer.Deferred[int] = defer.Deferred()
    d = bounded(answered, clock)
    answered.callback(7)
    assert result_of(d) == 7
    silent: defer.Deferred[int] = defer.Deferred()
    failures: list[Any] = []
    bounded(silent, clock, 0.5).addErrback(failures.append)
    clock.advance(0.4)
    assert failures == []
    clock.advance(0.1)
    assert failures and failures[0].check(StoreTimeout)


def test_the_return_path_logs_an_outage_once_without_message_ids() -> None:
    """Reports during a store outage: one warning (no traceback, no
    MessageID), then one line when the store answers again."""
    clock = Clock()
    store = BrokenStore(clock)
    store.down = True
    path = ReturnPath(store, FakeMailSender(), clock, ["up"])
    with capturedLogs() as events:
        for n in range(3):
            report = m.DeliveryReportReq(message_id=f"mmsc-{n}")
            assert (
                result_of(path.delivery_report(report, Transaction("t", "/v/")))
                is False
            )
        store.down = False
        report = m.DeliveryReportReq(message_id="mmsc-9")
        assert result_of(path.delivery_report(report, Transaction("t", "/v/"))) is False
    texts = [e["log_format"] for e in events]
    assert sum("state store failed" in t for t in texts) == 1
    assert sum(t.startswith("The state store answers again") for t in texts) == 1
    assert not any(e.get("log_failure") for e in events)
    assert not any("mmsc-" in str(e) for e in events)
    result_of(store.close())
