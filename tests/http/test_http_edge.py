"""The HTTP edge: every request gets an MM7 answer or a plain HTTP status,
the 408 and 413 reach the client, URI credentials are decoded once and never
logged, and open connections are bounded (issue 11, items 5, 7 and 11)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from mm7tx.app.service import build_resources
from mm7tx.config import load
from mm7tx.http.resource import build_root
from mm7tx.http.site import Listener, MM7Site, access_log_formatter
from mm7tx.metrics import Metrics
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import FakeMailSender
from tests import samples
from tests.http.test_hostile import soap

CONFIG = """
mm7_serv {
  mm7_server_default_email_from_address = "f@from.example"
  mm7_server_default_email_to_address = "t@to.example"
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_mmsc_uri_paths = ("/mm7/")
}
VASP "v" { password = "p" }
VASP "pq" { password = "p%41ss/" }
VASP "quote" { password = "a\\"b c/d" }
"""
PATHS = [b"/vasp/", b"/mm7/"]


class Transport(StringTransport):
    """A ``StringTransport`` that says how it was closed: half-closed
    (``loseWriteConnection``, the answer then FIN), or aborted (a reset)."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def make_site(clock: Clock | None = None, **kw: Any) -> tuple[MM7Site, FakeMailSender]:
    sender = FakeMailSender()
    config = load(CONFIG, "edge.conf")
    root = build_root(build_resources(config, sender, clock or Clock()))  # type: ignore[arg-type]
    return MM7Site(root, clock or Clock(), **kw), sender


def connect(
    site: Any, host: str = "127.0.0.1", port: int = 1234
) -> tuple[Any, Transport]:
    channel = site.buildProtocol(IPv4Address("TCP", host, port))
    transport = Transport(peerAddress=IPv4Address("TCP", host, port))
    channel.makeConnection(transport)
    return channel, transport


def answer(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(b":") for line in lines[1:])
    }
    return int(lines[0].split()[1]), headers, body


def request(
    path: bytes, body: bytes, content_type: bytes = b"text/xml", extra: bytes = b""
) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n%sContent-Length: %d\r\n"
        b"\r\n%s" % (path, content_type, extra, len(body), body)
    )


def mm7(path: bytes) -> bytes:
    """A request each kind of path serves: a DeliverReq or a SubmitReq."""
    if path == b"/vasp/":
        return soap()
    entry = m.SubmitReq(
        sender_address=m.Address("7255", "ShortCode"),
        recipients=m.Recipients(to=(m.Address("+15551234567"),)),
        subject="edge",
    )
    return codec.encode(m.Envelope("edge-1", entry))[1]


def fault_status(body: bytes) -> int:
    envelope = codec.decode("text/xml", body)
    return envelope.message.status.code  # type: ignore[union-attr]


def basic(user: bytes, password: bytes) -> bytes:
    return b"Authorization: Basic %s\r\n" % base64.b64encode(user + b":" + password)


# (5) every request is answered: an MM7 fault or a plain HTTP status ------------


def no_traceback(events: list[dict[str, Any]]) -> bool:
    return not any(e.get("log_failure") is not None for e in events)


@pytest.mark.parametrize("path", PATHS)
def test_a_non_utf8_byte_in_content_type_gets_a_fault(path):
    site, sender = make_site()
    channel, transport = connect(site)
    with capturedLogs() as events:
        channel.dataReceived(
            request(path, mm7(path), b"text/xml; charset=\xff", basic(b"v", b"p"))
        )
        code, headers, body = answer(transport.value())
        assert code == 200  # the byte is in a parameter of no use: served
        assert headers[b"content-type"] == b"text/xml; charset=utf-8"
        transport.clear()
        channel.dataReceived(
            request(path, mm7(path), b"text/\xffxml", basic(b"v", b"p"))
        )
        code, headers, body = answer(transport.value())
        assert (code, fault_status(body)) == (500, 4004)
        transport.clear()
        # A boundary that is not ASCII (RFC 2046 allows none) is not found.
        multipart = b"--\xff\r\nContent-Type: text/xml\r\n\r\n%s\r\n--\xff--\r\n" % mm7(
            path
        )
        channel.dataReceived(
            request(
                path,
                multipart,
                b"multipart/related; boundary=\xff",
                basic(b"v", b"p"),
            )
        )
        code, headers, body = answer(transport.value())
        assert (code, fault_status(body)) == (500, 4004)
        assert b"its boundary never appears" in body
    assert no_traceback(events)
    assert len(sender.sent) == 1


