"""HTTP round trips through a real twisted.web Site, in memory."""

from __future__ import annotations

from lxml import etree
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from mm7tx.app.service import build_resources
from mm7tx.config import Config
from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.http.resource import MM7Resource, build_root
from mm7tx.interfaces import IDeliverProcessor
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.testing import FakeMailSender, http_post
from tests import samples

RULES = AddressRules("f@from.example", "from.example", "t@to.example", "to.example")
PATHS = ("/ringtones/", "/photo_contest/", "/email_gateway/")


def tree(sender: FakeMailSender, **config: object) -> Resource:
    cfg = Config(rules=RULES, vasp_paths=PATHS, **config)  # type: ignore[arg-type]
    return build_root(build_resources(cfg, sender, MemoryReactorClock()))  # type: ignore[arg-type]


def status_of(body: bytes) -> tuple[str, int, str]:
    root = etree.fromstring(body)
    element = next(
        e
        for e in root.iter()
        if isinstance(e.tag, str) and etree.QName(e).localname == "Status"
    )
    code = int(element[0].text or "")
    name = etree.QName(element.getparent()).localname
    return name, code, etree.QName(element.getparent()).namespace


def test_deliver_on_every_configured_path_with_and_without_slash():
    sender = FakeMailSender()
    root = tree(sender)
    ctype, body = samples.http_message(
        samples.read("instantcom-mm7/deliver-req-post.txt")
    )
    for path in ("/ringtones/", "/photo_contest", "/email_gateway/"):
        answer = http_post(root, path, body, {"Content-Type": ctype})
        assert answer.code == 200
        assert answer.headers["content-type"] == "text/xml; charset=utf-8"
        env = codec.decode(answer.headers["content-type"], answer.body)
        assert env.transaction_id == "vas00324-dlvr"
        assert env.namespace.endswith("REL-6-MM7-1-4")
        assert env.message == m.DeliverRsp(
            m.Status(1000, "Success"), "6.7.0"
        )  # its own
    assert [s.message["X-MM7-Path"] for s in sender.sent] == list(
        ("/ringtones/", "/photo_contest/", "/email_gateway/")
    )


def test_reports_answer_in_their_own_namespace():
    sender = FakeMailSender()
    root = tree(sender)
    raw = samples.blocks("skycore-api-docs/mm7DeliveryReport.examples.txt")[2]
    ctype, body = samples.http_message(raw)
    answer = http_post(root, "/ringtones/", body, {"Content-Type": ctype})
    assert answer.code == 200
    assert status_of(answer.body)[:2] == ("DeliveryReportRsp", 1000)
    assert sender.sent[0].message.get_content_type() == "multipart/report"
    ns = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-5-MM7-1-2"
    req = m.ReadReplyReq(
        message_id="1",
        recipient=m.Address("1"),
        sender=m.Address("2"),
        mm_status="Read",
    )
    ctype, body = codec.encode(m.Envelope("rr-1", req, ns))
    answer = http_post(root, "/ringtones/", body, {"Content-Type": ctype})
    assert status_of(answer.body) == ("ReadReplyRsp", 1000, ns)


def fault(
    root: Resource, body: bytes, ctype: str = "text/xml", path: str = "/ringtones/"
):
    answer = http_post(root, path, body, {"Content-Type": ctype})
    assert answer.code == 500
    assert answer.headers["content-type"] == "text/xml; charset=utf-8"
    env = codec.decode("text/xml", answer.body)
    return env


def test_bad_input_is_a_soap_fault_and_sends_nothing():
    sender = FakeMailSender()
    root = tree(sender)
    cases = [
        (b"<not xml", "text/xml", 2007),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><Envelope/>', "text/xml", 2007),
        (b"plain words", "text/plain", 4004),  # not XML: no envelope
        (b"\x00\x01", "image/png", 4004),
        (b"--x\r\n\r\nhi\r\n", "multipart/related; boundary=y", 4004),
    ]
    for body, ctype, code in cases:
        env = fault(root, body, ctype)
        assert isinstance(env.message, m.VASPErrorRsp)
        assert env.message.status.code == code, body
    assert sender.sent == []


def test_submit_on_a_vasp_path_is_unsupported():
    sender = FakeMailSender()
    ctype, body = samples.body_sample("vectorcore-mmsc/submit_req.multipart")
    env = fault(tree(sender), body, ctype)
    assert env.transaction_id == "txn-fixture"
    assert env.message.status.code == 4003  # type: ignore[union-attr]
    assert env.namespace.endswith("REL-5-MM7-1-0")
    assert sender.sent == []


