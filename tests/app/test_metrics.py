"""Metrics and health: what ``/metrics`` counts after real transactions, what
``/readyz`` says as the relay goes and comes back and as the service drains,
and a metrics listener that cannot listen costing nothing but itself.

In memory on :class:`MemoryGateway` (``metrics=True``); the two tests on real
loopback ports are in tests/loopback/test_metrics.py."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol
from twisted.logger import LogLevel, capturedLogs, formatEvent

from mm7tx.app.health import RelayWatch
from mm7tx.app.service import build_service
from mm7tx.config import load
from mm7tx.http.client import HTTPError, MM7Fault
from mm7tx.metrics import Metrics
from mm7tx.mm7 import messages as m
from mm7tx.testing import (
    MemoryAgent,
    MemoryGateway,
    MemoryReactor,
    MemorySMTPRelay,
    fired,
    result_of,
)

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_starttls = off
  smtp_command_timeout = 60
  smtp_timeout = 120
}
VASP "vasp1" {
  password = "secret1"
  delivery_report_url = "http://127.0.0.1:8080/vasp/"
}
"""

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


def status_of(gateway: MemoryGateway, d: defer.Deferred[Any]) -> int:
    try:
        answer = gateway.result(d)
    except MM7Fault as fault:
        return fault.status.code
    except HTTPError as e:  # 401: the fault is 4001
        assert e.code == 401
        return 4001
    code: int = answer.status.code
    return code


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


# /metrics -------------------------------------------------------------------------


def test_the_counters_after_a_few_transactions() -> None:
    gateway = MemoryGateway(CONFIG, metrics=True)
    vasp = gateway.client("/vasp/", timeout=300)
    assert status_of(gateway, vasp.deliver(DELIVER)) == 1000
    assert status_of(gateway, vasp.deliver(DELIVER)) == 1000
    # A submit asking for a delivery report, which mm7tx posts to the
    # account's URL: here its own VASP path.
    submit = gateway.client("/mm7/", ("vasp1", "secret1"))
    with_report = dataclasses.replace(SUBMIT, delivery_report=True)
    assert status_of(gateway, submit.submit(with_report)) == 1000
    # Credentials in the URI, wrong, and none at all: 4001, counted by reason.
    wrong = gateway.client("/mm7/vasp1=hunter2")
    assert status_of(gateway, wrong.submit(SUBMIT)) == 4001
    assert status_of(gateway, gateway.client("/mm7/").submit(SUBMIT)) == 4001
    # Not MM7 at all; and a message the relay refuses for every recipient.
    assert gateway.post("/vasp/", b"<not-xml", {"Content-Type": "text/xml"}).code == 500
    gateway.relay.refuse("rcpt", 550)
    assert status_of(gateway, vasp.deliver(DELIVER)) == 2002
    gateway.relay.clear()

    page = gateway.get("/metrics")
    assert page.code == 200
    assert page.headers["content-type"].startswith("text/plain; version=")
    text = page.body.decode()
    found = samples(text)
    total = "mm7tx_transactions_total"
    assert (
        value(found, total, path="/vasp/", operation="DeliverReq", status="1000") == 2
    )
    assert (
        value(found, total, path="/vasp/", operation="DeliverReq", status="2002") == 1
    )
    assert value(found, total, path="/mm7/", operation="SubmitReq", status="1000") == 1
    assert (
        value(found, total, path="/vasp/", operation="DeliveryReportReq", status="1000")
        == 1
    )
    assert value(found, total, path="/mm7/", operation="unknown", status="4001") == 2
    assert value(found, total, path="/vasp/", operation="unknown", status="2007") == 1
    # Eight requests, each counted once, each with its size and time.
    assert sum(v for (name, _), v in found.items() if name == total) == 8
    assert value(found, "mm7tx_request_bytes_count") == 8
    assert value(found, "mm7tx_transaction_seconds_count", operation="DeliverReq") == 3
    assert value(found, "mm7tx_in_flight") == 0
    assert value(found, "mm7tx_auth_failures_total", reason="bad_credentials") == 1
    assert value(found, "mm7tx_auth_failures_total", reason="no_credentials") == 1
    # Two delivers, the submit, the delivery report made mail; one refused.
    assert value(found, "mm7tx_smtp_messages_total", outcome="accepted") == 4
    assert value(found, "mm7tx_smtp_messages_total", outcome="refused") == 1
    assert value(found, "mm7tx_smtp_seconds_count") == 5
    assert value(found, "mm7tx_smtp_connections") == len(gateway.relay.open_sessions)
    assert value(found, "mm7tx_delivery_reports_total", outcome="accepted") == 1
    if sys.platform.startswith("linux"):  # the process collector reads /proc
        assert value(found, "process_resident_memory_bytes") > 0
    # The path as configured, never as requested: no password anywhere.
    assert "hunter2" not in text and "secret1" not in text
    assert "vasp1" not in text
    gateway.stop()


