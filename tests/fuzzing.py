"""Mutations of the reference samples, for the fuzz test and bench/fuzz.py."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from mm7tx import codec
from mm7tx import messages as m
from mm7tx.auth import Account, portal_for
from mm7tx.limits import RateLimiter
from mm7tx.processors import AddressRules, EmailProcessor
from mm7tx.resource import MM7Resource, build_root
from mm7tx.testing import FakeMailSender, HTTPResponse, http_post
from tests import samples

# MM7TX_FUZZ_SCALE=20 runs every fuzzing test with twenty times its examples.
SCALE = int(os.environ.get("MM7TX_FUZZ_SCALE", "1"))


def examples(count: int) -> int:
    """The number of hypothesis examples for a test, scaled."""
    return count * SCALE


def all_samples() -> list[tuple[str, bytes]]:
    """Every request in the reference samples as (Content-Type, body)."""
    out: list[tuple[str, bytes]] = []
    folder = samples.SAMPLES / "instantcom-mm7"
    for path in sorted(folder.glob("*.txt")):
        raw = path.read_bytes()
        if raw.startswith(b"POST"):
            ctype, body = samples.http_message(raw)
            out.append((ctype or "", body))
        else:
            out.append(samples.body_sample(f"instantcom-mm7/{path.name}"))
    for name in ("mm7Deliver", "mm7DeliveryReport", "mm7Submit"):
        for block in samples.blocks(f"skycore-api-docs/{name}.examples.txt"):
            if block.startswith(b"POST"):
                ctype, body = samples.http_message(block)
                out.append((ctype or "", body))
            elif block.lstrip().startswith(b"<"):
                out.append(("text/xml", block))
    out.append(samples.body_sample("vectorcore-mmsc/submit_req.multipart"))
    return out


SAMPLES = all_samples()
CONTENT_TYPES = [
    "text/xml",
    "multipart/related",
    "multipart/related; boundary=",
    'multipart/related; boundary="x"; start="<nowhere>"',
    "application/octet-stream",
    "",
    "multipart/mixed; boundary=" + "b" * 5000,
]
ENCODINGS = [
    b"base64",
    b"quoted-printable",
    b"8bit",
    b"7bit",
    b"binary",
    b"BASE64",
    b"x-uue",
]


@st.composite
def mutated(draw: Callable[..., Any]) -> tuple[str, bytes]:
    """A sample, then up to four mutations of it."""
    ctype, body = draw(st.sampled_from(SAMPLES))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(
            st.sampled_from(
                ["cut", "flip", "drop", "encoding", "header", "nest", "ctype", "insert"]
            )
        )
        if op == "cut" and body:
            body = body[: draw(st.integers(0, len(body)))]
        elif op == "flip" and body:
            data = bytearray(body)
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            body = bytes(data)
        elif op == "drop":
            lines = body.split(b"\n")
            marks = [i for i, line in enumerate(lines) if line.startswith(b"--")]
            if marks:
                del lines[draw(st.sampled_from(marks))]
            body = b"\n".join(lines)
        elif op == "encoding":
            old, new = (
                draw(st.sampled_from(ENCODINGS)),
                draw(st.sampled_from(ENCODINGS)),
            )
            body = body.replace(old, new)
        elif op == "header":
            size = draw(st.sampled_from([100, 10_000, 200_000]))
            body = re.sub(
                rb"(?i)(content-type:)",
                b"X-Huge: " + b"h" * size + b"\r\n\\1",
                body,
                count=1,
            )
        elif op == "nest":
            depth = draw(st.integers(1, 300))
            body = re.sub(
                rb"(<Subject>|<[a-zA-Z0-9]*:?Subject>)",
                b"\\1" + b"<n>" * depth + b"x" + b"</n>" * depth,
                body,
                count=1,
            )
        elif op == "ctype":
            ctype = draw(st.sampled_from(CONTENT_TYPES))
        elif op == "insert" and body:
            at = draw(st.integers(0, len(body)))
            junk = draw(
                st.sampled_from(
                    [
                        b"\x00",
                        b"<!DOCTYPE x>",
                        b"&amp;",
                        b"\r\n--",
                        b"]]>",
                        b"\xff\xfe",
                        b"<a>" * 50,
                    ]
                )
            )
            body = body[:at] + junk + body[at:]
    return ctype, body


RULES = AddressRules("f@from.example", "from.example", "t@to.example", "to.example")


def target() -> tuple[Any, FakeMailSender]:
    """A VASP path and an MMSC path over one fake sender."""
    sender = FakeMailSender()
    processor = EmailProcessor(sender, RULES)

    root = build_root(
        {
            "/vasp/": MM7Resource(processor, "/vasp/"),
            "/mm7/": MM7Resource(
                processor,
                "/mm7/",
                "mmsc",
                portal=portal_for((Account("v", "p"),), MemoryReactorClock()),  # type: ignore[arg-type]
                limiter=RateLimiter(Clock()),
            ),
        }
    )
    return root, sender


def check(root: Any, path: str, ctype: str, body: bytes) -> HTTPResponse:
    """Post one case; assert the answer is a well-formed MM7 answer or fault."""
    headers = {"Content-Type": ctype} if ctype else {}
    response = http_post(root, path, body, headers)
    assert response.code in (200, 500), (response.code, response.body[:200])
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    envelope = codec.decode(response.headers["content-type"], response.body)
    message = envelope.message
    assert isinstance(message.status, m.Status)  # type: ignore[union-attr]
    if response.code == 500:
        assert envelope.is_fault
    else:
        assert message.status.code in (1000, 1100)  # type: ignore[union-attr]
    return response
