"""Submit end to end: a VASP submits, mail reaches the relay, and the delivery
report comes back to the VASP's endpoint.  In memory, retries on a clock the
test moves; once over real HTTP and a real ESMTP server on loopback in
tests/loopback/test_mmsc_end_to_end.py."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from twisted.logger import capturedLogs, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from mm7tx.http.client import HTTPError, MM7Client, MM7Fault
from mm7tx.http.resource import build_root
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import MemoryGateway, result_of

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 100


# In memory ------------------------------------------------------------------

VASP_URL = "http://vasp.test:9000/dr/"  # every name is 127.0.0.1 in memory

CONFIG = f"""
mm7_serv {{
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:relay.test:25"
  smtp_starttls = off
  mm7_delivery_report_attempts = 4
}}
VASP "vasp1" {{
  password = "secret1"
  delivery_report_url = "{VASP_URL}"
}}
"""

ASKING = m.SubmitReq(
    sender_address=m.Address("12345", "ShortCode"),
    recipients=m.Recipients(to=(m.Address("+15551234567"),)),
    delivery_report=True,
    subject="Statement",
    content=(m.ContentPart("text/plain", b"Your statement", (("charset", "utf-8"),)),),
)


class VASP(Resource):
    """A VASP's delivery report endpoint: answers each post with the next
    status of ``answers`` (the last one from then on), noting when (on the
    clock) each post came."""

    isLeaf = True

    def __init__(self, clock: Any, answers: tuple[int, ...] = (1000,)) -> None:
        super().__init__()
        self.clock = clock
        self.answers = answers
        self.seen: list[tuple[float, m.Envelope]] = []

    @property
    def times(self) -> list[float]:
        return [when for when, _ in self.seen]

    @property
    def reports(self) -> list[Any]:
        return [envelope.message for _, envelope in self.seen]

    def render_POST(self, request: Any) -> bytes:
        assert request.content is not None
        envelope = codec.decode(
            request.getHeader("content-type"), request.content.read()
        )
        self.seen.append((self.clock.seconds(), envelope))
        code = self.answers[min(len(self.seen), len(self.answers)) - 1]
        request.setHeader(b"content-type", b"text/xml")
        answer: m.Response
        if code == 1000:
            answer = m.DeliveryReportRsp(m.Status(1000, "Success"))
        else:
            request.setResponseCode(500)
            answer = m.VASPErrorRsp(m.Status(code, "Service unavailable"))
        return codec.encode(m.Envelope(envelope.transaction_id, answer))[1]


def vasp_at(gateway: MemoryGateway, *answers: int) -> VASP:
    """The VASP listening where the account's delivery_report_url points."""
    vasp = VASP(gateway.reactor, answers or (1000,))
    site = Site(build_root({"/dr/": vasp}), reactor=gateway.reactor)
    gateway.reactor.listenTCP(9000, site, interface="127.0.0.1")
    return vasp


def submit(gateway: MemoryGateway, request: m.SubmitReq = ASKING) -> Any:
    client = gateway.client("/mm7/", ("vasp1", "secret1"))
    return client.submit(request)


@pytest.fixture
def gateway() -> MemoryGateway:
    return MemoryGateway(CONFIG)


def test_a_submit_asking_for_a_report_gets_forwarded_with_its_message_id(gateway):
    vasp = vasp_at(gateway)
    response = gateway.result(submit(gateway))
    assert response.status.code == 1000 and response.message_id
    [mail] = gateway.relay.accepted
    assert mail.message["X-MM7-MessageID"] == response.message_id
    [report] = vasp.reports
    assert isinstance(report, m.DeliveryReportReq)
    assert report.message_id == response.message_id
    assert report.mm_status == "Forwarded"
    assert report.recipient == m.Address("+15551234567", "Number")
    assert report.sender == m.Address("12345", "ShortCode")
    assert vasp.times == [0.0]  # no time passed: posted once the relay said 250
    assert gateway.service.reporter is not None
    assert gateway.service.reporter.pending == {}


def test_a_report_per_recipient_and_none_unasked(gateway):
    vasp = vasp_at(gateway)
    two = dataclasses.replace(
        ASKING,
        recipients=m.Recipients(
            to=(m.Address("+15551234567"),),
            bcc=(m.Address("audit@example.com", "RFC2822Address"),),
        ),
    )
    response = gateway.result(submit(gateway, two))
    assert sorted(str(r.recipient.value) for r in vasp.reports) == [
        "+15551234567",
        "audit@example.com",
    ]
    assert {r.message_id for r in vasp.reports} == {response.message_id}
    gateway.result(submit(gateway, dataclasses.replace(ASKING, delivery_report=None)))
    gateway.advance(60)
    assert len(vasp.reports) == 2


