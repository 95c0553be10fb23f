"""The SMTP envelope: addresses checked before they go in MAIL FROM and
RCPT TO, so that none can break a session or add a command to it."""

from __future__ import annotations

import re

from twisted.mail import smtp

from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode

# An address as it may go between < and > in MAIL FROM or RCPT TO: a local
# part and a domain, with no space, control character, angle bracket or
# second @ (RFC 5321 4.1.2, UTF-8 allowed as in RFC 6531).
_ENVELOPE_ADDRESS = re.compile(
    r"[^\s<>@\x00-\x1f\x7f-\x9f]+@[^\s<>@\x00-\x1f\x7f-\x9f]+"
)

# A display name and one address in angle brackets, and nothing after them.
_NAMED_ADDRESS = re.compile(r"[^<>]*<([^<>]*)>\s*")


def envelope_address(address: str, what: str, empty: bool = False) -> bytes:
    """``address`` as it goes in the SMTP envelope (UTF-8), or a 2002 for one
    that cannot: checked before any session takes the message, so that no
    address can break a session or add a command to it."""
    if address == "" and empty:
        return b""  # the null reverse-path, <>
    named = _NAMED_ADDRESS.fullmatch(address)
    if named:  # "Name <a@b.example>", as a configured default may be
        address = named.group(1)
    if _ENVELOPE_ADDRESS.fullmatch(address):
        try:
            return address.encode("utf-8")
        except UnicodeEncodeError:
            pass
    raise MM7Error(
        StatusCode.ADDRESS_ERROR,
        details=f"the {what} {address[:80]!r} cannot go in an SMTP envelope",
    )


def path(address: bytes) -> bytes:
    """An envelope address, checked, as an SMTP path."""
    return b"<" + address + b">"


def mail_command(sender: bytes, utf8: bool) -> bytes:
    """MAIL FROM for ``sender``, asking for SMTPUTF8 (RFC 6531) when an
    address of the message is not ASCII (``utf8``)."""
    command = b"MAIL FROM:" + path(sender)
    return command + b" SMTPUTF8" if utf8 else command


class EnvelopePath(smtp.Address):
    """An envelope address, checked, for Twisted's client: its ``quoteaddr``
    takes an ``Address`` as it is (and decodes bytes as ASCII)."""

    addrstr: bytes

    def __init__(self, address: bytes) -> None:
        self.addrstr = address
        self.local, _, self.domain = address.rpartition(b"@")

    def __bytes__(self) -> bytes:
        return self.addrstr

    def __str__(self) -> str:
        return self.addrstr.decode("utf-8")
