"""Every answer, from every stage, in the request's namespace with its
TransactionID and MM7Version; ``fault_http_status`` per account."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from mm7tx.config import ConfigError, load
from mm7tx.interfaces import IDeliverProcessor, ISubmitProcessor
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.testing import HTTPResponse, MemoryGateway

NS = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-5-MM7-1-3"
CONFIG = """
HTTP_Listener { Listen "tcp:8080:interface=127.0.0.1" { } }
mm7_serv {
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_address = "f@example.com"
  mm7_server_default_email_to_address = "t@example.com"
  mm7_server_version = "6.3.0"
  mm7_max_failed_logins = 2
  smtp_starttls = off
}
VASP "vasp1" { password = "pw" }
VASP "small" { password = "pw" max_message_size = 1K }
VASP "slow" { password = "pw" rate = 1 }
VASP "mmsbox" { password = "pw" fault_http_status = 200 }
MMSC "mmsc1" { password = "pw" }
MMSC "quiet" { password = "pw" fault_http_status = 200 }
"""
SUBMIT = m.SubmitReq(
    mm7_version="5.6.0",
    sender_address=m.Address("12345", "ShortCode"),
    recipients=m.Recipients(to=(m.Address("+15551234567"),)),
    delivery_report=True,
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
)
DELIVER = m.DeliverReq(
    mm7_version="5.6.0",
    sender=m.Address("+15551234567"),
    recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),)),),
)


def basic(user: str, password: str = "pw") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def request(tid: str, message: Any = SUBMIT) -> tuple[str, bytes]:
    return codec.encode(m.Envelope(tid, message, NS))


def post(
    gateway: MemoryGateway,
    tid: str,
    user: str = "vasp1",
    password: str = "pw",
    edit: Callable[[bytes], bytes] = lambda body: body,
    message: Any = SUBMIT,
    path: str = "/mm7/",
    peer: str = "127.0.0.1",
) -> HTTPResponse:
    ctype, body = request(tid, message)
    headers = {"Content-Type": ctype, **basic(user, password)}
    return gateway.post(path, edit(body), headers, peer=peer)


def echoed(answer: HTTPResponse, tid: str, version: str = "5.6.0") -> m.Status:
    """The answer's status, once its namespace, TransactionID and MM7Version
    are checked to be the request's."""
    assert answer.headers["content-type"] == "text/xml; charset=utf-8"
    envelope = codec.decode(answer.headers["content-type"], answer.body)
    assert (envelope.namespace, envelope.transaction_id) == (NS, tid)
    message: Any = envelope.message
    assert (envelope.mm7_version, message.mm7_version) == (version, version)
    # The TransactionID element itself is in the request's namespace too.
    assert f'<mm7:TransactionID xmlns:mm7="{NS}"'.encode() in answer.body
    status: m.Status = message.status
    return status


@pytest.fixture
def gateway() -> MemoryGateway:
    return MemoryGateway(CONFIG)


# Every stage ------------------------------------------------------------------


def test_a_wrong_password(gateway):
    answer = post(gateway, "tid-401", password="guess")
    assert answer.code == 401 and echoed(answer, "tid-401").code == 4001


def test_a_wrong_password_on_a_vasp_path(gateway):
    answer = post(gateway, "tid-401v", "mmsc1", "guess", message=DELIVER, path="/vasp/")
    assert answer.code == 401 and echoed(answer, "tid-401v").code == 4001


def test_a_locked_out_address(gateway):
    for _ in range(2):
        post(gateway, "tid-guess", password="guess", peer="203.0.113.5")
    answer = post(gateway, "tid-locked", peer="203.0.113.5")
    assert answer.code == 401 and "retry-after" in answer.headers
    status = echoed(answer, "tid-locked")
    assert status.code == 4001 and "too many failed logins" in (status.details or "")


def test_over_the_accounts_size_limit(gateway):
    answer = post(gateway, "tid-size", "small", edit=lambda b: b + b" " * 2000)
    assert answer.code == 500 and echoed(answer, "tid-size").code == 2004


def test_over_the_accounts_rate(gateway):
    assert post(gateway, "tid-first", "slow").code == 200
    answer = post(gateway, "tid-rate", "slow")
    assert answer.code == 500 and echoed(answer, "tid-rate").code == 4006