def test_a_relay_refusing_for_good_reports_nothing(gateway):
    # The fault carries no MessageID: a report on one would be an orphan
    # (one per retry of the VASP).
    vasp = vasp_at(gateway)
    gateway.relay.refuse("rcpt", 550)
    with pytest.raises(MM7Fault) as caught:
        gateway.result(submit(gateway))
    assert caught.value.status.code == 2002
    gateway.advance(60)
    assert vasp.reports == []


def test_a_partial_success_reports_forwarded_and_rejected(gateway):
    vasp = vasp_at(gateway)
    two = dataclasses.replace(
        ASKING,
        recipients=m.Recipients(
            to=(m.Address("+15551234567"),),
            cc=(m.Address("gone@example.com", "RFC2822Address"),),
        ),
    )
    gateway.relay.refuse("rcpt", 550, recipient="gone@example.com")
    response = gateway.result(submit(gateway, two))
    assert response.status.code == 1100
    assert sorted((r.recipient.value, r.mm_status) for r in vasp.reports) == [
        ("+15551234567", "Forwarded"),
        ("gone@example.com", "Rejected"),
    ]
    assert {r.message_id for r in vasp.reports} == {response.message_id}


def test_a_relay_refusing_for_now_reports_nothing(gateway):
    vasp = vasp_at(gateway)
    gateway.relay.refuse("mail", 451)
    with pytest.raises(MM7Fault) as caught:
        gateway.result(submit(gateway))
    assert caught.value.status.code == 4006  # the VASP will submit again
    gateway.advance(60)
    assert vasp.reports == []


def test_delivery_reports_are_retried_with_backoff(gateway):
    vasp = vasp_at(gateway, 4006, 4006, 1000)
    gateway.result(submit(gateway))
    reporter = gateway.service.reporter
    assert reporter is not None
    [posting] = list(reporter.pending)
    assert vasp.times == [0.0]
    gateway.advance(0.999)
    assert vasp.times == [0.0]
    gateway.advance(0.001)
    assert vasp.times == [0.0, 1.0]  # first_delay 1 s
    gateway.advance(1.999)
    assert vasp.times == [0.0, 1.0]
    gateway.advance(0.001)
    assert vasp.times == [0.0, 1.0, 3.0]  # then 2 s
    assert result_of(posting) is True
    assert reporter.pending == {}
    gateway.advance(600)
    assert vasp.times == [0.0, 1.0, 3.0]  # answered 1000: no more
    first, *again = vasp.reports
    assert all(report == first for report in again)


