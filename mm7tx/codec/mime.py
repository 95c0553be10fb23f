"""The MIME side of MM7 (SOAP with attachments): find the SOAP part and the
content it points to, and build the multipart body for outgoing requests.

Parsing uses the standard library's ``email`` parser, which already copes with
what sloppy peers send: LF-only line endings, boundaries with trailing space,
``Content-Id`` casing, upper-case encodings and raw 8-bit parts.
"""

from __future__ import annotations

import binascii
import itertools
import re
import struct
import uuid
from email import policy
from email.generator import BytesGenerator
from email.message import Message, MIMEPart
from email.parser import BytesHeaderParser, BytesParser
from email.utils import collapse_rfc2231_value
from io import BytesIO
from typing import Any
from urllib.parse import unquote

from mm7tx.errors import MM7Error
from mm7tx.messages import Content, ContentPart
from mm7tx.status import StatusCode

XML_TYPES = frozenset(
    {"text/xml", "application/xml", "application/soap+xml", "text/plain"}
)
# How deep MIME parts may nest (multipart in multipart); deeper is 2007.
# MM7 content is two or three levels deep (the request's multipart/related,
# the content's multipart/related or mixed, the SMIL's parts); without a
# bound, a body nested some hundreds deep exhausts Python's recursion.
MAX_NESTING = 16
# At most this many MIME parts in a request, all levels counted (an MMS has
# a handful): each costs the reactor a header parse, and 10,000 of them in
# 5 MB held it for a third of a second.
MAX_PARTS = 256
# At most this many bytes of headers in one part (an MMS part has a few
# hundred): checked before any header value is read, since reading the
# parameters of a 512 KB one (an RFC 2231 filename) held the reactor 40 ms.
MAX_PART_HEADERS = 16 * 1024
# compat32 parses several times faster than policy.default, and we only read
# MIME structure and bytes here; the emails we write use policy.default.
_PARSER = BytesParser(policy=policy.compat32)


def normalise_id(header: object) -> str | None:
    """A Content-ID or cid reference without ``<>``, ``cid:`` or spaces.

    Takes any header value: with 8-bit bytes in it the parser gives a
    ``Header`` object rather than a string."""
    if header is None:
        return None
    value = str(header).strip()
    if value[:4].lower() == "cid:":
        value = unquote(value[4:]).strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value or None


def _params(msg: Message) -> dict[str, str]:
    """Content-Type's parameters by lower-case name, parsed once; the first
    of a repeated name wins, as with ``get_param``."""
    found: dict[str, str] = {}
    for key, value in (msg.get_params() or [])[1:]:
        found.setdefault(
            str(key).lower(),
            value if isinstance(value, str) else str(collapse_rfc2231_value(value)),
        )
    return found


def _subparts(msg: Message) -> list[Message]:
    payload: Any = msg.get_payload()
    return list(payload) if msg.is_multipart() and isinstance(payload, list) else []


def _sniff_boundary(body: bytes) -> str | None:
    for line in body.lstrip().split(b"\n", 1)[:1]:
        if line.startswith(b"--"):
            return line[2:].rstrip().decode("ascii", "replace")
    return None


_HEADERS = BytesHeaderParser(policy=policy.compat32)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LONE_CR = re.compile(rb"\r(?!\n)")


def _fast_parts(boundary: bytes, body: bytes, depth: int = 0) -> list[Message] | None:
    """The parts of a well-formed multipart body, found with ``bytes.find``.

    The ``email`` parser reads a body line by line, which a profile showed
    as the largest cost of a transaction.  This finds the boundaries in one
    pass and hands each part's headers to the ``email`` header parser; it
    builds the same ``Message`` tree the full parser would.  Anything it is
    not sure of (a line that starts like a boundary but is not one, a part
    without a blank line after its headers, a missing close, lone CRs, deep
    nesting) returns None, and the full parser takes over.
    """
    if depth > 8:
        return None
    # A lone CR ends a line for the email parser: leave such bodies to it.
    # (Checked once: a nested body is a slice of this one, cut before CRLFs.)
    if depth == 0 and b"\r" in body and _LONE_CR.search(body):
        return None
    delimiter = b"--" + boundary
    at = 0 if body.startswith(delimiter) else body.find(b"\n" + delimiter) + 1
    if at <= 0 and not body.startswith(delimiter):
        return None
    parts: list[Message] = []
    while True:
        line_end = body.find(b"\n", at + len(delimiter))
        rest = body[at + len(delimiter) : line_end if line_end >= 0 else len(body)]
        rest = rest.rstrip(b"\r \t")
        if rest == b"--":
            return parts if parts else None  # a close with no part before it
        if rest or line_end < 0:
            return None
        start = line_end + 1
        following = body.find(b"\n" + delimiter, start - 1)
        if following < 0:
            return None
        end = (
            following - 1
            if following > start and body[following - 1] == 13
            else following
        )
        part = _fast_part(body[start:end] if end >= start else b"", depth)
        if part is None:
            return None
        parts.append(part)
        at = following + 1


