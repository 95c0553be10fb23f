"""Fuzzing: every mutated sample gets a well-formed MM7 answer or fault."""

from __future__ import annotations

import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm7tx.codec import mime
from mm7tx.errors import MM7Error
from tests.fuzzing import SAMPLES, check, examples, mutated, target

ROOT, _ = target()


def test_every_sample_is_in_the_pool():
    assert len(SAMPLES) >= 15


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
    assert peak < 12 * 1024 * 1024, f"{peak} bytes traced"


def _split(ctype: str, body: bytes):
    try:
        soap_xml, parts = mime.split(ctype, body)
    except MM7Error as e:
        return e.status
    return soap_xml, [
        (p.media_type, p.data, p.params, p.content_id, p.content_location)
        for p in mime.resolve_content(None, parts)
    ]


@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=mutated())
def test_the_fast_split_agrees_with_the_email_parser_on_mutations(case):
    ctype, body = case
    fast = _split(ctype, body)
    original = mime._fast_parts
    mime._fast_parts = lambda *a, **k: None  # type: ignore[assignment]
    try:
        full = _split(ctype, body)
    finally:
        mime._fast_parts = original
    assert fast == full


def _payload(part):
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=mutated())
def test_the_fast_base64_decoding_agrees_with_the_email_package(case):
    ctype, body = case
    fast = _split(ctype, body)
    original = mime._decoded
    mime._decoded = _payload  # type: ignore[assignment]
    try:
        full = _split(ctype, body)
    finally:
        mime._decoded = original
    assert fast == full


@settings(max_examples=examples(300), deadline=None, derandomize=True)
@given(data=st.binary(max_size=4000))
def test_base64_lines_is_encodebytes(data):
    import base64

    assert mime.base64_lines(data) == base64.encodebytes(data)


@settings(max_examples=examples(2000), deadline=None, derandomize=True)
@given(value=st.text(alphabet='abcXYZ019+_=-.@ <>"', min_size=1, max_size=24))
def test_the_plain_address_shortcut_is_what_parseaddr_gives(value):
    from email.utils import parseaddr

    from mm7tx.processors import _PLAIN_ADDRESS

    if _PLAIN_ADDRESS.match(value):
        assert parseaddr(value)[1] == value


@settings(max_examples=examples(1000), deadline=None, derandomize=True)
@given(
    lines=st.lists(
        st.text(alphabet='Ab-:; \t="\r\xe9', min_size=0, max_size=12), max_size=5
    )
)
def test_the_fast_header_reading_agrees_with_the_email_parser(lines):
    block = "\r\n".join(lines).encode("utf-8")
    if mime._LONE_CR.search(block):
        return  # lone CRs never reach it (the split leaves those to the parser)
    fast = mime._fast_headers(block)
    if fast is None:
        return
    full = mime._HEADERS.parsebytes(block + b"\n\n")
    assert not full.defects
    assert fast.items() == full.items()
