"""The MMSC side: VASPs submit on /mm7 with URI, Basic or IP authentication."""

from __future__ import annotations

import base64
import re

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.http.auth import (
    Account,
    hash_password,
    network,
    password_matches,
    portal_for,
)
from mm7tx.http.limits import RateLimiter
from mm7tx.http.resource import MM7Resource, build_root
from mm7tx.http.site import access_log_formatter
from mm7tx.interfaces import ICancelProcessor, ISubmitProcessor
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.testing import FakeMailSender, http_post
from tests import samples

RULES = AddressRules("f@from.example", "from.example", "t@to.example", "to.example")
ACCOUNTS = (
    Account("vasp1", "secret1"),
    Account("vasp 2", "p@ss/word"),
    Account("hashed", hash_password("h4sh")),
    Account("fenced", "fence", networks=(network("10.1.0.0/16"),)),  # type: ignore[arg-type]
    Account("192.0.2.10"),
    Account("198.51.100.0/24"),
    Account("small", "s", max_message_size=2000, max_recipients=2),
)
SUBMIT = m.SubmitReq(
    sender_address=m.Address("12345", "ShortCode"),
    recipients=m.Recipients(
        to=(m.Address("+15551234567"),),
        cc=(m.Address("cc@example.com", "RFC2822Address"),),
        bcc=(m.Address("hidden@example.com", "RFC2822Address"),),
    ),
    subject="Hello",
    content=(m.ContentPart("text/plain", b"hi", (("charset", "utf-8"),), "t"),),
)


class _SyncPool:
    """A thread pool stand-in running each call at once."""

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadedReactor(MemoryReactorClock):
    """A memory reactor whose thread pool runs at once (scrypt checks)."""

    def getThreadPool(self):
        return _SyncPool()

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def mmsc(sender: FakeMailSender, processor: object = None, clock: Clock | None = None):
    processor = processor or EmailProcessor(sender, RULES)
    resource = MM7Resource(
        processor,
        "/mm7/",
        "mmsc",
        portal=portal_for(ACCOUNTS, ThreadedReactor()),  # type: ignore[arg-type]
        limiter=RateLimiter(clock or Clock()),
    )
    return build_root({"/mm7/": resource})


def submit(
    root,
    path="/mm7",
    headers=None,
    peer="127.0.0.1",
    request=SUBMIT,
    ns=m.DEFAULT_NAMESPACE,
    tid="tx-1",
):
    ctype, body = codec.encode(m.Envelope(tid, request, ns))
    answer = http_post(
        root, path, body, {"Content-Type": ctype, **(headers or {})}, peer=peer
    )
    return answer, codec.decode(answer.headers.get("content-type"), answer.body)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    "path, headers, peer",
    [
        ("/mm7/vasp1=secret1", {}, "203.0.113.5"),
        ("/mm7/vasp%202=p%40ss%2Fword", {}, "203.0.113.5"),
        ("/mm7", basic("vasp1", "secret1"), "203.0.113.5"),
        ("/mm7/", basic("hashed", "h4sh"), "203.0.113.5"),
        ("/mm7/", {}, "192.0.2.10"),
        ("/mm7", {}, "198.51.100.77"),
        ("/mm7/fenced=fence", {}, "10.1.2.3"),
    ],
)
def test_each_way_in(path, headers, peer):
    sender = FakeMailSender()
    answer, env = submit(mmsc(sender), path, headers, peer)
    assert answer.code == 200, answer.body
    assert isinstance(env.message, m.SubmitRsp)
    assert env.message.status.code == 1000 and env.message.message_id
    assert len(sender.sent) == 1


@pytest.mark.parametrize(
    "path, headers, peer",
    [
        ("/mm7/vasp1=wrong", {}, "203.0.113.5"),
        ("/mm7", basic("vasp1", "wrong"), "203.0.113.5"),
        ("/mm7", basic("hashed", "wrong"), "203.0.113.5"),
        ("/mm7/nobody=secret1", {}, "203.0.113.5"),
        ("/mm7/fenced=fence", {}, "10.2.0.1"),  # right password, wrong network
        ("/mm7", {}, "203.0.113.5"),  # no credentials, unknown address
        ("/mm7/vasp1=wrong", {}, "192.0.2.10"),  # wrong password from an IP account
        ("/mm7", basic("vasp1", "wrong"), "198.51.100.1"),
        ("/mm7", {"Authorization": "Basic !!!notbase64"}, "192.0.2.10"),
        ("/mm7", {"Authorization": "Bearer abc"}, "192.0.2.10"),
    ],
)
def test_each_wrong_way_is_refused(path, headers, peer):
    sender = FakeMailSender()
    answer, env = submit(mmsc(sender), path, headers, peer)
    assert answer.code == 401
    assert answer.headers["www-authenticate"] == 'Basic realm="mm7tx"'
    assert isinstance(env.message, m.RSErrorRsp)
    assert env.message.status.code == 4001
    assert sender.sent == []


