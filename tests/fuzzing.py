"""Mutations of the reference samples, for the fuzz test and bench/fuzz.py."""

from __future__ import annotations

import base64
import functools
import os
import quopri
import re
from collections.abc import Callable
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.http.auth import Account, portal_for
from mm7tx.http.limits import RateLimiter
from mm7tx.http.resource import MM7Resource, build_root
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
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


# Reach ---------------------------------------------------------------------
#
# A property test must reach its assertion in most of its examples.  The
# test calls reached() just before its assertion; must_reach(share) around
# the hypothesis test counts examples and fails the test when fewer than
# ``share`` of them got there (so a strategy that drifts into filtering out
# most of its inputs is caught, not silently weak).  The counts of the last
# run stay on the test as ``.reach`` (reached, examples).

_REACHED = [False]


def reached() -> None:
    """Mark the current example as having reached the test's assertion."""
    _REACHED[0] = True
    event("reached the assertion")


def must_reach(share: float) -> Callable[[Any], Any]:
    """Around ``@settings``/``@given``: fail unless at least ``share`` of the
    examples called reached()."""

    def decorate(test: Any) -> Any:
        counts = [0, 0]
        inner = test.hypothesis.inner_test

        @functools.wraps(inner)
        def counting(*args: Any, **kwargs: Any) -> Any:
            _REACHED[0] = False
            counts[1] += 1
            try:
                return inner(*args, **kwargs)
            finally:
                counts[0] += _REACHED[0]

        test.hypothesis.inner_test = counting

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            counts[:] = [0, 0]
            test(*args, **kwargs)
            run.reach = tuple(counts)  # type: ignore[attr-defined]
            assert counts[0] >= share * counts[1], (
                f"reached its assertion in {counts[0]} of {counts[1]} examples"
            )

        return run

    return decorate


# Valid by construction, then broken on purpose ------------------------------


def _sometimes(draw: Callable[..., Any], one_in: int) -> bool:
    """True about one time in ``one_in`` (hypothesis leans to small
    integers, so the rare branch is the largest one)."""
    return bool(draw(st.integers(1, one_in)) == one_in)


def _dot_atom(alphabet: str) -> st.SearchStrategy[str]:
    label = st.text(alphabet=alphabet, min_size=1, max_size=8)
    return st.lists(label, min_size=1, max_size=3).map(".".join)


_LOCAL = _dot_atom("abcXYZ019+_=-")
_DOMAIN = _dot_atom("abcXYZ019-")


@st.composite
def addresses(draw: Callable[..., Any]) -> str:
    """A plain dot-atom address, then (one time in three) broken: a
    character from the edges of the grammar inserted or swapped in, or the
    address wrapped the way headers carry it."""
    value: str = draw(_LOCAL) + "@" + draw(_DOMAIN)
    if _sometimes(draw, 3):
        op = draw(st.sampled_from(["insert", "replace", "wrap", "dots"]))
        at = draw(st.integers(0, len(value)))
        junk = draw(st.sampled_from([*'.@ <>"()[],;:\\\t\xe9', "..", " @"]))
        if op == "insert":
            value = value[:at] + junk + value[at:]
        elif op == "replace":
            value = value[:at] + junk + value[at + 1 :]
        elif op == "wrap":
            value = draw(
                st.sampled_from(["<{}>", '"x" <{}>', "{} (x)", " {} "])
            ).format(value)
        else:
            value = value[:at] + "." + value[at:]
    return value


_NAMES = [
    "Content-Type",
    "Content-ID",
    "Content-Id",
    "content-location",
    "X-A-b",
    "From",
]


