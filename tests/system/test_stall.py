"""No request holds the reactor: what a peer sends is read in linear time,
every count enforced while reading (issue: the edge, second pass).

The reactor budget itself is measured by ``bench/stall.py`` on real
processes; here each hostile shape is shown to take the linear path: the
patterns that see peer bytes finish on inputs where a quadratic one would
take minutes (a watchdog, far from any machine's speed), and no body goes
through the ``email`` package's line-by-line parser.
"""

from __future__ import annotations

import email.feedparser
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from email import message_from_bytes, policy
from typing import Any

import pytest

from bench.stall import shapes
from mm7tx.gateway.fields import number
from mm7tx.http.site import MM7Site
from mm7tx.logs import _redacted
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec import encoding, mime
from mm7tx.mm7.codec.sniff import sniff
from mm7tx.mm7.errors import MM7Error
from mm7tx.testing import (
    FakeMailSender,
    MemoryAgent,
    MemoryReactor,
    http_post,
    post,
    result_of,
)
from tests.http.test_hostile import vasp

SIZE = 5_000_000  # the default mm7_max_request_size


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail the test if the block runs longer than ``seconds`` (the regular
    expression engine checks for signals as it runs)."""

    def expired(*_: Any) -> None:
        raise AssertionError(f"still running after {seconds} s: not linear")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _number_of(value: str) -> None:
    with pytest.raises(MM7Error):
        number(m.Address(value), "Sender")


# Each: a shape a backtracking pattern takes quadratic time on, at a size
# where quadratic is minutes and linear milliseconds.
LINEAR: dict[str, Callable[[int], object]] = {
    "sniffed start= with blanks": lambda n: sniff(
        "multipart/related; start=" + " " * n + ";", b"x"
    ),
    "a Number of digits then a letter": lambda n: _number_of("1" * n + "x"),
    "a log line of a.a.a.a": lambda n: _redacted("a." * n),
    "a ShortCode of /TYPE= repeated": lambda n: (
        m.Address("/TYPE=" * (n // 6) + "\nx", "ShortCode").digits
    ),
}


@pytest.mark.parametrize("case", sorted(LINEAR))
def test_every_pattern_that_sees_peer_bytes_is_linear(case):
    with watchdog(2.0):
        LINEAR[case](300_000)


@contextmanager
def counting_the_line_parser() -> Iterator[list[int]]:
    """How many bytes the email package's line-by-line parser is fed."""
    fed = [0]
    lines: Any = email.feedparser
    push = lines.BufferedSubFile.push

    def counting(self: Any, data: str) -> None:
        fed[0] += len(data)
        push(self, data)

    lines.BufferedSubFile.push = counting
    try:
        yield fed
    finally:
        lines.BufferedSubFile.push = push


@pytest.mark.parametrize("shape", ["cr", "x-cr", "random", "lf", "nested", "deep"])
def test_no_body_goes_through_the_line_by_line_parser(shape):
    # Lone CRs sent a body to it (1.9 s for 4.9 MB of CRs); nested parts
    # were all parsed there before being counted (5.1 s).  Only part
    # headers, each bounded, may go to it.
    _, ctype, body = shapes(SIZE)[shape]()
    with counting_the_line_parser() as fed, suppress(MM7Error):
        codec.decode(ctype, body)
    assert fed[0] <= 2 * mime.MAX_PART_HEADERS


def test_parts_nested_inside_one_part_are_counted_as_they_are_read():
    _, ctype, body = shapes(SIZE)["nested"]()
    assert body.count(b"--n\r\n") > 400_000
    sender = FakeMailSender()
    answer = http_post(vasp(sender), "/vasp/", body, {"Content-Type": ctype})
    status = codec.decode(answer.headers["content-type"], answer.body).message.status
    assert (status.code, status.details) == (
        2007,
        f"the request has more than {mime.MAX_PARTS} MIME parts",
    )
    assert sender.sent == []


@pytest.mark.parametrize("shape", ["cr", "x-cr", "random"])
def test_a_binary_part_with_lone_crs_is_mailed_byte_for_byte(shape):
    _, ctype, body = shapes(SIZE)[shape]()
    expected = mime.split(ctype, body)[1][0].raw
    assert b"\r" in expected
    sender = FakeMailSender()
    answer = http_post(vasp(sender), "/vasp/", body, {"Content-Type": ctype})
    assert (
        codec.decode(answer.headers["content-type"], answer.body).message.status.code
        == 1000
    )
    (mail,) = sender.sent
    message = message_from_bytes(mail.message.as_bytes(), policy=policy.default)
    (attachment,) = [
        p for p in message.walk() if p.get_content_type() == "application/octet-stream"
    ]
    assert attachment.get_content() == expected


