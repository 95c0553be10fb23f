"""codec.sniff: the namespace, TransactionID and MM7Version of a request
that was not (or could not be) decoded, read safely from its raw body."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec.sniff import MAX_TRANSACTION_ID, WINDOW, Sniffed, clean_version
from mm7tx.mm7.errors import MM7Error
from tests import samples

NS = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-5-MM7-1-3"
SOAP = (
    '<?xml version="1.0"?>'
    '<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">'
    "<env:Header>"
    '<mm7:TransactionID xmlns:mm7="{ns}" env:mustUnderstand="1">{tid}'
    "</mm7:TransactionID></env:Header>"
    '<env:Body><SubmitReq xmlns="{ns}"><MM7Version>{version}</MM7Version>'
    "<Recipients><To><Number>1</Number></To></Recipients></SubmitReq>"
    "</env:Body></env:Envelope>"
)


def soap(tid: str = "tid-1", ns: str = NS, version: str = "5.6.0") -> bytes:
    return SOAP.format(tid=tid, ns=ns, version=version).encode()


def test_a_bare_xml_request():
    assert codec.sniff("text/xml", soap()) == Sniffed(NS, "tid-1", "5.6.0")


def test_the_xml_need_not_be_well_formed_nor_typed():
    broken = soap()[: soap().index(b"<Recipients>")] + b"<Recipients><To>&&<<"
    assert codec.sniff(None, broken) == Sniffed(NS, "tid-1", "5.6.0")
    assert codec.sniff("text/plain", broken) == Sniffed(NS, "tid-1", "5.6.0")


def test_nothing_from_what_is_not_mm7():
    assert codec.sniff("text/plain", b"hello, this is not XML") == Sniffed()
    assert codec.sniff("application/json", b'{"TransactionID": "x"}') == Sniffed()
    assert codec.sniff(None, b"") == Sniffed()
    assert codec.sniff("multipart/related; boundary=", b"\x00\xff" * 100) == Sniffed()


def multipart(
    soap_part: bytes, start: str | None, soap_first: bool
) -> tuple[str, bytes]:
    image = (
        b"--b\r\nContent-Type: image/jpeg\r\nContent-ID: <img>\r\n\r\n"
        # Content that looks like an Envelope of its own.
        + b"\xff\xd8 <Envelope><TransactionID>no</TransactionID>" * 3000
        + b"\r\n"
    )
    xml = (
        b"--b\r\nContent-Type: text/xml\r\nContent-ID: <soap-part>\r\n\r\n"
        + soap_part
        + b"\r\n"
    )
    body = (xml + image if soap_first else image + xml) + b"--b--\r\n"
    params = f'; start="<{start}>"' if start else ""
    return f'multipart/related; type="text/xml"; boundary=b{params}', body


@pytest.mark.parametrize("soap_first", [True, False])
def test_multipart_finds_the_start_part_wherever_it_is(soap_first):
    ctype, body = multipart(soap(), "soap-part", soap_first)
    assert codec.sniff(ctype, body) == Sniffed(NS, "tid-1", "5.6.0")


def test_multipart_without_start_reads_from_the_first_envelope():
    ctype, body = multipart(soap(), None, soap_first=True)
    assert codec.sniff(ctype, body) == Sniffed(NS, "tid-1", "5.6.0")


def test_the_operations_namespace_wins_over_the_headers():
    other = NS.replace("REL-5-MM7-1-3", "REL-5-MM7-1-0")
    body = soap().replace(
        f'<SubmitReq xmlns="{NS}"'.encode(), f'<SubmitReq xmlns="{other}"'.encode()
    )
    assert codec.sniff("text/xml", body).namespace == other


def test_a_prefixed_operation_declared_on_the_envelope():
    body = (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:p="{NS}"><soap:Header><p:TransactionID>t&amp;1&#x41;'
        "</p:TransactionID></soap:Header><soap:Body>\n  <!-- hello -->\n"
        "<p:DeliverReq><p:MM7Version> 5.3.0 </p:MM7Version></p:DeliverReq>"
        "</soap:Body></soap:Envelope>"
    ).encode()
    assert codec.sniff("text/xml", body) == Sniffed(NS, "t&1A", "5.3.0")


def test_no_namespace_unless_it_is_a_3gpp_mm7_one():
    for ns in (
        "urn:MM7Submit.Req",
        "http://evil.example/REL-5-MM7-1-3",
        NS + "/../../x",
        NS.replace("http://", "https://"),
        "x" * 5000,
    ):
        found = codec.sniff("text/xml", soap(ns=ns))
        assert found.namespace is None, ns
        # (A tag with over 4 KB of attributes is not read at all.)
        assert found.transaction_id == ("tid-1" if len(ns) < 4000 else None)


def test_the_transaction_id_is_echoed_only_when_safe():
    # Too long, control characters (raw or as references), markup, unknown
    # entities, not UTF-8: no TransactionID rather than a mangled one.
    for tid in (
        "x" * (MAX_TRANSACTION_ID + 1),
        "x" * 1_000_000,
        "a\x01b",
        "a&#1;b",
        "a&#x0;b",
        "a&#xD800;b",
        "line\r\nInjected: yes",
        "a\u2028b",
        "<b>x</b>",
        "a&nbsp;b",
        "&#99999999;",
        "",
        "   ",
    ):
        assert codec.sniff("text/xml", soap(tid=tid)).transaction_id is None, tid
    assert codec.sniff("text/xml", soap().replace(b"tid-1", b"t\xff1")) == Sniffed(
        NS, None, "5.6.0"
    )
    # Printable text of the longest length is echoed, stripped.
    longest = "é" * MAX_TRANSACTION_ID
    assert codec.sniff("text/xml", soap(tid=f" {longest}\n")).transaction_id == longest


@pytest.mark.parametrize(
    "version", ["6.8", "6.8.0.1", "v6.8.0", "1234.0.0", "", "6.8.0 x"]
)
def test_a_version_must_look_like_one(version):
    assert codec.sniff("text/xml", soap(version=version)).mm7_version is None


def test_clean_version():
    assert clean_version(" 5.6.0\n") == "5.6.0"
    assert clean_version("5.6") is None and clean_version(None) is None


def test_work_is_bounded_by_the_window():
    # Whatever comes after WINDOW bytes of the SOAP part is never read.
    late = b"<env:Envelope>" + b" " * WINDOW + soap()
    assert codec.sniff("text/xml", late) == Sniffed()
    # Megabytes of almost-tags: still an answer (and the same one).
    hostile = b"<env:Envelope><TransactionID " * 200_000
    assert codec.sniff("text/xml", hostile) == Sniffed()
    hostile = b"<x:Body><" + b"a" * 5_000_000
    assert codec.sniff("text/xml", hostile) == Sniffed()
    hostile = b'<Envelope xmlns:a="' + b"&#1;" * 1_000_000
    assert codec.sniff("text/xml", hostile) == Sniffed()


def _sample_bodies() -> list[tuple[str, str | None, bytes]]:
    found = []
    for path in sorted(samples.SAMPLES.rglob("*")):
        if path.is_dir() or path.suffix in (".tsv", ".md"):
            continue
        raw = path.read_bytes()
        name = str(path.relative_to(samples.SAMPLES))
        if raw.startswith((b"POST", b"HTTP")):
            found.append((name, *samples.http_message(raw)))
        elif raw.lstrip().startswith(b"--"):
            found.append((name, *samples.body_sample(name)))
        elif raw.lstrip().startswith(b"<"):
            found.append((name, "text/xml", raw))
    return found


def test_every_sample_sniffs_as_it_decodes():
    checked = 0
    for name, ctype, body in _sample_bodies():
        try:
            envelope = codec.decode(ctype, body)
        except MM7Error:
            continue
        message = envelope.message
        assert codec.sniff(ctype, body) == Sniffed(
            envelope.namespace, envelope.transaction_id, message.mm7_version
        ), name
        checked += 1
    assert checked >= 20


def test_a_request_built_by_the_codec_sniffs_as_sent():
    envelope = m.Envelope("tid-9", m.SubmitReq(mm7_version="5.6.0"), NS)
    ctype, body = codec.encode(envelope)
    assert codec.sniff(ctype, body) == Sniffed(NS, "tid-9", "5.6.0")
    content = (m.ContentPart("text/plain", b"hi"),)
    envelope = m.Envelope("tid-9", m.SubmitReq(content=content), NS)
    ctype, body = codec.encode(envelope)
    assert codec.sniff(ctype, body) == Sniffed(NS, "tid-9", "6.8.0")


def test_no_sample_makes_it_raise():
    for path in sorted(Path(samples.SAMPLES).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for ctype in (None, "text/xml", "multipart/related; boundary=x; start=y"):
                codec.sniff(ctype, data)
                codec.sniff(ctype, data[: len(data) // 2])