def test_relay_down_and_timeouts_are_failed_in_the_smtp_counter() -> None:
    gateway = MemoryGateway(CONFIG, metrics=True)
    gateway.relay.stop()
    vasp = gateway.client("/vasp/", timeout=300)
    assert status_of(gateway, vasp.deliver(DELIVER)) == 4006
    found = samples(gateway.get("/metrics").body.decode())
    assert value(found, "mm7tx_smtp_messages_total", outcome="failed") == 1
    assert (
        value(
            found,
            "mm7tx_transactions_total",
            path="/vasp/",
            operation="DeliverReq",
            status="4006",
        )
        == 1
    )


def test_two_services_in_one_process_count_apart() -> None:
    one = MemoryGateway(CONFIG, metrics=True)
    two = MemoryGateway(CONFIG, metrics=True)
    assert status_of(one, one.client("/vasp/").deliver(DELIVER)) == 1000
    counted = "mm7tx_smtp_messages_total"
    assert value(
        samples(one.get("/metrics").body.decode()), counted, outcome="accepted"
    )
    assert not value(
        samples(two.get("/metrics").body.decode()), counted, outcome="accepted"
    )


def test_metrics_listen_none_listens_nowhere_and_checks_nothing() -> None:
    gateway = MemoryGateway(CONFIG.replace("}", "metrics_listen = none\n}", 1))
    assert gateway.config.metrics_listen is None
    assert gateway.service.monitor is None and gateway.service.relay_watch is None
    with pytest.raises(ValueError, match="no metrics listener"):
        gateway.metrics_url  # noqa: B018
    assert (
        load(CONFIG.replace("}", "metrics_listen = NONE\n}", 1)).metrics_listen is None
    )


def test_an_unknown_path_on_the_monitor_listener_is_404() -> None:
    gateway = MemoryGateway(CONFIG, metrics=True)
    assert gateway.get("/elsewhere").code == 404


# /healthz and /readyz ---------------------------------------------------------------


def test_readyz_follows_the_relay_down_and_back() -> None:
    gateway = MemoryGateway(CONFIG, metrics=True)
    # Checked at start: EHLO, QUIT, no message.
    assert gateway.get("/readyz").code == 200
    assert gateway.get("/readyz").body == b"ready\n"
    assert gateway.get("/healthz").code == 200
    assert gateway.relay.received == []
    assert gateway.relay.open_sessions == []  # the check said QUIT
    gateway.relay.stop()
    gateway.advance(10)
    down = gateway.get("/readyz")
    assert down.code == 503
    assert down.body.startswith(b"the mail relay does not answer: ")
    assert down.body.count(b"\n") == 1
    assert gateway.get("/healthz").code == 200  # alive all the same
    gateway.relay.start()
    gateway.advance(10)
    assert gateway.get("/readyz").code == 200
    # Checked every 10 s: it stays ready for as long as the relay answers.
    gateway.advance(300)
    assert gateway.get("/readyz").code == 200
    gateway.stop()


def test_a_relay_that_never_answers_is_not_ready_after_30_s() -> None:
    gateway = MemoryGateway(CONFIG, metrics=True)
    gateway.relay.hang("greeting")
    gateway.advance(30)
    assert gateway.get("/readyz").code == 200  # answered at 0 s, 30 s ago
    gateway.advance(1)
    late = gateway.get("/readyz")
    assert late.code == 503
    assert late.body == b"the mail relay has not answered for 31 s\n"
    gateway.stop()


def test_a_message_taken_recently_spares_the_check() -> None:
    gateway = MemoryGateway(CONFIG, metrics=True)
    assert len(gateway.relay.sessions) == 1  # the check at start
    gateway.advance(5)
    assert status_of(gateway, gateway.client("/vasp/").deliver(DELIVER)) == 1000
    assert len(gateway.relay.sessions) == 2  # the message's
    gateway.advance(5)  # the 10 s tick: a message went through 5 s ago
    assert len(gateway.relay.sessions) == 2
    gateway.advance(10)  # 15 s since: checked again
    assert len(gateway.relay.sessions) == 3
    assert len(gateway.relay.received) == 1
    gateway.stop()


