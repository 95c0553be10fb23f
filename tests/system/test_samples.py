"""Every reference sample is a test case.

``EXPECTED`` maps each file under ``mm7-reference/samples/`` (each fenced
block, for the Skycore docs) to what the gateway must make of it; a test
fails when a file there has no entry, so a new sample cannot go untested.

Requests are decoded and answered through the resource (VASP side over a
``FakeMailSender``, MMSC side with Basic auth); responses and faults are
read by the client's own ``MM7Client._parse``; samples broken beyond repair
get the exact fault.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import typing
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from mm7tx.gateway.processors import DSN_ACTIONS, MDN_DISPOSITIONS
from mm7tx.http.client import MM7Client, MM7Fault, NotMM7
from mm7tx.mail.wire import wire_bytes
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec import soap
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.testing import FakeMailSender, http_post
from tests import samples
from tests.http.test_mmsc import basic, mmsc
from tests.http.test_resource import tree

# Loading a case ------------------------------------------------------------


def _wrap(element: bytes) -> bytes:
    """mm7_core's bare body elements, in a SOAP envelope."""
    return (
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<e:Header/><e:Body>" + element + b"</e:Body></e:Envelope>"
    )


def load(case: str) -> tuple[str, bytes]:
    """A case as it travels: (Content-Type, HTTP body)."""
    name, _, block = case.partition("#")
    raw = samples.blocks(name)[int(block)] if block else samples.read(name)
    if raw.startswith((b"POST ", b"HTTP/")):
        ctype, body = samples.http_message(raw)
        return ctype or "", body
    if raw.lstrip().startswith(b"--"):
        return samples.body_sample(name)
    if name.startswith("mm7_core/"):
        return "text/xml", _wrap(raw)
    return "text/xml", raw


# Expectations ----------------------------------------------------------------


def answer_to(kind: type, ctype: str, body: bytes) -> tuple[Any, m.Envelope, int]:
    """Post a request where it goes: SubmitReq to the MMSC side with Basic
    auth, the rest to a VASP path.  (HTTP code, answer, emails sent)."""
    sender = FakeMailSender()
    headers = {"Content-Type": ctype}
    if kind is m.SubmitReq:
        headers.update(basic("vasp1", "secret1"))
        answer = http_post(mmsc(sender), "/mm7", body, headers)
    else:
        answer = http_post(tree(sender), "/ringtones/", body, headers)
    env = codec.decode(answer.headers["content-type"], answer.body)
    return answer.code, env, len(sender.sent)


@dataclasses.dataclass(frozen=True)
class Request:
    """Decoded as ``kind`` and answered 1000 by the resource, one email sent."""

    kind: type

    def __call__(self, case: str) -> None:
        ctype, body = load(case)
        assert isinstance(codec.decode(ctype, body).message, self.kind)
        code, env, sent = answer_to(self.kind, ctype, body)
        assert code == 200, env
        assert isinstance(env.message, m.RESPONSE_FOR[self.kind])  # type: ignore[index]
        assert env.message.status.code == 1000
        assert sent == 1


@dataclasses.dataclass(frozen=True)
class Refused:
    """Decoded as ``kind``, but the resource answers this fault, sends nothing."""

    kind: type
    code: int
    details: str

    def __call__(self, case: str) -> None:
        ctype, body = load(case)
        assert isinstance(codec.decode(ctype, body).message, self.kind)
        code, env, sent = answer_to(self.kind, ctype, body)
        assert code == 500 and env.is_fault
        assert env.message.status == m.Status(  # type: ignore[union-attr]
            self.code, StatusCode(self.code).text, self.details
        )
        assert sent == 0


def _leaves(ctype: str, body: bytes) -> list[bytes]:
    """The bytes of every leaf after the SOAP part, transfer encodings
    undone, as the standard library's MIME parser reads the sample."""
    whole = email.message_from_bytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body,
        policy=email.policy.default,
    )
    leaves = [p for p in whole.walk() if not p.is_multipart()]
    return [leaf.get_payload(decode=True) for leaf in leaves[1:]]  # type: ignore[misc]


