"""The one wiring point: ``build_service(config, reactor)`` puts everything on
the reactor it is given, and stopping it leaves nothing behind there."""

from __future__ import annotations

from dataclasses import replace
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from mm7tx import __version__
from mm7tx.app.service import MM7Service, build_resources, build_service
from mm7tx.config import load
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.http.auth import Account
from mm7tx.http.limits import TransactionGate
from mm7tx.http.resource import build_root
from mm7tx.interfaces import IMailSender, SendResult
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.smtp.esmtp import ESMTPSender
from tests import samples

CONFIG = """
HTTP_Listener {
  Listen "tcp:8080:interface=127.0.0.1" { }
  Listen ":8081" { }
}
mm7_serv {
  mm7_server_default_email_from_address = "from@example.com"
  mm7_server_default_email_to_address = "to@example.com"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:relay.example:25"
}
VASP "v" { password = "p" delivery_report_url = "http://vasp.example/dr" }
"""


def global_state() -> tuple[Any, ...]:
    """What the global reactor holds: ports, connections and timers."""
    return (
        set(global_reactor.getReaders()),
        set(global_reactor.getWriters()),
        {id(call) for call in global_reactor.getDelayedCalls()},
    )


def test_every_listener_is_on_the_given_reactor_and_none_on_the_global() -> None:
    before = global_state()
    reactor = MemoryReactorClock()
    service = build_service(load(CONFIG, "wiring.conf"), reactor)  # type: ignore[arg-type]
    service.startService()
    listening = sorted(
        (port, interface) for port, _, _, interface in reactor.tcpServers
    )
    # The MM7 listeners, and metrics_listen's default.
    assert listening == [(8080, "127.0.0.1"), (8081, ""), (9107, "127.0.0.1")]
    assert isinstance(service.sender, ESMTPSender)
    assert service.sender.reactor is reactor
    assert service.reporter is not None and service.reporter.reactor is reactor
    assert global_state() == before
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert stopped == [None]
    assert reactor.getDelayedCalls() == []
    assert global_state() == before


def test_the_start_log_line_says_the_version_the_file_and_where_mail_goes() -> None:
    service = build_service(load(CONFIG, "wiring.conf"), MemoryReactorClock())  # type: ignore[arg-type]
    with capturedLogs() as events:
        service.startService()
    service.stopService()
    assert formatEvent(events[0]) == (
        f"mm7tx {__version__} on wiring.conf: listening on "
        "tcp:8080:interface=127.0.0.1, tcp:8081, VASP paths /vasp/, MMSC paths "
        "/mm7/ for 1 VASP accounts, mail to SMTP relay tcp:relay.example:25"
    )


def test_processors_makes_each_paths_processor_at_the_start_and_on_reload() -> None:
    """``processors`` makes the processor of every path instead of the
    configured one: with the running sender, and the delivery reporter on
    MMSC paths only; a reload asks it again for the new tree."""
    made: list[tuple[str, object, object]] = []

    def processors(config: Any, path: str, sender: Any, reporter: Any) -> object:
        made.append((path, sender, reporter))
        return f"the processor of {path} in {config.source}"

    reactor = MemoryReactorClock()
    service = build_service(
        load(CONFIG, "wiring.conf"),
        reactor,  # type: ignore[arg-type]
        processors=processors,
    )
    assert service.reporter is not None
    assert made == [
        ("/vasp/", service.sender, None),
        ("/mm7/", service.sender, service.reporter),
    ]
    children = service.root.children
    assert children[b"vasp"].processor == "the processor of /vasp/ in wiring.conf"  # type: ignore[attr-defined]
    assert children[b"mm7"].processor == "the processor of /mm7/ in wiring.conf"  # type: ignore[attr-defined]
    made.clear()
    assert service.reload(load(CONFIG, "again.conf"))
    assert made == [
        ("/vasp/", service.sender, None),
        ("/mm7/", service.sender, service.reporter),
    ]
    children = service.root.children
    assert children[b"mm7"].processor == "the processor of /mm7/ in again.conf"  # type: ignore[attr-defined]


def test_a_pending_delivery_report_is_abandoned_with_a_log_line_on_stop() -> None:
    """A report still being retried when the service stops is given the rest
    of the drain time, then cancelled with its MessageID and URL logged
    (never its credentials); no timer is left behind."""
    reactor = MemoryReactorClock()
    reporter = DeliveryReporter(reactor, attempts=5)  # type: ignore[arg-type]
    account = Account(
        "v",
        "p",
        delivery_report_url="http://192.0.2.7:8000/dr",
        delivery_report_user="user",
        delivery_report_password="secret",
    )
    outcome: list[Any] = []
    reporter.report(
        account, m.DeliveryReportReq(message_id="msg-1", mm_status="Forwarded"), "x"
    ).addBoth(outcome.append)
    # The VASP never answers: the agent's connection attempt hangs in memory.
    assert len(reactor.tcpClients) == 1
    stopped: list[object] = []
    with capturedLogs() as events:
        reporter.stop(10).addBoth(stopped.append)
        reactor.advance(9)
        assert stopped == [] and outcome == []
        reactor.advance(1)
    assert stopped == [None]
    assert len(outcome) == 1 and outcome[0] is not True
    lines = [formatEvent(e) for e in events]
    abandoned = [line for line in lines if "Abandoned" in line]
    assert abandoned == [
        "Abandoned delivery report msg-1 to http://192.0.2.7:8000/dr: "
        "still not answered when the service stopped"
    ]
    assert not any("secret" in line for line in lines)
    assert reporter.pending == {}
    assert reactor.getDelayedCalls() == []


