"""Fuzzing: every mutated sample gets a well-formed MM7 answer or fault."""

from __future__ import annotations

import binascii
import tracemalloc
from email.message import Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm7tx.mm7.codec import mime
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from tests.fuzzing import (
    SAMPLES,
    addresses,
    check,
    email_split,
    examples,
    header_blocks,
    multipart_cases,
    must_reach,
    mutated,
    reached,
    target,
)

ROOT, _ = target()


def test_every_sample_is_in_the_pool():
    assert len(SAMPLES) >= 15


@must_reach(0.9)
@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=mutated(), path=st.sampled_from(["/vasp/", "/mm7/v=p"]))
def test_mutated_samples_get_mm7_answers_in_bounded_memory(case, path):
    ctype, body = case
    tracemalloc.start()
    try:
        check(ROOT, path, ctype, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The largest sample is 300 KB; parsing and answering it stays well
    # within 40 times that.
    reached()
    assert peak < 12 * 1024 * 1024, f"{peak} bytes traced"


def _leaves(found):
    soap_xml, parts = found
    return soap_xml, [
        (p.media_type, p.data, p.params, p.content_id, p.content_location)
        for p in mime.resolve_content(None, parts)
    ]


def _split(ctype: str, body: bytes, split=mime.split):
    """What the codec makes of a body: the SOAP XML and the content's
    leaves, or the status of the fault."""
    try:
        return _leaves(split(ctype, body))
    except MM7Error as e:
        return e.status


@must_reach(0.5)
@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=multipart_cases())
def test_the_multipart_reader_agrees_with_the_email_parser_on_mutations(case):
    ctype, body = case
    ours = _split(ctype, body)
    theirs = _split(ctype, body, email_split)
    if not isinstance(ours, StatusCode):
        reached()  # else both refused it
    assert ours == theirs


def _payload(part):
    """The email package's decoding, the encoding token read as RFC 2045
    has it (whitespace around it is not part of it)."""
    copy = Message()
    header = part.get("Content-Transfer-Encoding")
    if header is not None:
        copy["Content-Transfer-Encoding"] = str(header).strip().lower()
    copy.set_payload(part.raw.decode("ascii", "surrogateescape"))
    data = copy.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _counting_decoded(counter: list[int]):
    """mime._decoded, counting the parts its base64 shortcut decodes."""
    original = mime._decoded

    def decoded(part):
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding == "base64":
            try:
                binascii.a2b_base64(part.raw)
                counter[0] += 1
            except (binascii.Error, ValueError):
                pass
        return original(part)

    return decoded


@must_reach(0.5)
@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=multipart_cases(base64_only=True))
def test_the_fast_base64_decoding_agrees_with_the_email_package(case):
    ctype, body = case
    shortcut = [0]
    original, received = mime._decoded, mime._received_base64

    def counting_received(part):
        lines = received(part)
        shortcut[0] += lines is not None  # carried as it came
        return lines

    mime._decoded = _counting_decoded(shortcut)  # type: ignore[assignment]
    mime._received_base64 = counting_received  # type: ignore[assignment]
    try:
        fast = _split(ctype, body)
    finally:
        mime._decoded, mime._received_base64 = original, received
    mime._decoded = _payload  # type: ignore[assignment]
    mime._received_base64 = lambda part: None  # type: ignore[assignment]
    try:
        full = _split(ctype, body)
    finally:
        mime._decoded, mime._received_base64 = original, received
    if shortcut[0]:
        reached()  # else no part took the shortcut
    assert fast == full


@must_reach(1.0)
@settings(max_examples=examples(300), deadline=None, derandomize=True)
@given(data=st.binary(max_size=4000))
def test_base64_lines_is_encodebytes(data):
    import base64

    reached()
    assert mime.base64_lines(data) == base64.encodebytes(data)


@pytest.mark.parametrize(
    "size", [1, 56, 57, 58, 911, 912, 913, 912 * 3, 912 * 3 + 57, 30 * 1024]
)
def test_base64_lines_is_encodebytes_around_sixteen_lines(size):
    # 912 bytes are sixteen whole lines, the block base64_lines cuts at once.
    import base64

    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert mime.base64_lines(data) == base64.encodebytes(data)


@must_reach(0.5)
@settings(max_examples=examples(2000), deadline=None, derandomize=True)
@given(value=addresses())
def test_the_plain_address_shortcut_is_what_parseaddr_gives(value):
    from email.utils import parseaddr

    from mm7tx.gateway.fields import PLAIN_ADDRESS

    if PLAIN_ADDRESS.match(value):
        reached()
        assert parseaddr(value)[1] == value


@must_reach(0.5)
@settings(max_examples=examples(1000), deadline=None, derandomize=True)
@given(block=header_blocks())
def test_the_fast_header_reading_agrees_with_the_email_parser(block):
    fast = mime._fast_headers(block)
    if fast is None:
        return  # it declined: the email parser reads the block
    full = mime._HEADERS.parsebytes(block + b"\n\n")
    reached()
    assert not full.defects
    assert fast.items() == full.items()


# Received base64 carried to the email as it came ------------------------------

_BREAKS = {
    "space": lambda text, at: text[:at] + b" " + text[at:],
    "non-alphabet": lambda text, at: text[:at] + b"*" + text[at:],
    "tab": lambda text, at: text[:at] + b"\t" + text[at:],
    "no padding": lambda text, at: text.rstrip(b"\r\n").rstrip(b"=") + b"\n",
    "a byte dropped": lambda text, at: text[:at] + text[at + 1 :],
    "padding inside": lambda text, at: text[:at] + b"==" + text[at:],
    "blank line inside": lambda text, at: text[:at] + b"\n\n" + text[at:],
    "a bare CR": lambda text, at: text[:at] + b"\r" + text[at:],
    "a long line": lambda text, at: text.replace(b"\n", b"", 1),
    "a line over 76": lambda text, at: b"A" * 76 + text,
}