def test_submit_becomes_one_email():
    sender = FakeMailSender()
    _, env = submit(mmsc(sender), "/mm7/vasp1=secret1")
    [mail] = sender.sent
    assert mail.sender == "12345@from.example"
    assert mail.recipients == [
        "15551234567@to.example",
        "cc@example.com",
        "hidden@example.com",
    ]
    assert mail.message["To"] == "15551234567@to.example"
    assert mail.message["Cc"] == "cc@example.com"
    assert "hidden" not in mail.message.as_string()
    assert mail.message["X-MM7-MessageID"] == env.message.message_id  # type: ignore[union-attr]
    assert mail.message["X-MM7-VASP-Account"] == "vasp1"


def test_message_ids_are_unique():
    # Each its own transaction: a retry of one (the same TransactionID and
    # content) gets the same MessageID (tests/test_once.py).
    root = mmsc(FakeMailSender())
    ids = {
        submit(root, "/mm7/vasp1=secret1", tid=f"tx-{n}")[1].message.message_id  # type: ignore[union-attr]
        for n in range(20)
    }
    assert len(ids) == 20


def test_post_without_content_length_is_411():
    channel = Site(mmsc(FakeMailSender())).buildProtocol(
        IPv4Address("TCP", "192.0.2.10", 1)
    )
    transport = StringTransport()
    channel.makeConnection(transport)
    _, body = codec.encode(m.Envelope("t", SUBMIT))
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    channel.dataReceived(
        b"POST /mm7 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/related; boundary=x\r\n\r\n" + chunk
    )
    assert transport.value().startswith(b"HTTP/1.1 411 ")


def test_bare_xml_is_only_for_requests_without_content():
    sender = FakeMailSender()
    root = mmsc(sender)
    xml = samples.blocks("skycore-api-docs/mm7Submit.examples.txt")[0]
    answer = http_post(root, "/mm7/vasp1=secret1", xml, {"Content-Type": "text/xml"})
    env = codec.decode("text/xml", answer.body)
    assert env.message.status.code == 4004  # type: ignore[union-attr]
    assert "must be multipart" in env.message.status.details  # type: ignore[union-attr]
    no_content = xml.replace(
        b'<Content allowAdaptations="false" href="cid:generic" />', b""
    )
    answer = http_post(
        root, "/mm7/vasp1=secret1", no_content, {"Content-Type": "text/xml"}
    )
    assert answer.code == 200 and len(sender.sent) == 1


def test_a_submit_without_recipients_is_refused():
    sender = FakeMailSender()
    _, env = submit(
        mmsc(sender), "/mm7/vasp1=secret1", request=m.SubmitReq(subject="x")
    )
    assert env.message.status == m.Status(  # type: ignore[union-attr]
        2002, "No recipient", "the SubmitReq names no To, Cc or Bcc recipient"
    )
    assert sender.sent == []


def test_account_limits():
    sender = FakeMailSender()
    root = mmsc(sender)
    big = m.SubmitReq(
        recipients=m.Recipients(to=(m.Address("1"),)),
        content=(m.ContentPart("image/jpeg", b"\xff" * 5000),),
    )
    _, env = submit(root, "/mm7/small=s", request=big)
    assert env.message.status.code == 2004  # type: ignore[union-attr]
    many = m.SubmitReq(
        recipients=m.Recipients(to=(m.Address("1"), m.Address("2"), m.Address("3")))
    )
    _, env = submit(root, "/mm7/small=s", request=many)
    assert env.message.status.code == 2001  # type: ignore[union-attr]
    assert "3 recipients" in env.message.status.details  # type: ignore[union-attr]
    assert sender.sent == []


def test_rate_limit_gives_4006_saying_why():
    clock = Clock()
    sender = FakeMailSender()
    resource = MM7Resource(
        EmailProcessor(sender, RULES),
        "/mm7/",
        "mmsc",
        portal=portal_for((Account("quick", "q", rate=2),), ThreadedReactor()),  # type: ignore[arg-type]
        limiter=RateLimiter(clock),
    )
    root = build_root({"/mm7/": resource})
    codes = [submit(root, "/mm7/quick=q")[1].message.status.code for _ in range(3)]  # type: ignore[union-attr]
    assert codes == [1000, 1000, 4006]
    _, env = submit(root, "/mm7/quick=q")
    assert env.message.status.text == "Rate limit of 2 requests/s exceeded"  # type: ignore[union-attr]
    clock.advance(1.0)
    assert submit(root, "/mm7/quick=q")[1].message.status.code == 1000  # type: ignore[union-attr]