def test_lines_that_only_look_like_the_boundary_are_bounded():
    envelope = codec.encode(m.Envelope("t1", m.DeliverReq(sender=m.Address("+1555"))))[
        1
    ]
    decoy = b"--b0X\r\n" * (mime.MAX_FALSE_DELIMITERS + 1)
    body = (
        b"--b0\r\nContent-Type: text/xml\r\n\r\n" + envelope + b"\r\n"
        b"--b0\r\nContent-Type: text/plain\r\n\r\n" + decoy + b"\r\n--b0--\r\n"
    )
    with pytest.raises(MM7Error) as refused:
        codec.decode('multipart/related; boundary="b0"', body)
    assert refused.value.status.code == 2007
    assert "start like a MIME boundary" in str(refused.value.status.details)
    # A few are content, as the email package reads them.
    few = body.replace(decoy, b"--b0X\r\n" * 3)
    parts = mime.split('multipart/related; boundary="b0"', few)[1]
    assert parts[0].raw == b"--b0X\r\n" * 3


def test_a_header_block_that_never_ends_is_refused_before_it_is_parsed():
    _, ctype, body = shapes(SIZE)["folded"]()
    with counting_the_line_parser() as fed, pytest.raises(MM7Error) as refused:
        codec.decode(ctype, body)
    assert refused.value.status.code == 2007
    assert fed[0] <= 2 * mime.MAX_PART_HEADERS


@pytest.mark.parametrize("extra", [-1, 0, 1, 57 * 3 + 5])
def test_base64_in_steps_is_what_encodebytes_gives(extra):
    import base64
    import os

    data = os.urandom(2 * encoding._STEP + extra)
    assert mime.base64_lines(data) == base64.encodebytes(data)


@pytest.mark.parametrize("shift", [-2, -1, 0, 1, 2])
def test_a_large_mail_made_smtp_data_in_pieces_is_what_one_piece_gives(shift):
    from mm7tx.smtp.stuffing import PIECE, stuffed, stuffed_lines

    # Lines of dots around each piece's end, where a piece must still
    # start at a line start for its leading dot to be doubled.
    line = b"x" * 99 + b"\n"
    head = line * ((PIECE + shift) // len(line))
    data = (head + b".\n..a\n.b\n") * 3 + b"." + b"tail"
    assert stuffed(data) == stuffed_lines(data)
    assert stuffed(data).count(b"\r\n..\r\n") == 3


def test_the_headers_of_all_parts_together_are_bounded_before_they_are_parsed():
    # 250 parts, each under the bound on one part's headers: 3.9 MB of
    # folded header lines held the reactor 0.7 s in the header parser.
    _, ctype, body = shapes(SIZE)["many-headers"]()
    with counting_the_line_parser() as fed, pytest.raises(MM7Error) as refused:
        codec.decode(ctype, body)
    assert refused.value.status.code == 2007
    assert "in all" in str(refused.value.status.details)
    assert fed[0] <= mime.MAX_HEADER_BYTES + mime.MAX_PART_HEADERS


def test_base64_of_short_lines_is_checked_in_bounded_memory():
    import tracemalloc

    text = b"QUJD\r\n" * (SIZE // 6)
    tracemalloc.start()
    try:
        assert mime.mime_base64(text) == text.replace(b"\r", b"")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A copy without its CRs (and the one translate sizes before it
    # shrinks), and the lines of 64 KiB at a time (a list
    # of every line took twelve times the part).
    assert peak < 2 * len(text)


@pytest.mark.parametrize(
    "where", ["boundary", "nested boundary", "start", "filename"], ids=str
)
def test_a_parameter_no_codec_can_read_is_2007_not_a_traceback(where):
    soap = codec.encode(m.Envelope("t1", m.DeliverReq(sender=m.Address("+1555"))))[1]
    bad = "*=idna''xn--a"
    ctype = 'multipart/related; boundary="b"'
    leaf = b"Content-Type: image/gif\r\n"
    if where == "boundary":
        ctype = "multipart/related; boundary" + bad
    elif where == "start":
        ctype += "; start" + bad
    elif where == "filename":
        leaf += b"Content-Disposition: attachment; filename" + bad.encode() + b"\r\n"
    inner = b"--b\r\n" + leaf + b"\r\nGIF\r\n--b--\r\n"
    if where == "nested boundary":
        leaf = b"Content-Type: multipart/mixed; boundary" + bad.encode() + b"\r\n"
    body = (
        b"--b\r\nContent-Type: text/xml\r\n\r\n" + soap + b"\r\n"
        b"--b\r\n" + leaf + b"\r\n" + inner + b"\r\n--b--\r\n"
    )
    # Through MM7Site: Twisted's plain Site parses a POST's Content-Type
    # with the email package itself and fails on this one before any
    # resource sees it (docs/upstream-twisted-parsecontenttype.md).
    http = MemoryReactor()
    site = MM7Site(vasp(FakeMailSender()), reactor=http)
    http.listenTCP(80, site, interface="mm7tx.test")
    answering = post(
        MemoryAgent(http, "127.0.0.1"),
        "http://mm7tx.test/vasp/",
        body,
        {"Content-Type": ctype},
    )
    http.flush()
    answer = result_of(answering)
    status = codec.decode(answer.headers["content-type"], answer.body).message.status
    assert status.code != 4000, status  # an error of ours: a traceback logged