@pytest.mark.parametrize("path", PATHS)
def test_a_0xff_byte_in_authorization_is_401_or_ignored(path):
    site, _sender = make_site()
    channel, transport = connect(site, host="192.0.2.9")
    with capturedLogs() as events:
        channel.dataReceived(
            request(path, mm7(path), extra=b"Authorization: Basic \xff\xfe\r\n")
        )
    code, _, body = answer(transport.value())
    assert no_traceback(events)
    if path == b"/mm7/":
        assert (code, fault_status(body)) == (401, 4001)
    else:  # VASP paths are open: credentials are not looked at
        assert code == 200


def nested(depth: int) -> bytes:
    inner = b"--b0\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b0--\r\n"
    for i in range(1, depth):
        inner = (
            b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n%s\r\n--b%d--\r\n"
            % (i, i - 1, inner, i)
        )
    return (
        b"--top\r\nContent-Type: text/xml\r\n\r\n"
        + soap(extra='<Content href="cid:c"/>')
        + b"\r\n--top\r\nContent-Type: multipart/mixed; boundary=b%d\r\n"
        b"Content-ID: <c>\r\n\r\n" % (depth - 1) + inner + b"\r\n--top--\r\n"
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("depth", [30, 500, 3000])
def test_multipart_nested_past_the_limit_is_2007(path, depth):
    site, sender = make_site(max_request_size=50_000_000)
    channel, transport = connect(site)
    with capturedLogs() as events:
        channel.dataReceived(
            request(
                path,
                nested(depth),
                b"multipart/related; boundary=top",
                basic(b"v", b"p"),
            )
        )
    code, _, body = answer(transport.value())
    assert code == 500
    envelope = codec.decode("text/xml", body)
    assert envelope.message.status == m.Status(  # type: ignore[union-attr]
        2007, "Message format corrupt", "the MIME parts are nested deeper than 16"
    )
    assert envelope.transaction_id == "hostile-1"  # echoed, though not decoded
    assert sender.sent == [] and no_traceback(events)


def test_content_nested_within_the_limit_is_delivered():
    site, sender = make_site()
    channel, transport = connect(site)
    channel.dataReceived(
        request(b"/vasp/", nested(12), b"multipart/related; boundary=top")
    )
    code, _, body = answer(transport.value())
    assert (code, fault_status(body)) == (200, 1000)
    assert len(sender.sent) == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", [b"HEAD", b"GET", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_get_405_with_allow_post(path, method):
    site, _sender = make_site()
    channel, transport = connect(site)
    with capturedLogs() as events:
        channel.dataReceived(b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (method, path))
    code, headers, body = answer(transport.value())
    assert code == 405
    assert headers[b"allow"] == b"POST"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    expected = b"MM7 requests are POSTed here\n"
    assert headers[b"content-length"] == b"%d" % len(expected)
    assert body == (b"" if method == b"HEAD" else expected)
    assert no_traceback(events)
    assert not any(
        "HEAD" in formatEvent(e) for e in events if "Warning" in formatEvent(e)
    )
    # The connection is still good for a POST.
    transport.clear()
    channel.dataReceived(request(b"/vasp/", soap()))
    assert answer(transport.value())[0] == 200


def test_an_unexpected_error_is_a_4000_fault_not_an_html_page(monkeypatch):
    site, _sender = make_site()
    decode = codec.decode

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    def fault_status(body: bytes) -> int:
        code: int = decode("text/xml", body).message.status.code  # type: ignore[union-attr]
        return code

    monkeypatch.setattr(codec, "decode", broken)
    for path in PATHS:
        channel, transport = connect(site)
        with capturedLogs() as events:
            channel.dataReceived(request(path, mm7(path), extra=basic(b"v", b"p")))
        code, headers, body = answer(transport.value())
        assert headers[b"content-type"] == b"text/xml; charset=utf-8"
        assert (code, fault_status(body)) == (500, 4000)
        assert [e["log_format"] for e in events if e.get("log_failure")] == [
            "Answering failed on {path}"
        ]


# (11) HTTP details ----------------------------------------------------------------


def test_the_408_is_written_and_the_connection_half_closed_then_aborted():
    clock = Clock()
    site, _ = make_site(clock, request_timeout=10)
    channel, transport = connect(site)
    channel.dataReceived(b"POST /vasp/ HTTP/1.1\r\nHost: x\r\n")
    clock.advance(10)
    code, headers, body = answer(transport.value())
    assert code == 408 and body == b"the request was not received within 10 s\n"
    assert headers[b"connection"] == b"close"
    # The answer goes out with a FIN, not a reset that would discard it.
    assert transport.write_closed and not transport.aborted
    channel.dataReceived(b"more bytes the client was still sending")
    assert transport.value().count(b"HTTP/1.1") == 1  # read and dropped
    clock.advance(1.9)
    assert not transport.aborted
    clock.advance(0.1)  # a client that never closes its side is reset
    assert transport.aborted
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_a_client_that_closes_after_the_408_leaves_no_timer():
    clock = Clock()
    site, _ = make_site(clock, request_timeout=10)
    channel, transport = connect(site)
    channel.dataReceived(b"POST /vasp/ HTTP/1.1\r\n")
    clock.advance(10)
    channel.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []
    assert not transport.aborted
    assert site.channels == set()


def test_expect_100_continue_with_an_oversized_length_gets_413_and_no_100():
    site, _ = make_site(max_request_size=1000)
    channel, transport = connect(site)
    channel.dataReceived(
        b"POST /vasp/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
        b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    )
    raw = transport.value()
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in raw
    assert transport.write_closed


def test_expect_100_continue_within_the_limit_still_gets_100():
    site, _ = make_site()
    channel, transport = connect(site)
    body = soap()
    channel.dataReceived(
        b"POST /vasp/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    transport.clear()
    channel.dataReceived(body)
    assert answer(transport.value())[0] == 200


@pytest.mark.parametrize(
    "uri, answered",
    [
        (b"/mm7/v=p", 200),
        (b"/mm7/v=%70", 200),  # decoded once: %70 is p
        (b"/mm7/v=p/", 200),  # a trailing separator is not the password's
        (b"/mm7/pq=p%2541ss%2F", 200),  # the password p%41ss/ encoded once
        (b"/mm7/pq=p%252541ss%252F", 401),  # encoded twice: no longer works
        (b"/mm7/pq=pAss/", 401),
        (b"/mm7/quote=a%22b%20c%2Fd", 200),
        (b'/mm7/quote=a"b%20c/d', 200),  # raw / and " are the password's too
    ],
)
def test_uri_credentials_are_percent_decoded_once(uri, answered):
    site, _ = make_site()
    channel, transport = connect(site, host="192.0.2.9")
    channel.dataReceived(request(uri, mm7(b"/mm7/")))
    assert answer(transport.value())[0] == answered


class _Logged:
    """What the access log formatter reads of a request."""

    def __init__(self, uri: bytes) -> None:
        self.uri = uri
        self.method = b"POST"
        self.clientproto = b"HTTP/1.1"
        self.code = 200
        self.sentLength = 10

    def getClientAddress(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.9", 4000)

    def getHeader(self, name: bytes) -> None:
        return None


@pytest.mark.parametrize(
    "uri",
    [
        b"/mm7/v=secret",
        b'/mm7/v=se"cr et',
        b"/mm7/v=se%22cret",
        b"/mm7/v=se/cr/et",
        b"/mm7/v=se%2Fcr%20et/",
        b"/mm7/v=se=cret?x=secret",
        b"/mm7/v=s\xffecret",
        b"/mm7/v=se?cret",
    ],
)
def test_the_access_log_masks_the_whole_password(uri):
    line = access_log_formatter("[t]", _Logged(uri))
    assert '"POST /mm7/v=*** HTTP/1.1"' in line, line
    assert "se" not in line.split("/mm7/", 1)[1]


def test_the_access_log_keeps_uris_without_credentials():
    line = access_log_formatter("[t]", _Logged(b"/vasp/"))
    assert '"POST /vasp/ HTTP/1.1" 200 10' in line


def test_no_log_line_has_the_password():
    site, _ = make_site()
    with capturedLogs() as events:
        for uri in (b'/mm7/quote=a"b%20c/d', b"/mm7/v=wrong%22secret/x"):
            channel, _transport = connect(site, host="192.0.2.9")
            channel.dataReceived(request(uri, mm7(b"/mm7/")))
            channel.connectionLost(Failure(ConnectionDone()))
    lines = [formatEvent(e) for e in events]
    assert lines
    assert not any(
        "wrong" in line or "b%20c" in line or 'a"b' in line for line in lines
    )


# (7) open connections, per listener and per source address -----------------------


def test_connections_past_the_listener_bound_are_closed_at_once():
    site, _ = make_site()
    listener = Listener(site, "tcp:8080", max_connections=3)
    with capturedLogs() as events:
        open_ = [connect(listener, port=1000 + n) for n in range(3)]
        assert listener.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2000)) is None
        assert listener.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2001)) is None
    refusals = [formatEvent(e) for e in events if "Refusing" in formatEvent(e)]
    assert refusals == [
        "Refusing connections on tcp:8080: 3 open, the limit (mm7_max_connections)"
    ]  # once, not once per connection
    channel, _ = open_[0]
    channel.connectionLost(Failure(ConnectionDone()))
    assert connect(listener, port=3000)[0] is not None