@implementer(ISubmitProcessor)
class Hanging:
    """Answers nothing until the test says so."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []

    def submit(self, request: Any, transaction: Any) -> defer.Deferred[Any]:
        self.pending.append(defer.Deferred())
        return self.pending[-1]


def test_the_gate_is_full():
    hanging = Hanging()
    gateway = MemoryGateway(
        CONFIG.replace("smtp_starttls", "mm7_max_transactions = 1\nsmtp_starttls"),
        processor=hanging,
    )
    ctype, body = request("tid-held")
    held = gateway.post_later("/mm7/", body, {"Content-Type": ctype, **basic("vasp1")})
    gateway.flush()
    answer = post(gateway, "tid-busy")
    assert answer.code == 500 and echoed(answer, "tid-busy").code == 4006
    hanging.pending[0].callback(m.SubmitRsp(m.Status.of(StatusCode.SUCCESS)))
    assert echoed(gateway.result(held), "tid-held").code == 1000


def test_an_unknown_operation(gateway):
    answer = post(
        gateway, "tid-4003", edit=lambda b: b.replace(b"SubmitReq", b"FooReq")
    )
    assert answer.code == 500 and echoed(answer, "tid-4003").code == 4003


def test_a_refused_value(gateway):
    def maybe(body: bytes) -> bytes:
        return body.replace(
            b"<DeliveryReport>true</DeliveryReport>",
            b"<DeliveryReport>maybe</DeliveryReport>",
        )

    answer = post(gateway, "tid-2007", edit=maybe)
    status = echoed(answer, "tid-2007")
    assert answer.code == 500 and status.code == 2007
    assert "DeliveryReport" in (status.details or "")


def test_xml_that_is_not_well_formed(gateway):
    answer = post(gateway, "tid-broken", edit=lambda b: b.replace(b"</env:Body>", b""))
    assert answer.code == 500 and echoed(answer, "tid-broken").code == 2007


def test_a_soap_part_that_is_not_xml(gateway):
    # Without `start` the SOAP part is the first: here plain words, while
    # the envelope comes second (the sniff still finds its TransactionID).
    ctype, body = request("tid-words")
    boundary = ctype.split('boundary="')[1].split('"')[0].encode()
    words = b"--%s\r\nContent-Type: text/plain\r\n\r\nplain words\r\n" % boundary
    ctype = ctype.replace("start=", "x-start=")
    answer = gateway.post(
        "/mm7/", words + body, {"Content-Type": ctype, **basic("vasp1")}
    )
    status = echoed(answer, "tid-words")
    assert answer.code == 500 and status.code == 4004
    assert "not XML" in (status.details or "")


def test_a_post_without_content_length(gateway):
    channel = gateway.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    ctype, body = request("tid-411")
    auth = basic("vasp1")["Authorization"].encode()
    channel.dataReceived(
        b"POST /mm7/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: %s\r\nAuthorization: %s\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (ctype.encode(), auth, len(body), body)
    )
    head, _, data = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411 ")
    answer = HTTPResponse(411, {"content-type": "text/xml; charset=utf-8"}, data)
    assert echoed(answer, "tid-411").code == 4004


@implementer(ISubmitProcessor, IDeliverProcessor)
class Failing:
    """Refuses with an MM7 status, or fails with a bug of its own."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def submit(self, request: Any, transaction: Any) -> Any:
        raise self.error

    def deliver(self, request: Any, transaction: Any) -> Any:
        return defer.fail(self.error)


def test_the_processors_fault():
    gateway = MemoryGateway(
        CONFIG, processor=Failing(MM7Error(StatusCode.ADDRESS_ERROR, details="no"))
    )
    answer = post(gateway, "tid-proc")
    assert answer.code == 500 and echoed(answer, "tid-proc").code == 2002
    answer = post(gateway, "tid-proc-v", "mmsc1", message=DELIVER, path="/vasp/")
    assert answer.code == 500 and echoed(answer, "tid-proc-v").code == 2002


def test_an_internal_error(gateway):
    gateway = MemoryGateway(CONFIG, processor=Failing(ZeroDivisionError()))
    answer = post(gateway, "tid-bug")
    assert answer.code == 500 and echoed(answer, "tid-bug").code == 4000


