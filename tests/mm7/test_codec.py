"""The MM7 codec: every reference sample, every transaction, every namespace."""

from __future__ import annotations

import dataclasses

import pytest
from lxml import etree

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec import soap
from mm7tx.mm7.errors import MM7Error
from tests import samples

NAMESPACES = [
    line.split("\t")[0]
    for line in (samples.REFERENCE / "schemas" / "namespaces.tsv")
    .read_text()
    .splitlines()[1:]
    if line.startswith("http://www.3gpp.org")
]


def test_the_namespace_list_is_read():
    assert len(NAMESPACES) == 12


# Every DeliverReq sample ---------------------------------------------------


def test_annex_example_post_with_cid_typo_falls_back_to_the_only_part():
    ctype, body = samples.http_message(
        samples.read("instantcom-mm7/deliver-req-post.txt")
    )
    env = codec.decode(ctype, body)
    req = env.message
    assert isinstance(req, m.DeliverReq)
    assert env.transaction_id == "vas00324-dlvr"
    assert env.namespace.endswith("REL-6-MM7-1-4")
    assert req.mm7_version == "6.7.0"
    assert req.vasp_id == "TNN" and req.vas_id == "Reminder"
    assert req.linked_id == "wthr8391"
    assert req.sender == m.Address("97254265781@OMMS.com", "RFC2822Address")
    assert req.subject == "Weather Forecast"
    assert [p.data for p in req.content] == [b"Los Angeles, Calif, USA "]


def test_nested_multipart_mixed_with_base64_gif():
    env = codec.decode(*samples.body_sample("instantcom-mm7/deliver-req2.txt"))
    content = env.message.content  # type: ignore[union-attr]
    assert [p.media_type for p in content] == ["text/plain", "image/gif"]
    # The blank line before the next boundary belongs to the text.
    assert content[0].data == b"Science news, new Saturn pictures...\n"
    assert content[1].data.startswith(b"GIF87a")
    assert content[1].content_id == "saturn.gif"


def test_nokia_prefixed_elements_and_content_location_parts():
    env = codec.decode(*samples.body_sample("instantcom-mm7/deliver-req3.txt"))
    req = env.message
    assert isinstance(req, m.DeliverReq)
    assert env.transaction_id == "4E073C7AQ479306TW26785I371H3M1HA"
    assert req.sender == m.Address("+3859100010010/TYPE=PLMN", "Number")
    assert req.sender.digits == "3859100010010"
    assert req.recipients.to == (m.Address("88888/TYPE=PLMN", "Number"),)
    assert req.mms_relay_server_id == "Nokia MMS Center MC5.0"
    gif = req.content[1]
    assert gif.content_location == "Bomb.gif" and gif.content_id is None
    assert gif.data.startswith(b"GIF89a") and len(gif.data) == 4148
    assert req.content[0].is_smil


def test_deliver_without_sender_or_recipients():
    env = codec.decode(*samples.body_sample("instantcom-mm7/deliver-req4.txt"))
    req = env.message
    assert isinstance(req, m.DeliverReq)
    assert req.sender is None and req.recipients.all == ()
    jpeg = req.content[0]
    assert jpeg.media_type == "image/jpeg" and jpeg.data[:3] == b"\xff\xd8\xff"


def test_raw_binary_part_and_content_id_without_brackets():
    ctype, raw = samples.body_sample("instantcom-mm7/deliver-req5.txt")
    env = codec.decode(ctype, raw)
    req = env.message
    assert isinstance(req, m.DeliverReq)
    assert req.recipients.to == (m.Address("121399", "ShortCode"),)
    jpeg = req.content[1]
    # The part has no Content-Transfer-Encoding: its bytes are taken as they are,
    # up to the CRLF that belongs to the next boundary.
    start = raw.index(b"Content-Location: DCIM_11.jpg\r\n\r\n") + 33
    end = raw.index(b"\r\n------=_Part_25_182972131.1346680532641--")
    assert jpeg.data == raw[start:end]
    assert len(jpeg.data) > 10000


