"""The MIME side of MM7 (SOAP with attachments) coming in: find the SOAP part
and the content it points to.  Building the body of an outgoing request is
:mod:`mm7tx.mm7.codec.mime_writer`'s (its names import from here too).

Part headers are read by the standard library's ``email`` header parser.  The
body is split into parts here (:class:`_Reader`), reading it as the ``email``
package's full parser does (LF-only and lone-CR line ends, boundaries with
trailing blanks, repeated delimiters, a missing close, its quirks), because
that parser reads a body a line at a time on the reactor and counts nothing
until it is done: a body of megabytes of CRs or of nested parts would hold
the reactor.  The tests hold the two side by side
(``tests.fuzzing.email_split``), on every reference sample, hypothesis
mutations and each quirk found.
"""

from __future__ import annotations

import binascii
import quopri
import re
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from typing import Any, NamedTuple
from urllib.parse import unquote

from mm7tx.mm7.codec.encoding import base64_lines as base64_lines
from mm7tx.mm7.codec.mime_writer import content_part as content_part
from mm7tx.mm7.codec.mime_writer import join as join
from mm7tx.mm7.codec.mime_writer import leaf_part as leaf_part
from mm7tx.mm7.codec.mime_writer import new_content_id as new_content_id
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.messages import Content, ContentPart
from mm7tx.mm7.status import StatusCode

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
# At most this many bytes of part headers in a request, all parts together
# (an MMS has a few hundred a part): each line of them goes through the
# email header parser, so their sum bounds the reactor's time on them.
MAX_HEADER_BYTES = 128 * 1024
# A binary leaf over this many bytes is made base64 lines as it is read, as
# if it had come so (ContentPart.from_base64): the mail takes them as they
# are, and a large request's encoding happens where it is read (in a
# thread, mm7tx.offload) rather than on the reactor when the mail is made.
ENCODE_AHEAD = 1024 * 1024
# At most this many bytes of headers in one part (an MMS part has a few
# hundred): checked before any header value is read, since reading the
# parameters of a 512 KB one (an RFC 2231 filename) held the reactor 40 ms.
MAX_PART_HEADERS = 16 * 1024


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


class Part(Message):
    """A MIME part as :func:`split` reads it: its headers, parsed by the
    ``email`` package, and either its subparts (the payload, as in any
    ``Message``) or, for a leaf, its content bytes as they came (``raw``),
    never copied into a string.  A leaf read from a body is a view of it
    (``view``) until ``raw`` is first read: a large binary leaf is encoded
    from the view, never copied."""

    view: memoryview | None = None
    _raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = bytes(self.view) if self.view is not None else b""
            self.view = None
        return self._raw

    @raw.setter
    def raw(self, value: bytes) -> None:
        self._raw, self.view = value, None


_HEADERS = BytesHeaderParser(policy=policy.compat32)
# A line ending as the email parser reads them: CRLF, LF or a lone CR.
_EOL = re.compile(rb"\r\n|\r|\n")
# A blank line: a line ending right after another (possessive: a CRLF is
# one line ending, never a CR and an LF).
_BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
# A line of headers as the email parser tells them from body lines.
_HEADER_OR_CONTINUATION = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
# What may follow ``--boundary`` on a delimiter line: ``--`` for the close,
# some blanks, the line's end (or the end of the enclosing part).
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*+(?:\r\n|\r|\n|\Z)")
# Lines that start like a delimiter but make no part (RFC 2046 forbids them
# in content; a delimiter line repeated makes no empty part): each costs a
# step, so a body holding more is refused.
MAX_FALSE_DELIMITERS = 1024


class _Delimiter(NamedTuple):
    """A delimiter line: where it starts, where the content before it ends
    (its line ending belongs to the delimiter), where the line after it
    starts, and whether it is the close."""

    line: int
    content_end: int
    after: int
    closed: bool


