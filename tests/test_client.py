"""The MM7 client and the ``mm7tx`` command, against servers on loopback."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from mm7tx import cli, codec
from mm7tx import messages as m
from mm7tx.client import (
    HTTPError,
    MM7Client,
    MM7ClientError,
    MM7Fault,
    NotMM7,
    TimedOut,
    Unreachable,
)
from mm7tx.config import load, with_overrides
from mm7tx.interfaces import ISubmitProcessor
from mm7tx.resource import MM7Resource, build_root
from mm7tx.service import build_service
from tests import samples
from tests.certs import make_certificate

MM7TX = str(Path(sys.executable).parent / "mm7tx")
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 120


async def serve(root: Resource) -> tuple[Any, str]:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(root)
    )
    return port, f"http://127.0.0.1:{port.getHost().port}"


@implementer(ISubmitProcessor)
class RecordingMMSC:
    """An MMSC-side processor that keeps what it was given."""

    def __init__(self) -> None:
        self.requests: list[tuple[m.SubmitReq, Any]] = []

    def submit(self, request: m.SubmitReq, transaction: Any) -> m.SubmitRsp:
        self.requests.append((request, transaction))
        return m.SubmitRsp(
            m.Status(1000, "Success"), message_id=f"MID-{len(self.requests)}"
        )


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


@pytest_twisted.ensureDeferred
async def test_submit_round_trip_is_parsed_back_identically():
    mmsc = RecordingMMSC()
    port, base = await serve(build_root({"/mm7/": MM7Resource(mmsc, "/mm7/", "mmsc")}))
    ns = "REL-5-MM7-1-2"
    client = MM7Client(
        reactor, base + "/mm7", ("vasp1", "pw"), namespace=ns, mm7_version="5.3.0"
    )
    try:
        response = await client.submit(SUBMIT)
        assert response == m.SubmitRsp(m.Status(1000, "Success"), "6.8.0", "MID-1")
        second = await client.submit(SUBMIT)
        assert second.message_id == "MID-2"
        [(got, transaction), _] = mmsc.requests
        assert got == dataclasses.replace(SUBMIT, mm7_version="5.3.0")
        assert transaction.namespace.endswith(ns)
    finally:
        await client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_deliver_and_reports_reach_the_mailbox(relay, delivery):
    http_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(Resource())
    )
    number = http_port.getHost().port
    await http_port.stopListening()
    config = with_overrides(
        load(samples.EXAMPLE_7_1.replace("}", "smtp_starttls = off\n}")),
        [f"tcp:{number}:interface=127.0.0.1"],
        relay,
    )
    service = build_service(config, reactor)
    service.startService()
    client = MM7Client(reactor, f"http://127.0.0.1:{number}/ringtones/")
    try:
        rsp = await client.deliver(
            m.DeliverReq(
                sender=m.Address("+15551234567"),
                recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
                subject="photo",
                content=(m.ContentPart("image/jpeg", JPEG, (("name", "p.jpg"),), "p"),),
            )
        )
        assert rsp.status.code == 1000
        rsp2 = await client.delivery_report(
            m.DeliveryReportReq(
                message_id="M1",
                recipient=m.Address("+1555"),
                sender=m.Address("7255"),
                mm_status="Retrieved",
            )
        )
        rsp3 = await client.read_reply(
            m.ReadReplyReq(
                message_id="M1",
                recipient=m.Address("+1555"),
                sender=m.Address("7255"),
                mm_status="Read",
            )
        )
        assert (rsp2.status.code, rsp3.status.code) == (1000, 1000)
        mail, dsn, mdn = (r.message for r in delivery.received)
        assert mail["To"] == "7255@exampleto.com"
        [jpeg] = list(mail.iter_attachments())
        assert jpeg.get_content() == JPEG
        assert dsn.get_param("report-type") == "delivery-status"
        assert mdn.get_param("report-type") == "disposition-notification"
    finally:
        await client.close()
        await service.stopService()


async def answer_of(
    resource: Resource, client_kwargs: dict[str, Any] | None = None
) -> Exception:
    port, base = await serve(build_root({"/x/": resource}))
    client = MM7Client(reactor, base + "/x/", **(client_kwargs or {}))
    try:
        with pytest.raises(MM7ClientError) as caught:
            await client.deliver(m.DeliverReq(sender=m.Address("1")))
        return caught.value
    finally:
        await client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_fault_carries_its_status():
    fault = codec.encode(
        m.Envelope(
            "t", m.VASPErrorRsp(m.Status(4006, "Service unavailable", "relay down"))
        )
    )[1]
    error = await answer_of(Canned(500, b"text/xml", fault))
    assert isinstance(error, MM7Fault)
    assert error.status == m.Status(4006, "Service unavailable", "relay down")
    assert str(error) == "4006 Service unavailable: relay down"


@pytest_twisted.ensureDeferred
async def test_401_is_an_http_error_and_basic_auth_is_sent():
    resource = Canned(401, b"text/plain", b"no")
    error = await answer_of(resource, {"credentials": ("vasp1", "pä55")})
    assert isinstance(error, HTTPError) and error.code == 401
    sent = resource.headers[0].getRawHeaders(b"authorization")[0]
    assert sent == b"Basic " + base64.b64encode("vasp1:pä55".encode())


@pytest_twisted.ensureDeferred
async def test_garbage_is_not_mm7():
    error = await answer_of(
        Canned(200, b"text/html", b"<html><body>hello</body></html>")
    )
    assert isinstance(error, NotMM7)
    error = await answer_of(Canned(502, b"text/plain", b"bad gateway"))
    assert isinstance(error, HTTPError) and error.code == 502


@pytest_twisted.ensureDeferred
async def test_the_wrong_response_type_is_not_mm7():
    body = codec.encode(m.Envelope("t", m.SubmitRsp(m.Status(1000, "Success"))))[1]
    error = await answer_of(Canned(200, b"text/xml", body))
    assert isinstance(error, NotMM7) and "SubmitRsp" in str(error)


@pytest_twisted.ensureDeferred
async def test_no_answer_times_out():
    error = await answer_of(Canned(200, b"text/xml", None), {"timeout": 0.3})
    assert isinstance(error, TimedOut)


@pytest_twisted.ensureDeferred
async def test_unreachable():
    port, base = await serve(Resource())
    await port.stopListening()
    client = MM7Client(reactor, base + "/x/")
    with pytest.raises(Unreachable) as caught:
        await client.deliver(m.DeliverReq())
    assert "cannot connect" in str(caught.value)


# The command line ----------------------------------------------------------


def test_addresses_on_the_command_line():
    assert cli.address("+15551234567") == m.Address("+15551234567", "Number")
    assert cli.address("12345") == m.Address("12345", "ShortCode")
    assert cli.address("155512345678") == m.Address("155512345678", "Number")
    assert cli.address("a@b.example").is_email
    assert cli.address("number:123") == m.Address("123", "Number")
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
    from lxml import etree

    etree.fromstring(smil.data)  # well formed


async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> tuple[str, str, int]:
    out, err, code = await getProcessOutputAndValue(
        MM7TX, args, env=env or {}, reactor=reactor
    )
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_the_command_submits_and_prints_the_answer(tmp_path):
    mmsc = RecordingMMSC()
    port, base = await serve(build_root({"/mm7/": MM7Resource(mmsc, "/mm7/", "mmsc")}))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    try:
        out, err, code = await run_cli(
            "submit",
            base + "/mm7",
            "--from",
            "12345",
            "--to",
            "+15551234567",
            "--to",
            "alice@example.com",
            "--bcc",
            "bob@example.com",
            "--subject",
            "News",
            "--text",
            "Hello",
            "--attach",
            str(photo),
            "--smil",
            "auto",
            "--delivery-report",
            "--linked-id",
            "L9",
            "--service-code",
            "gold",
            "--user",
            "vasp1",
            "--mm7-version",
            "5.3.0",
            "--namespace",
            "REL-5-MM7-1-0",
            env={"MM7TX_PASSWORD": "pw"},
        )
        assert (code, err) == (0, "")
        assert out.splitlines() == ["1000 Success", "MessageID: MID-1"]
        [(request, transaction)] = mmsc.requests
        assert request.sender_address == m.Address("12345", "ShortCode")
        assert request.recipients.to[1] == m.Address(
            "alice@example.com", "RFC2822Address"
        )
        assert request.recipients.bcc == (
            m.Address("bob@example.com", "RFC2822Address"),
        )
        assert request.delivery_report is True and request.linked_id == "L9"
        assert request.mm7_version == "5.3.0" and transaction.namespace.endswith(
            "REL-5-MM7-1-0"
        )
        assert [p.media_type for p in request.content] == [
            "application/smil",
            "text/plain",
            "image/jpeg",
        ]
        assert request.content[2].data == JPEG
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_command_under_load_prints_a_summary():
    mmsc = RecordingMMSC()
    port, base = await serve(build_root({"/mm7/": MM7Resource(mmsc, "/mm7/", "mmsc")}))
    try:
        out, err, code = await run_cli(
            "submit",
            base + "/mm7/",
            "--to",
            "1",
            "--text",
            "x",
            "--count",
            "25",
            "--concurrency",
            "3",
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "sent 25, succeeded 25, failed 0"
        assert lines[1] == "answers by status: 1000: 25"
        assert lines[3].startswith("requests/s ") and lines[4].startswith(
            "latency ms p50 "
        )
        assert len(mmsc.requests) == 25
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_command_exits_1_on_a_fault_and_on_no_server():
    fault = codec.encode(
        m.Envelope("t", m.VASPErrorRsp(m.Status(4006, "Service unavailable")))
    )[1]
    port, base = await serve(build_root({"/x/": Canned(500, b"text/xml", fault)}))
    try:
        _, err, code = await run_cli(
            "delivery-report", base + "/x/", "--message-id", "M", "--recipient", "+1555"
        )
        assert code == 1 and err.strip() == "fault 4006 Service unavailable"
    finally:
        await port.stopListening()
    _out, err, code = await run_cli(
        "read-reply", base + "/x/", "--message-id", "M", "--recipient", "+1555"
    )
    assert code == 1 and err.startswith("mm7tx: cannot connect to ")


@pytest_twisted.ensureDeferred
async def test_the_command_help_and_usage_errors():
    out, err, code = await run_cli("--help")
    assert code == 0
    for command in ("submit", "deliver", "delivery-report", "read-reply"):
        assert command in out
    out, err, code = await run_cli("submit", "http://127.0.0.1:1/mm7")
    assert code != 0 and "at least one --to" in err
    out, err, code = await run_cli(
        "submit", "http://127.0.0.1:1/", "--to", "1", "--user", "u"
    )
    assert code == 2 and "MM7TX_PASSWORD" in err


@pytest_twisted.ensureDeferred
async def test_https_with_a_ca_file(tmp_path):
    cert, key = make_certificate(tmp_path)
    options = ssl.PrivateCertificate.loadPEM(
        key.read_text() + cert.read_text()
    ).options()
    mmsc = RecordingMMSC()
    site = Site(build_root({"/mm7/": MM7Resource(mmsc, "/mm7/", "mmsc")}))
    port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(
        site
    )
    url = f"https://localhost:{port.getHost().port}/mm7/"
    trusting = MM7Client(reactor, url, ca_file=str(cert))
    doubting = MM7Client(reactor, url)
    try:
        response = await trusting.submit(SUBMIT)
        assert response.message_id == "MID-1"
        with pytest.raises(Unreachable) as caught:
            await doubting.submit(SUBMIT)
        assert str(caught.value).startswith(f"TLS with {url} failed: ")
        assert len(mmsc.requests) == 1
        out, err, code = await run_cli(
            "submit", url, "--to", "1", "--text", "x", "--ca-file", str(cert)
        )
        assert (code, out.splitlines()[0]) == (0, "1000 Success"), err
    finally:
        await trusting.close()
        await doubting.close()
        await port.stopListening()