def test_the_drain_says_it_waits_for_delivery_reports() -> None:
    """Without a store, a stop waiting for a report being retried says so
    at once, and how it ended."""
    reactor = MemoryReactorClock()
    reporter = DeliveryReporter(reactor, attempts=5)  # type: ignore[arg-type]
    account = Account("v", "p", delivery_report_url="http://192.0.2.7:8000/dr")
    reporter.report(
        account, m.DeliveryReportReq(message_id="msg-1", mm_status="Forwarded"), "x"
    )
    with capturedLogs() as events:
        reporter.stop(10)
        assert [formatEvent(e) for e in events] == [
            "Draining: 1 delivery reports still being posted (at most 10 s)"
        ]
        reactor.advance(10)
    lines = [formatEvent(e) for e in events]
    assert lines[-1] == "Stopped with 1 delivery reports not answered"


def test_a_report_answered_within_the_drain_is_not_abandoned() -> None:
    reactor = MemoryReactorClock()
    reporter = DeliveryReporter(reactor)  # type: ignore[arg-type]
    stopped: list[object] = []
    reporter.stop(10).addBoth(stopped.append)
    assert stopped == [None]  # nothing pending: at once
    assert reactor.getDelayedCalls() == []


def test_urls_in_the_log_lose_their_credentials() -> None:
    from mm7tx.gateway.reports import _without_credentials

    assert _without_credentials("http://u:p@host:80/x?y") == "http://host:80/x?y"
    assert _without_credentials("https://host/x") == "https://host/x"


@implementer(IMailSender)
class HeldSender:
    """Takes every message and answers only when the test says so."""

    description = "a held sender"

    def __init__(self) -> None:
        self.held: list[defer.Deferred[SendResult]] = []
        self.closed = False

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        d: defer.Deferred[SendResult] = defer.Deferred()
        self.held.append(d)
        return d

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)


def started_with_one_in_flight(
    drain_timeout: float = 30.0,
) -> tuple[Any, MM7Service, HeldSender, StringTransport, Any]:
    """A service on a memory reactor with one DeliverReq waiting for the relay."""
    reactor = MemoryReactorClock()
    config = replace(load(CONFIG, "drain.conf"), drain_timeout=drain_timeout)
    sender = HeldSender()
    gate = TransactionGate(config.max_transactions)
    root = build_root(build_resources(config, sender, reactor, gate))  # type: ignore[arg-type]
    service = MM7Service(config, sender, root, gate, reactor)  # type: ignore[arg-type]
    service.startService()
    channel = service.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    ctype, body = samples.http_message(
        samples.read("instantcom-mm7/deliver-req-post.txt")
    )
    channel.dataReceived(
        b"POST /vasp/ HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s" % ((ctype or "").encode(), len(body), body)
    )
    assert gate.in_flight == 1 and len(sender.held) == 1
    return reactor, service, sender, transport, channel


def test_stop_drains_a_transaction_writes_its_answer_then_closes() -> None:
    reactor, service, sender, transport, channel = started_with_one_in_flight()
    stopped: list[object] = []
    with capturedLogs() as events:
        service.stopService().addBoth(stopped.append)
        assert stopped == []
        sender.held[0].callback(SendResult(("to@example.com",)))
        # The answer is written, then the connection closed (once flushed).
        head, _, body = transport.value().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        answer = codec.decode("text/xml", body)
        assert isinstance(answer.message, m.DeliverRsp)
        assert answer.message.status.code == 1000
        assert transport.disconnecting
        assert stopped == []  # until the connection is really gone
        channel.connectionLost(Failure(ConnectionDone()))
    assert stopped == [None]
    assert sender.closed
    lines = [formatEvent(e) for e in events]
    assert "Draining 1 transactions in flight (at most 30 s)" in lines
    assert "Drained 1 transactions" in lines
    assert reactor.getDelayedCalls() == []