_HEADER_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+):")


def _fast_headers(block: bytes) -> Message | None:
    """A part's header block as the compat32 parser reads it, for the plain
    case: ASCII, one line per header.  None for anything else (folded
    lines, 8-bit bytes, a line that is not a header)."""
    part = Message()
    if not block:
        return part
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError:
        return None
    for line in text.split("\n"):
        match = _HEADER_LINE.match(line)
        if match is None:
            return None
        part.set_raw(match.group(1), line[match.end() :].lstrip(" \t").rstrip("\r"))
    return part


def _fast_part(raw: bytes, depth: int) -> Message | None:
    blank = _BLANK_LINE.search(raw)
    if blank is None:
        return None
    part = _fast_headers(raw[: blank.start()])
    if part is None:
        part = _HEADERS.parsebytes(raw[: blank.start()] + b"\n\n")
        if part.defects:
            return None
    content = raw[blank.end() :]
    if part.get_content_maintype() == "multipart":
        inner_boundary = part.get_boundary()
        if not inner_boundary:
            return None
        inner = _fast_parts(
            inner_boundary.encode("utf-8", "surrogateescape"), content, depth + 1
        )
        if inner is None:
            return None
        part.set_payload(inner)  # type: ignore[arg-type]
    else:
        part.set_payload(content.decode("ascii", "surrogateescape"))
    return part


def _depth(parts: list[Message]) -> int:
    """How deep ``parts`` nest (1 for leaves), without recursion."""
    deepest = 0
    stack = [(part, 1) for part in parts]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING:  # no need to walk further than the limit
            stack.extend((child, depth + 1) for child in _subparts(part))
    return deepest


def _count(parts: list[Message]) -> int:
    """How many parts ``parts`` hold, at every level."""
    count = 0
    stack = list(parts)
    while stack:
        part = stack.pop()
        count += 1
        stack.extend(_subparts(part))
    return count


def _check_header_sizes(parts: list[Message]) -> None:
    stack = list(parts)
    while stack:
        part = stack.pop()
        size = sum(len(name) + len(value) + 4 for name, value in part.raw_items())
        if size > MAX_PART_HEADERS:
            raise MM7Error(
                StatusCode.MESSAGE_FORMAT_CORRUPT,
                details=f"a MIME part's headers are over {MAX_PART_HEADERS} bytes",
            )
        stack.extend(_subparts(part))


def _too_many() -> MM7Error:
    return MM7Error(
        StatusCode.MESSAGE_FORMAT_CORRUPT,
        details=f"the request has more than {MAX_PARTS} MIME parts",
    )


def _too_deep() -> MM7Error:
    return MM7Error(
        StatusCode.MESSAGE_FORMAT_CORRUPT,
        details=f"the MIME parts are nested deeper than {MAX_NESTING}",
    )


def split(content_type: str | None, body: bytes) -> tuple[bytes, list[Message]]:
    """Split an HTTP body into the SOAP XML and the other top-level parts."""
    head = Message()
    if content_type:
        head["Content-Type"] = content_type
    media = head.get_content_type() if content_type else ""
    looks_xml = body.lstrip()[:1] == b"<"
    if not media.startswith("multipart/"):
        if media in XML_TYPES or (not media and looks_xml):
            return body, []
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details=f"Content-Type {media or '(none)'} is neither multipart nor XML",
        )
    params = _params(head)
    boundary = params.get("boundary")
    if not boundary:
        if looks_xml:  # Skycore: multipart/related with no boundary, bare XML
            return body, []
        boundary = _sniff_boundary(body)
        if not boundary:
            raise MM7Error(
                StatusCode.VALIDATION_ERROR,
                details="multipart Content-Type without a boundary",
            )
    marker = boundary.replace('"', "").encode("utf-8", "surrogateescape")
    if body.count(b"--" + marker) > MAX_PARTS + 1:  # before parsing any of them
        raise _too_many()
    fast = _fast_parts(marker, body)
    if fast is not None:
        parts = fast
        defects: list[Any] = []
    else:
        header = b'Content-Type: %s; boundary="%s"\r\n\r\n' % (
            media.encode("ascii", "replace"),
            marker,
        )
        try:
            msg = _PARSER.parsebytes(header + body)
        except RecursionError:
            raise _too_deep() from None
        parts, defects = _subparts(msg), msg.defects
    if _depth(parts) > MAX_NESTING:
        raise _too_deep()
    if _count(parts) > MAX_PARTS:
        raise _too_many()
    _check_header_sizes(parts)
    if not parts:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details="the body is not MIME: its boundary never appears",
        )
    if any(type(d).__name__ == "CloseBoundaryNotFoundDefect" for d in defects):
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details="the multipart body is truncated: its closing boundary is missing",
        )
    start = normalise_id(params.get("start"))
    soap = parts[0]
    if start is not None:
        soap = next(
            (p for p in parts if normalise_id(p.get("Content-ID")) == start), soap
        )
    data = soap.get_payload(decode=True)
    if not isinstance(data, bytes) or soap.is_multipart():
        raise MM7Error(StatusCode.VALIDATION_ERROR, details="the SOAP part is missing")
    return data, [p for p in parts if p is not soap]


