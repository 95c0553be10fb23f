"""Exactly once for mail in, on a state store: a mail sent again is not
submitted twice, and a retry after a lost answer keeps its TransactionID."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from mm7tx.gateway.mail_once import StoredDedup, transaction_id_for
from mm7tx.http.client import TimedOut
from mm7tx.store.memory import MemoryStore
from mm7tx.testing import result_of
from tests.gateway.test_mail_in import MAIL, Gateway


def _stored(gw: Gateway, window: float = 3600.0) -> MemoryStore:
    store = MemoryStore(gw.clock)
    gw.policy.dedup = StoredDedup(store, window, gw.clock)
    return store


def test_a_mail_sent_again_gets_the_first_message_id_without_a_submit() -> None:
    gw = Gateway()
    _stored(gw)
    gw.mail()
    gw.mmsc.answer(1000, "first")
    assert "MessageID first" in gw.say(b"")[0]
    again = gw.mail()
    assert again[-1].startswith("250 2.0.0") and "MessageID first" in again[-1]
    assert len(gw.mmsc.sent) == 1


def test_past_the_window_the_same_mail_is_submitted_again() -> None:
    gw = Gateway()
    _stored(gw, window=600)
    gw.mail()
    gw.mmsc.answer(1000, "first")
    gw.say(b"")
    gw.clock.advance(601)
    gw.connect()  # the first connection timed out meanwhile
    gw.mail()
    assert len(gw.mmsc.sent) == 2


def test_a_retry_after_a_timeout_carries_the_same_transaction_id() -> None:
    """Our 4xx on a timeout while the MMSC took the mail: the MTA's retry is
    submitted with the first attempt's TransactionID, so an MMSC that
    remembers its answers gives the first MessageID back."""
    gw = Gateway()
    _stored(gw)
    gw.mail()
    gw.mmsc.fail(TimedOut("no answer within 60 s"))
    assert gw.say(b"")[0].startswith("451 4.4.2")
    gw.mail()
    first, second = gw.mmsc.transaction_ids
    assert first is not None and first == second
    other = Gateway()
    other.mail(b"Message-ID: <another@example.org>\r\n" + b"Subject: x\r\n\r\nhi\r\n")
    assert other.mmsc.transaction_ids[0] != first


class _Down:
    """A store that cannot be reached."""

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        return defer.fail(ConnectionError("store down"))

    def put(self, key: str, value: bytes, ttl: float) -> defer.Deferred[None]:
        return defer.fail(ConnectionError("store down"))

    def delete(self, key: str) -> defer.Deferred[None]:
        return defer.fail(ConnectionError("store down"))


def test_a_store_that_fails_lets_the_mail_through_and_says_so_once() -> None:
    gw = Gateway()
    gw.policy.dedup = StoredDedup(_Down(), 3600, gw.clock)  # type: ignore[arg-type]
    with capturedLogs() as events:
        for n in range(2):
            gw.mail()
            gw.mmsc.answer(1000, f"m{n}")
            assert gw.say(b"")[0].startswith("250 2.0.0")
    warned = [e for e in events if "state store failed" in e["log_format"]]
    assert len(warned) == 1
    assert len(gw.mmsc.sent) == 2


def test_the_stored_dedup_on_its_own() -> None:
    clock = Clock()
    dedup = StoredDedup(MemoryStore(clock), 60, clock)
    assert result_of(dedup.seen("k")) is None
    result_of(dedup.taken("k", "mid"))
    assert result_of(dedup.seen("k")) == "mid"
    assert result_of(dedup.seen("other")) is None
    clock.advance(61)
    assert result_of(dedup.seen("k")) is None
    assert transaction_id_for("k") == transaction_id_for("k") != transaction_id_for("j")


def _sent(gw: Gateway, body: bytes = MAIL, sender: str = "ann@example.org") -> str:
    """One mail to the final dot, the MMSC answering 1000 if asked: the
    last reply."""
    before = len(gw.mmsc.sent)
    lines = gw.mail(body, sender=sender)
    if len(gw.mmsc.sent) > before:
        gw.mmsc.answer(1000, f"mid-{len(gw.mmsc.sent)}")
        lines += gw.say(b"")
    return lines[-1]


def test_another_mail_with_the_same_message_id_is_submitted() -> None:
    """The same Message-ID with another body, or from another sender, is
    another mail (a careless client reusing one): never folded."""
    gw = Gateway()
    _stored(gw)
    assert "MessageID mid-1" in _sent(gw)
    other_body = MAIL.replace(b"Hello, phone.", b"A different text.")
    assert "MessageID mid-2" in _sent(gw, other_body)
    assert "MessageID mid-3" in _sent(gw, sender="bob@example.net")
    assert len(gw.mmsc.sent) == 3


def test_a_retry_with_a_received_line_more_is_the_same_mail() -> None:
    """The sending MTA's next attempt may carry a header more in front: the
    body and envelope decide, so it is still the mail sent before."""
    gw = Gateway()
    _stored(gw)
    _sent(gw)
    with capturedLogs() as events:
        again = _sent(gw, b"Received: from relay by relay; now\r\n" + MAIL)
    assert "MessageID mid-1" in again
    assert len(gw.mmsc.sent) == 1
    assert [e.get("deduplicated") for e in events if "mail_in" in e] == [True]
    scraped = gw.metrics.exposition().decode()
    assert 'mm7tx_dedup_hits_total{operation="Mail"} 1.0' in scraped