def test_an_unreachable_vasp_is_tried_every_attempt_then_given_up(gateway):
    # Nothing listens at the account's URL.  Each refusal comes out of
    # Twisted's HostnameEndpoint a moment after the attempt; the next
    # attempt is 1, 2, 4 s after it.
    clock = gateway.reactor
    attempts: list[float] = []
    connect = clock.connectTCP

    def noting(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if port == 9000:
            attempts.append(clock.seconds())
        return connect(host, port, *args, **kwargs)

    clock.connectTCP = noting  # type: ignore[method-assign]
    events: list[tuple[float, dict[str, Any]]] = []

    def observe(event: dict[str, Any]) -> None:
        events.append((clock.seconds(), event))

    globalLogPublisher.addObserver(observe)
    try:
        gateway.result(submit(gateway))
        reporter = gateway.service.reporter
        assert reporter is not None
        [posting] = list(reporter.pending)
        gateway.advance(60)
        assert result_of(posting) is False
    finally:
        globalLogPublisher.removeObserver(observe)
    retries = [(t, e) for t, e in events if "retrying in" in e.get("log_format", "")]
    assert [e["delay"] for _, e in retries] == [1, 2, 4]  # doubling from 1 s
    assert len(attempts) == 4  # mm7_delivery_report_attempts
    assert attempts[0] == 0
    waits = [
        next_try - failed
        for next_try, (failed, _) in zip(attempts[1:], retries, strict=True)
    ]
    assert waits == pytest.approx([1, 2, 4])
    [(when, gave_up)] = [(t, e) for t, e in events if "Gave up" in e["log_format"]]
    assert when < attempts[-1] + 1
    assert "after 4 attempts: cannot connect to " in formatEvent(gave_up)
    assert reporter.pending == {}
    assert gateway.reactor.connections == 0


def test_refused_credentials_mail_nothing(gateway):
    vasp = vasp_at(gateway)
    client = gateway.client("/mm7/", ("vasp1", "nope"))
    with pytest.raises(HTTPError) as caught:
        gateway.result(client.submit(ASKING))
    assert caught.value.code == 401
    assert gateway.relay.received == []
    assert vasp.reports == []


def test_connections_to_the_relay_and_the_vasp_log_no_factory_start_or_stop(gateway):
    """Every SMTP connection and every report's HTTP connection started and
    stopped a factory, each logged as "Starting factory <… at 0x…>"."""
    vasp = vasp_at(gateway)
    with capturedLogs() as events:
        assert gateway.result(submit(gateway)).status.code == 1000
        gateway.stop()  # closes the SMTP connection
    assert len(gateway.relay.accepted) == 1 and len(vasp.reports) == 1
    assert gateway.reactor.connections == 0
    lines = [formatEvent(e) for e in events]
    assert not [line for line in lines if "factory" in line.lower()], lines


class RecordingVASP(VASP):
    """A VASP that notes the URI and Authorization of each post."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.requests: list[tuple[bytes, bytes | None]] = []

    def render_POST(self, request: Any) -> bytes:
        self.requests.append((request.uri, request.getHeader(b"authorization")))
        return super().render_POST(request)


def test_credentials_in_the_report_url_are_sent_as_basic_and_never_logged():
    gateway = MemoryGateway(
        CONFIG.replace(VASP_URL, "http://mm%3A7:pa%40ss@vasp.test:9000/dr/")
    )
    vasp = RecordingVASP(gateway.reactor)
    site = Site(build_root({"/dr/": vasp}), reactor=gateway.reactor)
    gateway.reactor.listenTCP(9000, site, interface="127.0.0.1")
    with capturedLogs() as events:
        response = gateway.result(submit(gateway))
    [report] = vasp.reports
    assert report.message_id == response.message_id
    [(uri, authorization)] = vasp.requests
    assert uri == b"/dr/"
    assert authorization == b"Basic " + base64.b64encode(b"mm:7:pa@ss")
    lines = [formatEvent(e) for e in events]
    assert any(response.message_id in line for line in lines)
    assert not any("pa" + "@ss" in line or "pa%40ss" in line for line in lines)


def test_an_unexpected_failure_to_post_a_report_is_logged(gateway, monkeypatch):
    # A programmatic account may carry credentials in its URL too: the
    # log shows the URL without them.
    account = dataclasses.replace(
        gateway.service.config.vasps[0],
        delivery_report_url="http://mmsc:s3cr3t@vasp.test:9000/dr/",
    )

    def broken(self: MM7Client, request: m.DeliveryReportReq) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(MM7Client, "delivery_report", broken)
    reporter = gateway.service.reporter
    assert reporter is not None
    with capturedLogs() as events:
        posted = reporter.report(
            account, m.DeliveryReportReq(message_id="M-9", mm_status="Forwarded"), ""
        )
    assert result_of(posted) is False
    [failed] = [e for e in events if e.get("log_failure") is not None]
    assert formatEvent(failed) == (
        "Delivery report M-9 to http://vasp.test:9000/dr/ failed: a bug"
    )
    assert not any("s3cr3t" in formatEvent(e) for e in events)
    assert reporter.pending == {}


# The report's MM7Version fits its namespace --------------------------------

REL5 = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-5-MM7-1-3"


def test_a_rel5_submission_gets_a_rel5_report_in_its_own_version(gateway):
    vasp = vasp_at(gateway)
    client = gateway.client(
        "/mm7/", ("vasp1", "secret1"), namespace=REL5, mm7_version="5.6.0"
    )
    response = gateway.result(client.submit(ASKING))
    assert response.mm7_version == "5.6.0"
    [(_, envelope)] = vasp.seen
    assert envelope.namespace == REL5
    assert envelope.mm7_version == envelope.message.mm7_version == "5.6.0"


def test_a_rel5_submission_without_a_version_gets_a_rel5_version(gateway):
    # mm7_server_version (6.8.0) answers it, but a REL-5 report says 5.3.0.
    vasp = vasp_at(gateway)
    ctype, body = codec.encode(m.Envelope("t-nov", ASKING, REL5))
    body = body.replace(b"<MM7Version>6.8.0</MM7Version>", b"")
    answer = gateway.post(
        "/mm7/vasp1=secret1", body, {"Content-Type": ctype, "SOAPAction": '""'}
    )
    reply = codec.decode(answer.headers["content-type"], answer.body)
    assert (reply.namespace, reply.transaction_id) == (REL5, "t-nov")
    assert reply.mm7_version == "6.8.0"
    [(_, envelope)] = vasp.seen
    assert envelope.namespace == REL5
    assert envelope.mm7_version == "5.3.0"