def test_connections_past_the_per_address_bound_are_closed_at_once():
    site, _ = make_site(max_connections_per_address=2)
    first = [connect(site, host="192.0.2.1", port=n) for n in (1, 2)]
    assert site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 3)) is None
    # Another address is not held back.
    assert connect(site, host="192.0.2.2")[0] is not None
    first[0][0].connectionLost(Failure(ConnectionDone()))
    assert connect(site, host="192.0.2.1", port=4)[0] is not None


def test_two_listeners_each_have_their_own_bound():
    site, _ = make_site()
    a = Listener(site, "tcp:1", max_connections=1)
    b = Listener(site, "tcp:2", max_connections=1)
    connect(a)
    assert a.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9)) is None
    assert connect(b, port=9)[0] is not None


def test_the_deliver_sample_still_goes_through_a_listener():
    site, sender = make_site()
    listener = Listener(site, "tcp:8080", max_connections=10)
    channel, transport = connect(listener)
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req1.txt")
    channel.dataReceived(request(b"/vasp/", body, ctype.encode()))
    assert answer(transport.value())[0] == 200
    assert len(sender.sent) == 1


def open_from(factory: Any, host: str, port: int) -> Any:
    """A channel ``factory`` builds and connects, or None if it refuses."""
    channel = factory.buildProtocol(IPv4Address("TCP", host, port))
    if channel is not None:
        channel.makeConnection(Transport(peerAddress=IPv4Address("TCP", host, port)))
    return channel


