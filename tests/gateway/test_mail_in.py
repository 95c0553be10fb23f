"""Mail to MMS (mm7tx.gateway.mail_in): the ESMTP server with the
MailToMMS policy over a StringTransport on a Clock, submitting to a fake
MMSC whose answers the test gives: every reply of the status table, the
refusals, routing by numbers, the 452 split, rates, loops, AUTH, and the
250 only once the MMSC has answered."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from mm7tx.gateway.mail_in import (
    STATUS_REPLIES,
    MailToMMS,
    Upstream,
    smtp_portal_for,
)
from mm7tx.http.client import HTTPError, MM7Fault, NotMM7, TimedOut, Unreachable
from mm7tx.http.limits import TransactionGate
from mm7tx.http.settings import SubmitSettings
from mm7tx.interfaces import IMailPolicy
from mm7tx.metrics import Metrics
from mm7tx.mm7 import messages as m
from mm7tx.mm7.peers import Account
from mm7tx.smtp.server import ESMTPServerFactory
from mm7tx.smtp.settings import MailInSettings

MAIL = (
    b"From: Ann <ann@example.org>\r\n"
    b"To: 15551234567@mms.example\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"Hello, phone.\r\n"
)


class FakeMMSC:
    """An MM7 client whose answers the test gives: each ``send`` is kept
    with the Deferred to fire."""

    def __init__(self) -> None:
        self.sent: list[tuple[m.SubmitReq, defer.Deferred[m.Response]]] = []
        self.transaction_ids: list[str | None] = []

    def send(
        self, request: m.Request, transaction_id: str | None = None
    ) -> defer.Deferred[m.Response]:
        d: defer.Deferred[m.Response] = defer.Deferred()
        assert isinstance(request, m.SubmitReq)
        self.sent.append((request, d))
        self.transaction_ids.append(transaction_id)
        return d

    def answer(self, code: int = 1000, message_id: str = "mmsc-42") -> None:
        self.sent[-1][1].callback(
            m.SubmitRsp(m.Status(code, "said"), message_id=message_id)
        )

    def fail(self, error: Exception) -> None:
        self.sent[-1][1].errback(error)


def fault(code: int) -> MM7Fault:
    return MM7Fault(m.Envelope("t1", m.RSErrorRsp(m.Status(code, "no"))))


class Gateway:
    """The listener's protocol and policy on one connection from ``peer``."""

    def __init__(
        self,
        peer: str = "127.0.0.1",
        upstreams: dict[str, dict[str, Any]] | None = None,
        portal: Any = None,
        **settings: Any,
    ) -> None:
        self.clock = Clock()
        self.mmscs: dict[str, FakeMMSC] = {}
        built = []
        for name, options in (upstreams or {"up": {}}).items():
            self.mmscs[name] = FakeMMSC()
            options.setdefault("url", "http://mmsc.example/mm7")
            built.append(Upstream(SubmitSettings(name, **options), self.mmscs[name]))
        settings.setdefault("domains", ("mms.example",))
        self.metrics = Metrics()
        self.gate = TransactionGate()
        self.policy = MailToMMS(
            MailInSettings(**settings),
            built,
            self.clock,
            metrics=self.metrics,
            gate=self.gate,
            new_id=lambda: "Q1",
        )
        self.factory = ESMTPServerFactory(
            self.policy,
            self.clock,
            hostname="mx.example",
            max_size=100000,
            portal=portal,
        )
        self.peer = peer
        self.connect()

    def connect(self) -> None:
        self.server = self.factory.buildProtocol(None)
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", self.peer, 1234)
        )
        self.server.makeConnection(self.transport)
        assert self.say(b"EHLO client.example\r\n")[-1].startswith("250 ")

    @property
    def mmsc(self) -> FakeMMSC:
        return next(iter(self.mmscs.values()))

    def say(self, data: bytes) -> list[str]:
        self.server.dataReceived(data)
        text: str = self.transport.value().decode()
        self.transport.clear()
        return text.splitlines()

    def envelope(self, sender: str = "ann@example.org", *rcpts: str) -> list[str]:
        lines = f"MAIL FROM:<{sender}>\r\n".encode()
        for rcpt in rcpts or ("15551234567@mms.example",):
            lines += f"RCPT TO:<{rcpt}>\r\n".encode()
        return self.say(lines)

    def mail(
        self, body: bytes = MAIL, *rcpts: str, sender: str = "ann@example.org"
    ) -> list[str]:
        """A whole transaction to the final dot: the replies so far."""
        replies = self.envelope(sender, *rcpts)
        replies += self.say(b"DATA\r\n")
        return replies + self.say(body + b".\r\n")


def test_the_policy_provides_its_interface():
    verifyObject(IMailPolicy, Gateway().policy)