@dataclasses.dataclass(frozen=True)
class Exact:
    """A :class:`Request` whose content is exactly the sample's (each part's
    bytes as the standard library reads them), reaches the email so (text as
    its text, anything else byte for byte), and has these field values."""

    kind: type
    fields: tuple[tuple[str, Any], ...] = ()

    def __call__(self, case: str) -> None:
        ctype, body = load(case)
        message = codec.decode(ctype, body).message
        assert isinstance(message, self.kind)
        for name, value in self.fields:
            assert getattr(message, name) == value, name
        content = message.content  # type: ignore[union-attr]
        assert [part.data for part in content] == _leaves(ctype, body)
        sender = FakeMailSender()
        headers = {"Content-Type": ctype}
        if self.kind is m.SubmitReq:
            answer = http_post(
                mmsc(sender), "/mm7", body, headers | basic("vasp1", "secret1")
            )
        else:
            answer = http_post(tree(sender), "/ringtones/", body, headers)
        env = codec.decode(answer.headers["content-type"], answer.body)
        assert answer.code == 200 and env.message.status.code == 1000  # type: ignore[union-attr]
        [sent] = sender.sent
        mail = email.message_from_bytes(
            wire_bytes(sent.message), policy=email.policy.default
        )
        leaves = [p for p in mail.walk() if not p.is_multipart()]
        assert len(leaves) == len(content)
        for leaf, part in zip(leaves, content, strict=True):
            if part.media_type.startswith("text/"):
                text = part.data.decode(part.charset or "utf-8")
                assert leaf.get_content() in (text, text + "\n")  # type: ignore[attr-defined]
            else:
                assert leaf.get_payload(decode=True) == part.data


class _CannedResponse:
    """Just enough of ``IResponse`` for ``readBody``."""

    phrase = b"OK"

    def __init__(self, code: int, ctype: str, body: bytes) -> None:
        self.code = code
        self.headers = Headers({b"content-type": [ctype.encode("latin-1")]})
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


def client_reads(
    case: str, asked: m.Request, code: int = 200
) -> defer.Deferred[m.Response]:
    """What ``MM7Client`` makes of the case as the answer to ``asked``."""
    ctype, body = load(case)
    client = MM7Client(MemoryReactorClock(), "http://mmsc.example/mm7")
    sent = m.Envelope("t", asked)
    return defer.ensureDeferred(client._parse(_CannedResponse(code, ctype, body), sent))


ASK: dict[type, m.Request] = {
    m.SubmitRsp: m.SubmitReq(),
    m.DeliverRsp: m.DeliverReq(),
    m.DeliveryReportRsp: m.DeliveryReportReq(),
    m.ReadReplyRsp: m.ReadReplyReq(),
}


@dataclasses.dataclass(frozen=True)
class Response:
    """Read by the client as ``kind`` with this status code."""

    kind: type
    code: int = 1000

    async def __call__(self, case: str) -> None:
        answer = await client_reads(case, ASK[self.kind])
        assert type(answer) is self.kind
        assert answer.status.code == self.code  # type: ignore[union-attr]


@dataclasses.dataclass(frozen=True)
class Fault:
    """A SOAP fault (sent with HTTP 500): the client raises ``MM7Fault``."""

    code: int

    async def __call__(self, case: str) -> None:
        with pytest.raises(MM7Fault) as caught:
            await client_reads(case, m.SubmitReq(), 500)
        assert caught.value.status.code == self.code
        assert isinstance(caught.value.envelope.message, m.RSErrorRsp)


@dataclasses.dataclass(frozen=True)
class Broken:
    """Beyond repair: the codec refuses it with exactly this status; a
    request is answered with that fault, a response is not MM7 to the client."""

    code: int
    details: str
    request: bool

    async def __call__(self, case: str) -> None:
        ctype, body = load(case)
        with pytest.raises(MM7Error) as caught:
            codec.decode(ctype, body)
        assert caught.value.status.code == self.code
        assert re.search(self.details, caught.value.status.details or "")
        if self.request:
            code, env, sent = answer_to(m.DeliverReq, ctype, body)
            assert code == 500 and env.is_fault and sent == 0
            assert env.message.status.code == self.code  # type: ignore[union-attr]
            assert re.search(self.details, env.message.status.details or "")  # type: ignore[union-attr]
        else:
            with pytest.raises(NotMM7, match=self.details):
                await client_reads(case, m.DeliverReq())


