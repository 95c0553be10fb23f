"""Exactly once across a peer's retries (mm7tx.http.once): the same request
posted again gets the answer already given and mails nothing, on every
path, with the memory store and the SQLite one (worked on inline), and
through two gateways sharing one store (two instances of a fleet).  A
store that fails is served around, counted, noted by /readyz and logged
once."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from mm7tx.interfaces import (
    ICancelProcessor,
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IExactlyOnceStore,
    IReadReplyProcessor,
    IReplaceProcessor,
    ISubmitProcessor,
)
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.status import StatusCode
from mm7tx.offload import inline
from mm7tx.store.memory import MemoryStore
from mm7tx.store.sqlite import SQLiteStore
from mm7tx.testing import HTTPResponse, MemoryGateway, fired

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:relay.test:25"
  smtp_starttls = off
  mm7_dedup_window = 3600
}
VASP "vasp1" { password = "secret1" }
"""
AUTH = {"Authorization": "Basic " + base64.b64encode(b"vasp1:secret1").decode()}

DELIVER = m.DeliverReq(
    sender=m.Address("+44 7700 900123"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    subject="Entry",
    content=(m.ContentPart("text/plain", b"my photo", (("charset", "utf-8"),)),),
)
SUBMIT = m.SubmitReq(
    sender_address=m.Address("12345", "ShortCode"),
    recipients=m.Recipients(to=(m.Address("+15551234567"),)),
    subject="Hello",
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
)
REPORT = m.DeliveryReportReq(
    message_id="msg-1",
    recipient=m.Address("+15551234567"),
    sender=m.Address("12345", "ShortCode"),
    date="2024-01-01T00:00:00Z",
    mm_status="Retrieved",
)
READ_REPLY = m.ReadReplyReq(
    message_id="msg-1",
    recipient=m.Address("+15551234567"),
    sender=m.Address("12345", "ShortCode"),
    timestamp="2024-01-01T00:00:00Z",
    mm_status="Read",
)
CANCEL = m.CancelReq(vasp_id="v", message_id="msg-1")
REPLACE = m.ReplaceReq(vasp_id="v", message_id="msg-1", service_code="s")


def body_of(request: object, tid: str = "tx-1") -> tuple[dict[str, str], bytes]:
    ctype, body = codec.encode(m.Envelope(tid, request))  # type: ignore[arg-type]
    return {"Content-Type": ctype}, body


def post(
    gateway: MemoryGateway, path: str, request: object, tid: str = "tx-1"
) -> HTTPResponse:
    headers, body = body_of(request, tid)
    if path == "/mm7/":
        headers.update(AUTH)
    return gateway.post(path, body, headers)


def status(response: HTTPResponse) -> int:
    envelope = codec.decode(response.headers.get("content-type"), response.body)
    code: int = envelope.message.status.code  # type: ignore[union-attr]
    return code


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """Makes the store a gateway's clock runs: in memory, or an SQLite file
    worked on inline."""

    def make(gateway_clock: Any) -> Any:
        if request.param == "memory":
            return MemoryStore(gateway_clock)
        return SQLiteStore(str(tmp_path / "state.sqlite3"), gateway_clock, inline)

    return make


def gateway_with(make_store: Callable[..., Any], **kwargs: Any) -> MemoryGateway:
    """A gateway on a store of ``make_store``'s kind, on its own clock."""
    holder: list[Any] = []
    store: Any = _Deferred(holder)
    gateway = MemoryGateway(CONFIG, store=store, **kwargs)
    holder.append(make_store(gateway.reactor))
    return gateway


@implementer(IExactlyOnceStore)
class _Deferred:
    """A store made once the gateway's reactor exists (the store runs on
    its clock)."""

    def __init__(self, holder: list[Any]) -> None:
        self.holder = holder
        self.description = "test store"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.holder[0], name)

    def claim(self, key: str, lease: float) -> Any:
        return self.holder[0].claim(key, lease)

    def complete(self, key: str, token: str, answer: Any, ttl: float) -> Any:
        return self.holder[0].complete(key, token, answer, ttl)

    def release(self, key: str, token: str) -> Any:
        return self.holder[0].release(key, token)

    def wait(self, key: str, timeout: float) -> Any:
        return self.holder[0].wait(key, timeout)


# Every path: three posts, one mail (or one processor call), one answer ------


