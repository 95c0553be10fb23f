"""The MIME side of MM7 going out: the multipart body (SOAP with
attachments) for a request's envelope and its content."""

from __future__ import annotations

import uuid
from email import policy
from email.generator import BytesGenerator
from email.message import MIMEPart
from io import BytesIO
from typing import Any

from mm7tx.mm7.codec.encoding import base64_lines
from mm7tx.mm7.messages import Content, ContentPart


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