def _filled(cls: type) -> Any:
    """An instance of a message class with every field set."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls, vars(m))
    for field in dataclasses.fields(cls):
        hint = str(hints[field.name])
        if "Address" in hint:
            values[field.name] = m.Address("15551234567")
        elif "Recipients" in hint:
            one = (m.Address("15551234567"),)
            values[field.name] = m.Recipients(to=one, cc=one, bcc=one)
        elif "bool" in hint:
            values[field.name] = True
        elif "Status" in hint:
            values[field.name] = m.Status(1000, "Success", "ok")
        elif "ContentPart" in hint:
            values[field.name] = (m.ContentPart("text/plain", b"x"),)
        else:
            values[field.name] = "x"
    return cls(**values)


def _children(element: etree._Element) -> list[str]:
    return [etree.QName(c).localname for c in element if isinstance(c.tag, str)]


@dataclasses.dataclass(frozen=True)
class ElementOrder:
    """mm7_core's structure file (element order "from the XSD"): every
    element we write for ``kind`` is in it, in its order."""

    kind: type

    def __call__(self, case: str) -> None:
        structure = etree.fromstring(samples.read(case))
        assert etree.QName(structure).localname == self.kind.__name__
        order = _children(structure)
        xml = soap.build_envelope(m.Envelope("t", _filled(self.kind)), "cid:c")
        root = etree.fromstring(xml)
        written = _children(root.find(f"{{{soap.SOAP_ENV}}}Body")[0])  # type: ignore[index]
        assert set(written) <= set(order), set(written) - set(order)
        assert written == sorted(written, key=order.index)


def _table(case: str) -> list[list[str]]:
    """The rows of a TSV or Markdown table, header row dropped."""
    text = samples.read(case).decode("utf-8")
    if case.endswith(".tsv"):
        return [line.split("\t") for line in text.splitlines()[1:] if line]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("| -")
    ][1:]


def request_status_codes(case: str) -> None:
    """Every 3GPP code has its StatusCode with the same text (Mbuni's own
    3005 aside), and the client reads any code in a response."""
    for code, text, _cls, notes, _seen in _table(case):
        if "NOT in 3GPP" not in notes:
            assert StatusCode(int(code)).text == text
        _read_status(int(code), text)


def vendor_status_codes(case: str) -> None:
    """Skycore's codes, 25xx and 35xx ones included, read by the client."""
    rows = _table(case)
    assert len(rows) > 20
    for code, text, _details in rows:
        _read_status(int(code), text)


def _read_status(code: int, text: str) -> None:
    rsp = m.SubmitRsp(m.Status(code, text), message_id="1")
    ctype, body = codec.encode(m.Envelope("t", rsp))
    env = codec.decode(ctype, body)
    assert env.message.status == m.Status(code, text)  # type: ignore[union-attr]
    assert env.message.status.is_success == (code < 2000)  # type: ignore[union-attr]


def _report_answered(request: m.Request) -> None:
    sender = FakeMailSender()
    ctype, body = codec.encode(m.Envelope("t", request))
    answer = http_post(tree(sender), "/ringtones/", body, {"Content-Type": ctype})
    env = codec.decode(answer.headers["content-type"], answer.body)
    assert answer.code == 200 and env.message.status.code == 1000  # type: ignore[union-attr]
    assert len(sender.sent) == 1


def mm_status_values(case: str) -> None:
    """Every MMStatus value a report may carry is known and answered 1000."""
    for element, value, _notes in _table(case):
        for one in value.split(" / "):
            if element.startswith("ReadReplyReq"):
                assert one.lower() in MDN_DISPOSITIONS or one == "Indeterminate"
                request: m.Request = m.ReadReplyReq(
                    message_id="M", recipient=m.Address("1"), mm_status=one
                )
            else:
                assert one.lower() in DSN_ACTIONS
                request = m.DeliveryReportReq(
                    message_id="M", recipient=m.Address("1"), mm_status=one
                )
            _report_answered(request)


def delivery_report_statuses(case: str) -> None:
    """Skycore's MMStatus values: each known, each report answered 1000."""
    for status, _text, _description in _table(case):
        assert status.lower() in DSN_ACTIONS
        _report_answered(
            m.DeliveryReportReq(
                message_id="M", recipient=m.Address("1"), mm_status=status
            )
        )


def supported_namespaces(case: str) -> None:
    """A SubmitReq in every namespace Skycore accepts is answered 1000, in
    that namespace."""
    uris = re.findall(r"<li>(\S+)</li>", samples.read(case).decode())
    assert uris
    for uri in uris:
        sender = FakeMailSender()
        request = m.SubmitReq(
            sender_address=m.Address("12345", "ShortCode"),
            recipients=m.Recipients(to=(m.Address("15551234567"),)),
            content=(m.ContentPart("text/plain", b"hi"),),
        )
        ctype, body = codec.encode(m.Envelope("t", request, uri))
        answer = http_post(
            mmsc(sender),
            "/mm7",
            body,
            {"Content-Type": ctype, **basic("vasp1", "secret1")},
        )
        env = codec.decode(answer.headers["content-type"], answer.body)
        assert answer.code == 200 and env.namespace == uri
        assert env.message.status.code == 1000  # type: ignore[union-attr]