def churn(factory: Any, held: list[Any], host: str, port: int) -> None:
    """Close one held connection and open two: one taken, one refused."""
    held.pop(0).connectionLost(Failure(ConnectionDone()))
    held.append(open_from(factory, host, port))
    assert held[-1] is not None
    assert open_from(factory, host, port + 1) is None


def refusals(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if "Refusing" in formatEvent(e)]


def refused(metrics: Metrics, listener: str, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "mm7tx_connections_refused_total", {"listener": listener, "reason": reason}
    )


def test_churn_at_the_per_address_bound_is_warned_once_a_minute_and_counted():
    clock = Clock()
    metrics = Metrics()
    site, _ = make_site(clock, max_connections_per_address=2, metrics=metrics)
    listener = Listener(site, "tcp:8080", max_connections=1000)
    held = [open_from(listener, "192.0.2.1", n) for n in (1, 2)]
    limit = "2 open, the limit (mm7_max_connections_per_address)"
    with capturedLogs() as events:
        for n in range(100):  # 10 s of churn
            churn(listener, held, "192.0.2.1", 1000 + 2 * n)
            clock.advance(0.1)
        # Another address has a warning of its own.
        other = [open_from(listener, "192.0.2.2", n) for n in (1, 2)]
        assert open_from(listener, "192.0.2.2", 3) is None
        clock.advance(60)
        churn(listener, held, "192.0.2.1", 5000)
        assert other
    assert refusals(events) == [
        f"Refusing connections from 192.0.2.1: {limit}",
        f"Refusing connections from 192.0.2.2: {limit}",
        f"Refusing connections from 192.0.2.1: {limit} "
        "(99 more refused since the last warning)",
    ]
    assert refused(metrics, "tcp:8080", "per_address") == 102
    assert not refused(metrics, "tcp:8080", "per_listener")


