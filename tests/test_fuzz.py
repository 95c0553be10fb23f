"""Fuzzing: every mutated sample gets a well-formed MM7 answer or fault."""

from __future__ import annotations

import binascii
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm7tx.codec import mime
from mm7tx.errors import MM7Error
from tests.fuzzing import (
    SAMPLES,
    addresses,
    check,
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


def _split(ctype: str, body: bytes):
    """What the codec makes of a body: the SOAP XML and the content's
    leaves, or the status of the fault."""
    try:
        soap_xml, parts = mime.split(ctype, body)
    except MM7Error as e:
        return e.status
    return soap_xml, [
        (p.media_type, p.data, p.params, p.content_id, p.content_location)
        for p in mime.resolve_content(None, parts)
    ]


def _counting_fast_parts(counter: list[int]):
    """mime._fast_parts, counting the bodies it reads itself."""
    original = mime._fast_parts

    def fast_parts(boundary, body, depth=0):
        parts = original(boundary, body, depth)
        counter[0] += depth == 0 and parts is not None
        return parts

    return fast_parts


@must_reach(0.5)
@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=multipart_cases())
def test_the_fast_split_agrees_with_the_email_parser_on_mutations(case):
    ctype, body = case
    took = [0]
    original = mime._fast_parts
    mime._fast_parts = _counting_fast_parts(took)  # type: ignore[assignment]
    try:
        fast = _split(ctype, body)
    finally:
        mime._fast_parts = original
    mime._fast_parts = lambda *a, **k: None  # type: ignore[assignment]
    try:
        full = _split(ctype, body)
    finally:
        mime._fast_parts = original
    if took[0]:
        reached()  # else both sides were the email parser
    assert fast == full


def _payload(part):
    """The email package's decoding, the encoding token read as RFC 2045
    has it (whitespace around it is not part of it)."""
    header = part.get("Content-Transfer-Encoding")
    if header is not None:
        part.replace_header("Content-Transfer-Encoding", str(header).strip().lower())
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _counting_decoded(counter: list[int]):
    """mime._decoded, counting the parts its base64 shortcut decodes."""
    original = mime._decoded

    def decoded(part):
        payload = part.get_payload()
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding == "base64" and isinstance(payload, str):
            try:
                binascii.a2b_base64(payload.encode("ascii", "surrogateescape"))
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
    original = mime._decoded
    mime._decoded = _counting_decoded(shortcut)  # type: ignore[assignment]
    try:
        fast = _split(ctype, body)
    finally:
        mime._decoded = original
    mime._decoded = _payload  # type: ignore[assignment]
    try:
        full = _split(ctype, body)
    finally:
        mime._decoded = original
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

    from mm7tx.processors import _PLAIN_ADDRESS

    if _PLAIN_ADDRESS.match(value):
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