def smil_presentation(case: str) -> None:
    """The SMIL sample as the presentation part of a SubmitReq: the parts
    its ``cid:`` sources name travel with it and reach the email."""
    smil = samples.read(case)
    refs = re.findall(rb"src='cid:([^']+)'", smil)
    assert refs == [b"image", b"text"]
    request = m.SubmitReq(
        sender_address=m.Address("12345", "ShortCode"),
        recipients=m.Recipients(to=(m.Address("15551234567"),)),
        content=(
            m.ContentPart("application/smil", smil, (), "smil"),
            m.ContentPart("image/gif", b"GIF89a\x01\x00", (), "image"),
            m.ContentPart("text/plain", b"hello", (("charset", "us-ascii"),), "text"),
        ),
    )
    ctype, body = codec.encode(m.Envelope("t", request))
    back = codec.decode(ctype, body).message
    assert back.content[0].is_smil and back.content[0].data == smil  # type: ignore[union-attr]
    ids = {p.content_id for p in back.content}  # type: ignore[union-attr]
    assert {r.decode() for r in refs} <= ids
    sender = FakeMailSender()
    answer = http_post(
        mmsc(sender), "/mm7", body, {"Content-Type": ctype, **basic("vasp1", "secret1")}
    )
    assert answer.code == 200
    [mail] = sender.sent
    payloads = [p.get_content() for p in mail.message.walk() if not p.is_multipart()]
    assert "hello" in [p.strip() if isinstance(p, str) else p for p in payloads]
    assert b"GIF89a\x01\x00" in payloads


