"""The MM7 client and the ``mm7tx`` command, in memory on a clock the test
moves (``mm7tx.testing``).  The HTTPS exchange over real TLS on loopback and
the runs of the installed ``mm7tx`` script are in tests/loopback/test_client.py."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import re
import shlex
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from twisted.internet import defer, task
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from mm7tx import __version__, cli
from mm7tx.http.auth import password_matches
from mm7tx.http.client import (
    AnswerTooLarge,
    HTTPError,
    MM7Client,
    MM7ClientError,
    MM7Fault,
    NotMM7,
    TimedOut,
    Unreachable,
)
from mm7tx.http.resource import build_root
from mm7tx.interfaces import (
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IReadReplyProcessor,
    ISubmitProcessor,
)
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import MemoryAgent, MemoryGateway, MemoryReactor, fired, result_of
from tests import samples

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 120

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_domain = "from.example"
  mm7_server_default_email_to_domain = "to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
  smtp_relay = "tcp:relay.test:25"
  smtp_starttls = off
}
VASP "vasp1" { password = "pw" }
"""


@implementer(
    ISubmitProcessor, IDeliverProcessor, IDeliveryReportProcessor, IReadReplyProcessor
)
class Recorder:
    """A processor that keeps every request and its transaction and answers
    ``status``; with a ``clock``, ``delay`` seconds later."""

    def __init__(self, clock: Any = None, delay: float = 0.0) -> None:
        self.requests: list[tuple[Any, Any]] = []
        self.status = m.Status(1000, "Success")
        self.clock = clock
        self.delay = delay
        self.in_flight = 0
        self.most_in_flight = 0

    def _answer(self, request: Any, transaction: Any, response: Any) -> Any:
        self.requests.append((request, transaction))
        if self.clock is None:
            return response
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

        def done() -> Any:
            self.in_flight -= 1
            return response

        return task.deferLater(self.clock, self.delay, done)

    def submit(self, request: m.SubmitReq, transaction: Any) -> Any:
        message_id = f"MID-{len(self.requests) + 1}"
        return self._answer(
            request, transaction, m.SubmitRsp(self.status, message_id=message_id)
        )

    def deliver(self, request: m.DeliverReq, transaction: Any) -> Any:
        return self._answer(request, transaction, m.DeliverRsp(self.status))

    def delivery_report(self, request: m.DeliveryReportReq, transaction: Any) -> Any:
        return self._answer(request, transaction, m.DeliveryReportRsp(self.status))

    def read_reply(self, request: m.ReadReplyReq, transaction: Any) -> Any:
        return self._answer(request, transaction, m.ReadReplyRsp(self.status))


class Canned(Resource):
    """Answers every POST with a fixed code, type and body (or never)."""

    isLeaf = True

    def __init__(self, code: int, ctype: bytes, body: bytes | None) -> None:
        super().__init__()
        self.code, self.ctype, self.body = code, ctype, body
        self.headers: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        self.headers.append(request.requestHeaders)
        if self.body is None:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.ctype)
        return self.body


SUBMIT = m.SubmitReq(
    vasp_id="vasp1",
    sender_address=m.Address("12345", "ShortCode"),
    recipients=m.Recipients(
        to=(
            m.Address("+15551234567"),
            m.Address("alice@example.com", "RFC2822Address"),
        ),
        bcc=(m.Address("99999999999"),),
    ),
    delivery_report=True,
    subject="Grüße",
    content=(
        *cli.content(["hello"], [], "auto"),
        m.ContentPart("image/jpeg", JPEG, (("name", "p.jpg"),), "p", "p.jpg"),
    ),
)

FAULT_4006 = codec.encode(
    m.Envelope("t", m.VASPErrorRsp(m.Status(4006, "Service unavailable", "relay down")))
)[1]


# A report's addresses on the command line.
SENDER_RECIPIENT = ["--recipient", "+15551234567", "--sender", "12345"]
REPORT = ["--message-id", "M1", *SENDER_RECIPIENT]


# The client, in memory ------------------------------------------------------


def odd_server(resource: Resource, **options: Any) -> tuple[MemoryReactor, MM7Client]:
    """A ``Site`` serving ``resource`` at ``http://mmsc.test/x/`` on a memory
    reactor, and a client for it, its timeout on that reactor's clock."""
    clock = MemoryReactor()
    site = Site(build_root({"/x/": resource}), reactor=clock)
    clock.listenTCP(80, site, interface="mmsc.test")
    client = MM7Client(
        MemoryAgent(clock), "http://mmsc.test/x/", reactor=clock, **options
    )
    return clock, client


def failure_of(clock: MemoryReactor, d: defer.Deferred[Any]) -> MM7ClientError:
    clock.flush()
    with pytest.raises(MM7ClientError) as caught:
        result_of(d)
    return caught.value


def answer_of(resource: Resource, **options: Any) -> MM7ClientError:
    clock, client = odd_server(resource, **options)
    return failure_of(clock, client.deliver(m.DeliverReq(sender=m.Address("1"))))


def test_submit_round_trip_is_parsed_back_identically():
    mmsc = Recorder()
    gateway = MemoryGateway(CONFIG, processor=mmsc)
    ns = "REL-5-MM7-1-2"
    client = gateway.client("/mm7/", ("vasp1", "pw"), namespace=ns, mm7_version="5.3.0")
    response = gateway.result(client.submit(SUBMIT))
    assert response == m.SubmitRsp(m.Status(1000, "Success"), "5.3.0", "MID-1")
    second = gateway.result(client.submit(SUBMIT))
    assert second.message_id == "MID-2"
    [(got, transaction), _] = mmsc.requests
    assert got == dataclasses.replace(SUBMIT, mm7_version="5.3.0")
    assert transaction.namespace.endswith(ns)
    assert transaction.account.name == "vasp1"


def test_deliver_and_reports_reach_the_mailbox():
    gateway = MemoryGateway(samples.EXAMPLE_7_1.replace("}", "smtp_starttls = off\n}"))
    client = gateway.client("/ringtones/")
    rsp = gateway.result(
        client.deliver(
            m.DeliverReq(
                sender=m.Address("+15551234567"),
                recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
                subject="photo",
                content=(m.ContentPart("image/jpeg", JPEG, (("name", "p.jpg"),), "p"),),
            )
        )
    )
    assert rsp.status.code == 1000
    rsp2 = gateway.result(
        client.delivery_report(
            m.DeliveryReportReq(
                message_id="M1",
                recipient=m.Address("+1555"),
                sender=m.Address("7255"),
                mm_status="Retrieved",
            )
        )
    )
    rsp3 = gateway.result(
        client.read_reply(
            m.ReadReplyReq(
                message_id="M1",
                recipient=m.Address("+1555"),
                sender=m.Address("7255"),
                mm_status="Read",
            )
        )
    )
    assert (rsp2.status.code, rsp3.status.code) == (1000, 1000)
    mail, dsn, mdn = (r.message for r in gateway.relay.accepted)
    assert mail["To"] == "7255@exampleto.com"
    [jpeg] = list(mail.iter_attachments())
    assert jpeg.get_content() == JPEG
    assert dsn.get_param("report-type") == "delivery-status"
    assert mdn.get_param("report-type") == "disposition-notification"