def test_draining_is_not_ready_and_the_listener_goes_last() -> None:
    # A drain long enough for the relay's timeout.
    gateway = MemoryGateway(
        CONFIG.replace("}", "mm7_drain_timeout = 300\n}", 1), metrics=True
    )
    gateway.relay.hang("end")  # takes the message, never says 250
    pending = gateway.client("/vasp/", timeout=300).deliver(DELIVER)
    gateway.flush()
    assert gateway.service.gate.in_flight == 1
    stopping = gateway.service.stopService()
    gateway.flush()
    draining = gateway.get("/readyz")
    assert (draining.code, draining.body) == (
        503,
        b"draining: the service is stopping\n",
    )
    assert gateway.get("/healthz").code == 200
    found = samples(gateway.get("/metrics").body.decode())
    assert value(found, "mm7tx_in_flight") == 1
    url = gateway.metrics_url
    gateway.advance(120)  # smtp_timeout: the transaction ends 4006
    assert fired(stopping)
    result_of(stopping)
    assert status_of(gateway, pending) == 4006
    assert all(port.factory is not gateway.service.monitor for port in _ports(gateway))
    with pytest.raises(Exception, match="nothing at"):
        gateway.result(MemoryAgent(gateway.reactor).request(b"GET", url.encode()))
    assert gateway.reactor.connections == 0
    assert gateway.reactor.getDelayedCalls() == []


def test_not_ready_until_every_mm7_listener_listens() -> None:
    reactor = MemoryReactor()
    relay = MemorySMTPRelay(reactor)
    config = load(
        'HTTP_Listener { Listen "tcp:8080" { } Listen "tcp:8081" { } }\n'
        + CONFIG.replace("}", f'smtp_relay = "{relay.endpoint}"\n}}', 1)
    )
    service = build_service(config, reactor)  # type: ignore[arg-type]
    assert service.problem() == "not listening on every MM7 listener"
    service.startService()
    reactor.flush()
    assert service.problem() is None
    stopping = service.stopService()
    reactor.advance(1)
    result_of(stopping)


def _ports(gateway: MemoryGateway) -> Iterator[Any]:
    return iter(gateway.reactor._listeners.values())


# A metrics listener that cannot listen -------------------------------------------------


def test_a_metrics_port_in_use_is_an_error_and_mm7_serves_on() -> None:
    reactor = MemoryReactor()
    relay = MemorySMTPRelay(reactor)
    # Another instance on the host has the metrics port.
    reactor.listenTCP(9107, protocol.Factory(), interface="127.0.0.1")
    config = load(CONFIG.replace("}", f'smtp_relay = "{relay.endpoint}"\n}}', 1))
    service = build_service(config, reactor)  # type: ignore[arg-type]
    with capturedLogs() as events:
        service.startService()
    errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 1
    assert errors[0].startswith(
        "Cannot serve metrics and health on tcp:9107:interface=127.0.0.1 "
        "(metrics_listen): "
    )
    assert errors[0].endswith("; MM7 goes on without them")
    assert service.relay_watch is not None and not service.relay_watch._loop.running
    from mm7tx.testing import post

    answer = post(
        MemoryAgent(reactor),
        "http://127.0.0.1:8080/vasp/",
        b"<not-xml",
        {"Content-Type": "text/xml"},
    )
    reactor.flush()
    assert result_of(answer).code == 500  # an MM7 fault: MM7 answers
    stopping = service.stopService()
    reactor.advance(1)
    result_of(stopping)


# The pieces alone ------------------------------------------------------------------------


def test_the_relay_watch_checks_at_start_then_every_interval() -> None:
    from twisted.internet.task import Clock

    class Sender:
        last_answer: float | None = None

        def __init__(self) -> None:
            self.checks: list[defer.Deferred[None]] = []

        def check(self) -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            self.checks.append(d)
            return d

    clock, sender = Clock(), Sender()
    watch = RelayWatch(clock, sender)
    watch.start()
    assert len(sender.checks) == 1
    assert watch.problem() == "the mail relay has not answered yet"
    clock.advance(10)  # still checking: no second check on top
    assert len(sender.checks) == 1
    sender.checks[0].errback(ConnectionRefusedError("refused"))
    assert watch.problem() == "the mail relay does not answer: refused"
    clock.advance(10)
    sender.last_answer = clock.seconds()
    sender.checks[1].callback(None)
    assert watch.problem() is None
    watch.stop()
    assert clock.getDelayedCalls() == []


def test_metrics_labels_are_what_they_are_given() -> None:
    metrics = Metrics()
    metrics.transaction("/mm7/", "SubmitReq", 4006, 0.2, 1000)
    metrics.transaction("/mm7/", "unknown", 4001, 0.001, None)
    found = samples(metrics.exposition().decode())
    assert value(found, "mm7tx_request_bytes_count") == 1
    assert (
        value(
            found,
            "mm7tx_transactions_total",
            path="/mm7/",
            operation="SubmitReq",
            status="4006",
        )
        == 1
    )