def test_cancel_and_replace_are_unsupported_by_email_but_a_processor_may_do_them():
    sender = FakeMailSender()
    cancel = m.CancelReq(vasp_id="v", message_id="M1")
    replace = m.ReplaceReq(message_id="M1")
    for request in (cancel, replace):
        _, env = submit(mmsc(sender), "/mm7/vasp1=secret1", request=request)
        assert env.message.status.code == 4003  # type: ignore[union-attr]

    @implementer(ISubmitProcessor, ICancelProcessor)
    class Recalling(EmailProcessor):
        def cancel(self, request, transaction):
            return m.CancelRsp(
                m.Status(1000, "Success", f"recalled {request.message_id}")
            )

    processor = Recalling(sender, RULES)
    assert verifyObject(ICancelProcessor, processor)
    _, env = submit(mmsc(sender, processor), "/mm7/vasp1=secret1", request=cancel)
    assert env.message == m.CancelRsp(m.Status(1000, "Success", "recalled M1"))


def test_deliver_on_an_mmsc_path_is_4003():
    ctype, body = samples.body_sample("instantcom-mm7/deliver-req1.txt")
    answer = http_post(
        mmsc(FakeMailSender()), "/mm7/vasp1=secret1", body, {"Content-Type": ctype}
    )
    env = codec.decode("text/xml", answer.body)
    assert isinstance(env.message, m.RSErrorRsp) and env.message.status.code == 4003


def submit_samples() -> list[tuple[str, str, bytes]]:
    """Every SubmitReq in the reference samples, as (name, Content-Type, body)."""
    out = []
    ctype, body = samples.body_sample("vectorcore-mmsc/submit_req.multipart")
    out.append(("vectorcore", ctype, body))
    raw = samples.blocks("skycore-api-docs/mm7Submit.examples.txt")[3]
    http_type, body = samples.http_message(raw)
    assert http_type is not None
    out.append(("skycore-http", http_type, body))
    # The Skycore SOAP part alone, sent with a content part as it would travel.
    soap = samples.blocks("skycore-api-docs/mm7Submit.examples.txt")[0]
    body = (
        b"--b\r\nContent-Type: text/xml\r\n\r\n" + soap + b"\r\n--b\r\n"
        b"Content-Type: text/plain\r\nContent-ID: <generic>\r\n\r\nhello\r\n--b--\r\n"
    )
    out.append(("skycore-soap", "multipart/related; boundary=b", body))
    # mm7_core's bare SubmitReq element, in an envelope.
    element = samples.read("mm7_core/mm7_submit_req.xml")
    envelope = (
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Header/>'
        b"<e:Body>" + element + b"</e:Body></e:Envelope>"
    )
    out.append(("mm7_core", "text/xml", envelope))
    return out


@pytest.mark.parametrize(
    "name, ctype, body",
    submit_samples(),
    ids=lambda x: x if isinstance(x, str) and len(x) < 20 else "",
)
def test_every_submit_sample_is_accepted(name, ctype, body):
    sender = FakeMailSender()
    answer = http_post(
        mmsc(sender), "/mm7", body, {"Content-Type": ctype, **basic("vasp1", "secret1")}
    )
    env = codec.decode(answer.headers["content-type"], answer.body)
    assert answer.code == 200, env
    assert env.message.status.code == 1000  # type: ignore[union-attr]
    [mail] = sender.sent
    sent = codec.decode(ctype, body).message
    assert len(mail.recipients) == len(sent.recipients.all)  # type: ignore[union-attr]


def test_passwords_are_checked_in_constant_time_and_hashed():
    stored = hash_password("pw")
    assert stored.startswith("scrypt$") and stored != hash_password("pw")  # salted
    assert password_matches(stored, "pw") and not password_matches(stored, "pW")
    assert password_matches("plain", "plain") and not password_matches("plain", "plai")


def test_the_access_log_hides_the_password_in_the_uri():
    requests = []

    class Capture(Site):
        def log(self, request):  # type: ignore[override]
            requests.append(access_log_formatter("-", request))

    site = Capture(mmsc(FakeMailSender()))
    channel = site.buildProtocol(IPv4Address("TCP", "1.2.3.4", 1))
    channel.makeConnection(StringTransport())
    _, body = codec.encode(m.Envelope("t", SUBMIT))
    channel.dataReceived(
        b"POST /mm7/vasp1=secret1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Content-Type: text/xml\r\n\r\n%s" % (len(body), body)
    )
    assert requests and "secret1" not in requests[0]
    assert re.search(r'"POST /mm7/vasp1=\*\*\* HTTP/1.1"', requests[0])