def test_a_fault_carries_its_status():
    error = answer_of(Canned(500, b"text/xml", FAULT_4006))
    assert isinstance(error, MM7Fault)
    assert error.status == m.Status(4006, "Service unavailable", "relay down")
    assert str(error) == "4006 Service unavailable: relay down"


def test_401_is_an_http_error_and_basic_auth_is_sent():
    resource = Canned(401, b"text/plain", b"no")
    error = answer_of(resource, credentials=("vasp1", "pä55"))
    assert isinstance(error, HTTPError) and error.code == 401
    [headers] = resource.headers
    sent = headers.getRawHeaders(b"authorization")
    assert sent == [b"Basic " + base64.b64encode("vasp1:pä55".encode())]


def test_garbage_is_not_mm7():
    error = answer_of(Canned(200, b"text/html", b"<html><body>hello</body></html>"))
    assert isinstance(error, NotMM7)
    assert "<" not in str(error)
    error = answer_of(Canned(502, b"text/plain", b"bad gateway"))
    assert isinstance(error, HTTPError) and error.code == 502


@pytest.mark.parametrize(
    "code, ctype, body, said",
    [
        (
            404,
            b"text/html",
            b"<html><body><h1>No Such Resource</h1></body></html>",
            "404 Not Found (not an MM7 path?)",
        ),
        (
            502,
            b"text/html",
            b"<!DOCTYPE html>\n<html>proxy</html>",
            "502 Bad Gateway (not an MM7 answer)",
        ),
        (
            503,
            b"text/plain",
            b"down\nfor maintenance",
            "503 Service Unavailable (not an MM7 answer)",
        ),
        (405, b"", b"", "405 Method Not Allowed (not an MM7 answer)"),
    ],
)
def test_an_http_error_that_is_not_mm7_is_one_line_without_its_body(
    code, ctype, body, said
):
    error = answer_of(Canned(code, ctype, body))
    assert isinstance(error, HTTPError) and error.code == code
    assert str(error) == f"http://mmsc.test/x/ answered {said}"


def test_a_401_says_why_when_the_fault_says_more_than_no_credentials():
    from mm7tx.mm7.status import StatusCode

    why = "too many failed logins, locked out for 275 s"
    status = m.Status.of(StatusCode.IMPROPER_IDENTIFICATION, details=why)
    ctype, body = codec.encode(m.Envelope("t1", m.RSErrorRsp(status, "6.8.0")))
    refused = Canned(401, ctype.encode(), body)
    sent = answer_of(refused, credentials=("vasp1", "x"))
    assert str(sent) == f"HTTP 401: the server refused our credentials: {why}"


def test_401_says_whether_credentials_were_sent():
    refused = Canned(401, b"text/plain", b"no")
    assert str(answer_of(refused)) == "HTTP 401: no credentials were sent"
    sent = answer_of(refused, credentials=("vasp1", "x"))
    assert str(sent) == "HTTP 401: the server refused our credentials"


def test_the_wrong_response_type_is_not_mm7():
    body = codec.encode(m.Envelope("t", m.SubmitRsp(m.Status(1000, "Success"))))[1]
    error = answer_of(Canned(200, b"text/xml", body))
    assert isinstance(error, NotMM7) and "SubmitRsp" in str(error)


def test_no_answer_times_out_after_exactly_the_timeout():
    clock, client = odd_server(Canned(200, b"text/xml", None), timeout=30)
    d = client.deliver(m.DeliverReq(sender=m.Address("1")))
    clock.advance(29.5)
    assert not fired(d)
    assert clock.connections == 1  # the request went, the answer never came
    clock.advance(0.5)
    error = failure_of(clock, d)
    assert isinstance(error, TimedOut)
    assert str(error) == "no answer from http://mmsc.test/x/ within 30 s"
    assert clock.connections == 0  # and the connection was given up