def test_huawei_bare_text_sender_and_cc_bcc():
    env = codec.decode(*samples.body_sample("instantcom-mm7/deliver-req6-hw.txt"))
    req = env.message
    assert isinstance(req, m.DeliverReq)
    assert env.namespace.endswith("REL-5-MM7-1-0")
    assert req.mm7_version == "5.2.0"
    assert req.sender == m.Address("13951900000", "Number")
    assert req.recipients == m.Recipients(
        to=(m.Address("13900000001"),),
        cc=(m.Address("13900000003"),),
        bcc=(m.Address("13900000002"),),
    )
    assert req.subject == "This is a test" and req.priority == "Low"


def test_china_mobile_8bit_jpeg_and_no_space_headers():
    ctype, raw = samples.body_sample("instantcom-mm7/caixin.txt")
    env = codec.decode(ctype, raw)
    req = env.message
    assert isinstance(req, m.DeliverReq)
    assert env.namespace.endswith("REL-6-MM7-1-0")
    assert req.sender == m.Address("+8618703815655", "Number")
    assert req.recipients.to == (m.Address("10085"),)
    types = [p.media_type for p in req.content]
    assert types == ["application/smil", "image/jpeg", "text/plain"]
    jpeg = req.content[1]
    assert jpeg.data[:4] == b"\xff\xd8\xff\xe0" and jpeg.data in raw


def test_skycore_deliver_is_broken_beyond_repair():
    ctype, body = samples.http_message(
        samples.blocks("skycore-api-docs/mm7Deliver.examples.txt")[2]
    )
    with pytest.raises(MM7Error) as caught:
        codec.decode(ctype, body)
    assert caught.value.status.code == 2007
    assert "not well formed" in (caught.value.status.details or "")


# Reports -------------------------------------------------------------------


def test_skycore_delivery_report_multipart_without_boundary():
    raw = samples.blocks("skycore-api-docs/mm7DeliveryReport.examples.txt")[2]
    ctype, body = samples.http_message(raw)
    assert ctype is not None and "boundary" not in ctype
    env = codec.decode(ctype, body)
    assert env.message == m.DeliveryReportReq(
        mm7_version="6.8.0",
        message_id="369500617770864640",
        recipient=m.Address("16175550123"),
        sender=m.Address("111122"),
        date="2015-03-16T14:03:51.749Z",
        mm_status="Retrieved",
        status_text="Success",
    )


def test_bare_text_xml_report():
    body = samples.blocks("skycore-api-docs/mm7DeliveryReport.examples.txt")[0]
    env = codec.decode("text/xml", body)
    assert isinstance(env.message, m.DeliveryReportReq)
    assert env.transaction_id == "10000001"


# Submit and responses --------------------------------------------------------


def test_vectorcore_submit_with_unqualified_children():
    env = codec.decode(*samples.body_sample("vectorcore-mmsc/submit_req.multipart"))
    req = env.message
    assert isinstance(req, m.SubmitReq)
    assert req.sender_address == m.Address("12345", "ShortCode")
    assert req.vasp_id == "vasp-001"
    assert req.content[0].data == b"hello from fixture"


@pytest.mark.parametrize(
    "name, cls",
    [
        ("deliver_rsp", m.DeliverRsp),
        ("delivery_report_rsp", m.DeliveryReportRsp),
        ("read_reply_rsp", m.ReadReplyRsp),
    ],
)
def test_vectorcore_responses(name, cls):
    env = codec.decode("text/xml", samples.read(f"vectorcore-mmsc/{name}.soap"))
    assert isinstance(env.message, cls)
    assert env.message.status == m.Status(1000, "Success")


@pytest.mark.parametrize("name, code", [("fault.xml", 4002), ("fault_02.xml", 2002)])
def test_faults_as_other_servers_send_them(name, code):
    env = codec.decode("text/xml", samples.read(f"instantcom-mm7/{name}"))
    assert env.is_fault
    assert isinstance(env.message, m.RSErrorRsp)
    assert env.message.status.code == code