def test_a_transaction_the_processor_does_not_provide_is_4003():
    @implementer(IDeliverProcessor)
    class OnlyDeliver:
        def deliver(self, request, transaction):
            return m.DeliverRsp(m.Status(1000, "Success"))

    root = build_root({"/only/": MM7Resource(OnlyDeliver(), "/only/")})
    raw = samples.blocks("skycore-api-docs/mm7DeliveryReport.examples.txt")[0]
    env = fault(root, raw, path="/only/")
    assert env.message.status.code == 4003  # type: ignore[union-attr]


def test_relay_failure_is_4006_with_no_success():
    sender = FakeMailSender(
        MM7Error(StatusCode.SERVICE_UNAVAILABLE, details="relay down")
    )
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req3.txt")
    env = fault(tree(sender), body, ctype)
    assert env.message.status == m.Status(4006, "Service unavailable", "relay down")  # type: ignore[union-attr]
    assert env.transaction_id == "4E073C7AQ479306TW26785I371H3M1HA"


def test_a_processor_that_raises_gets_a_fault_not_a_traceback():
    @implementer(IDeliverProcessor)
    class Broken:
        def deliver(self, request, transaction):
            raise RuntimeError("boom")

    root = build_root({"/b/": MM7Resource(Broken(), "/b/")})
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req1.txt")
    env = fault(root, body, ctype, path="/b/")
    assert env.message.status.code == 4000  # type: ignore[union-attr]
    assert b"boom" not in codec.encode(env)[1]


def test_an_answer_that_cannot_be_written_is_a_4000_fault_not_an_open_request():
    @implementer(IDeliverProcessor)
    class Wrong:
        def deliver(self, request, transaction):
            return "not a response"  # a processor bug, after its work is done

    root = build_root({"/w/": MM7Resource(Wrong(), "/w/")})
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req1.txt")
    env = fault(root, body, ctype, path="/w/")
    assert env.message.status.code == 4000  # type: ignore[union-attr]


def test_text_xml_cannot_carry_is_answered_replaced():
    @implementer(IDeliverProcessor)
    class Control:
        def deliver(self, request, transaction):
            return m.DeliverRsp(m.Status(1000, "Success", "relay said \x01\ud800"))

    root = build_root({"/c/": MM7Resource(Control(), "/c/")})
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req1.txt")
    answer = http_post(root, "/c/", body, {"Content-Type": ctype})
    assert answer.code == 200
    env = codec.decode(answer.headers["content-type"], answer.body)
    assert env.message.status.details == "relay said \ufffd\ufffd"  # type: ignore[union-attr]


def test_get_is_not_allowed():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.server import Site

    channel = Site(tree(FakeMailSender())).buildProtocol(
        IPv4Address("TCP", "127.0.0.1", 1)
    )
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /ringtones/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 405")


def test_unknown_path_is_404():
    answer = http_post(
        tree(FakeMailSender()), "/elsewhere/", b"<x/>", {"Content-Type": "text/xml"}
    )
    assert answer.code == 404


class Status(Resource):
    """Another application's page. (twisted.web.static.Data would do, but
    importing twisted.web.static warns: its File makes deprecated error pages.)"""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok"


def test_an_unknown_path_beside_a_nested_mm7_path_is_404():
    """The folders build_root makes answer 404 for what they do not hold."""
    root = build_root(
        {"/api/mm7/": MM7Resource(EmailProcessor(FakeMailSender(), RULES), "/api/mm7/")}
    )
    for path in ("/api/elsewhere", "/elsewhere", "/"):
        answer = http_post(root, path, b"<x/>", {"Content-Type": "text/xml"})
        assert (answer.code, answer.headers["content-type"]) == (
            404,
            "text/html; charset=utf-8",
        )


def test_mounted_next_to_another_resource():
    site_root = Resource()
    site_root.putChild(b"status", Status())
    sender = FakeMailSender()
    processor = EmailProcessor(sender, RULES)
    build_root({"/api/mm7/": MM7Resource(processor, "/api/mm7/")}, root=site_root)
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req2.txt")
    assert http_post(site_root, "/api/mm7/", body, {"Content-Type": ctype}).code == 200
    assert len(sender.sent) == 1
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.server import Site

    channel = Site(site_root).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().endswith(b"ok")


def test_a_path_bound_to_a_subclass_by_dotted_name():
    sender = FakeMailSender()
    root = tree(
        sender,
        path_processors=(
            ("/photo_contest/", "mm7tx.examples.shortcode.ShortCodeMailboxes"),
        ),
    )
    req = m.DeliverReq(
        sender=m.Address("+1555"),
        recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    )
    ctype, body = codec.encode(m.Envelope("t", req))
    http_post(root, "/photo_contest/", body, {"Content-Type": ctype})
    http_post(root, "/ringtones/", body, {"Content-Type": ctype})
    assert [s.recipients for s in sender.sent] == [
        ["contest@example.com"],
        ["7255@to.example"],
    ]