@st.composite
def header_blocks(draw: Callable[..., Any]) -> bytes:
    """A part's header block: ASCII ``Name: value`` lines, LF or CRLF, then
    (one time in four) broken: a folded line, an 8-bit byte, a line that is
    not a header, a name with a space, an empty line."""
    eol: str = draw(st.sampled_from(["\r\n", "\n"]))
    lines = [
        draw(st.sampled_from([*_NAMES, "A", "b-", "x" * 40]))
        + ":"
        + draw(st.sampled_from(["", " ", "\t", "  "]))
        + draw(st.text(alphabet='Ab-:; \t="<>/@.', max_size=16))
        for _ in range(draw(st.integers(0, 5)))
    ]
    if lines and _sometimes(draw, 4):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["fold", "8bit", "noheader", "space", "empty"]))
        if op == "fold":
            lines.insert(i + 1, draw(st.sampled_from([" x", "\tx", " "])))
        elif op == "8bit":
            lines[i] += "\xe9"
        elif op == "noheader":
            lines[i] = lines[i].replace(":", "", 1)
        elif op == "space":
            lines[i] = "A " + lines[i]
        else:
            lines.insert(i, "")
    return eol.join(lines).encode("utf-8")


_TYPES = [
    'text/plain; charset="utf-8"',
    "image/jpeg",
    "application/smil",
    "image/gif; name=x.gif",
]
_BASE64 = ["base64", "BASE64", "base64 ", "base64\t"]
_ENCODINGS = [
    "base64",
    "BASE64",
    "base64 ",
    "8bit",
    "7bit",
    "binary",
    "quoted-printable",
    None,
]


def _base64_payload(draw: Callable[..., Any], data: bytes, eol: bytes) -> bytes:
    """``data`` in base64 as peers write it (76-column lines, one long line,
    odd widths), then (one time in four) broken: padding lost or doubled,
    junk characters, a '=' in the middle, a truncated quantum."""
    encoded = base64.b64encode(data)
    width = draw(st.sampled_from([76, 64, 4, 10_000]))
    lines = [encoded[i : i + width] for i in range(0, len(encoded), width)]
    text = eol.join(lines)
    if _sometimes(draw, 4):
        op = draw(st.sampled_from(["unpad", "pad", "junk", "equals", "cut", "space"]))
        at = draw(st.integers(0, len(text)))
        if op == "unpad":
            text = text.rstrip(b"=")
        elif op == "pad":
            text += b"=="
        elif op == "junk":
            text = (
                text[:at]
                + draw(st.sampled_from([b"!", b"*", b"\xe9", b"-", b"_"]))
                + text[at:]
            )
        elif op == "equals":
            text = text[:at] + b"=" + text[at:]
        elif op == "cut":
            text = text[:at]
        else:
            text = text[:at] + b" \t" + text[at:]
    return text


@st.composite
def _leaf(draw: Callable[..., Any], eol: bytes, base64_only: bool) -> bytes:
    media = draw(st.sampled_from(_TYPES))
    encodings = _BASE64 if base64_only else _ENCODINGS
    encoding = draw(st.sampled_from(encodings))
    headers = [
        draw(st.sampled_from(["Content-Type", "content-type", "Content-type"]))
        + ": "
        + media
    ]
    if draw(st.booleans()):
        cid = draw(st.sampled_from(["<img-{}@x>", "img-{}", " <{}> "]))
        headers.append(
            draw(st.sampled_from(["Content-ID", "Content-Id"]))
            + ":"
            + cid.format(draw(st.integers(0, 99)))
        )
    if draw(st.booleans()):
        headers.append(f"Content-Location: part{draw(st.integers(0, 99))}.bin")
    if encoding is not None:
        headers.append(f"Content-Transfer-Encoding: {encoding}")
    data = draw(st.binary(max_size=200))
    if encoding is not None and encoding.strip().lower() == "base64":
        payload = _base64_payload(draw, data, eol)
    elif encoding == "quoted-printable":
        payload = quopri.encodestring(data).replace(b"\n", eol)
    else:  # raw bytes, but no bare CR (lone CRs are left to the email parser)
        payload = data.replace(b"\r", b"")
    return eol.join(h.encode() for h in headers) + eol + eol + payload