# Round trips: build every transaction in every namespace, parse it back ------

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40
REQUESTS = [
    m.DeliverReq(
        mms_relay_server_id="relay",
        linked_id="L1",
        sender=m.Address("+44 7700 900123/TYPE=PLMN"),
        recipients=m.Recipients(
            to=(m.Address("7255", "ShortCode"),),
            cc=(m.Address("a@example.com", "RFC2822Address"),),
        ),
        timestamp="2026-04-13T14:35:21+03:00",
        priority="High",
        subject="Grüße \u4f60\u597d",
        content=(
            m.ContentPart(
                "text/plain", b"hello\r\nworld", (("charset", "utf-8"),), "t1"
            ),
            m.ContentPart("image/jpeg", JPEG, (("name", "p.jpg"),), "img", "p.jpg"),
            m.ContentPart("application/smil", b"<smil/>", (), "smil"),
        ),
    ),
    m.DeliveryReportReq(
        mms_relay_server_id="relay",
        message_id="M1",
        recipient=m.Address("+15551234567"),
        sender=m.Address("12345", "ShortCode"),
        date="2026-01-01T00:00:00Z",
        mm_status="Retrieved",
        status_text="ok",
    ),
    m.ReadReplyReq(
        message_id="M2",
        recipient=m.Address("+15551234567"),
        sender=m.Address("12345", "ShortCode"),
        timestamp="2026-01-01T00:00:00Z",
        mm_status="Read",
    ),
    m.SubmitReq(
        vasp_id="vasp1",
        vas_id="svc",
        sender_address=m.Address("12345", "ShortCode"),
        recipients=m.Recipients(
            to=(m.Address("+15551234567"),),
            bcc=(m.Address("b@example.com", "RFC2822Address", True),),
        ),
        service_code="gold",
        delivery_report=True,
        read_reply=False,
        subject="hi",
        content=(m.ContentPart("text/plain", b"just text"),),
    ),
    m.CancelReq(
        vasp_id="vasp1", sender_address=m.Address("12345", "ShortCode"), message_id="M3"
    ),
    m.ReplaceReq(
        vasp_id="vasp1",
        message_id="M4",
        read_reply=True,
        content=(m.ContentPart("image/gif", b"GIF89a\x00\x01", (), "g"),),
    ),
]
STATUS = m.Status(1000, "Success", "all good")
RESPONSES = [
    m.DeliverRsp(STATUS, service_code="sc"),
    m.DeliveryReportRsp(STATUS),
    m.ReadReplyRsp(STATUS),
    m.SubmitRsp(STATUS, message_id="abc123"),
    m.CancelRsp(STATUS),
    m.ReplaceRsp(STATUS),
    m.VASPErrorRsp(m.Status(4006, "Service unavailable", "relay down")),
    m.RSErrorRsp(m.Status(2002, "Address Error")),
]


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize(
    "message", REQUESTS + RESPONSES, ids=lambda x: type(x).__name__
)
def test_round_trip(message, namespace):
    envelope = m.Envelope("tx-1", message, namespace)
    ctype, body = codec.encode(envelope)
    back = codec.decode(ctype, body)
    assert back.transaction_id == "tx-1"
    assert back.namespace == namespace
    assert back.message == message


def test_response_is_in_the_request_namespace_with_unprefixed_children():
    ns = NAMESPACES[0]
    _, body = codec.encode(m.Envelope("t", m.DeliverRsp(STATUS), ns))
    root = etree.fromstring(body)
    rsp = root.find(f"{{{soap.SOAP_ENV}}}Body/{{{ns}}}DeliverRsp")
    assert rsp is not None and rsp.prefix is None
    assert rsp.findtext(f"{{{ns}}}Status/{{{ns}}}StatusCode") == "1000"