def test_churn_at_the_listener_bound_is_warned_once_a_minute_and_counted():
    clock = Clock()
    metrics = Metrics()
    site, _ = make_site(clock, metrics=metrics)
    listener = Listener(site, "tcp:8080", max_connections=3)
    other = Listener(site, "tcp:8081", max_connections=1)
    held = [open_from(listener, "127.0.0.1", n) for n in range(3)]
    limit = "3 open, the limit (mm7_max_connections)"
    with capturedLogs() as events:
        for n in range(100):
            churn(listener, held, "127.0.0.1", 1000 + 2 * n)
            clock.advance(0.1)
        assert open_from(other, "127.0.0.1", 1) is not None
        assert open_from(other, "127.0.0.1", 2) is None  # its own key
        clock.advance(60)
        churn(listener, held, "127.0.0.1", 5000)
    assert refusals(events) == [
        f"Refusing connections on tcp:8080: {limit}",
        "Refusing connections on tcp:8081: 1 open, the limit (mm7_max_connections)",
        f"Refusing connections on tcp:8080: {limit} "
        "(99 more refused since the last warning)",
    ]
    assert refused(metrics, "tcp:8080", "per_listener") == 101
    assert refused(metrics, "tcp:8081", "per_listener") == 1


def test_churn_on_the_metrics_listener_is_warned_once_a_minute_and_counted():
    from mm7tx.testing import MemoryGateway

    gateway = MemoryGateway(CONFIG, metrics=True)
    monitor, endpoint = gateway.service.monitor, gateway.config.metrics_listen
    assert monitor is not None and endpoint is not None
    held = [open_from(monitor, "192.0.2.1", n) for n in range(16)]
    with capturedLogs() as events:
        for n in range(100):
            churn(monitor, held, "192.0.2.1", 1000 + 2 * n)
            gateway.clock.advance(0.1)
        gateway.clock.advance(60)
        churn(monitor, held, "192.0.2.1", 5000)
    limit = "16 open, its limit"
    assert refusals(events) == [
        f"Refusing connections to the metrics listener from 192.0.2.1: {limit}",
        f"Refusing connections to the metrics listener from 192.0.2.1: {limit} "
        "(99 more refused since the last warning)",
    ]
    metrics = gateway.service.metrics
    assert metrics is not None
    assert refused(metrics, endpoint, "per_address") == 101
    for channel in held:
        channel.connectionLost(Failure(ConnectionDone()))
    gateway.stop()


def test_the_gateway_refuses_connections_past_its_bounds_in_memory():
    from twisted.internet.protocol import ClientFactory, Protocol

    from mm7tx.testing import MemoryGateway

    config = load(
        'HTTP_Listener { Listen "tcp:8080" { } Listen "tcp:8081" { } }\n'
        + CONFIG.replace(
            "mm7_serv {",
            "mm7_serv {\n  mm7_max_connections = 3\n"
            "  mm7_max_connections_per_address = 2\n",
        ),
        "bounds.conf",
    )
    gateway = MemoryGateway(config, metrics=True)
    outcomes: list[str] = []

    class Client(ClientFactory):
        protocol = Protocol

        def buildProtocol(self, addr: Any) -> Protocol:
            outcomes.append("connected")
            return Protocol()

        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
            outcomes.append("refused")

    def connect_from(source: str, port: int = 8080) -> str:
        gateway.reactor.connectTCP("127.0.0.1", port, Client(), bindAddress=(source, 0))
        gateway.flush()
        return outcomes[-1]

    assert [connect_from("192.0.2.1") for _ in range(3)] == [
        "connected",
        "connected",
        "refused",  # the address's bound
    ]
    assert connect_from("192.0.2.2") == "connected"
    assert connect_from("192.0.2.3") == "refused"  # the listener's bound
    assert connect_from("192.0.2.3", 8081) == "connected"  # another listener
    # Each refusal counted, under the listener it came to.
    metrics = gateway.service.metrics
    assert metrics is not None
    assert refused(metrics, "tcp:8080", "per_address") == 1
    assert refused(metrics, "tcp:8080", "per_listener") == 1