def _find(parts: list[Message], ref: str) -> Message | None:
    for header in ("Content-ID", "Content-Location"):
        for part in parts:
            value = part.get(header)
            if value is not None and normalise_id(str(value)) == ref:
                return part
            found = _find(_subparts(part), ref)
            if found is not None:
                return found
    return None


def _decoded(part: Message) -> bytes:
    """The part's bytes.  Base64 goes straight to the C decoder (which skips
    line breaks as the ``email`` package does after joining lines); anything
    it refuses, and every other encoding, goes through ``get_payload``."""
    payload = part.get_payload()
    header = part.get("Content-Transfer-Encoding")
    encoding = str(header or "").strip().lower()
    if encoding == "base64" and isinstance(payload, str):
        try:
            return binascii.a2b_base64(payload.encode("ascii", "surrogateescape"))
        except (binascii.Error, ValueError):
            pass
    if header is not None and str(header) != encoding:
        # compat32's get_payload compares the raw value: "base64 " (or one
        # folded onto a second line) would come back undecoded.
        part.replace_header("Content-Transfer-Encoding", encoding)
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


# What MIME base64 lines hold besides their padding.
_BASE64_LINE_BYTES = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/\n"
)


def mime_base64(text: bytes) -> bytes | None:
    """``text`` as base64 lines ending in LF, if it is valid MIME base64 as
    it is: only the base64 alphabet, lines of at most 76 characters ending
    in CRLF or LF (blank lines only at the end), a length a multiple of 4
    with its padding at the very end; else None.

    What it gives decodes to exactly what ``text`` does, so the email can
    carry it as it came rather than decoding and encoding it again."""
    # CR goes (one pass, rather than a search for CRLF that stops at every
    # line): the decoder skips it wherever it stands, so the bytes stay.
    text = text.translate(None, b"\r").rstrip(b"\n")
    core = text.rstrip(b"=")
    breaks = text.count(b"\n")
    if (
        not core
        or len(text) - len(core) > 2
        or (len(text) - breaks) % 4
        or core.endswith(b"\n")
        or core.translate(None, _BASE64_LINE_BYTES)
    ):
        return None
    # Lines of 76 (most encoders) are checked by a slice, others one by one
    # (an empty one, two line breaks in a row, is refused too).
    ends = text[76::77]
    if not (len(ends) == breaks and ends.count(b"\n") == breaks):
        lengths = list(map(len, text.split(b"\n")))
        if max(lengths) > 76 or min(lengths) == 0:
            return None
    return text + b"\n"


def _received_base64(part: Message) -> bytes | None:
    """A base64 part's text as :func:`mime_base64` gives it, or None."""
    header = part.get("Content-Transfer-Encoding")
    if header is None or str(header).strip().lower() != "base64":
        return None
    payload = part.get_payload()
    if not isinstance(payload, str):
        return None
    try:
        text = payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        # Not ASCII once parsed (U+FFFD for a byte the parser replaced):
        # not base64 as it came; the slow path decodes what it can.
        return None
    return mime_base64(text)


def _leaves(part: Message) -> list[ContentPart]:
    if part.is_multipart():
        return [leaf for child in _subparts(part) for leaf in _leaves(child)]
    lines = _received_base64(part)
    data = _decoded(part) if lines is None else b""
    params = tuple(
        (
            str(key),
            value if isinstance(value, str) else str(collapse_rfc2231_value(value)),
        )
        for key, value in (part.get_params() or [])[1:]
    )
    location = part.get("Content-Location")
    media_type = part.get_content_type()
    content_id = normalise_id(part.get("Content-ID"))
    content_location = str(location).strip() if location else None
    if lines is not None:
        return [
            ContentPart.from_base64(
                media_type, lines, params, content_id, content_location
            )
        ]
    return [ContentPart(media_type, data, params, content_id, content_location)]


def resolve_content(href: str | None, parts: list[Message]) -> Content:
    """The content the SOAP ``Content href`` points at, flattened to leaves.

    ``cid:`` references match Content-ID (with or without brackets), then
    Content-Location.  A reference that matches nothing (the 3GPP annex
    example has a typo in it) falls back to every non-SOAP part.
    """
    if not parts:
        return ()
    ref = normalise_id(href) if href else None
    target = _find(parts, ref) if ref else None
    chosen = [target] if target is not None else parts
    return tuple(leaf for part in chosen for leaf in _leaves(part))


