"""What a fault can echo of a request that was never decoded.

A request refused before (or while) it is decoded (a wrong password, a
limit, a busy gate, XML that does not parse) is still answered with its
TransactionID, in its MM7 namespace and MM7Version.  :func:`sniff` reads
those three from the raw body without parsing it: a few bounded searches
over at most :data:`WINDOW` bytes of the SOAP part, so that it costs the
same whatever the body holds, and only values that are safe to write back
come out (an MM7 namespace of the 3GPP schema archive, a short printable
TransactionID, a version like ``5.3.0``); anything else is ``None``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# How much of the SOAP part is read: an MM7 request's TransactionID,
# operation and MM7Version come within its first few hundred bytes.
WINDOW = 64 * 1024
# The longest TransactionID echoed (MM7 peers send a few dozen characters).
MAX_TRANSACTION_ID = 256
# Bounds on what is read of a tag's name and attributes.
_NAME = rb"[A-Za-z_][\w.\-]{0,63}"
_ATTRIBUTES = rb"(?:\s[^<>]{0,4096})?"

MM7_NAMESPACE = re.compile(
    r"http://www\.3gpp\.org/ftp/Specs/archive/23_series/23\.140/schema/"
    r"REL-\d{1,2}-MM7-\d{1,2}-\d{1,2}"
)
MM7_VERSION = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}")

_XMLNS = re.compile(rb"xmlns(?::(" + _NAME + rb"))?\s*=\s*([\"'])([^\"'<>]{0,512})\2")
_BODY = re.compile(rb"<(?:" + _NAME + rb":)?Body" + _ATTRIBUTES + rb">")
_TAG = re.compile(
    rb"<(?:(" + _NAME + rb"):)?(" + _NAME + rb")(" + _ATTRIBUTES + rb")/?>"
)
_COMMENT_OR_SPACE = re.compile(rb"\s*(?:<!--.{0,4096}?-->\s*)?", re.S)
_TRANSACTION_ID = re.compile(
    rb"<(?:(" + _NAME + rb"):)?TransactionID(" + _ATTRIBUTES + rb")>"
)
_VERSION = re.compile(rb"<(?:" + _NAME + rb":)?MM7Version" + _ATTRIBUTES + rb">")
# Possessive: each blank run is read once (with plain ``\s*`` around an
# optional quote, a run of spaces was tried in every split: quadratic).
_START = re.compile(r"""(?i)(?:^|;)\s*+start\s*+=\s*+"?+\s*+<?+([^"<>;\s]{1,256})""")
_REFERENCE = re.compile(r"&(#x[0-9A-Fa-f]{1,6}|#[0-9]{1,7}|lt|gt|amp|quot|apos);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


class Sniffed(NamedTuple):
    """The request's MM7 namespace, TransactionID and MM7Version, each
    ``None`` when it is absent, unreadable or not safe to echo."""

    namespace: str | None = None
    transaction_id: str | None = None
    mm7_version: str | None = None


def sniff(content_type: str | None, body: bytes) -> Sniffed:
    """The namespace, TransactionID and MM7Version of a raw MM7 request.

    Works on ``multipart/related`` bodies (the ``start`` part, else the part
    holding the first ``Envelope``), bare XML, and bodies that are not
    well-formed or not XML at all; never raises on what the body holds.
    """
    window = _soap_window(content_type, body)
    declarations = [
        (m.start(), m.group(1), m.group(3)) for m in _XMLNS.finditer(window)
    ]
    namespace: str | None = None
    operation = _operation(window)
    if operation is not None:
        namespace = _resolve(declarations, *operation)
    tid = _TRANSACTION_ID.search(window)
    if namespace is None and tid is not None:
        namespace = _resolve(declarations, tid.start(), tid.group(1), tid.group(2))
    if namespace is None:  # any MM7 namespace the envelope declares
        namespace = next(
            (ns for _, _, uri in declarations if (ns := _mm7_namespace(uri))), None
        )
    return Sniffed(
        namespace,
        _transaction_id(window, tid.end()) if tid is not None else None,
        _version(window),
    )


def clean_version(text: str | None) -> str | None:
    """``text`` if it looks like an MM7Version (``5.3.0``), else None."""
    if text is None:
        return None
    text = text.strip()
    return text if MM7_VERSION.fullmatch(text) else None


def _mm7_namespace(uri: bytes) -> str | None:
    text = uri.decode("ascii", "replace").strip()
    return text if MM7_NAMESPACE.fullmatch(text) else None


def _soap_window(content_type: str | None, body: bytes) -> bytes:
    """At most :data:`WINDOW` bytes where the SOAP envelope should be: from
    the part ``start`` names, else from the first ``Envelope`` (the SOAP part
    need not come first), else from the start of the body."""
    offset = 0
    match = _START.search(content_type or "")
    if match is not None:
        offset = _content_id_at(body, match.group(1).encode("utf-8", "replace"))
    found = body.find(b"Envelope", offset)
    if found >= 0:
        # From the '<' of its tag (a prefix is at most 64 characters).
        offset = max(offset, body.rfind(b"<", max(offset, found - 66), found))
    return body[offset : offset + WINDOW]


def _content_id_at(body: bytes, content_id: bytes) -> int:
    """Where the part whose Content-ID is ``content_id`` starts, or 0."""
    at = 0
    for _ in range(16):  # the id may also appear in content: a few tries
        at = body.find(content_id, at)
        if at < 0:
            return 0
        line = body.rfind(b"\n", max(0, at - 256), at) + 1
        if body[line:at].lower().lstrip().startswith(b"content-id"):
            return line
        at += len(content_id)
    return 0


def _operation(window: bytes) -> tuple[int, bytes | None, bytes] | None:
    """The first element in the SOAP Body: where it starts, its prefix and
    its attributes (a Fault's detail is not looked into)."""
    body = _BODY.search(window)
    if body is None:
        return None
    at = body.end()
    for _ in range(8):  # a few comments between Body and the operation
        gap = _COMMENT_OR_SPACE.match(window, at)
        if gap is None or gap.end() == at:
            break
        at = gap.end()
    tag = _TAG.match(window, at)
    if tag is None:
        return None
    return tag.start(), tag.group(1), tag.group(3)


def _resolve(
    declarations: list[tuple[int, bytes | None, bytes]],
    at: int,
    prefix: bytes | None,
    attributes: bytes,
) -> str | None:
    """The MM7 namespace of a tag at ``at`` with ``prefix``: declared on
    the tag itself, else by the nearest declaration of that prefix before
    it (scopes are not followed: lenient, and enough for real requests)."""
    for match in _XMLNS.finditer(attributes):
        if match.group(1) == prefix:
            return _mm7_namespace(match.group(3))
    for start, declared, uri in reversed(declarations):
        if start < at and declared == prefix:
            return _mm7_namespace(uri)
    return None


def _transaction_id(window: bytes, at: int) -> str | None:
    """The text of the TransactionID element whose start tag ends at
    ``at``, if it is short, printable text."""
    end = window.find(b"<", at, at + 4 * MAX_TRANSACTION_ID)
    if end < 0 or window[end : end + 2] != b"</":
        return None
    try:
        raw = window[at:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    unescaped = _unescape(raw) if "&" in raw else raw
    if unescaped is None:
        return None
    text = unescaped.strip()
    if not text or len(text) > MAX_TRANSACTION_ID or not text.isprintable():
        return None
    return text


def _unescape(text: str) -> str | None:
    """XML's five entities and character references; None for any other."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name[0] != "#":
            return _ENTITIES[name]
        number = int(name[2:], 16) if name[1] == "x" else int(name[1:])
        return chr(number) if number < 0x110000 else "\x00"

    replaced = _REFERENCE.sub(one, text)
    # An '&' left over is an entity XML does not define: not ours to guess.
    return None if "&" in _REFERENCE.sub("", text) else replaced


def _version(window: bytes) -> str | None:
    match = _VERSION.search(window)
    if match is None:
        return None
    end = window.find(b"<", match.end(), match.end() + 64)
    if end < 0:
        return None
    return clean_version(window[match.end() : end].decode("ascii", "replace"))