class _Reader:
    """Splits a multipart body into :class:`Part` trees in one pass over its
    bytes, counting parts and depth as it finds them.

    Boundaries are found with ``bytes.find`` and each part's headers handed
    to the ``email`` header parser; the tree is the one the ``email``
    package's full parser builds (the tests hold the two side by side), but
    no step reads the body a line at a time, as the full parser does: the
    time is linear in the body's size, whatever its bytes.  Every count is
    enforced before the work it bounds.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.parts = 0
        self.false_delimiters = 0
        self.header_bytes = 0
        # (line ending + delimiter, end of range) -> its next position (-1:
        # none left), for :meth:`_next`.
        self._hits: dict[tuple[bytes, int], int] = {}

    def multipart(
        self, boundary: bytes, start: int, end: int, depth: int
    ) -> tuple[list[Message], bool] | int | None:
        """The parts between ``start`` and ``end`` under ``boundary`` and
        whether its close delimiter came.  As the email parser reads it: None
        when the boundary never starts a line there, and where the text
        before it ends when the first delimiter is the close (the multipart
        is then that text)."""
        found = self._delimiter(delimiter := b"--" + boundary, start, start, end)
        if found is None:
            return None
        if found.closed:
            return found.content_end
        if depth > MAX_NESTING:
            raise _too_deep()
        parts: list[Message] = []
        at = found.after
        while True:
            # Delimiter lines right after a delimiter, the close too, make no
            # part: the email parser skips them.
            found = self._delimiter(delimiter, at, at, end)
            while found is not None and found.line == at:
                self._wasted()
                at = found.after
                found = self._delimiter(delimiter, at, at, end)
            if found is None:
                parts.append(self.part(at, end, depth))
                return parts, False
            parts.append(self.part(at, found.content_end, depth))
            if found.closed:
                return parts, True
            at = found.after

    def _delimiter(
        self, delimiter: bytes, line_start: int, search: int, end: int
    ) -> _Delimiter | None:
        """The next delimiter line from ``search``."""
        body = self.body
        at = search
        while True:
            if at == line_start and body.startswith(delimiter, at, end):
                line = content_end = at
            else:
                hit = self._next(delimiter, max(at - 1, line_start), end)
                if hit < 0:
                    return None
                # A CRLF before the delimiter belongs to it, as an LF or a lone
                # CR does.
                crlf = body[hit : hit + 1] == b"\n" and body[hit - 1 : hit] == b"\r"
                content_end = max(hit - 1 if crlf else hit, line_start)
                line = hit + 1
            tail = _DELIMITER_TAIL.match(body, line + len(delimiter), end)
            if tail is not None:
                return _Delimiter(
                    line, content_end, tail.end(), tail.group(1) is not None
                )
            self._wasted()
            at = line + len(delimiter)

    def _next(self, delimiter: bytes, start: int, end: int) -> int:
        """Where the next line ending followed by ``delimiter`` is, from
        ``start``: an LF, or a lone CR.  Each kind's next hit is kept, so
        that a kind the body never holds is looked for once, not once a
        part (which made a body of many parts quadratic)."""
        found = -1
        for ending in b"\n", b"\r":
            key = (ending + delimiter, end)
            cached = self._hits.get(key)
            if cached is None or (0 <= cached < start):
                cached = self.body.find(key[0], start, end)
                self._hits[key] = cached
            if cached >= 0 and (found < 0 or cached < found):
                found = cached
        return found

    def _wasted(self) -> None:
        """One more line that starts like a delimiter but makes no part."""
        self.false_delimiters += 1
        if self.false_delimiters > MAX_FALSE_DELIMITERS:
            raise MM7Error(
                StatusCode.MESSAGE_FORMAT_CORRUPT,
                details=f"over {MAX_FALSE_DELIMITERS} lines start like a MIME "
                "boundary but make no part",
            )

    def part(self, start: int, end: int, depth: int) -> Message:
        """The part whose bytes run from ``start`` to ``end``."""
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _too_many()
        part, content, lead = self.headers(start, end)
        if part.get_content_maintype() == "multipart":
            inner = self._inner(part, content, end, depth)
            if isinstance(inner, tuple):
                part.set_payload(inner[0])  # type: ignore[arg-type]
                return part
            if inner is not None:
                end = inner  # the text before a first delimiter that closes
        if lead:
            part.raw = lead + self.body[content:end]
        else:
            part.view = memoryview(self.body)[content:end]
        return part

    def _inner(
        self, part: Message, start: int, end: int, depth: int
    ) -> tuple[list[Message], bool] | int | None:
        """A multipart part's parts, as :meth:`multipart` gives them; None
        for one whose boundary cannot be read or matched (the email parser
        matches it against bytes read as ASCII: a boundary of other
        characters never matches)."""
        try:
            boundary = part.get_boundary()
            marker = (
                None
                if boundary is None
                else boundary.encode("ascii", "surrogateescape")
            )
        except (UnicodeError, LookupError):
            return None
        if marker is None or b"\r" in marker or b"\n" in marker:
            return None  # a folded one spans lines: no line is its delimiter
        return self.multipart(marker, start, end, depth + 1)

    def headers(self, start: int, end: int) -> tuple[Part, int, bytes]:
        """The part's headers, where its content starts, and a line to put
        before the content: after the blank line, or at the first line that
        is not a header (as the email parser reads a part without a blank
        line), and a ``From `` line ending the headers goes to the content
        (the email parser takes it for the body's first line).  Headers over
        :data:`MAX_PART_HEADERS` bytes are refused before any is parsed."""
        body = self.body
        limit = min(end, start + MAX_PART_HEADERS + 4)
        eol = _EOL.match(body, start, limit)
        if eol is not None:  # no headers: the content follows the blank line
            return Part(), eol.end(), b""
        blank = _BLANK_LINE.search(body, start, limit)
        block_end = blank.start() if blank is not None else limit
        block = body[start:block_end]
        if blank is not None and (part := _fast_headers(block)) is not None:
            self._spend(len(block))
            return _as_part(part), blank.end(), b""
        # Line by line (a bounded block): the first line that is not a
        # header starts the content.
        at = start
        content = -1
        last = start  # where the last header line starts
        while at < block_end:
            if not _HEADER_OR_CONTINUATION.match(body, at, block_end):
                content = at
                break
            last = at
            eol = _EOL.search(body, at, block_end)
            at = eol.end() if eol is not None else block_end
        if content < 0:
            if blank is not None:
                content = blank.end()
            elif limit == end:  # headers to the end of the part, no content
                content = end
            else:
                raise MM7Error(
                    StatusCode.MESSAGE_FORMAT_CORRUPT,
                    details=f"a MIME part's headers are over {MAX_PART_HEADERS} bytes",
                )
        lead = b""
        header_end = min(content, block_end)
        if last > start and body.startswith(b"From ", last) and last < header_end:
            # The email parser puts a "From " line that ends the headers
            # back, as the body's first line (the blank line is gone).
            eol = _EOL.search(body, last, content)
            lead = body[last : eol.end() if eol is not None else header_end]
            if content == header_end:  # no blank line: the line comes back as is
                content, lead = last, b""
            header_end = last
        self._spend(content - start)
        block = body[start:header_end]
        headers = _HEADERS.parsebytes(block.rstrip(b"\r\n") + b"\n\n")
        return _as_part(headers), content, lead

    def _spend(self, size: int) -> None:
        """Count ``size`` bytes of part headers against the request's
        :data:`MAX_HEADER_BYTES`, before they are parsed."""
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            raise MM7Error(
                StatusCode.MESSAGE_FORMAT_CORRUPT,
                details=f"the MIME parts' headers are over {MAX_HEADER_BYTES} "
                "bytes in all",
            )


def _as_part(headers: Message) -> Part:
    part = Part()
    part._headers = headers._headers  # type: ignore[attr-defined]
    part._unixfrom = headers._unixfrom  # type: ignore[attr-defined]
    return part


_HEADER_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+):")


def _fast_headers(block: bytes) -> Message | None:
    """A part's header block as the compat32 parser reads it, for the plain
    case: ASCII, one line per header.  None for anything else (folded
    lines, 8-bit bytes, a line that is not a header, a lone CR)."""
    part = Message()
    if not block:
        return part
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError:
        return None
    for line in text.split("\n"):
        match = _HEADER_LINE.match(line)
        if match is None or "\r" in line[:-1]:
            return None
        part.set_raw(match.group(1), line[match.end() :].lstrip(" \t").rstrip("\r"))
    return part


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
    found = _Reader(body).multipart(marker, 0, len(body), 1)
    if not isinstance(found, tuple) or not found[0]:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details="the body is not MIME: its boundary never appears",
        )
    parts, closed = found
    if not closed:
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
    if soap.is_multipart():
        raise MM7Error(StatusCode.VALIDATION_ERROR, details="the SOAP part is missing")
    return _decoded(soap), [p for p in parts if p is not soap]


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
    """The part's content decoded by its Content-Transfer-Encoding, as the
    ``email`` package decodes it.  Base64 goes straight to the C decoder
    (which skips line breaks as the ``email`` package does after joining
    lines), quoted-printable to the one the ``email`` package uses; what
    the decoder refuses, and uuencode, go through ``get_payload``."""
    raw = part.raw if isinstance(part, Part) else b""
    encoding = _encoding(part)
    if encoding == "base64":
        try:
            return binascii.a2b_base64(raw)
        except (binascii.Error, ValueError):
            pass
    elif encoding == "quoted-printable":
        return quopri.decodestring(raw)
    elif encoding in _AS_IS or encoding not in _UUENCODE:
        return raw
    # The rare rest: the email package's own decoding (with its repairs of
    # bad base64).  compat32 compares the raw header value, hence the
    # stripped, lower-case copy.
    copy = Message()
    copy["Content-Transfer-Encoding"] = encoding
    copy.set_payload(raw.decode("ascii", "surrogateescape"))
    data = copy.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
# Encodings whose content is the data itself.
_AS_IS = frozenset({"", "7bit", "8bit", "binary"})


def _encoding(part: Message) -> str:
    """The Content-Transfer-Encoding token (RFC 2045: no case, no blanks)."""
    return str(part.get("Content-Transfer-Encoding") or "").strip().lower()


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
    carry it as it came rather than decoding and encoding it again.  At
    most one copy of ``text`` is made (without its CRs), and lines are
    looked at 64 KiB at a time: a list of every line of a large part took
    twelve times its size."""
    # CR goes (one pass, rather than a search for CRLF that stops at every
    # line): the decoder skips it wherever it stands, so the bytes stay.
    text = text.translate(None, b"\r")
    size = len(text)  # without the line breaks at the end
    while size and text[size - 1] == 10:
        size -= 1
    padding = 0
    while padding < 3 and padding < size and text[size - 1 - padding] == 61:
        padding += 1
    core = size - padding
    breaks = text.count(b"\n", 0, size)
    if (
        not core
        or padding > 2
        or (size - breaks) % 4
        or text[core - 1] == 10
        or text.find(b"=", 0, core) >= 0
        or text.translate(None, _BASE64_LINE_BYTES + b"=")
    ):
        return None
    if not _lines_fit(text, size, breaks):
        return None
    return text if size + 1 == len(text) else text[:size] + b"\n"


def _lines_fit(text: bytes, size: int, breaks: int) -> bool:
    """Whether the lines of ``text[:size]`` are all 1 to 76 characters.
    Lines of 76 (most encoders) are checked by a slice, others 64 KiB of
    lines at a time (an empty line, two breaks in a row, is refused)."""
    ends = text[76:size:77]
    if len(ends) == breaks and ends.count(b"\n") == breaks:
        return True
    at = 0
    while at < size:
        cut = text.find(b"\n", at + 64 * 1024, size)
        stop = size if cut < 0 else cut
        lengths = list(map(len, text[at:stop].split(b"\n")))
        if max(lengths) > 76 or min(lengths) == 0:
            return False
        at = stop + 1
    return True


def _received_base64(part: Message) -> bytes | None:
    """A base64 part's text as :func:`mime_base64` gives it, or None."""
    header = part.get("Content-Transfer-Encoding")
    if header is None or str(header).strip().lower() != "base64":
        return None
    return mime_base64(part.raw) if isinstance(part, Part) else None


def _leaves(part: Message) -> list[ContentPart]:
    if part.is_multipart():
        return [leaf for child in _subparts(part) for leaf in _leaves(child)]
    lines = _received_base64(part)
    media_type = part.get_content_type()
    view = part.view if isinstance(part, Part) else None
    if (
        lines is None
        and view is not None
        and len(view) > ENCODE_AHEAD
        and not media_type.startswith("text/")
        and _encoding(part) in _AS_IS
    ):
        lines = base64_lines(view)  # from the body, never copied
    data = _decoded(part) if lines is None else b""
    params = tuple(
        (
            str(key),
            value if isinstance(value, str) else str(collapse_rfc2231_value(value)),
        )
        for key, value in (part.get_params() or [])[1:]
    )
    location = part.get("Content-Location")
    content_id = normalise_id(part.get("Content-ID"))
    content_location = str(location).strip() if location else None
    if (
        lines is None
        and len(data) > ENCODE_AHEAD
        and not media_type.startswith("text/")
    ):
        lines = base64_lines(data)
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