def test_the_250_comes_only_once_the_mmsc_answered_1000():
    gw = Gateway(
        upstreams={
            "up": {
                "vasp_id": "v1",
                "vas_id": "s1",
                "service_code": "sc",
                "sender_address": "12345",
            }
        }
    )
    replies = gw.mail()
    assert replies[-1].startswith("354 ")  # nothing after the dot yet
    [(request, _)] = gw.mmsc.sent
    assert request.vasp_id == "v1" and request.vas_id == "s1"
    assert request.service_code == "sc"
    assert request.sender_address == m.Address("12345", "ShortCode")
    assert request.recipients.to == (m.Address("15551234567", "Number"),)
    assert request.delivery_report is True
    assert request.subject == "hello"
    assert gw.say(b"") == []
    gw.mmsc.answer(1000, "mmsc-42")
    reply = gw.say(b"")
    assert reply == ["250 2.0.0 Ok: queued as Q1; MMSC up MessageID mmsc-42"]
    assert b'mm7tx_mail_in_total{outcome="accepted"} 1.0' in gw.metrics.exposition()


def test_sender_from_mail_sends_the_mails_sender():
    gw = Gateway(upstreams={"up": {"sender_from_mail": True, "sender_address": "1"}})
    gw.mail()
    assert gw.mmsc.sent[0][0].sender_address == m.Address(
        "ann@example.org", "RFC2822Address"
    )


@pytest.mark.parametrize("code", sorted(STATUS_REPLIES))
def test_every_mm7_status_gets_its_reply(code):
    gw = Gateway()
    gw.mail()
    if code in (1000, 1100):
        gw.mmsc.answer(code)
    else:
        gw.mmsc.fail(fault(code))
    [reply] = gw.say(b"")
    want_code, want_enhanced = STATUS_REPLIES[code]
    assert reply.startswith(f"{want_code} {want_enhanced} "), reply
    assert want_code == 250 or f"answered {code}" in reply


@pytest.mark.parametrize(
    "code, temporary",
    [
        (1000, False),
        (1100, False),
        (3000, True),
        (4000, True),
        (4001, True),
        (4005, True),
        (4006, True),
        (2004, False),
        (3001, False),
        (4004, False),
        (4007, False),
        (4008, False),
    ],
)
def test_the_table_keeps_smtps_contract(code, temporary):
    reply = STATUS_REPLIES[code][0]
    assert (400 <= reply < 500) == temporary
    assert (reply == 250) == (code in (1000, 1100))


@pytest.mark.parametrize(
    "error, expected",
    [
        (Unreachable("cannot connect"), "451 4.4.1 "),
        (TimedOut("no answer within 60 s"), "451 4.4.2 "),
        (NotMM7("html"), "451 4.3.0 "),
        (HTTPError(401, "HTTP 401: the server refused our credentials"), "451 4.7.0 "),
        (HTTPError(502, "HTTP 502"), "451 4.3.0 "),
    ],
)
def test_an_mmsc_without_an_mm7_answer_keeps_the_mail_queued(error, expected):
    gw = Gateway()
    gw.mail()
    gw.mmsc.fail(error)
    [reply] = gw.say(b"")
    assert reply.startswith(expected)
    assert b'mm7tx_mail_in_total{outcome="deferred"} 1.0' in gw.metrics.exposition()


URL = "http://mmsc.example/mm7"


@pytest.mark.parametrize(
    "error, reply, outcome",
    [
        (
            Unreachable(f"cannot connect to {URL}: refused"),
            "451 4.4.1 MMSC up: unreachable",
            "up: unreachable, MessageID -, 451",
        ),
        (
            TimedOut(f"no answer from {URL} within 60 s"),
            "451 4.4.2 MMSC up: no answer in time",
            "up: timeout, MessageID -, 451",
        ),
        (
            HTTPError(401, f"HTTP 401 from {URL}: credentials refused"),
            "451 4.7.0 MMSC up answered 4001 HTTP 401",
            "up: HTTP 401, MessageID -, 451",
        ),
        (
            HTTPError(502, f"HTTP 502 from {URL}"),
            "451 4.3.0 MMSC up: no MM7 answer (HTTP 502)",
            "up: no MM7 answer (HTTP 502), MessageID -, 451",
        ),
        (
            fault(2002),
            "550 5.1.1 MMSC up answered 2002 no",
            "up: MM7 2002, MessageID -, 550",
        ),
    ],
)
def test_the_reply_names_the_mmsc_not_its_url_and_the_log_says_the_outcome(
    error, reply, outcome
):
    gw = Gateway()
    with capturedLogs() as events:
        gw.mail()
        gw.mmsc.fail(error)
        assert gw.say(b"") == [reply]
    lines = [formatEvent(e) for e in events]
    assert any(outcome in line for line in lines), lines
    if not isinstance(error, MM7Fault):
        assert any(URL in line for line in lines)  # the URL goes to the log


