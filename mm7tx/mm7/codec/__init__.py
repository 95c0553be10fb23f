"""The MM7 codec: HTTP body bytes to :class:`~mm7tx.messages.Envelope` and back.

Pure functions, no I/O: the resource, the client and the tests all use them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mm7tx.mm7.codec import mime, mime_writer, soap, soap_writer
from mm7tx.mm7.codec.sniff import Sniffed, sniff
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.messages import Envelope
from mm7tx.mm7.status import StatusCode

__all__ = ["MM7Error", "Sniffed", "decode", "encode", "sniff"]


def decode(
    content_type: str | None, body: bytes, limits: soap.XMLLimits | None = None
) -> Envelope:
    """Parse an MM7 HTTP body (request, response or fault) into an envelope.

    Raises :class:`MM7Error` with the status to answer for anything that is
    not a well-formed MM7 message.
    """
    if not body.strip():
        raise MM7Error(StatusCode.VALIDATION_ERROR, details="the request body is empty")
    try:
        xml, parts = mime.split(content_type, body)
    except (UnicodeError, LookupError) as e:
        raise _unreadable(e) from None
    envelope, href = soap.parse_envelope(xml, limits)
    message: Any = envelope.message
    if hasattr(message, "content"):
        try:
            content = mime.resolve_content(href, parts)
        except (UnicodeError, LookupError) as e:
            raise _unreadable(e) from None
        envelope = dataclasses.replace(
            envelope,
            message=dataclasses.replace(message, content=content),
            content_href=href or None,
        )
    return envelope


def _unreadable(error: Exception) -> MM7Error:
    """A MIME parameter the email package cannot decode: RFC 2231 values
    name their charset, and some codecs (``idna``, say) raise on bad
    input rather than replace it."""
    return MM7Error(
        StatusCode.MESSAGE_FORMAT_CORRUPT,
        details=f"a MIME parameter cannot be decoded: {str(error)[:200]}",
    )


def encode(envelope: Envelope) -> tuple[str, bytes]:
    """The HTTP Content-Type and body for an envelope.

    Messages with content become ``multipart/related``; the rest bare XML.
    """
    content = getattr(envelope.message, "content", ())
    if not content:
        return 'text/xml; charset="utf-8"', soap_writer.build_envelope(envelope)
    content_id = mime_writer.new_content_id()
    xml = soap_writer.build_envelope(envelope, content_href=f"cid:{content_id}")
    return mime_writer.join(xml, content, content_id)
