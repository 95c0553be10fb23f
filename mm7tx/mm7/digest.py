"""What makes two MM7 requests the same transaction, as a digest.

A peer that did not get its answer posts the request again.  The retry is
not the same bytes: clients draw a new MIME boundary per attempt, may fold
base64 differently, reorder namespace prefixes.  So the digest is of the
request *as decoded*: its operation, every element the message type has
(addresses with their kinds, subject, flags…) and each content part's type,
parameters, identifiers and content.  A part that came base64-encoded is
hashed as received with its line breaks removed, so that the digest never
decodes what the email will carry encoded as it came.

:func:`transaction_key` joins the digest to who sent it and its
TransactionID: the key under which a store remembers the answer given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from typing import Any

from mm7tx.mm7 import messages as m

_LINE_BREAKS = bytes.maketrans(b"", b"")


def transaction_digest(message: m.Request) -> str:
    """A hex SHA-256 of ``message`` as decoded; equal for equal requests,
    whatever MIME boundary, base64 line length or XML spelling carried them."""
    h = hashlib.sha256()
    _feed(h, type(message).__name__)
    _value(h, message)
    return h.hexdigest()


def peer_identity(account: str | None, path: str, peer: str | None) -> str:
    """Who sent a request, for its key: the authenticated account, else the
    URI path and the source network (an IPv4 /24, an IPv6 /64), so that a
    retry from another address of the same peer's farm is still the peer."""
    if account is not None:
        return f"account:{account}"
    return f"path:{path} net:{source_network(peer)}"


def source_network(peer: str | None) -> str:
    """The /24 (IPv4) or /64 (IPv6) that holds ``peer``; the text itself when
    it is not an address (a UNIX socket's path, None)."""
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return str(peer)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def transaction_key(identity: str, transaction_id: str, digest: str) -> str:
    """The key of one transaction from one peer: hex, 64 characters."""
    h = hashlib.sha256()
    for text in (identity, transaction_id, digest):
        _feed(h, text)
    return h.hexdigest()


def _feed(h: Any, text: str | bytes) -> None:
    """``text`` with its length first, so that no two sequences of fields
    feed the same bytes."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    h.update(b"%d:" % len(data))
    h.update(data)


def _value(h: Any, value: object) -> None:
    if value is None:
        h.update(b"N")
    elif isinstance(value, bool):
        h.update(b"T" if value else b"F")
    elif isinstance(value, str):
        h.update(b"s")
        _feed(h, value)
    elif isinstance(value, m.ContentPart):
        _part(h, value)
    elif isinstance(value, tuple):
        h.update(b"(%d" % len(value))
        for item in value:
            _value(h, item)
        h.update(b")")
    elif dataclasses.is_dataclass(value):
        h.update(b"{")
        _feed(h, type(value).__name__)
        for f in dataclasses.fields(value):
            _feed(h, f.name)
            _value(h, getattr(value, f.name))
        h.update(b"}")
    else:  # pragma: no cover - every field of the messages is one of the above
        raise TypeError(f"no digest for {type(value).__name__}")


def _part(h: Any, part: m.ContentPart) -> None:
    h.update(b"P")
    _feed(h, part.media_type.lower())
    _value(h, tuple((k.lower(), v) for k, v in part.params))
    _value(h, part.content_id)
    _value(h, part.content_location)
    encoded = part.base64
    if encoded is not None:
        h.update(b"b")
        _feed(h, encoded.translate(_LINE_BREAKS, b"\r\n"))
    else:
        h.update(b"d")
        _feed(h, part.data)