class ReportRecorder:
    """A DeliveryReporter stand-in keeping what it was asked to post."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, m.DeliveryReportReq]] = []

    def report(self, account, request, namespace):
        self.reports.append((account.name, request))


REPORTING = Account("v", "p", delivery_report_url="http://vasp.example/dr")
ASKING = m.SubmitReq(
    sender_address=m.Address("777", "ShortCode"),
    recipients=m.Recipients(
        to=(m.Address("+1555"),), cc=(m.Address("a@b.example", "RFC2822Address"),)
    ),
    delivery_report=True,
)


def test_reports_go_only_for_a_message_id_the_vasp_was_given():
    from mm7tx.mm7.errors import MM7Error
    from mm7tx.mm7.status import StatusCode
    from mm7tx.transaction import Transaction

    tx = Transaction("t", "/mm7/", account=REPORTING)
    recorder = ReportRecorder()

    def submit(sender: FakeMailSender, request: m.SubmitReq = ASKING):
        processor = EmailProcessor(sender, RULES, reporter=recorder)  # type: ignore[arg-type]
        d = processor.submit(request, tx)
        out: list[object] = []
        d.addBoth(out.append)
        return out[0]

    answer = submit(FakeMailSender())
    assert isinstance(answer, m.SubmitRsp)
    assert [(name, r.mm_status) for name, r in recorder.reports] == [
        ("v", "Forwarded"),
        ("v", "Forwarded"),
    ]
    assert {r.message_id for _, r in recorder.reports} == {answer.message_id}
    assert recorder.reports[0][1].recipient == m.Address("+1555")
    assert recorder.reports[0][1].sender == m.Address("777", "ShortCode")
    # A fault, permanent (every recipient refused) or transient, told the
    # VASP no MessageID: nothing to report on.  Nor when none was asked.
    for error in (StatusCode.ADDRESS_ERROR, StatusCode.SERVICE_UNAVAILABLE):
        recorder.reports.clear()
        failure = submit(FakeMailSender(MM7Error(error)))
        assert isinstance(failure, Failure) and failure.check(MM7Error)
        assert recorder.reports == []
    submit(FakeMailSender(), m.SubmitReq(recipients=ASKING.recipients))
    assert recorder.reports == []


def test_a_partial_success_reports_each_recipient_as_the_relay_answered_it():
    from twisted.internet import defer

    from mm7tx.interfaces import SendResult
    from mm7tx.transaction import Transaction

    class Partial(FakeMailSender):
        def send(self, sender, recipients, message):
            refused = (("a@b.example", 550, "no such user"),)
            return defer.succeed(SendResult(("1555@to.example",), refused))

    recorder = ReportRecorder()
    processor = EmailProcessor(Partial(), RULES, reporter=recorder)  # type: ignore[arg-type]
    tx = Transaction("t", "/mm7/", account=REPORTING)
    out: list[m.SubmitRsp] = []
    processor.submit(ASKING, tx).addCallback(out.append)
    [answer] = out
    assert answer.status.code == 1100
    assert [(r.recipient.value, r.mm_status) for _, r in recorder.reports] == [
        ("+1555", "Forwarded"),
        ("a@b.example", "Rejected"),
    ]
    assert {r.message_id for _, r in recorder.reports} == {answer.message_id}


def test_no_report_when_the_vasp_was_gone_before_its_answer():
    from twisted.internet import defer

    from mm7tx.interfaces import SendResult

    class Held(FakeMailSender):
        def __init__(self) -> None:
            super().__init__()
            self.pending: list[defer.Deferred[SendResult]] = []

        def send(self, sender, recipients, message):
            d: defer.Deferred[SendResult] = defer.Deferred()
            self.pending.append(d)
            return d

    held = Held()
    recorder = ReportRecorder()
    processor = EmailProcessor(held, RULES, reporter=recorder)  # type: ignore[arg-type]
    resource = MM7Resource(
        processor,
        "/mm7/",
        "mmsc",
        portal=portal_for((REPORTING,), ThreadedReactor()),  # type: ignore[arg-type]
    )
    for lose in (False, True):
        site = Site(build_root({"/mm7/": resource}))
        channel = site.buildProtocol(IPv4Address("TCP", "1.2.3.4", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        _, body = codec.encode(m.Envelope("t", ASKING))
        channel.dataReceived(
            b"POST /mm7/v=p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Content-Type: text/xml\r\n\r\n%s" % (len(body), body)
        )
        if lose:
            channel.connectionLost(Failure(ConnectionError("gone")))
        held.pending.pop().callback(SendResult(("1555@to.example", "a@b.example")))
        assert (b"SubmitRsp" in transport.value()) is not lose
    # Reported for the answered one only.
    assert len(recorder.reports) == 2
    assert len({r.message_id for _, r in recorder.reports}) == 1