def test_a_loop_is_logged_as_a_loop():
    gw = Gateway()
    with capturedLogs() as events:
        [*_, reply] = gw.mail(b"X-MM7-Path: /vasp/\r\n" + MAIL)
    assert reply.startswith("554 5.4.6 Loop")
    assert any("via -: loop, MessageID -, 554" in formatEvent(e) for e in events)


def test_our_credentials_refused_is_logged_as_an_error() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        gw = Gateway()
        gw.mail()
        gw.mmsc.fail(fault(4001))
        assert gw.say(b"")[0].startswith("451 4.7.0 ")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any(
        getattr(e.get("log_level"), "name", None) == "error"
        and "refused our credentials" in e["log_format"]
        for e in events
    )


def test_a_mail_that_cannot_fit_is_552():
    gw = Gateway(upstreams={"up": {"max_size": 1024}})
    body = MAIL + b"x" * 3000 + b"\r\n"
    assert gw.mail(body)[-1].startswith("552 5.3.4 ")
    assert gw.mmsc.sent == []


@pytest.mark.parametrize(
    "rcpt, expected",
    [
        ("15551234567@other.example", "550 5.7.1 "),
        ("ann@mms.example", "550 5.1.1 "),
        ("1555x@mms.example", "550 5.1.1 "),
        ("+15551234567@MMS.example", "250 2.1.5 "),
        ("12345@mms.example", "250 2.1.5 "),
    ],
)
def test_recipients_are_checked_at_rcpt(rcpt, expected):
    gw = Gateway()
    assert gw.envelope("ann@example.org", rcpt)[-1].startswith(expected)


def test_short_codes_and_numbers_go_as_such():
    gw = Gateway()
    gw.mail(MAIL, "12345@mms.example", "+4477009001@mms.example")
    assert gw.mmsc.sent[0][0].recipients.to == (
        m.Address("12345", "ShortCode"),
        m.Address("+4477009001", "Number"),
    )


@pytest.mark.parametrize(
    "header",
    [
        b"Auto-Submitted: auto-replied",
        b"Precedence: bulk",
        b"Precedence: list",
        b"Precedence: junk",
    ],
)
def test_automatic_mail_is_refused(header):
    gw = Gateway()
    assert gw.mail(header + b"\r\n" + MAIL)[-1].startswith("550 5.7.1 ")
    assert gw.mmsc.sent == []


def test_auto_submitted_no_is_taken():
    gw = Gateway()
    gw.mail(b"Auto-Submitted: no\r\n" + MAIL)
    assert len(gw.mmsc.sent) == 1


def test_the_null_sender_is_refused():
    gw = Gateway()
    assert gw.say(b"MAIL FROM:<>\r\n")[-1].startswith("550 5.7.1 ")


def test_a_mail_mm7tx_made_is_a_loop():
    gw = Gateway()
    assert gw.mail(b"X-MM7-Path: /vasp/\r\n" + MAIL)[-1].startswith("554 5.4.6 ")
    assert gw.mmsc.sent == []


def test_too_many_hops_is_554():
    gw = Gateway()
    hops = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 26
    assert gw.mail(hops + MAIL)[-1].startswith("554 5.4.6 ")


def test_routing_by_numbers_and_the_452_split():
    gw = Gateway(
        upstreams={"uk": {"numbers": ("+44",)}, "us": {"numbers": ("1",)}, "rest": {}}
    )
    replies = gw.envelope(
        "ann@example.org",
        "447700900123@mms.example",
        "15551234567@mms.example",
        "447700900124@mms.example",
    )
    assert replies[1].startswith("250 ")
    assert replies[2].startswith("452 4.5.3 ")
    assert replies[3].startswith("250 ")
    gw.say(b"DATA\r\n" + MAIL + b".\r\n")
    assert len(gw.mmscs["uk"].sent) == 1 and not gw.mmscs["us"].sent
    assert len(gw.mmscs["uk"].sent[0][0].recipients.to) == 2
    # A number no prefix matches goes to the MMSC without numbers.
    gw.mmscs["uk"].answer()
    gw.say(b"")
    gw.mail(MAIL, "3312345678@mms.example")
    assert len(gw.mmscs["rest"].sent) == 1


def test_the_longest_prefix_wins():
    gw = Gateway(upstreams={"a": {"numbers": ("44",)}, "b": {"numbers": ("447",)}})
    assert gw.policy.route("447700900123").name == "b"  # type: ignore[union-attr]
    assert gw.policy.route("441234").name == "a"  # type: ignore[union-attr]
    assert gw.policy.route("1555") is None
    assert gw.envelope("a@b.example", "1555@mms.example")[-1].startswith("550 5.4.4 ")