def test_a_drain_that_runs_out_says_how_many_were_still_in_flight() -> None:
    reactor, service, sender, transport, channel = started_with_one_in_flight(10)
    stopped: list[object] = []
    with capturedLogs() as events:
        service.stopService().addBoth(stopped.append)
        reactor.advance(9.9)
        assert stopped == []
        reactor.advance(0.1)
        # The connection is closed now (the peer sees it cut and retries).
        assert transport.disconnecting
        channel.connectionLost(Failure(ConnectionDone()))
        # The relay gives up on it later: the log says no answer went out.
        sender.held[0].errback(
            MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="the server is stopping")
        )
    assert stopped == [None]
    lines = [formatEvent(e) for e in events]
    assert "Stopped with 1 transactions still in flight" in lines
    assert "Drained 1 transactions" not in lines
    [outcome] = [line for line in lines if line.startswith("DeliverReq")]
    assert ": fault 4006 the server is stopping (" in outcome
    assert outcome.endswith("; not answered, the connection was gone")
    assert reactor.getDelayedCalls() == []


def test_stopping_the_service_abandons_reports_after_the_drain_time() -> None:
    """Through ``stopService``: a report still retrying gets the drain time,
    then is abandoned and never tried again; a report asked for after the
    stop (a transaction that outlived the drain) is never posted."""
    reactor = MemoryReactorClock()
    config = replace(load(CONFIG, "reports.conf"), drain_timeout=20)
    sender = HeldSender()
    gate = TransactionGate(config.max_transactions)
    reporter = DeliveryReporter(reactor, attempts=8, timeout=5)  # type: ignore[arg-type]
    root = build_root(build_resources(config, sender, reactor, gate, reporter))  # type: ignore[arg-type]
    service = MM7Service(config, sender, root, gate, reactor, reporter)  # type: ignore[arg-type]
    service.startService()
    account = Account("v", "p", delivery_report_url="http://192.0.2.7:8000/dr")
    reporter.report(
        account, m.DeliveryReportReq(message_id="early", mm_status="Forwarded"), "x"
    )
    stopped: list[object] = []
    with capturedLogs() as events:
        service.stopService().addBoth(stopped.append)
        late = reporter.report(
            account, m.DeliveryReportReq(message_id="late", mm_status="Forwarded"), "x"
        )
        for _ in range(199):  # step by step, as time passes
            reactor.advance(0.1)
        assert stopped == []
        attempts = len(reactor.tcpClients)
        assert attempts >= 2  # it was retried meanwhile
        reactor.advance(0.1)
        assert stopped == [None]
        for _ in range(600):
            reactor.advance(1)
    assert len(reactor.tcpClients) == attempts  # no retry after abandonment
    assert late.result is False
    lines = [formatEvent(e) for e in events]
    assert [line for line in lines if line.startswith("Abandoned")] == [
        "Abandoned delivery report late to http://192.0.2.7:8000/dr: "
        "still not answered when the service stopped",
        "Abandoned delivery report early to http://192.0.2.7:8000/dr: "
        "still not answered when the service stopped",
    ]
    assert reporter.pending == {}
    assert reactor.getDelayedCalls() == []


def test_a_connection_that_will_not_close_is_cut_after_the_grace() -> None:
    """A peer that never reads keeps its connection from closing: after the
    drain and the grace it is cut, so stopping never hangs on it and no timer
    of it is left behind."""
    reactor, service, sender, transport, channel = started_with_one_in_flight(10)
    aborted: list[bool] = []

    def abort() -> None:
        aborted.append(True)
        channel.connectionLost(Failure(ConnectionDone()))

    transport.abortConnection = abort  # type: ignore[method-assign]
    stopped: list[object] = []
    with capturedLogs() as events:
        service.stopService().addBoth(stopped.append)
        sender.held[0].callback(SendResult(("to@example.com",)))
        assert transport.disconnecting and not aborted  # closing, gently
        reactor.advance(9.9)
        assert stopped == [] and not aborted
        reactor.advance(0.1)  # the drain time is the grace here (10 s > 5 s)
    assert aborted == [True]
    assert stopped == [None]
    assert "Cutting 1 HTTP connections still not closed" in [
        formatEvent(e) for e in events
    ]
    assert service.site.channels == set()
    assert reactor.getDelayedCalls() == []


def test_mmsc_paths_without_accounts_and_accounts_without_paths_are_warned() -> None:
    def warnings(text: str) -> list[str]:
        service = build_service(load(text, "w.conf"), MemoryReactorClock())  # type: ignore[arg-type]
        with capturedLogs() as events:
            service.startService()
        service.stopService()
        lines = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
        return [line for line in lines if "open to anyone" not in line]

    assert warnings(CONFIG) == []
    no_account = CONFIG.split("VASP ")[0]
    assert warnings(no_account) == [
        "MMSC paths /mm7/ have no VASP account: every SubmitReq is refused (4001); "
        'add VASP "name" { password = "…" } (or a VASP named by its IP address), '
        "or mm7_mmsc_uri_paths = () to serve none"
    ]
    no_path = CONFIG.replace('("/mm7/")', "()")
    assert warnings(no_path) == [
        "1 VASP accounts are unused: there is no MMSC path (mm7_mmsc_uri_paths) "
        "for them to submit to"
    ]