@pytest.mark.parametrize(
    ("path", "request_"),
    [
        ("/vasp/", DELIVER),
        ("/vasp/", REPORT),
        ("/vasp/", READ_REPLY),
        ("/mm7/", SUBMIT),
    ],
    ids=["DeliverReq", "DeliveryReportReq", "ReadReplyReq", "SubmitReq"],
)
def test_three_identical_posts_mail_once_and_answer_alike(
    make_store: Callable[..., Any], path: str, request_: object
) -> None:
    gateway = gateway_with(make_store)
    answers = [post(gateway, path, request_) for _ in range(3)]
    assert len(gateway.relay.accepted) == 1
    assert [status(a) for a in answers] == [1000] * 3
    assert answers[0].body == answers[1].body == answers[2].body
    assert {a.code for a in answers} == {200}
    if isinstance(request_, m.SubmitReq):
        envelope = codec.decode(answers[0].headers["content-type"], answers[0].body)
        assert envelope.transaction_id == "tx-1"
        assert isinstance(envelope.message, m.SubmitRsp)
        assert envelope.message.message_id


@implementer(
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    ISubmitProcessor,
    ICancelProcessor,
    IReplaceProcessor,
)
class Counting:
    """Answers every request 1000, counting the calls per operation."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _ok(self, name: str, rsp: Any) -> Any:
        self.calls.append(name)
        return rsp(m.Status.of(StatusCode.SUCCESS))

    def deliver(self, request: Any, transaction: Any) -> Any:
        return self._ok("deliver", m.DeliverRsp)

    def delivery_report(self, request: Any, transaction: Any) -> Any:
        return self._ok("delivery_report", m.DeliveryReportRsp)

    def read_reply(self, request: Any, transaction: Any) -> Any:
        return self._ok("read_reply", m.ReadReplyRsp)

    def submit(self, request: Any, transaction: Any) -> Any:
        self.calls.append("submit")
        return m.SubmitRsp(m.Status.of(StatusCode.SUCCESS), message_id=transaction.key)

    def cancel(self, request: Any, transaction: Any) -> Any:
        return self._ok("cancel", m.CancelRsp)

    def replace(self, request: Any, transaction: Any) -> Any:
        return self._ok("replace", m.ReplaceRsp)


@pytest.mark.parametrize("request_", [CANCEL, REPLACE], ids=["Cancel", "Replace"])
def test_cancel_and_replace_run_once(
    make_store: Callable[..., Any], request_: object
) -> None:
    processor = Counting()
    gateway = gateway_with(make_store, processor=processor)
    answers = [post(gateway, "/mm7/", request_) for _ in range(3)]
    assert len(processor.calls) == 1
    assert [status(a) for a in answers] == [1000] * 3
    assert answers[0].body == answers[2].body


def test_the_same_transaction_id_with_other_content_is_another_transaction(
    make_store: Callable[..., Any],
) -> None:
    gateway = gateway_with(make_store)
    other = m.DeliverReq(
        sender=DELIVER.sender, recipients=DELIVER.recipients, subject="Other"
    )
    assert status(post(gateway, "/vasp/", DELIVER)) == 1000
    assert status(post(gateway, "/vasp/", other)) == 1000
    assert len(gateway.relay.accepted) == 2


def test_a_request_without_transaction_id_is_not_deduplicated(
    make_store: Callable[..., Any],
) -> None:
    gateway = gateway_with(make_store)
    for _ in range(2):
        assert status(post(gateway, "/vasp/", DELIVER, tid="")) == 1000
    assert len(gateway.relay.accepted) == 2


def test_a_new_mime_boundary_is_the_same_transaction(
    make_store: Callable[..., Any],
) -> None:
    gateway = gateway_with(make_store)
    headers, body = body_of(DELIVER)
    boundary = headers["Content-Type"].split('boundary="')[1].split('"')[0]
    fresh = "x" + boundary[1:]
    again = {"Content-Type": headers["Content-Type"].replace(boundary, fresh)}
    gateway.post("/vasp/", body, headers)
    answer = gateway.post(
        "/vasp/", body.replace(boundary.encode(), fresh.encode()), again
    )
    assert status(answer) == 1000
    assert len(gateway.relay.accepted) == 1


def test_a_4006_is_not_remembered(make_store: Callable[..., Any]) -> None:
    gateway = gateway_with(make_store)
    gateway.relay.stop()
    assert status(post(gateway, "/vasp/", DELIVER)) == 4006
    gateway.relay.start()
    assert status(post(gateway, "/vasp/", DELIVER)) == 1000
    assert status(post(gateway, "/vasp/", DELIVER)) == 1000
    assert len(gateway.relay.accepted) == 1


def test_after_the_window_it_mails_again(make_store: Callable[..., Any]) -> None:
    gateway = gateway_with(make_store)
    post(gateway, "/vasp/", DELIVER)
    gateway.advance(3599)
    post(gateway, "/vasp/", DELIVER)
    assert len(gateway.relay.accepted) == 1
    gateway.advance(2)
    post(gateway, "/vasp/", DELIVER)
    assert len(gateway.relay.accepted) == 2


def test_a_retry_waiting_for_a_first_that_fails_runs_it_afresh(
    make_store: Callable[..., Any],
) -> None:
    gateway = gateway_with(make_store)
    headers, body = body_of(DELIVER)
    gateway.relay.hang("end")  # takes the message, says nothing yet
    first = gateway.post_later("/vasp/", body, headers)
    gateway.flush()
    retry = gateway.post_later("/vasp/", body, headers)
    gateway.flush()
    gateway.advance(1)
    assert not fired(first) and not fired(retry)
    # The session's 250 never comes: the first ends 4006 (not kept), and
    # the retry, waiting, claims it afresh and mails it itself.
    gateway.relay.clear()
    gateway.advance(30)
    gateway.flush()
    assert status(gateway.result(first)) == 4006
    gateway.advance(1)
    assert status(gateway.result(retry)) == 1000
    assert [r.reply for r in gateway.relay.received] == [None, 250]


def test_a_retry_in_flight_gets_the_first_answer(
    make_store: Callable[..., Any],
) -> None:
    gateway = gateway_with(make_store)
    headers, body = body_of(DELIVER)
    first = gateway.post_later("/vasp/", body, headers)
    retry = gateway.post_later("/vasp/", body, headers)
    gateway.flush()
    assert status(gateway.result(first)) == 1000
    gateway.advance(1)
    answer = gateway.result(retry)
    assert answer.body == gateway.result(first).body
    assert len(gateway.relay.accepted) == 1


class Unencodable(Counting):
    """Its first SubmitRsp has a MessageID the codec cannot encode."""

    def submit(self, request: Any, transaction: Any) -> Any:
        self.calls.append("submit")
        message_id: Any = object() if len(self.calls) == 1 else "msg-2"
        return m.SubmitRsp(m.Status.of(StatusCode.SUCCESS), message_id=message_id)


def test_a_response_that_cannot_be_encoded_releases_the_claim(
    make_store: Callable[..., Any],
) -> None:
    processor = Unencodable()
    gateway = gateway_with(make_store, processor=processor)
    assert status(post(gateway, "/mm7/", SUBMIT)) == 4000
    headers, body = body_of(SUBMIT)
    headers.update(AUTH)
    retry = gateway.post_later("/mm7/", body, headers)
    gateway.flush()
    gateway.advance(1)
    # Run afresh at once, not kept waiting for the first's lease.
    assert fired(retry)
    assert status(gateway.result(retry)) == 1000
    assert processor.calls == ["submit", "submit"]


# Two instances sharing one store --------------------------------------------


def test_a_retry_to_another_instance_of_the_fleet_mails_nothing() -> None:
    one = MemoryGateway(CONFIG)
    store = MemoryStore(one.reactor)
    one = MemoryGateway(CONFIG, store=store)
    two = MemoryGateway(CONFIG, store=store)
    first = post(one, "/mm7/", SUBMIT)
    again = post(two, "/mm7/", SUBMIT)
    assert len(one.relay.accepted) == 1
    assert two.relay.accepted == []
    assert first.body == again.body


# The Message-ID and MessageID come from the key ----------------------------


def test_without_a_store_a_retry_mails_again_with_the_same_message_id() -> None:
    gateway = MemoryGateway(CONFIG, store=None)
    answers = [post(gateway, "/mm7/", SUBMIT) for _ in range(2)]
    one, two = gateway.relay.accepted
    assert one.message["Message-ID"] == two.message["Message-ID"]
    assert one.message["Message-ID"].endswith("@from.example>")
    # The SubmitRsp's MessageID too: a retry after a crash gets the same.
    assert answers[0].body == answers[1].body


def test_other_transactions_get_other_message_ids() -> None:
    gateway = MemoryGateway(CONFIG, store=None)
    post(gateway, "/vasp/", DELIVER, tid="a")
    post(gateway, "/vasp/", DELIVER, tid="b")
    post(gateway, "/vasp/", DELIVER, tid="")
    post(gateway, "/vasp/", DELIVER, tid="")
    ids = {mail.message["Message-ID"] for mail in gateway.relay.accepted}
    assert len(ids) == 4


# A store that fails ---------------------------------------------------------


@implementer(IExactlyOnceStore)
class Broken:
    """A store whose every call fails (``hang``: never answers)."""

    description = "broken"

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.working: MemoryStore | None = None

    def _call(self, name: str, *args: Any) -> defer.Deferred[Any]:
        if self.working is not None:
            result: defer.Deferred[Any] = getattr(self.working, name)(*args)
            return result
        if self.hang:
            return defer.Deferred()
        return defer.fail(ConnectionRefusedError("store down"))

    def claim(self, key: str, lease: float) -> defer.Deferred[Any]:
        return self._call("claim", key, lease)

    def complete(self, key: str, token: str, answer: Any, ttl: float) -> Any:
        return self._call("complete", key, token, answer, ttl)

    def release(self, key: str, token: str) -> Any:
        return self._call("release", key, token)

    def wait(self, key: str, timeout: float) -> Any:
        return self._call("wait", key, timeout)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def store_events(events: list[dict[str, Any]]) -> list[str]:
    return [e["log_format"] for e in events if e.get("log_namespace") == "mm7tx.once"]


@pytest.mark.parametrize("hang", [False, True], ids=["failing", "silent"])
def test_a_failing_store_serves_counts_notes_and_logs_once(
    hang: bool, logged: list[dict[str, Any]]
) -> None:
    store = Broken(hang=hang)
    given: Any = store
    gateway = MemoryGateway(CONFIG, store=given, metrics=True)
    headers, body = body_of(DELIVER)
    for _ in range(3):
        d = gateway.post_later("/vasp/", body, headers)
        gateway.flush()
        gateway.advance(2)
        assert status(gateway.result(d)) == 1000
    # Served without dedup: each mailed.
    assert len(gateway.relay.accepted) == 3
    metrics = gateway.get("/metrics").body.decode()
    assert 'mm7tx_store_errors_total{operation="claim"} 3.0' in metrics
    assert "mm7tx_store_seconds_bucket" in metrics
    ready = gateway.get("/readyz")
    assert ready.code == 200
    assert b"state store does not answer" in ready.body
    assert len(store_events(logged)) == 1
    # Back: logged once more, /readyz plain ready again.
    store.working = MemoryStore(gateway.reactor)
    post(gateway, "/vasp/", DELIVER, tid="later")
    assert len(store_events(logged)) == 2
    assert gateway.get("/readyz").body == b"ready\n"


def test_dedup_hits_and_waits_are_counted() -> None:
    gateway = MemoryGateway(CONFIG, metrics=True)
    headers, body = body_of(DELIVER)
    first = gateway.post_later("/vasp/", body, headers)
    retry = gateway.post_later("/vasp/", body, headers)
    gateway.flush()
    gateway.advance(1)
    gateway.result(first), gateway.result(retry)
    post(gateway, "/vasp/", DELIVER)
    metrics = gateway.get("/metrics").body.decode()
    assert 'mm7tx_dedup_hits_total{operation="DeliverReq"} 2.0' in metrics
    assert "mm7tx_dedup_waits_total 1.0" in metrics


def test_a_retry_is_logged_as_deduplicated(logged: list[dict[str, Any]]) -> None:
    gateway = MemoryGateway(CONFIG)
    post(gateway, "/vasp/", DELIVER)
    post(gateway, "/vasp/", DELIVER)
    events = [e for e in logged if e.get("mm7tx_event") == "transaction"]
    assert [e.get("deduplicated", False) for e in events] == [False, True]
    assert events[1]["status"] == 1000


def test_a_reload_that_changes_state_store_applies_to_new_transactions() -> None:
    gateway = MemoryGateway(CONFIG.replace("}", '  state_store = "memory"\n}', 1))
    first = gateway.service.shared.store
    post(gateway, "/vasp/", DELIVER)
    post(gateway, "/vasp/", DELIVER)
    assert len(gateway.relay.accepted) == 1
    assert gateway.reload(CONFIG.replace("}", '  state_store = "none"\n}', 1))
    assert gateway.service.shared.store is None
    gateway.flush()
    assert first is not None and not first._sweep.running  # type: ignore[attr-defined]
    post(gateway, "/vasp/", DELIVER)
    post(gateway, "/vasp/", DELIVER)
    assert len(gateway.relay.accepted) == 3