# Building ------------------------------------------------------------------

# Whole 76-character base64 lines, sixteen at a time.
_SIXTEEN_LINES = struct.Struct("76s" * 16)


def base64_lines(data: bytes) -> bytes:
    """``base64.encodebytes(data)``, byte for byte, in a few C calls rather
    than one per 57-byte line (it was 6% of a transaction in a profile):
    encoded in one piece, cut into lines sixteen at a time by ``struct``
    (a third faster than a regular expression for a 30 KB image)."""
    if not data:
        return b""
    encoded = binascii.b2a_base64(data, newline=False)
    whole = len(encoded) - len(encoded) % _SIXTEEN_LINES.size
    lines = list(
        itertools.chain.from_iterable(
            _SIXTEEN_LINES.iter_unpack(memoryview(encoded)[:whole])
        )
    )
    lines += [encoded[at : at + 76] for at in range(whole, len(encoded), 76)]
    return b"\n".join(lines) + b"\n"


def _boundary() -> str:
    return "mm7tx-" + uuid.uuid4().hex


def _is_plain_text(part: ContentPart) -> bool:
    if not (part.media_type.startswith("text/") or part.is_smil):
        return False
    try:
        text = part.data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return "\r" not in text.replace("\r\n", "") and "\n" not in text.replace("\r\n", "")


def leaf_part(part: ContentPart) -> MIMEPart:
    """A MIME part holding ``part`` byte for byte (7bit text or base64)."""
    mime = MIMEPart(policy=policy.HTTP)
    mime.add_header("Content-Type", part.media_type, **dict(part.params))
    if part.content_id:
        mime["Content-ID"] = f"<{part.content_id}>"
    if part.content_location:
        mime["Content-Location"] = part.content_location
    if _is_plain_text(part):
        mime["Content-Transfer-Encoding"] = "7bit"
        mime.set_payload(part.data.decode("ascii"))
    else:
        mime["Content-Transfer-Encoding"] = "base64"
        mime.set_payload(base64_lines(part.data).decode("ascii"))
    return mime


def _multipart(media: str, parts: list[MIMEPart], **params: str) -> MIMEPart:
    mime = MIMEPart(policy=policy.HTTP)
    mime.add_header("Content-Type", media, **params, boundary=_boundary())
    mime.set_payload(parts)  # type: ignore[arg-type]
    return mime


def content_part(content: Content, content_id: str) -> MIMEPart:
    """The content as one nested multipart part, so that every leaf keeps
    its own Content-ID: ``multipart/related`` starting at the SMIL when there
    is one, else ``multipart/mixed``.
    """
    smil = next((p for p in content if p.is_smil), None)
    leaves = [leaf_part(p) for p in content]
    if smil is not None and smil.content_id:
        mime = _multipart(
            "multipart/related",
            leaves,
            type="application/smil",
            start=f"<{smil.content_id}>",
        )
    else:
        mime = _multipart("multipart/mixed", leaves)
    mime["Content-ID"] = f"<{content_id}>"
    return mime


def _flatten(mime: Any) -> bytes:
    out = BytesIO()
    BytesGenerator(out, policy=policy.HTTP).flatten(mime)
    return out.getvalue()


def new_content_id() -> str:
    return f"mm7-content-{uuid.uuid4().hex}@mm7tx"


def join(soap: bytes, content: Content, content_id: str) -> tuple[str, bytes]:
    """The HTTP Content-Type and body for a SOAP envelope and its content.

    With no content the body is the bare XML; else ``multipart/related`` with
    the SOAP part first (and named by ``start``) and the content, under
    ``content_id``, second.
    """
    if not content:
        return 'text/xml; charset="utf-8"', soap
    soap_id = f"mm7-soap-{uuid.uuid4().hex}@mm7tx"
    soap_part = MIMEPart(policy=policy.HTTP)
    soap_part.add_header("Content-Type", "text/xml", charset="utf-8")
    soap_part["Content-ID"] = f"<{soap_id}>"
    soap_part["Content-Transfer-Encoding"] = "8bit"
    # Surrogate-escaped, the generator writes the UTF-8 bytes back unchanged.
    soap_part.set_payload(soap.decode("ascii", "surrogateescape"))
    outer = _multipart(
        "multipart/related",
        [soap_part, content_part(content, content_id)],
        type="text/xml",
        start=f"<{soap_id}>",
    )
    raw = _flatten(outer)
    _, _, body = raw.partition(b"\r\n\r\n")
    return str(outer["Content-Type"]), body