def test_an_internal_error_before_decoding(gateway, monkeypatch):
    def broken(*args: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(codec, "decode", broken)
    answer = post(gateway, "tid-early-bug")
    monkeypatch.undo()
    assert answer.code == 500 and echoed(answer, "tid-early-bug").code == 4000


def test_success(gateway):
    answer = post(gateway, "tid-ok")
    assert answer.code == 200 and echoed(answer, "tid-ok").code == 1000


# MM7Version -------------------------------------------------------------------


def without_version(body: bytes) -> bytes:
    return body.replace(b"<MM7Version>5.6.0</MM7Version>", b"")


def test_no_version_is_answered_with_the_configured_one(gateway):
    answer = post(gateway, "tid-nov", edit=without_version)
    assert echoed(answer, "tid-nov", "6.3.0").code == 1000
    answer = post(gateway, "tid-nov-401", password="x", edit=without_version)
    assert echoed(answer, "tid-nov-401", "6.3.0").code == 4001


def test_a_version_that_does_not_look_like_one_is_not_echoed(gateway):
    def odd(body: bytes) -> bytes:
        return body.replace(b">5.6.0<", b">5.6.0; DROP<")

    assert echoed(post(gateway, "tid-odd", edit=odd), "tid-odd", "6.3.0").code == 1000
    answer = post(gateway, "tid-odd-401", password="x", edit=odd)
    assert echoed(answer, "tid-odd-401", "6.3.0").code == 4001


@implementer(ISubmitProcessor)
class Versioned:
    """Answers in the version it was built with, or in a version of its own."""

    def __init__(self, version: str | None) -> None:
        self.version = version
        self.transactions: list[Any] = []

    def submit(self, request: Any, transaction: Any) -> m.SubmitRsp:
        self.transactions.append(transaction)
        status = m.Status.of(StatusCode.SUCCESS)
        if self.version is None:
            return m.SubmitRsp(status)  # the dataclass default, 6.8.0
        return m.SubmitRsp(status, self.version)


def test_a_processor_left_at_the_default_answers_in_the_requests_version():
    for version in (None, "6.3.0"):  # the default, and mm7_server_version
        processor = Versioned(version)
        gateway = MemoryGateway(CONFIG, processor=processor)
        assert echoed(post(gateway, "tid-p"), "tid-p").code == 1000
        assert processor.transactions[0].mm7_version == "5.6.0"


def test_a_processor_may_answer_in_a_version_of_its_own():
    gateway = MemoryGateway(CONFIG, processor=Versioned("5.3.0"))
    assert echoed(post(gateway, "tid-own"), "tid-own", "5.3.0").code == 1000


# fault_http_status ------------------------------------------------------------


def test_fault_http_status_200_sends_the_same_fault_over_200(gateway):
    def maybe(body: bytes) -> bytes:
        return body.replace(b">true<", b">maybe<")

    usual = post(gateway, "tid-same", "vasp1", edit=maybe)
    answer = post(gateway, "tid-same", "mmsbox", edit=maybe)
    assert (usual.code, answer.code) == (500, 200)
    assert answer.body == usual.body
    assert echoed(answer, "tid-same").code == 2007
    # Every fault once the account is known: the processor's too.
    answer = post(
        gateway, "tid-4003", "mmsbox", edit=lambda b: b.replace(b"Submit", b"Foo")
    )
    assert answer.code == 200 and echoed(answer, "tid-4003").code == 4003
    # Before it is known (a wrong password), the status stays.
    answer = post(gateway, "tid-pw", "mmsbox", "guess")
    assert answer.code == 401 and echoed(answer, "tid-pw").code == 4001


def test_fault_http_status_for_an_mmsc_account(gateway):
    def broken(body: bytes) -> bytes:
        return body.replace(b"</env:Body>", b"")

    for user, code in (("mmsc1", 500), ("quiet", 200)):
        answer = post(
            gateway, "tid-m", user, edit=broken, message=DELIVER, path="/vasp/"
        )
        assert answer.code == code and echoed(answer, "tid-m").code == 2007


def test_fault_http_status_with_the_gate_and_the_processor():
    gateway = MemoryGateway(
        CONFIG,
        processor=Failing(MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="later")),
    )
    answer = post(gateway, "tid-later", "mmsbox")
    assert answer.code == 200 and echoed(answer, "tid-later").code == 4006


@pytest.mark.parametrize("value", ["404", "2OO", "", "200 500", "("])
def test_fault_http_status_is_200_or_500(value):
    text = CONFIG.replace(
        'VASP "vasp1" { password = "pw" }',
        f'VASP "vasp1" {{ password = "pw"\n  fault_http_status = "{value}" }}',
    )
    with pytest.raises(ConfigError) as caught:
        load(text, "echo.conf")
    assert str(caught.value).startswith("echo.conf, line 12: ")
    assert "fault_http_status must be 200 or 500" in str(caught.value)
    for good in ("200", "500"):
        config = load(text.replace(f'"{value}"', good))
        assert {a.name: a.fault_http_status for a in config.vasps}["vasp1"] == int(good)