def test_fault_is_soap_fault_with_detail():
    ns = NAMESPACES[-1]
    _, body = codec.encode(
        m.Envelope("t", m.VASPErrorRsp(m.Status(4004, "Validation error")), ns)
    )
    root = etree.fromstring(body)
    fault = root.find(f"{{{soap.SOAP_ENV}}}Body/{{{soap.SOAP_ENV}}}Fault")
    assert fault is not None
    assert fault.findtext("faultcode") == "env:Client"
    assert (
        fault.findtext(f"detail/{{{ns}}}VASPErrorRsp/{{{ns}}}Status/{{{ns}}}StatusCode")
        == "4004"
    )


def test_content_is_multipart_related_with_start_and_nested_content():
    ctype, body = codec.encode(m.Envelope("t", REQUESTS[0]))
    assert ctype.startswith("multipart/related") and "start=" in ctype
    assert b"multipart/related" in body and b'type="application/smil"' in body


# Bad input -------------------------------------------------------------------

ENVELOPE = (
    b'<?xml version="1.0"?><e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/">'
    b"<e:Header/><e:Body>%s</e:Body></e:Envelope>"
)


@pytest.mark.parametrize(
    "ctype, body, code, words",
    [
        ("text/xml", b"<e:Envelope", 2007, "not well formed"),
        (
            "text/xml",
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
            b'"&lol;&lol;&lol;&lol;">]><Envelope>&lol2;</Envelope>',
            2007,
            "DTD",
        ),
        (
            "text/xml",
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b"<Envelope>&xxe;</Envelope>",
            2007,
            "DTD",
        ),
        (
            "application/octet-stream",
            b"\x00\x01garbage",
            4004,
            "neither multipart nor XML",
        ),
        (
            "multipart/related; boundary=abc",
            b"no boundary here at all",
            4004,
            "not MIME",
        ),
        (
            "multipart/related; boundary=abc",
            b"--abc\r\nContent-Type: text/plain\r\n\r\nhi\r\n--abc--\r\n",
            4004,
            "not XML",
        ),
        # Text that is not XML at all is no SOAP envelope (4004); XML that
        # is not well formed is a corrupt one (2007).
        ("text/plain", b"Please deliver this MMS, thanks", 4004, "not XML"),
        ("text/plain", b'{"TransactionID": "t"}', 4004, "not XML"),
        ("text/xml", b"\xef\xbb\xbf  \n hello <e:Envelope/>", 4004, "not XML"),
        ("text/plain", b" \r\n<e:Envelope><e:Body>", 2007, "not well formed"),
        ("text/xml", b"\xef\xbb\xbf\n<e:Envelope", 2007, "not well formed"),
        ("text/xml", b"\xff\xfe<\x00e\x00", 2007, "not well formed"),
        (
            "multipart/related; boundary=abc",
            b"--abc\r\nContent-Type: text/xml\r\n\r\n<x/>\r\n--abc\r\n",
            4004,
            "truncated",
        ),
        ("text/xml", ENVELOPE % b"<Foo xmlns='urn:x'/>", 4003, "Foo"),
        ("text/xml", ENVELOPE % b"", 4004, "Body is empty"),
        ("text/xml", b"", 4004, "empty"),
        ("text/xml", b"<NotSoap/>", 4004, "not a SOAP Envelope"),
    ],
)
def test_bad_input_gets_the_right_status(ctype, body, code, words):
    with pytest.raises(MM7Error) as caught:
        codec.decode(ctype, body)
    assert caught.value.status.code == code
    assert words in (caught.value.status.details or "")


def test_the_parser_never_resolves_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    doc = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "'
        + secret.as_uri().encode()
        + b'">]><Envelope>&xxe;</Envelope>'
    )
    with pytest.raises(MM7Error) as caught:
        soap.parse_xml(doc)
    assert "TOPSECRET" not in str(caught.value)