class HalfAnswer(Resource):
    """Sends the headers and the start of the body, then stalls."""

    isLeaf = True

    def render_POST(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/xml")
        request.setHeader(b"content-length", b"1000")
        request.write(b"<soap")
        return NOT_DONE_YET


def test_a_body_that_stalls_times_out_and_the_connection_is_closed():
    clock, client = odd_server(HalfAnswer(), timeout=30)
    d = client.deliver(m.DeliverReq(sender=m.Address("1")))
    clock.advance(29.5)
    assert not fired(d)
    clock.advance(0.5)
    assert isinstance(failure_of(clock, d), TimedOut)
    assert clock.connections == 0  # not left open until the server gives up


# Bounded answers ---------------------------------------------------------------

KiB = 1024
MiB = 1024 * KiB
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"


@implementer(IPullProducer)
class Hostile(Protocol):
    """An HTTP server that answers a request with ``head``, then ``piece``
    once per turn of the in-memory pump, ``times`` times, and never ends
    its answer.  ``sent`` counts the bytes it wrote: the pump has it write
    a piece before it moves the last one, so it runs one or two pieces
    ahead of what the client has read."""

    transport: Any

    def __init__(self, head: bytes, piece: bytes, times: int) -> None:
        self.head, self.piece, self.times = head, piece, times
        self.sent = 0
        self.closed = False
        self.started = False

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            return
        self.started = True
        self.transport.write(self.head)
        self.sent += len(self.head)
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.times == 0 or self.closed:
            self.transport.unregisterProducer()
            return
        self.times -= 1
        self.transport.write(self.piece)
        self.sent += len(self.piece)

    def stopProducing(self) -> None:
        self.times = 0

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True


class HostileFactory(Factory):
    def __init__(self, head: bytes, piece: bytes, times: int) -> None:
        self.head, self.piece, self.times = head, piece, times
        self.servers: list[Hostile] = []

    def buildProtocol(self, addr: Any) -> Hostile:
        server = Hostile(self.head, self.piece, self.times)
        self.servers.append(server)
        return server


def hostile_exchange(
    head: bytes, piece: bytes, times: int, **options: Any
) -> tuple[MemoryReactor, Hostile, defer.Deferred[Any], list[int]]:
    """A ``deliver`` from an ``MM7Client`` made as the CLI and the delivery
    reports make theirs (its own pool, on the reactor) to a
    :class:`Hostile` server at ``http://mmsc.test/x/``, the URL carrying
    credentials; the bytes the server had sent when the result came."""
    clock = MemoryReactor()
    factory = HostileFactory(head, piece, times)
    clock.listenTCP(80, factory, interface="127.0.0.1")  # every name, in memory
    client = MM7Client(clock, "http://vasp1:s3cr3t@mmsc.test/x/", **options)
    d = client.deliver(m.DeliverReq(sender=m.Address("1")))
    sent_at: list[int] = []

    def note(result: Any) -> Any:
        sent_at.append(factory.servers[0].sent)
        return result

    d.addBoth(note)
    clock.flush()
    [server] = factory.servers
    return clock, server, d, sent_at


def too_large(clock: MemoryReactor, d: defer.Deferred[Any]) -> AnswerTooLarge:
    error = failure_of(clock, d)
    assert isinstance(error, AnswerTooLarge), error
    assert "s3cr3t" not in str(error)
    return error


def test_an_answer_whose_content_length_is_over_the_limit_is_refused_unread():
    head = OK_HEAD + b"Content-Length: 1073741824\r\n\r\n"
    piece = b"x" * (64 * KiB)
    clock, server, d, sent_at = hostile_exchange(head, piece, 32)
    error = too_large(clock, d)
    assert str(error) == (
        "the answer from http://mmsc.test/x/ is over 1 MiB (Content-Length: 1073741824)"
    )
    # Refused from the headers alone, with the first two pieces.
    assert sent_at == [len(head) + 2 * len(piece)]
    assert clock.connections == 0 and server.closed


@pytest.mark.parametrize(
    "framing, piece",
    [
        (b"Transfer-Encoding: chunked\r\n", b"4000\r\n" + b"x" * (16 * KiB) + b"\r\n"),
        (b"Connection: close\r\n", b"x" * (16 * KiB)),  # read until the close
    ],
    ids=["chunked", "unframed"],
)
def test_a_body_that_goes_on_past_the_limit_is_cut_off_there(framing, piece):
    head = OK_HEAD + framing + b"\r\n"
    clock, server, d, sent_at = hostile_exchange(head, piece, 256)  # 4 MiB
    error = too_large(clock, d)
    assert str(error) == "the answer from http://mmsc.test/x/ is over 1 MiB"
    # Cut off in the 65th piece of 16 KiB, the first over 1 MiB, not at the end.
    [sent] = sent_at
    assert 64 < (sent - len(head)) // len(piece) <= 64 + 2
    assert clock.connections == 0 and server.closed


def test_the_limit_is_an_option_and_an_answer_of_exactly_it_is_read():
    body = codec.encode(m.Envelope("t", m.DeliverRsp(m.Status(1000, "Success"))))[1]
    exact = len(body)
    clock, client = odd_server(Canned(200, b"text/xml", body), max_answer_size=exact)
    response = result_of_now(clock, client.deliver(m.DeliverReq()))
    assert response.status.code == 1000
    clock, client = odd_server(
        Canned(200, b"text/xml", body), max_answer_size=exact - 1
    )
    error = failure_of(clock, client.deliver(m.DeliverReq()))
    assert isinstance(error, AnswerTooLarge)
    assert str(error) == (
        f"the answer from http://mmsc.test/x/ is over {exact - 1} bytes "
        f"(Content-Length: {exact})"
    )


def result_of_now(clock: MemoryReactor, d: defer.Deferred[Any]) -> Any:
    clock.flush()
    return result_of(d)


@pytest.mark.parametrize(
    "head, piece",
    [
        (b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + b"a" * 1012 + b"\r\n"),
        (b"HTTP/1.1 200 OK\r\nX-Long: ", b"a" * 1024),  # one line, never ended
        (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n", b" " + b"a" * 1021 + b"\r\n"),
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 40),  # interim answers
    ],
    ids=["lines", "one-line", "continuations", "interim"],
)
def test_endless_headers_are_cut_off_at_16_kib(head, piece):
    clock, server, d, sent_at = hostile_exchange(head, piece, 1024)  # 1 MiB
    error = too_large(clock, d)
    assert str(error) == "the answer from http://mmsc.test/x/ has headers over 16 KiB"
    [sent] = sent_at
    assert 16 * KiB < sent <= 16 * KiB + 2 * len(piece)
    assert clock.connections == 0 and server.closed


@pytest.mark.parametrize(
    "head, drop",
    [
        (OK_HEAD + b"Content-Length: 100000\r\n\r\n", b"x"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n"),
        (b"HTTP/1.1 200 OK\r\n", b"X-Drip: x\r\n"),
    ],
    ids=["body", "chunked-body", "headers"],
)
def test_an_answer_trickling_in_times_out_at_the_deadline(head, drop):
    clock = MemoryReactor()
    servers: list[Trickle] = []

    def trickle() -> Trickle:
        servers.append(Trickle(clock, head, drop))
        return servers[-1]

    clock.listenTCP(80, Factory.forProtocol(trickle), interface="127.0.0.1")
    client = MM7Client(clock, "http://mmsc.test/x/", timeout=30)
    d = client.deliver(m.DeliverReq(sender=m.Address("1")))
    clock.advance(29.5)
    assert not fired(d) and servers[0].sent > 25  # a byte a second, then more
    clock.advance(0.5)
    error = failure_of(clock, d)
    assert isinstance(error, TimedOut)
    assert str(error) == "no answer from http://mmsc.test/x/ within 30 s"
    clock.advance(2)
    assert clock.connections == 0 and servers[0].closed


class Trickle(Protocol):
    """An HTTP server that answers ``head``, then ``drop`` every second."""

    transport: Any

    def __init__(self, clock: MemoryReactor, head: bytes, drop: bytes) -> None:
        self.clock, self.head, self.drop = clock, head, drop
        self.sent = 0
        self.closed = False
        self.timer: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.timer is None:
            self.transport.write(self.head)
            self.timer = task.LoopingCall(self._drip)
            self.timer.clock = self.clock
            self.timer.start(1.0, now=False)

    def _drip(self) -> None:
        self.transport.write(self.drop)
        self.sent += len(self.drop)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self.timer is not None and self.timer.running:
            self.timer.stop()


REPORTING = CONFIG.replace(
    'VASP "vasp1" { password = "pw" }',
    'VASP "vasp1" {\n  password = "pw"\n'
    '  delivery_report_url = "http://dr:s3cr3t@vasp.test:9000/dr/"\n}',
).replace(
    "  mm7_mmsc_uri_paths", "  mm7_client_max_answer_size = 64K\n  mm7_mmsc_uri_paths"
)


def test_a_hostile_vasp_cannot_grow_the_gateway_through_a_delivery_report():
    # The VASP's delivery_report_url streams a chunked answer that never
    # ends (8 MiB here, then it stalls): the report fails at 64 KiB, is
    # logged, not retried, and the gateway holds none of it.
    gateway = MemoryGateway(REPORTING)
    piece = b"4000\r\n" + b"x" * (16 * KiB) + b"\r\n"
    vasp = HostileFactory(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", piece, 512)
    gateway.reactor.listenTCP(9000, vasp, interface="127.0.0.1")
    asking = dataclasses.replace(
        SUBMIT,
        recipients=m.Recipients(to=(m.Address("+15551234567"),)),
        content=cli.content(["hello"], [], "none"),
    )
    client = gateway.client("/mm7/", ("vasp1", "pw"))
    tracemalloc.start()
    try:
        with capturedLogs() as events:
            response = gateway.result(client.submit(asking))
            gateway.advance(600)  # any retry would have come by now
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status.code == 1000
    [server] = vasp.servers  # posted once: not retried
    assert server.sent > 8 * MiB and server.closed
    lines = [formatEvent(e) for e in events]
    assert (
        f"Delivery report {response.message_id} for vasp1 failed: the answer "
        "from http://vasp.test:9000/dr/ is over 64 KiB"
    ) in lines
    assert not any("s3cr3t" in line for line in lines)
    assert gateway.service.reporter is not None
    assert gateway.service.reporter.pending == {}
    assert peak < 2 * MiB, peak  # the 8 MiB went by, none of it kept


def test_the_reports_limit_follows_a_reload():
    gateway = MemoryGateway(REPORTING)
    reporter = gateway.service.reporter
    assert reporter is not None and reporter.max_answer_size == 64 * KiB
    assert gateway.reload(REPORTING.replace("= 64K", "= 2M"))
    assert gateway.service.reporter is reporter
    assert reporter.max_answer_size == 2 * MiB


def test_unreachable():
    clock, client = odd_server(Resource())
    client.url = "http://mmsc.test:81/x/"  # nothing listens there
    error = failure_of(clock, client.deliver(m.DeliverReq()))
    assert isinstance(error, Unreachable)
    assert str(error).startswith("cannot connect to http://mmsc.test:81/x/: ")


def test_a_client_with_an_agent_needs_a_clock():
    with pytest.raises(TypeError, match="reactor="):
        MM7Client(MemoryAgent(MemoryReactor()), "http://mmsc.test/")


# The command line: its pieces ------------------------------------------------


def test_addresses_on_the_command_line():
    assert cli.address("+15551234567") == m.Address("+15551234567", "Number")
    assert cli.address("12345") == m.Address("12345", "ShortCode")
    assert cli.address("155512345678") == m.Address("155512345678", "Number")
    assert cli.address("a@b.example").is_email
    assert cli.address("number:123") == m.Address("123", "Number")
    assert cli.address("shortcode:+44") == m.Address("+44", "ShortCode")
    assert cli.address("EMAIL:x") == m.Address("x", "RFC2822Address")
    with pytest.raises(argparse.ArgumentTypeError):
        cli.address("hello")


def test_generated_smil_references_every_part(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    tune = tmp_path / "tune.amr"
    tune.write_bytes(b"#!AMR\n")
    parts = cli.content(["hi"], [str(photo), str(tune)], "auto")
    smil, text, jpeg, amr = parts
    assert (
        smil.is_smil
        and jpeg.media_type == "image/jpeg"
        and amr.media_type == "audio/amr"
    )
    for part in (text, jpeg, amr):
        assert f'"cid:{part.content_id}"'.encode() in smil.data
    etree.fromstring(smil.data)  # well formed


def test_unreadable_files_are_usage_errors_of_one_line(tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(cli.UsageError, match=r"^cannot read .*missing.jpg: No "):
        cli.content([], [missing], "none")
    with pytest.raises(cli.UsageError, match=r"^cannot read .*missing.jpg: No "):
        cli.content(["x"], [], missing)


# The command line, in process on the in-memory gateway ----------------------


def command(
    gateway: MemoryGateway, *argv: str, agent: Any = None
) -> defer.Deferred[int]:
    """``mm7tx argv...`` in process, over the gateway's agent; fires with
    the exit status as the test moves the gateway."""
    args = cli.parse(list(argv))
    return defer.ensureDeferred(
        cli.run(
            gateway.reactor, args, agent=agent if agent is not None else gateway.agent()
        )
    )


def mm7tx(gateway: MemoryGateway, *argv: str) -> int:
    """``mm7tx argv...`` whose answer comes without time passing."""
    return gateway.result(command(gateway, *argv))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def gateway(recorder: Recorder, monkeypatch) -> MemoryGateway:
    """The gateway with every path recording; no password in the environment."""
    monkeypatch.delenv("MM7TX_PASSWORD", raising=False)
    return MemoryGateway(CONFIG, processor=recorder)


def test_submit_sends_every_option_and_prints_the_message_id(
    gateway, recorder, tmp_path, capsys, monkeypatch
):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    tune = tmp_path / "tune.amr"
    tune.write_bytes(b"#!AMR\n")
    monkeypatch.setenv("MM7TX_PASSWORD", "pw")
    code = mm7tx(
        gateway,
        "submit",
        gateway.url + "/mm7/",
        "--from",
        "12345",
        "--to",
        "+15551234567",
        "--to",
        "alice@example.com",
        "--cc",
        "shortcode:777",
        "--bcc",
        "bob@example.com",
        "--subject",
        "News",
        "--text",
        "Hello",
        "--attach",
        str(photo),
        "--attach",
        str(tune),
        "--smil",
        "auto",
        "--priority",
        "High",
        "--delivery-report",
        "--read-reply",
        "--linked-id",
        "L9",
        "--service-code",
        "gold",
        "--vasp-id",
        "vasp1",
        "--vas-id",
        "news",
        "--user",
        "vasp1",
        "--mm7-version",
        "5.3.0",
        "--namespace",
        "REL-5-MM7-1-0",
    )
    assert capsys.readouterr() == ("1000 Success\nMessageID: MID-1\n", "")
    assert code == 0
    [(request, transaction)] = recorder.requests
    assert transaction.account.name == "vasp1"  # MM7TX_PASSWORD was sent
    assert transaction.namespace == (
        "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-5-MM7-1-0"
    )
    assert request.mm7_version == "5.3.0"
    assert request.sender_address == m.Address("12345", "ShortCode")
    assert request.recipients == m.Recipients(
        to=(
            m.Address("+15551234567", "Number"),
            m.Address("alice@example.com", "RFC2822Address"),
        ),
        cc=(m.Address("777", "ShortCode"),),
        bcc=(m.Address("bob@example.com", "RFC2822Address"),),
    )
    assert (request.subject, request.priority) == ("News", "High")
    assert (request.delivery_report, request.read_reply) == (True, True)
    assert (request.linked_id, request.service_code) == ("L9", "gold")
    assert (request.vasp_id, request.vas_id) == ("vasp1", "news")
    assert request.timestamp  # now, as the command sent it
    smil, text, jpeg, amr = request.content
    assert [p.media_type for p in request.content] == [
        "application/smil",
        "text/plain",
        "image/jpeg",
        "audio/amr",
    ]
    assert text.data == b"Hello"
    assert (jpeg.data, jpeg.filename) == (JPEG, "photo.jpg")
    assert amr.data == b"#!AMR\n"
    for part in (text, jpeg, amr):
        assert f'"cid:{part.content_id}"'.encode() in smil.data


def test_submit_without_asking_sends_no_report_flags_and_the_defaults(
    gateway, recorder, capsys
):
    code = mm7tx(
        gateway,
        "submit",
        gateway.url + "/mm7/",
        "--to",
        "1",
        "--text",
        "x",
        "--user",
        "vasp1",
        "--password",
        "pw",
    )
    assert code == 0
    [(request, transaction)] = recorder.requests
    assert (request.delivery_report, request.read_reply, request.priority) == (
        None,
        None,
        "Normal",
    )
    assert [p.media_type for p in request.content] == ["text/plain"]  # no SMIL
    assert request.mm7_version == m.DEFAULT_MM7_VERSION
    assert transaction.namespace.endswith("/REL-6-MM7-1-4")


def test_a_smil_file_is_sent_as_given(gateway, recorder, tmp_path):
    smil = tmp_path / "show.smil"
    smil.write_bytes(b"<smil><body/></smil>")
    code = mm7tx(
        gateway,
        "deliver",
        gateway.url + "/vasp/",
        "--from",
        "2",
        "--to",
        "1",
        "--text",
        "x",
        "--smil",
        str(smil),
        "--namespace",
        "urn:example:mm7",
    )
    assert code == 0
    [(request, transaction)] = recorder.requests
    assert request.content[0].data == b"<smil><body/></smil>"
    assert request.content[0].is_smil
    assert transaction.namespace == "urn:example:mm7"


def test_deliver_sends_its_options(gateway, recorder, capsys):
    code = mm7tx(
        gateway,
        "deliver",
        gateway.url + "/vasp/",
        "--from",
        "+447700900123",
        "--to",
        "7255",
        "--cc",
        "carol@example.com",
        "--subject",
        "MO",
        "--text",
        "yes",
        "--text",
        "and more",
        "--priority",
        "Low",
        "--linked-id",
        "L1",
        "--relay-server-id",
        "mmsc-1",
    )
    assert capsys.readouterr() == ("1000 Success\n", "")
    assert code == 0
    [(request, transaction)] = recorder.requests
    assert isinstance(request, m.DeliverReq)
    assert transaction.path == "/vasp/" and transaction.account is None
    assert request.sender == m.Address("+447700900123", "Number")
    assert request.recipients.to == (m.Address("7255", "ShortCode"),)
    assert request.recipients.cc == (m.Address("carol@example.com", "RFC2822Address"),)
    assert (request.subject, request.priority, request.linked_id) == ("MO", "Low", "L1")
    assert request.mms_relay_server_id == "mmsc-1"
    assert [p.data for p in request.content] == [b"yes", b"and more"]


def test_deliver_through_the_real_processor_arrives_as_mail(capsys):
    gateway = MemoryGateway(CONFIG)
    code = mm7tx(
        gateway,
        "deliver",
        gateway.url + "/vasp/",
        "--from",
        "+447700900123",
        "--to",
        "7255",
        "--subject",
        "Entry",
        "--text",
        "my photo",
    )
    assert (code, capsys.readouterr().out) == (0, "1000 Success\n")
    [mail] = gateway.relay.accepted
    assert mail.recipients == ["7255@to.example"]
    assert mail.message["Subject"] == "Entry"


@pytest.mark.parametrize(
    ("subcommand", "kind", "status", "other"),
    [
        ("delivery-report", m.DeliveryReportReq, "Retrieved", "Rejected"),
        ("read-reply", m.ReadReplyReq, "Read", "Deleted"),
    ],
)
def test_reports_send_their_options_and_defaults(
    gateway, recorder, capsys, subcommand, kind, status, other
):
    base = [subcommand, gateway.url + "/vasp/", "--message-id", "M1"]
    assert mm7tx(gateway, *base, "--recipient", "+15551234567", "--sender", "1") == 0
    code = mm7tx(
        gateway,
        *base,
        "--recipient",
        "alice@example.com",
        "--sender",
        "7255",
        "--status",
        other,
        "--status-text",
        "no room",
        "--date",
        "2024-05-01T12:00:00+00:00",
        "--relay-server-id",
        "mmsc-1",
    )
    assert code == 0
    assert capsys.readouterr().out == "1000 Success\n" * 2
    (default, _), (given, _) = recorder.requests
    assert isinstance(default, kind) and isinstance(given, kind)
    assert default.message_id == "M1" and default.mm_status == status
    assert default.recipient == m.Address("+15551234567", "Number")
    assert (default.sender, default.status_text) == (m.Address("1", "ShortCode"), None)
    when = given.date if kind is m.DeliveryReportReq else given.timestamp
    assert when == "2024-05-01T12:00:00+00:00"
    assert given.recipient == m.Address("alice@example.com", "RFC2822Address")
    assert given.sender == m.Address("7255", "ShortCode")
    assert (given.mm_status, given.status_text) == (other, "no room")
    assert given.mms_relay_server_id == "mmsc-1"


def test_a_partial_success_exits_0_and_prints_its_details(gateway, recorder, capsys):
    recorder.status = m.Status(1100, "Partial success", "one recipient refused")
    code = mm7tx(gateway, "deliver", gateway.url + "/vasp/", "--from", "2", "--to", "1")
    assert code == 0
    assert capsys.readouterr().out == (
        "1100 Partial success\nDetails: one recipient refused\n"
    )


def test_an_answer_that_is_not_a_success_exits_1(gateway, recorder, capsys):
    recorder.status = m.Status(2000, "Client error")
    code = mm7tx(gateway, "deliver", gateway.url + "/vasp/", "--from", "2", "--to", "1")
    assert (code, capsys.readouterr().out) == (1, "2000 Client error\n")


def test_a_fault_exits_1_and_says_so_on_stderr(capsys):
    gateway = MemoryGateway(CONFIG)
    gateway.relay.refuse("mail", 451)
    code = mm7tx(gateway, "deliver", gateway.url + "/vasp/", "--from", "2", "--to", "1")
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("fault 4006 Service unavailable")
    assert err.count("\n") == 1


def test_refused_credentials_exit_1(gateway, recorder, capsys):
    args = ["submit", gateway.url + "/mm7/", "--to", "1", "--user", "vasp1"]
    code = mm7tx(gateway, *args, "--password", "wrong")
    assert (code, capsys.readouterr().err) == (
        1,
        "mm7tx: HTTP 401: the server refused our credentials\n",
    )
    assert recorder.requests == []


def test_a_wrong_path_prints_one_line_and_no_html(gateway, recorder, capsys):
    code = mm7tx(gateway, "deliver", gateway.url + "/wrong", "--from", "2", "--to", "1")
    assert (code, capsys.readouterr()) == (
        1,
        ("", f"mm7tx: {gateway.url}/wrong answered 404 Not Found (not an MM7 path?)\n"),
    )


def test_a_401_without_credentials_says_none_were_sent(gateway, recorder, capsys):
    code = mm7tx(gateway, "submit", gateway.url + "/mm7/", "--to", "1")
    assert (code, capsys.readouterr().err) == (
        1,
        "mm7tx: HTTP 401: no credentials were sent (use --user with --password or "
        "MM7TX_PASSWORD, or user:password@ in the URL)\n",
    )
    # account=password in the path are credentials: refused, not missing.
    code = mm7tx(gateway, "submit", gateway.url + "/mm7/vasp1=wrong", "--to", "1")
    assert (code, capsys.readouterr().err) == (
        1,
        "mm7tx: HTTP 401: the server refused our credentials\n",
    )
    assert recorder.requests == []


def test_a_password_in_the_path_is_never_printed(gateway, capsys):
    # /mm7/account=password (NowSMS's way): a 404 here, unreachable there.
    wrong = gateway.url + "/wrong/vasp1=s3cr3t"
    assert mm7tx(gateway, "submit", wrong, "--to", "1") == 1
    assert capsys.readouterr().err == (
        f"mm7tx: {gateway.url}/wrong/vasp1=*** answered 404 Not Found "
        "(not an MM7 path?)\n"
    )
    dead = "http://127.0.0.1:1/mm7/vasp1=s3cr3t/"
    assert mm7tx(gateway, "submit", dead, "--to", "1") == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "mm7tx: cannot connect to http://127.0.0.1:1/mm7/vasp1=***/: "
    )
    assert "s3cr3t" not in err


def test_unreachable_exits_1(gateway, capsys):
    args = ["read-reply", "http://127.0.0.1:1/x/", "--message-id", "M"]
    code = mm7tx(gateway, *args, *SENDER_RECIPIENT)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("mm7tx: cannot connect to http://127.0.0.1:1/x/: ")


def test_the_max_answer_size_option_bounds_the_answer(capsys):
    clock = MemoryReactor()
    site = Site(
        build_root({"/x/": Canned(200, b"text/xml", b"x" * 2048)}), reactor=clock
    )
    clock.listenTCP(80, site, interface="127.0.0.1")  # every name, in memory
    url = "http://vasp1:s3cr3t@mmsc.test/x/"
    args = cli.parser().parse_args(
        ["deliver", url, "--from", "2", "--max-answer-size", "1K"]
    )
    running = defer.ensureDeferred(cli.run(clock, args))  # its own agent and pool
    clock.flush()
    assert result_of(running) == 1
    assert capsys.readouterr() == (
        "",
        "mm7tx: the answer from http://mmsc.test/x/ is over 1 KiB "
        "(Content-Length: 2048)\n",
    )
    assert clock.connections == 0


@pytest.mark.parametrize("given", ["0", "-1", "1G", "lots", "1.5M", ""])
def test_a_max_answer_size_that_is_not_a_size_is_a_usage_error(given, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.parser().parse_args(
            ["deliver", "http://x.test/", "--from", "2", "--max-answer-size", given]
        )
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"mm7tx deliver: error: argument --max-answer-size: {given!r} is not a "
        "size in bytes like 4096, 64K or 1M"
    )


@pytest.mark.parametrize(
    "given, size", [("4096", 4096), ("64K", 64 * KiB), ("1m", MiB), (None, MiB)]
)
def test_max_answer_size_reads_k_and_m(given, size):
    extra = [] if given is None else ["--max-answer-size", given]
    args = cli.parser().parse_args(["deliver", "http://x.test/", "--from", "2", *extra])
    assert args.max_answer_size == size


def test_the_timeout_option_runs_on_the_clock(capsys):
    gateway = MemoryGateway(CONFIG)
    gateway.relay.hang("end")
    running = command(
        gateway,
        "deliver",
        gateway.url + "/vasp/",
        "--from",
        "2",
        "--to",
        "1",
        "--timeout",
        "5",
    )
    gateway.advance(4.5)
    assert not fired(running)
    gateway.advance(0.5)
    assert gateway.result(running) == 1
    assert capsys.readouterr().err == (
        f"mm7tx: no answer from {gateway.url}/vasp/ within 5 s\n"
    )


def test_user_without_a_password_is_a_usage_error(gateway, recorder, capsys):
    connections = len(gateway.reactor.tcpClients)
    code = mm7tx(gateway, "submit", gateway.url + "/mm7/", "--to", "1", "--user", "u")
    assert code == 2
    assert capsys.readouterr().err == (
        "mm7tx: --user needs --password or MM7TX_PASSWORD\n"
    )
    assert recorder.requests == []
    assert len(gateway.reactor.tcpClients) == connections  # nothing sent


@pytest.mark.parametrize(
    "argv, said",
    [
        (["submit", "--text", "x"], "give at least one --to, --cc or --bcc"),
        (["deliver", "--to", "1"], "the following arguments are required: --from"),
        (
            ["delivery-report", "--message-id", "M1", "--recipient", "1"],
            "the following arguments are required: --sender",
        ),
        (
            ["read-reply", "--message-id", "M1", "--recipient", "1"],
            "the following arguments are required: --sender",
        ),
        (
            ["delivery-report", *REPORT, "--status", "Retreived"],
            "argument --status: 'Retreived' is not a delivery report MMStatus: "
            "Expired, Retrieved, Rejected, Deferred, Unrecognised, Indeterminate, "
            "Forwarded, Unreachable or DeliveryConditionNotMet",
        ),
        (
            ["read-reply", *REPORT, "--status", "Retrieved"],
            "argument --status: 'Retrieved' is not a read reply MMStatus: Read, "
            "Deleted or Indeterminate",
        ),
        (
            ["delivery-report", *REPORT, "--date", "yesterday"],
            "argument --date: 'yesterday' is not an ISO 8601 date and time like "
            "2024-05-01T12:00:00+00:00",
        ),
        (
            ["deliver", "--from", "2", "--timeout", "0"],
            "argument --timeout: '0' is not a positive number of seconds",
        ),
        (
            ["deliver", "--from", "2", "--timeout", "soon"],
            "argument --timeout: 'soon' is not a positive number of seconds",
        ),
        (
            ["deliver", "--from", "2", "--mm7-version", "six"],
            "argument --mm7-version: 'six' is not an MM7Version like 6.8.0",
        ),
        (
            ["deliver", "--from", "2", "--namespace", "REL-9"],
            "argument --namespace: 'REL-9' is not a namespace name like "
            "REL-6-MM7-1-4 or a URI",
        ),
        (
            ["deliver", "--from", "2", "--priority", "Urgent"],
            "argument --priority: invalid choice: 'Urgent'",
        ),
        (["deliver", "--from", "hello"], "argument --from: 'hello' is not an email "),
        (
            ["deliver", "--from", "2", "--attach", "/nonexistent/p.jpg"],
            "cannot read /nonexistent/p.jpg: No such file or directory",
        ),
        (
            ["deliver", "--from", "2", "--smil", "/nonexistent/s.smil"],
            "cannot read /nonexistent/s.smil: No such file or directory",
        ),
        (
            ["deliver", "--from", "2", "--count", "0"],
            "--count and --concurrency must be at least 1",
        ),
    ],
)
def test_every_usage_error_exits_2_before_sending(
    gateway, recorder, capsys, argv, said
):
    command, *options = argv
    with pytest.raises(SystemExit) as caught:
        mm7tx(gateway, command, gateway.url + "/vasp/", *options)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: mm7tx {command} ")
    assert err.splitlines()[-1].startswith(f"mm7tx {command}: error: {said}")
    assert recorder.requests == []


@pytest.mark.parametrize(
    "command, given, sent",
    [
        ("delivery-report", "retrieved", "Retrieved"),
        ("delivery-report", "DELIVERYCONDITIONNOTMET", "DeliveryConditionNotMet"),
        ("read-reply", "deleted", "Deleted"),
    ],
)
def test_a_status_is_read_in_any_case_and_sent_as_the_standard_spells_it(
    gateway, recorder, command, given, sent
):
    url = gateway.url + "/vasp/"
    assert mm7tx(gateway, command, url, *REPORT, "--status", given) == 0
    [(request, _)] = recorder.requests
    assert request.mm_status == sent


def readme_tour_conf() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(r"`tour\.conf`:\n\n((?:    .*\n)+)", readme)
    assert found, "README.md has no tour.conf block"
    return found.group(1)


def readme_report_commands() -> list[list[str]]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = re.findall(r"^    (mm7tx (?:delivery-report|read-reply) .*)$", readme, re.M)
    assert len(lines) == 2, lines
    return [shlex.split(line)[1:] for line in lines]


def test_the_readme_report_commands_work_on_the_tour_configuration(capsys):
    """The README's ``delivery-report`` and ``read-reply`` examples, as
    written but for the host, against its ``tour.conf``: a to-domain and no
    to-address, where a report without a Sender would be 2002."""
    gateway = MemoryGateway(readme_tour_conf())
    for argv in readme_report_commands():
        argv = [gateway.url + "/vasp/" if a.endswith("/vasp/") else a for a in argv]
        assert mm7tx(gateway, *argv) == 0, capsys.readouterr()
        assert capsys.readouterr() == ("1000 Success\n", "")
    assert [mail.recipients for mail in gateway.relay.accepted] == [
        ["12345@mms.example"],
        ["12345@mms.example"],
    ]


def test_load_mode_prints_its_summary(capsys, monkeypatch):
    gateway = MemoryGateway(CONFIG, processor=(recorder := Recorder()))
    recorder.clock, recorder.delay = gateway.reactor, 1.0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress shown
    running = command(
        gateway,
        "deliver",
        gateway.url + "/vasp/",
        "--from",
        "2",
        "--to",
        "1",
        "--text",
        "x",
        "--count",
        "7",
        "--concurrency",
        "3",
    )
    gateway.advance(2)
    # Three at once: 3 sent at 0 s, 3 more at 1 s, the last at 2 s.
    assert not fired(running) and len(recorder.requests) == 7
    gateway.advance(1)
    assert gateway.result(running) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:3] == [
        "sent 7, succeeded 7, failed 0",
        "answers by status: 1000: 7",
        "failures: -",
    ]
    assert lines[3].startswith("requests/s ")
    assert lines[4].startswith("latency ms p50 ")
    assert len(lines) == 5
    assert len(recorder.requests) == 7
    assert recorder.most_in_flight == 3  # --concurrency 3
    assert err.endswith("\r7/7 sent, 7 ok, 0 failed\n")
    assert len({t.transaction_id for _, t in recorder.requests}) == 7


def test_load_mode_counts_faults_by_status_and_failures_by_kind(capsys):
    gateway = MemoryGateway(CONFIG)
    gateway.relay.refuse("mail", 451)
    args = ["deliver", gateway.url + "/vasp/", "--from", "2", "--to", "1"]
    args += ["--count", "3"]
    assert mm7tx(gateway, *args, "--concurrency", "2") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "sent 3, succeeded 0, failed 3",
        "answers by status: 4006: 3",
        "failures: -",
    ]
    dead = ["deliver", "http://127.0.0.1:1/vasp/", "--from", "2", "--to", "1"]
    dead += ["--count", "4"]
    assert mm7tx(gateway, *dead) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "sent 4, succeeded 0, failed 4",
        "answers by status: -",
        "failures: Unreachable: 4",
    ]


def test_main_refuses_a_submission_without_recipients_before_the_reactor_runs(
    capsys,
):
    with pytest.raises(SystemExit) as caught:
        cli.main(["submit", "http://127.0.0.1:1/mm7", "--text", "x"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "mm7tx submit: error: give at least one --to, --cc or --bcc"
    )


def test_count_and_concurrency_must_be_positive(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["submit", "http://x.test/", "--to", "1", "--count", "0"])
    assert caught.value.code == 2
    assert "--count and --concurrency must be at least 1" in capsys.readouterr().err


def test_transaction_id_sends_a_retry_answered_from_the_store(gateway, recorder):
    """``--transaction-id`` twice with the same request: the second is a
    retry, answered from the state store, the processor asked once."""
    argv = ("deliver", gateway.url + "/vasp/", "--from", "+15551234567")
    argv += ("--to", "1234", "--text", "hi", "--transaction-id", "t-42")
    assert mm7tx(gateway, *argv) == 0
    assert mm7tx(gateway, *argv) == 0
    assert len(recorder.requests) == 1
    assert recorder.requests[0][1].transaction_id == "t-42"


def test_transaction_id_goes_with_one_request(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(
            [
                "submit",
                "http://x.test/",
                "--to",
                "1",
                "--count",
                "2",
                "--transaction-id",
                "t",
            ]
        )
    assert caught.value.code == 2
    assert "--transaction-id sends one request" in capsys.readouterr().err


# hash-password --------------------------------------------------------------


def hash_password_with(monkeypatch, stdin: io.StringIO) -> int:
    monkeypatch.setattr(sys, "stdin", stdin)
    with pytest.raises(SystemExit) as caught:
        cli.main(["hash-password"])
    code = caught.value.code
    assert isinstance(code, int)
    return code


def test_hash_password_reads_the_first_line_of_stdin(monkeypatch, capsys):
    assert hash_password_with(monkeypatch, io.StringIO("s3cret\r\nignored\n")) == 0
    out, err = capsys.readouterr()
    stored = out.strip()
    assert err == "" and out.count("\n") == 1
    assert password_matches(stored, "s3cret")
    assert not password_matches(stored, "s3cret\r")
    assert "s3cret" not in stored


def test_hash_password_refuses_an_empty_one(monkeypatch, capsys):
    assert hash_password_with(monkeypatch, io.StringIO("\n")) == 1
    assert capsys.readouterr() == ("", "mm7tx: the password is empty\n")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("typed", "code", "err"),
    [
        (["s3cret", "s3cret"], 0, ""),
        (["s3cret", "s3cert"], 1, "mm7tx: the passwords differ\n"),
    ],
)
def test_hash_password_on_a_terminal_asks_twice(monkeypatch, capsys, typed, code, err):
    answers: Iterator[str] = iter(typed)
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(cli.getpass, "getpass", getpass)
    assert hash_password_with(monkeypatch, Terminal()) == code
    out, got_err = capsys.readouterr()
    assert got_err == err and prompts == ["VASP password: ", "again: "]
    assert password_matches(out.strip(), "s3cret") is (code == 0)


def test_an_empty_summary_reads_as_zeros():
    assert cli.Summary().lines() == [
        "sent 0, succeeded 0, failed 0",
        "answers by status: -",
        "failures: -",
        "requests/s 0.0 over 0.00 s",
        "latency ms p50 0.0 p95 0.0 p99 0.0",
    ]


@pytest.mark.parametrize(
    "url",
    ["localhost:8080/mm7", "ftp://x/mm7", "http://", "http://[::1/vasp", "http://h:x/"],
)
def test_a_url_that_is_not_http_is_a_usage_error(url, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.parser().parse_args(["submit", url, "--from", "1", "--to", "2"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("mm7tx submit: error: argument URL: ")
    assert "Traceback" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0
    # As the README says, and as twistd mm7 --version prints them.
    import platform

    from twisted.copyright import version as twisted

    assert capsys.readouterr().out == (
        f"mm7tx {__version__}\nTwisted {twisted}\nPython {platform.python_version()}\n"
    )


def test_an_unknown_option_is_the_commands_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["submit", "http://localhost:1/mm7", "--to", "+1555", "--bogus"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mm7tx submit ")
    assert err.endswith("mm7tx submit: error: unrecognized arguments: --bogus\n")


# Credentials in the URL ------------------------------------------------------


@implementer(IAgent)
class URIRecorder:
    """An agent passing requests on to ``agent``, noting each URI."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.uris: list[bytes] = []

    def request(self, method: bytes, uri: bytes, *args: Any, **kwargs: Any) -> Any:
        self.uris.append(uri)
        return self.agent.request(method, uri, *args, **kwargs)


def with_userinfo(url: str, userinfo: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{userinfo}@{rest}"


def test_a_client_takes_the_urls_userinfo_as_basic_credentials():
    client = MM7Client(MemoryReactor(), "http://u%3A1:s%40cr3t@host:80/mm7?x")
    assert client.url == "http://host:80/mm7?x"
    assert client._authorization == b"Basic " + base64.b64encode(b"u:1:s@cr3t")
    with pytest.raises(ValueError) as caught:
        MM7Client(MemoryReactor(), "http://u:s3cr3t@host/mm7", ("u", "s3cr3t"))
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    "subcommand, path, extra",
    [
        ("submit", "/mm7/", ["--to", "1"]),
        ("deliver", "/vasp/", ["--from", "2", "--to", "1"]),
        ("delivery-report", "/vasp/", ["--message-id", "M", *SENDER_RECIPIENT]),
        ("read-reply", "/vasp/", ["--message-id", "M", *SENDER_RECIPIENT]),
    ],
)
def test_credentials_in_the_url_are_sent_as_basic_not_in_the_url(
    gateway, recorder, capsys, subcommand, path, extra
):
    agent = URIRecorder(gateway.agent())
    url = with_userinfo(gateway.url, "vasp1:pw") + path
    code = gateway.result(command(gateway, subcommand, url, *extra, agent=agent))
    assert code == 0, capsys.readouterr()
    [(_, transaction)] = recorder.requests
    if path == "/mm7/":
        assert transaction.account.name == "vasp1"  # the Basic credentials
    assert agent.uris == [(gateway.url + path).encode()]


def test_a_user_in_the_url_takes_the_password_from_the_environment(
    gateway, recorder, monkeypatch
):
    monkeypatch.setenv("MM7TX_PASSWORD", "pw")
    url = with_userinfo(gateway.url, "vasp1") + "/mm7/"
    assert mm7tx(gateway, "submit", url, "--to", "1") == 0
    [(_, transaction)] = recorder.requests
    assert transaction.account.name == "vasp1"


def test_a_user_both_in_the_url_and_apart_is_a_usage_error(gateway, recorder, capsys):
    url = with_userinfo(gateway.url, "vasp1:s3cr3t") + "/mm7/"
    code = mm7tx(gateway, "submit", url, "--to", "1", "--user", "vasp1")
    assert code == 2
    assert capsys.readouterr().err == (
        "mm7tx: give the user in the URL or with --user, not both\n"
    )
    assert recorder.requests == []


def test_the_password_in_a_url_is_never_printed(gateway, capsys):
    # Nothing listens on port 9: the error names the URL, without it.
    code = mm7tx(
        gateway,
        "delivery-report",
        "http://user:s3cr3t@127.0.0.1:9/mm7",
        "--message-id",
        "M",
        *SENDER_RECIPIENT,
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("mm7tx: cannot connect to http://127.0.0.1:9/mm7: ")
    assert "s3cr3t" not in out + err and "Traceback" not in err
    for bad in ("http://user:s3cr3t@host:99999/mm7", "ftp://user:s3cr3t@host/mm7"):
        with pytest.raises(SystemExit):
            cli.parser().parse_args(["deliver", bad, "--from", "2", "--to", "1"])
        err = capsys.readouterr().err
        assert "argument URL: 'ftp://***@host/mm7'" in err or "***@host:99999" in err
        assert "s3cr3t" not in err


@implementer(IAgent)
class BodyRecorder(URIRecorder):
    """An agent passing requests on, noting each body sent."""

    def __init__(self, agent: Any) -> None:
        super().__init__(agent)
        self.bodies: list[bytes] = []

    def request(self, method: bytes, uri: bytes, *args: Any, **kwargs: Any) -> Any:
        self.bodies.append(args[1].data)
        return super().request(method, uri, *args, **kwargs)


@pytest.mark.parametrize(
    "subcommand, path, extra, sent",
    [
        ("submit", "/mm7/", ["--user", "vasp1", "--password", "pw"], "Normal"),
        ("deliver", "/vasp/", ["--from", "2"], "Normal"),
        ("deliver", "/vasp/", ["--from", "2", "--priority", "High"], "High"),
    ],
)
def test_deliver_and_submit_send_a_priority_unless_told(
    gateway, recorder, subcommand, path, extra, sent
):
    # VASPs built on instantcom-mm7 crash on a request without Priority.
    agent = BodyRecorder(gateway.agent())
    args = [subcommand, gateway.url + path, "--to", "1", *extra]
    assert gateway.result(command(gateway, *args, agent=agent)) == 0
    [body] = agent.bodies
    assert body.count(b"<Priority>") == 1
    assert f"<Priority>{sent}</Priority>".encode() in body
    [(request, _)] = recorder.requests
    assert request.priority == sent


def test_the_version_sent_fits_the_namespace(gateway, recorder):
    sent = []
    for namespace, version, expected in (
        ("REL-5-MM7-1-0", None, "5.3.0"),  # the default 6.8.0 would not fit
        ("REL-5-MM7-1-3", "6.8.0", "5.3.0"),
        ("REL-5-MM7-1-0", "5.2.0", "5.2.0"),  # its own release: kept
        ("REL-6-MM7-1-0", "6.3.0", "6.3.0"),
        ("REL-6-MM7-1-4", "5.3.0", "6.8.0"),
        ("REL-6-MM7-1-4", None, "6.8.0"),
        ("urn:not-3gpp", "5.3.0", "5.3.0"),  # nothing known: as given
    ):
        options = {"namespace": namespace}
        if version is not None:
            options["mm7_version"] = version
        client = gateway.client("/mm7/", ("vasp1", "pw"), **options)
        assert client.mm7_version == expected
        for request in (SUBMIT, dataclasses.replace(SUBMIT, mm7_version="6.8.0")):
            gateway.result(client.submit(request))
            sent.append((namespace, expected))
        # A version set on the request is made to fit too.
        gateway.result(client.submit(dataclasses.replace(SUBMIT, mm7_version="6.7.0")))
        sent.append((namespace, m.version_for(client.namespace, "6.7.0")))
    assert [
        (t.namespace.rpartition("/")[2].rpartition(":")[2], r.mm7_version)
        for r, t in recorder.requests
    ] == [(ns.rpartition(":")[2], version) for ns, version in sent]


def test_the_command_sends_a_version_that_fits_its_namespace(gateway, recorder):
    for extra, expected in (
        (["--namespace", "REL-5-MM7-1-3"], "5.3.0"),
        (["--namespace", "REL-5-MM7-1-3", "--mm7-version", "5.6.0"], "5.6.0"),
        ([], "6.8.0"),
    ):
        code = mm7tx(
            gateway,
            "deliver",
            gateway.url + "/vasp/",
            "--from",
            "2",
            "--to",
            "7255",
            "--text",
            "x",
            *extra,
        )
        assert code == 0
        request, _ = recorder.requests[-1]
        assert request.mm7_version == expected