def _delimiters(
    draw: Callable[..., Any], boundary: bytes, parts: list[bytes], eol: bytes
) -> bytes:
    """Parts between delimiter lines, with an optional preamble and epilogue
    and the trailing whitespace some peers leave on delimiter lines."""
    trail: bytes = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
    preamble: bytes = draw(st.sampled_from([b"", b"This is a MIME message." + eol]))
    epilogue: bytes = draw(st.sampled_from([b"", eol, b"epilogue" + eol]))
    body = preamble
    for part in parts:
        body += b"--" + boundary + trail + eol + part + eol
    return body + b"--" + boundary + b"--" + trail + eol + epilogue


@st.composite
def multipart_bodies(
    draw: Callable[..., Any], base64_only: bool = False
) -> tuple[str, bytes]:
    """A SOAP-with-attachments body valid by construction (the SOAP part,
    then leaves and maybe a nested multipart, with LF or CRLF, quirky
    header casing and encodings); then (one time in four) broken on
    purpose where the fast split has to hand over to the email parser."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    outer = b"outer-" + draw(
        st.sampled_from([b"1", b"=_Part_15", b"Nokia mm 9", b"a'b()+,-./:=?"])
    )
    inner = b"inner-" + draw(st.sampled_from([b"1", b"x y"]))
    soap = (
        b"Content-Type: text/xml; charset=utf-8"
        + eol
        + b"Content-ID: <soap@x>"
        + eol
        + eol
        + b"<env:Envelope xmlns:env='http://schemas.xmlsoap.org/soap/envelope/'><env:Body/></env:Envelope>"
    )
    leaves = draw(st.lists(_leaf(eol, base64_only), min_size=1, max_size=3))
    if draw(st.booleans()):
        nested = _delimiters(draw, inner, leaves, eol)
        content = [
            b'Content-Type: multipart/related; type="application/smil"; boundary="'
            + inner
            + b'"'
            + eol
            + b"Content-ID: <content@x>"
            + eol
            + eol
            + nested
        ]
    else:
        content = leaves
    body = _delimiters(draw, outer, [soap, *content], eol)
    start = draw(st.sampled_from(['; start="<soap@x>"', "; start=soap@x", ""]))
    ctype = f'multipart/related; type="text/xml"; boundary="{outer.decode()}"{start}'
    if _sometimes(draw, 4):
        body = _broken(draw, body, outer, eol)
    return ctype, body


def _broken(
    draw: Callable[..., Any], body: bytes, boundary: bytes, eol: bytes
) -> bytes:
    op = draw(
        st.sampled_from(
            ["cut", "noclose", "lookalike", "noblank", "lonecr", "flip", "fold", "8bit"]
        )
    )
    at = draw(st.integers(0, len(body)))
    if op == "cut":
        return body[:at]
    if op == "noclose":
        return body.replace(b"--" + boundary + b"--", b"", 1)
    if op == "lookalike":  # a payload line that starts like a delimiter
        line = body.find(b"\n", at)
        extra: bytes = draw(st.sampled_from([b"x", b" x", b"-", b"--x"]))
        return body[: line + 1] + b"--" + boundary + extra + eol + body[line + 1 :]
    if op == "noblank":
        return body.replace(eol + eol, eol, 1)
    if op == "lonecr":
        return body[:at] + b"\r" + body[at:]
    if op == "flip" and body:
        i = min(at, len(body) - 1)
        return body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1 :]
    if op == "fold":
        return body.replace(b"Content-ID:", b"Content-ID:" + eol + b"\t", 1)
    return body.replace(b"Content-Type: text/xml", b"Content-Type: text/xml\xe9", 1)


_MULTIPART_SAMPLES = [
    (c, b)
    for c, b in SAMPLES
    if c.startswith("multipart/") and b.lstrip().startswith(b"--")
]


@st.composite
def _sample_bodies(draw: Callable[..., Any]) -> tuple[str, bytes]:
    """A multipart reference sample, then (one time in four) broken."""
    ctype, body = draw(st.sampled_from(_MULTIPART_SAMPLES))
    if _sometimes(draw, 4):
        boundary = body.lstrip().split(b"\n", 1)[0].rstrip()[2:]
        body = _broken(draw, body, boundary, b"\n")
    return ctype, body


def multipart_cases(base64_only: bool = False) -> st.SearchStrategy[tuple[str, bytes]]:
    """Constructed bodies, and (one time in three) the reference samples."""
    built = multipart_bodies(base64_only)
    return st.one_of(built, built, _sample_bodies())


# Hostile values in the fields that become mail headers (issue 11) ----------

_HOSTILE_SIZES = [1_000, 64_000, 512_000]


def _hostile_text(kind: str, size: int) -> str:
    """``size`` characters of one shape the email package's folder is slow on."""
    unit = {
        "words": "ab ",
        "nonascii": "é ",
        "cjk": "漢",
        "separators": "a\u2028b\u2029c\x85 ",
        "encoded": "=?utf-8?q?x?= ",
        "quotes": '"\\',
    }[kind]
    return (unit * (size // len(unit) + 1))[:size]


_HOSTILE_FIELDS = [
    "Subject",
    "LinkedID",
    "VASPID",
    "VASID",
    "MMSRelayServerID",
    "MMStatus",
    "StatusText",
    "filename",
    "Content-ID",
    "Content-Location",
    "recipients",
    "charset",
    "leaf",
]


@st.composite
def hostile(draw: Callable[..., Any]) -> tuple[str, tuple[str, bytes]]:
    """A request valid but for one field: a long value of an awkward shape
    in a field that becomes a header, thousands of recipients, a text part
    in an odd charset, or a multipart/message leaf.  (A description, then
    (Content-Type, body).)"""
    field = draw(st.sampled_from(_HOSTILE_FIELDS))
    kind = draw(
        st.sampled_from(["words", "nonascii", "cjk", "separators", "encoded", "quotes"])
    )
    size = draw(st.sampled_from(_HOSTILE_SIZES))
    value = _hostile_text(kind, size)
    sender = m.Address("+15551234567")
    to = m.Recipients(to=(m.Address("7255", "ShortCode"),))
    text = m.ContentPart("text/plain", b"hello", (("charset", "utf-8"),))
    request: Any
    if field in ("MMStatus", "StatusText"):
        request = m.DeliveryReportReq(
            message_id="M1",
            recipient=sender,
            sender=m.Address("7255", "ShortCode"),
            mm_status=value if field == "MMStatus" else "Retrieved",
            status_text=value if field == "StatusText" else None,
        )
    else:
        content: tuple[m.ContentPart, ...] = (text,)
        fields: dict[str, Any] = {}
        if field in ("Subject", "LinkedID", "VASPID", "VASID", "MMSRelayServerID"):
            fields[
                {
                    "Subject": "subject",
                    "LinkedID": "linked_id",
                    "VASPID": "vasp_id",
                    "VASID": "vas_id",
                    "MMSRelayServerID": "mms_relay_server_id",
                }[field]
            ] = value
        elif field == "recipients":
            count = draw(st.sampled_from([100, 5_000, 20_000]))
            to = m.Recipients(to=tuple(m.Address(str(10**9 + i)) for i in range(count)))
            value = f"{count} recipients"
        elif field == "charset":
            charset = draw(st.sampled_from(["idna", "punycode", "x-nope", "utf-7"]))
            content = (
                m.ContentPart(
                    "text/plain", value.encode("utf-8")[:size], (("charset", charset),)
                ),
            )
            value = f"charset={charset}"
        elif field == "leaf":
            media = draw(st.sampled_from(["multipart/mixed", "message/rfc822"]))
            content = (text, m.ContentPart(media, value.encode("utf-8")))
            value = media
        else:
            # Placeholders, replaced in the body by the raw value below (the
            # email package's own writer takes quadratic time for it).
            part = m.ContentPart(
                "image/gif",
                b"GIF89a",
                (("name", "HOSTILE-VALUE"),) if field == "filename" else (),
                "HOSTILE-VALUE" if field == "Content-ID" else None,
                "HOSTILE-VALUE" if field == "Content-Location" else None,
            )
            content = (text, part)
        request = m.DeliverReq(sender=sender, recipients=to, content=content, **fields)
    description = (
        f"{field} {kind} {size}"
        if field not in ("recipients", "charset", "leaf")
        else f"{field} {value}"
    )
    ctype, body = codec.encode(m.Envelope("hostile", request))
    if field in ("Content-ID", "Content-Location"):
        # A MIME header cannot carry a line separator.
        value = re.sub("[\u2028\u2029\x85]", " ", value)
    return description, (ctype, body.replace(b"HOSTILE-VALUE", value.encode()))


# The email package's full parser: the oracle mime.split is held to --------


def _as_part(msg: Any) -> Any:
    """A Message tree from the email parser as mime.split's Part tree."""
    from mm7tx.mm7.codec import mime

    part = mime.Part()
    part._headers = msg._headers  # type: ignore[attr-defined]
    part._unixfrom = msg._unixfrom  # type: ignore[attr-defined]
    if msg.is_multipart():
        part.set_payload([_as_part(child) for child in msg.get_payload()])
    else:
        # The text as parsed (get_payload would replace 8-bit bytes).
        part.raw = str(msg._payload).encode("utf-8", "surrogateescape")
        if msg.get_content_maintype() == "multipart":
            # A multipart read as text (no boundary, or one never found):
            # the email parser leaves on it the line ending that belongs to
            # the next delimiter (it strips it only from the "epilogue" a
            # multipart has); mm7tx strips it as for any part.
            part.raw = re.sub(rb"(\r\n|\r|\n)\Z", b"", part.raw)
    return part


def email_split(content_type: str, body: bytes) -> tuple[bytes, list[Any]]:
    """What mime.split gives for a multipart body, read by the ``email``
    package's full (line by line) parser, with the same limits checked on
    the tree it builds.  Raises MM7Error as mime.split does."""
    from email import policy
    from email.message import Message
    from email.parser import BytesParser

    from mm7tx.mm7.codec import mime
    from mm7tx.mm7.errors import MM7Error
    from mm7tx.mm7.status import StatusCode

    head = Message()
    head["Content-Type"] = content_type
    params = mime._params(head)
    if not params.get("boundary") and body.lstrip()[:1] == b"<":
        return body, []  # Skycore's bare XML: not read as MIME at all
    boundary = params.get("boundary") or mime._sniff_boundary(body) or ""
    marker = boundary.replace('"', "").encode("utf-8", "surrogateescape")
    header = b'Content-Type: %s; boundary="%s"\r\n\r\n' % (
        head.get_content_type().encode("ascii", "replace"),
        marker,
    )
    msg = BytesParser(policy=policy.compat32).parsebytes(header + body)
    parts = [_as_part(p) for p in mime._subparts(msg)]
    stack = [(p, 1) for p in parts]
    count = 0
    while stack:
        part, depth = stack.pop()
        count += 1
        if depth > mime.MAX_NESTING:
            raise mime._too_deep()
        stack.extend((child, depth + 1) for child in mime._subparts(part))
    if count > mime.MAX_PARTS:
        raise mime._too_many()
    if not parts:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details="the body is not MIME: its boundary never appears",
        )
    if any(type(d).__name__ == "CloseBoundaryNotFoundDefect" for d in msg.defects):
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details="the multipart body is truncated: its closing boundary is missing",
        )
    start = mime.normalise_id(params.get("start"))
    soap = parts[0]
    if start is not None:
        soap = next(
            (p for p in parts if mime.normalise_id(p.get("Content-ID")) == start),
            soap,
        )
    if soap.is_multipart():
        raise MM7Error(StatusCode.VALIDATION_ERROR, details="the SOAP part is missing")
    return mime._decoded(soap), [p for p in parts if p is not soap]