def test_address_digits():
    assert m.Address("+44 7700/TYPE=PLMN").digits == "447700"
    assert m.Address.guess("a@b.c").is_email
    assert dataclasses.replace(m.Address("1"), kind="ShortCode").digits == "1"


def _split_all(ctype, body):
    from mm7tx.mm7.codec import mime

    soap_xml, parts = mime.split(ctype, body)
    return soap_xml, [
        (p.media_type, p.data, p.params, p.content_id, p.content_location)
        for p in mime.resolve_content(None, parts)
    ]


def test_the_multipart_reader_agrees_with_the_email_parser_on_the_samples():
    from mm7tx.mm7.codec import mime
    from tests.fuzzing import SAMPLES, email_split

    multipart = 0
    for ctype, body in SAMPLES:
        try:
            ours = _split_all(ctype, body)
        except MM7Error as e:
            ours = e.status
        if not ctype.lower().startswith("multipart/"):
            continue
        multipart += 1
        try:
            soap_xml, parts = email_split(ctype, body)
            theirs = (
                soap_xml,
                [
                    (p.media_type, p.data, p.params, p.content_id, p.content_location)
                    for p in mime.resolve_content(None, parts)
                ],
            )
        except MM7Error as e:
            theirs = e.status
        assert ours == theirs, ctype
    assert multipart >= 7


_S = b"Content-Type: text/xml\r\n\r\n<x/>\r\n"
# Bodies where the email package reads MIME its own way: mm7tx's reader must
# read them the same (found in review of the reader).
_QUIRKS = {
    "a close right after a delimiter is skipped": b"--b\r\n" + _S + b"--b\r\n--b--\r\n",
    "blanks after a delimiter": b"--b\r\n"
    + _S
    + b"--b"
    + b" " * 300
    + b"\r\nContent-Type: image/gif\r\n\r\nGIF\r\n--b--\r\n",
    "a nested multipart closed first is its text": b"--b\r\n"
    + _S
    + b"--b\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\npre\r\n--i--\r\n"
    b"--i\r\n\r\nX\r\n--i--\r\n--b--\r\n",
    "an empty nested boundary": b"--b\r\n"
    + _S
    + b'--b\r\nContent-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n'
    b"Content-Type: image/gif\r\n\r\nGIF\r\n----\r\n--b--\r\n",
    "a folded nested boundary": b"--b\r\n"
    + _S
    + b'--b\r\nContent-Type: multipart/mixed; boundary="i\r\n x"\r\n\r\n--i\r\n'
    b" x\r\n\r\nGIF\r\n--i\r\n x--\r\n--b--\r\n",
    "an RFC 2231 nested boundary": b"--b\r\n"
    + _S
    + b"--b\r\nContent-Type: multipart/mixed; boundary*=utf-8''%C3%A9\r\n\r\n"
    b"--\xc3\xa9\r\n\r\nGIF\r\n--\xc3\xa9--\r\n--b--\r\n",
    "a From line ends the headers": b"--b\r\nContent-Type: text/xml\r\n"
    b"From me\r\n\r\n<x/>\r\n--b--\r\n",
    "an empty line then a delimiter is an empty part": b"--b\r\n"
    + _S
    + b"--b\r\n\r\n--b\r\nContent-Type: image/gif\r\n\r\nGIF\r\n--b--\r\n",
    "lone CR line ends": b"--b\r" + _S.replace(b"\r\n", b"\r") + b"--b--\r",
}


@pytest.mark.parametrize("case", sorted(_QUIRKS))
def test_the_reader_reads_the_email_packages_quirks_as_it_does(case):
    from mm7tx.mm7.codec import mime
    from tests.fuzzing import email_split

    def read(split):
        try:
            soap_xml, parts = split('multipart/related; boundary="b"', _QUIRKS[case])
        except MM7Error as e:
            return e.status
        return soap_xml, [
            (p.media_type, p.data, p.params, p.content_id, p.content_location)
            for p in mime.resolve_content(None, parts)
        ]

    assert read(mime.split) == read(email_split)