@st.composite
def base64_texts(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """Base64 as encoders write it (lines of a multiple of 4 characters up
    to 76, the last shorter, LF or CRLF, trailing line breaks or none), then
    maybe broken on purpose (the name of the break, or None); or in lines
    of any other width up to 76 ("odd width": padding may then stand on a
    line of its own, which may be refused)."""
    data = draw(st.binary(min_size=1, max_size=600))
    width = 4 * draw(st.integers(1, 19))
    broken = None
    if draw(st.integers(0, 4)) == 0:
        width = draw(st.integers(1, 76))
        broken = "odd width" if width % 4 else None
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [encoded[at : at + width] for at in range(0, len(encoded), width)]
    text = eol.join(lines) + draw(st.sampled_from([b"", eol, eol * 2]))
    if draw(st.booleans()):
        broken = draw(st.sampled_from(sorted(_BREAKS)))
        at = draw(st.integers(0, len(text)))
        text = _BREAKS[broken](text, at)
    return text, broken


@must_reach(0.4)
@settings(max_examples=examples(400), deadline=None, derandomize=True)
@given(case=base64_texts())
def test_received_base64_is_carried_only_when_it_decodes_the_same(case):
    """What mime_base64 keeps decodes to exactly what the text decodes to
    today (the C decoder, lenient as the email package), is only alphabet
    and LF, lines of at most 76; valid text is always kept; what it refuses
    goes the old way."""
    text, broken = case
    lines = mime.mime_base64(text)
    if broken is None:
        assert lines is not None
    if lines is None:
        return
    reached()
    assert binascii.a2b_base64(lines) == binascii.a2b_base64(text)
    assert lines.endswith(b"\n") and not lines.strip(b"\n").count(b"\n\n")
    assert all(0 < len(line) <= 76 for line in lines[:-1].split(b"\n"))
    assert not lines.translate(None, mime._BASE64_LINE_BYTES + b"=")
    # Strictly valid: what a strict decoder reads the same.
    assert binascii.a2b_base64(lines.replace(b"\n", b""), strict_mode=True) == (
        binascii.a2b_base64(text)
    )


@pytest.mark.parametrize("broken", sorted(_BREAKS))
def test_each_break_is_refused_or_harmless(broken):
    text = binascii.b2a_base64(bytes(range(256)) * 3)
    text = b"\n".join(text[at : at + 76] for at in range(0, len(text), 76))
    changed = _BREAKS[broken](text, 100)
    lines = mime.mime_base64(changed)
    # 768 bytes need no padding; a CR the decoder skips wherever it stands.
    if broken not in ("no padding", "a bare CR"):
        assert lines is None
    if lines is not None:
        assert binascii.a2b_base64(lines) == binascii.a2b_base64(changed)


_SOAP = (
    b'<?xml version="1.0"?><env:Envelope xmlns:env="http://schemas.xmlsoap.org/'
    b'soap/envelope/"><env:Header><mm7:TransactionID xmlns:mm7="http://www.3gpp'
    b'.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4" env:mustUnde'
    b'rstand="1">t1</mm7:TransactionID></env:Header><env:Body><DeliverReq xmlns='
    b'"http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1'
    b'-4"><MM7Version>6.8.0</MM7Version><Sender><Number>447700900123</Number>'
    b'</Sender><Content href="cid:img"/></DeliverReq></env:Body></env:Envelope>'
)


def _deliver_with_image(encoded: bytes) -> bytes:
    """The email a DeliverReq with this base64 image part becomes."""
    from mm7tx.mail.wire import wire_bytes
    from mm7tx.testing import FakeMailSender, http_post
    from tests.http.test_resource import tree

    body = (
        b"--b\r\nContent-Type: text/xml\r\n\r\n" + _SOAP + b"\r\n--b\r\n"
        b"Content-Type: image/jpeg\r\nContent-ID: <img>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"\r\n--b--\r\n"
    )
    sender = FakeMailSender()
    ctype = 'multipart/related; boundary="b"; type="text/xml"'
    answer = http_post(tree(sender), "/ringtones/", body, {"Content-Type": ctype})
    assert answer.code == 200, answer.body
    [sent] = sender.sent
    return wire_bytes(sent.message)


@pytest.mark.parametrize(
    ("width", "eol", "carried"),
    [(76, b"\r\n", True), (64, b"\n", True), (200, b"\r\n", False)],
)
def test_the_email_carries_valid_base64_as_it_came(width, eol, carried):
    """Lines of at most 76 reach the email as they came (LF ends on the
    wire mm7tx writes, CRLF on SMTP); longer ones are decoded and encoded
    again in 76; the email's part decodes to the image either way."""
    import email
    import email.policy

    image = bytes(range(256)) * 40 + b"end"
    encoded = binascii.b2a_base64(image, newline=False)
    text = eol.join(encoded[at : at + width] for at in range(0, len(encoded), width))
    mail = _deliver_with_image(text)
    assert (text.replace(b"\r\n", b"\n") + b"\n" in mail) is carried
    if width != 76:  # in 76, carried and encoded again look the same
        assert (binascii.b2a_base64(image[:57]) in mail) is not carried
    parsed = email.message_from_bytes(mail, policy=email.policy.default)
    [leaf] = [p for p in parsed.walk() if p.get_content_type() == "image/jpeg"]
    assert leaf.get_payload(decode=True) == image