def test_recipients_beyond_submit_max_recipients_are_452():
    gw = Gateway(upstreams={"up": {"max_recipients": 2}})
    replies = gw.envelope(
        "a@b.example", "1001@mms.example", "1002@mms.example", "1003@mms.example"
    )
    assert [r[:9] for r in replies] == [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.1.5",
        "452 4.5.3",
    ]


def test_mail_from_outside_the_relay_networks_needs_auth():
    gw = Gateway(peer="192.0.2.7")
    assert gw.say(b"MAIL FROM:<a@b.example>\r\n")[-1].startswith("530 5.7.0 ")


def test_auth_as_a_vasp_account_allows_relaying_with_its_limits():
    clock = Clock()
    vasp = Account("vasp1", password="secret", max_recipients=1)
    portal = smtp_portal_for([vasp, Account("10.0.0.1")], clock)  # type: ignore[arg-type]
    gw = Gateway(peer="127.0.0.1", portal=portal, relay_networks=())
    assert gw.say(b"MAIL FROM:<a@b.example>\r\n")[-1].startswith("530 ")
    wrong = base64.b64encode(b"\0vasp1\0wrong")
    assert gw.say(b"AUTH PLAIN " + wrong + b"\r\n")[-1].startswith("535 5.7.8 ")
    right = base64.b64encode(b"\0vasp1\0secret")
    assert gw.say(b"AUTH PLAIN " + right + b"\r\n")[-1].startswith("235 ")
    replies = gw.envelope("a@b.example", "1001@mms.example", "1002@mms.example")
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "452 4.5.3"]


def test_each_sender_address_and_network_is_rate_limited():
    gw = Gateway(rate=2)
    for _ in range(2):
        assert gw.say(b"MAIL FROM:<a@b.example>\r\nRSET\r\n")[0].startswith("250 ")
    assert gw.say(b"MAIL FROM:<a@b.example>\r\n")[-1].startswith("450 4.7.1 ")
    # Another sender from the same network: the network's bucket is empty too.
    assert gw.say(b"RSET\r\nMAIL FROM:<c@d.example>\r\n")[-1].startswith("450 4.7.1 ")
    gw.clock.advance(60)
    assert gw.say(b"RSET\r\nMAIL FROM:<a@b.example>\r\n")[-1].startswith("250 ")


def test_commands_pipelined_behind_the_dot_wait_for_its_reply():
    gw = Gateway()
    gw.envelope()
    gw.say(b"DATA\r\n")
    assert gw.say(MAIL + b".\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n") == []
    gw.mmsc.answer()
    replies = gw.say(b"")
    assert [r[:3] for r in replies] == ["250", "250", "221"]
    assert "MessageID" in replies[0]


def test_a_draining_service_answers_421():
    gw = Gateway()
    gw.gate.close()
    assert gw.say(b"MAIL FROM:<a@b.example>\r\n")[-1].startswith("421 4.3.2 ")


def test_a_mail_in_flight_is_counted_in_the_gate():
    gw = Gateway()
    gw.mail()
    assert gw.gate.in_flight == 1
    gw.mmsc.answer()
    assert gw.gate.in_flight == 0


class Dedup:
    def __init__(self) -> None:
        self.given: dict[str, str] = {}

    def seen(self, key: str) -> defer.Deferred[str | None]:
        return defer.succeed(self.given.get(key))

    def taken(self, key: str, message_id: str) -> defer.Deferred[None]:
        self.given[key] = message_id
        return defer.succeed(None)


def test_the_dedup_hook_answers_a_resent_mail_with_the_first_message_id():
    gw = Gateway()
    gw.policy.dedup = Dedup()
    gw.mail()
    gw.mmsc.answer(1000, "first")
    assert "MessageID first" in gw.say(b"")[0]
    assert "MessageID first" in gw.mail()[-1]
    assert len(gw.mmsc.sent) == 1


def test_the_readme_has_the_reply_table():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for code, (reply, enhanced) in STATUS_REPLIES.items():
        assert f"| {code} " in readme
        row = next(
            line for line in readme.splitlines() if line.startswith(f"| {code} ")
        )
        assert row.endswith(f"| `{reply} {enhanced}` |"), row


def test_the_rate_buckets_are_bounded():
    from mm7tx.http.limits import RateLimiter

    clock = Clock()
    limiter = RateLimiter(clock, max_names=3)
    for n in range(10):
        assert limiter.allow(f"sender{n}", 1 / 60, burst=60)
    assert len(limiter._buckets) <= 3
    # A bucket kept stays as it was: the newest sender's is not refilled.
    for _ in range(59):
        assert limiter.allow("sender9", 1 / 60, burst=60)
    assert not limiter.allow("sender9", 1 / 60, burst=60)