SKYCORE = "skycore-api-docs/"
NOT_WELL_FORMED = 2007
EXPECTED: dict[str, Callable[[str], Any]] = {
    # instantcom-mm7: the 3GPP annex and operator captures
    "instantcom-mm7/caixin.txt": Request(m.DeliverReq),
    "instantcom-mm7/deliver-req-post.txt": Request(m.DeliverReq),
    "instantcom-mm7/deliver-req1.txt": Request(m.DeliverReq),
    "instantcom-mm7/deliver-req2.txt": Request(m.DeliverReq),
    "instantcom-mm7/deliver-req3.txt": Request(m.DeliverReq),
    "instantcom-mm7/deliver-req4.txt": Request(m.DeliverReq),
    "instantcom-mm7/deliver-req5.txt": Request(m.DeliverReq),
    "instantcom-mm7/deliver-req6-hw.txt": Request(m.DeliverReq),
    "instantcom-mm7/fault.xml": Fault(4002),
    "instantcom-mm7/fault_02.xml": Fault(2002),
    "instantcom-mm7/submit-rsp.xml": Response(m.SubmitRsp),
    "instantcom-mm7/smil-sample.xml": smil_presentation,
    # instantcom-mm7's own client on the wire (its README lists the quirks)
    "instantcom-client/deliver-text-image.http": Exact(
        m.DeliverReq, (("subject", "instantcom deliver ✓"), ("priority", "Normal"))
    ),
    "instantcom-client/deliver-timestamp.http": Exact(
        m.DeliverReq, (("timestamp", "2023-11-14T22:13:20+00:00"),)
    ),
    "instantcom-client/submit-text-image.http": Exact(
        m.SubmitReq, (("subject", "instantcom submit ✓ Grüße"),)
    ),
    "instantcom-client/submit-delivery-report.http": Exact(
        m.SubmitReq,
        (("delivery_report", True), ("message_class", "Informational")),
    ),
    "instantcom-client/submit-rfc822address.http": Exact(
        m.SubmitReq,
        (
            (
                "recipients",
                m.Recipients(to=(m.Address("dave@example.com", "RFC2822Address"),)),
            ),
        ),
    ),
    # Only MM7Version goes out of the library's own report classes.
    "instantcom-client/deliveryreport-stock.http": Broken(
        4004, "^DeliveryReportReq has no MessageID, Recipient, MMStatus$", request=True
    ),
    "instantcom-client/readreply-stock.http": Broken(
        4004, "^ReadReplyReq has no MessageID, Recipient, MMStatus$", request=True
    ),
    "instantcom-client/deliveryreport-driver-save.http": Request(m.DeliveryReportReq),
    "instantcom-client/readreply-driver-save.http": Request(m.ReadReplyReq),
    # mm7_core: bare elements, and the element order from the XSD
    "mm7_core/mm7_deliver_req.xml": Request(m.DeliverReq),
    "mm7_core/mm7_deliver_res.xml": Response(m.DeliverRsp),
    "mm7_core/mm7_submit_req.xml": Request(m.SubmitReq),
    "mm7_core/mm7_submit_res.xml": Response(m.SubmitRsp),
    "mm7_core/structure_mm7_deliver_req.xml": ElementOrder(m.DeliverReq),
    "mm7_core/structure_mm7_deliver_res.xml": ElementOrder(m.DeliverRsp),
    "mm7_core/structure_mm7_submit_req.xml": ElementOrder(m.SubmitReq),
    "mm7_core/structure_mm7_submit_res.xml": ElementOrder(m.SubmitRsp),
    # Skycore docs, block by block
    # the SOAP part of #3 alone: its Content href points nowhere in bare XML
    SKYCORE + "mm7Submit.examples.txt#0": Refused(
        m.SubmitReq, 4004, "SubmitReq with Content must be multipart, not text/xml"
    ),
    SKYCORE + "mm7Submit.examples.txt#1": Response(m.SubmitRsp),
    SKYCORE + "mm7Submit.examples.txt#2": Broken(
        NOT_WELL_FORMED, "Opening and ending tag mismatch: Fault", request=False
    ),
    SKYCORE + "mm7Submit.examples.txt#3": Request(m.SubmitReq),
    SKYCORE + "mm7Submit.examples.txt#4": Response(m.SubmitRsp),
    SKYCORE + "mm7Deliver.examples.txt#0": Broken(
        NOT_WELL_FORMED, "Namespace prefix soap-env on Envelope", request=True
    ),
    SKYCORE + "mm7Deliver.examples.txt#1": Broken(
        NOT_WELL_FORMED, "23.140/    schema/REL-6-MM7-1-4' is not a valid URI", False
    ),
    SKYCORE + "mm7Deliver.examples.txt#2": Broken(
        NOT_WELL_FORMED, "Namespace prefix soap-env on Envelope", request=True
    ),
    SKYCORE + "mm7Deliver.examples.txt#3": Broken(
        NOT_WELL_FORMED, "23.140/    schema/REL-6-MM7-1-4' is not a valid URI", False
    ),
    SKYCORE + "mm7DeliveryReport.examples.txt#0": Request(m.DeliveryReportReq),
    SKYCORE + "mm7DeliveryReport.examples.txt#1": Response(m.DeliveryReportRsp),
    SKYCORE + "mm7DeliveryReport.examples.txt#2": Request(m.DeliveryReportReq),
    SKYCORE + "mm7DeliveryReport.examples.txt#3": Response(m.DeliveryReportRsp),
    SKYCORE + "MmsStatuses.table.txt": vendor_status_codes,
    SKYCORE + "DeliveryReportStatuses.table.txt": delivery_report_statuses,
    SKYCORE + "namespaces-5.3.0.txt": supported_namespaces,
    SKYCORE + "namespaces-6.8.0.txt": supported_namespaces,
    # compiled tables
    "status-codes/mm7-request-status-codes.tsv": request_status_codes,
    "status-codes/mm7-mmstatus-values.tsv": mm_status_values,
    # vectorcore-mmsc
    "vectorcore-mmsc/submit_req.multipart": Request(m.SubmitReq),
    "vectorcore-mmsc/deliver_rsp.soap": Response(m.DeliverRsp),
    "vectorcore-mmsc/delivery_report_rsp.soap": Response(m.DeliveryReportRsp),
    "vectorcore-mmsc/read_reply_rsp.soap": Response(m.ReadReplyRsp),
}


def listed_cases() -> list[str]:
    """Every file under samples/, each Skycore block apart."""
    cases = []
    for path in sorted(samples.SAMPLES.rglob("*")):
        name = path.relative_to(samples.SAMPLES).as_posix()
        if not path.is_file() or path.name == "README.md":
            continue
        if name.endswith(".examples.txt"):
            cases += [f"{name}#{i}" for i in range(len(samples.blocks(name)))]
        else:
            cases.append(name)
    return cases


def test_every_sample_has_an_expectation():
    listed = listed_cases()
    assert len(listed) > 40
    assert sorted(set(listed) - set(EXPECTED)) == []  # a sample with no test
    assert sorted(set(EXPECTED) - set(listed)) == []  # a test with no sample


@pytest.mark.parametrize("case", listed_cases())
@pytest_twisted.ensureDeferred
async def test_sample(case):
    outcome = EXPECTED[case](case)
    if isinstance(outcome, typing.Awaitable):
        await outcome
