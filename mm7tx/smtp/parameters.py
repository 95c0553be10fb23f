"""MAIL and RCPT parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 3461 DSN)
parsed from the command line into the records the server gives its policy
(defined in mm7tx.interfaces, with the interface).  Pure: bytes in, records
out."""

from __future__ import annotations

import re

from mm7tx.interfaces import (
    Envelope,
    MailParameters,
    RecipientParameters,
    SMTPReply,
)

__all__ = [
    "Envelope",
    "MailParameters",
    "ParameterError",
    "RecipientParameters",
    "SMTPReply",
    "parse_mail_parameters",
    "parse_rcpt_parameters",
    "xtext_decode",
]
_XTEXT = re.compile(rb"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_KEYWORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*")


class ParameterError(ValueError):
    """A MAIL or RCPT parameter the server cannot take; ``reply`` says why."""

    def __init__(self, reply: SMTPReply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _unknown(keyword: str) -> ParameterError:
    return ParameterError(
        SMTPReply(
            555, "5.5.4", f"Parameter {keyword} not recognized or not implemented"
        )
    )


def _bad(keyword: str, why: str) -> ParameterError:
    return ParameterError(SMTPReply(501, "5.5.4", f"Bad {keyword} parameter: {why}"))


def xtext_decode(keyword: str, value: bytes) -> str:
    """Decode RFC 3461 xtext strictly (``+`` followed by two upper-case hex
    digits; printable ASCII other than ``+`` and ``=``); the result is UTF-8
    where it decodes as such (RFC 6533 leaves ORCPT's utf-8 type to that)."""
    if not _XTEXT.fullmatch(value):
        raise _bad(keyword, "not xtext")
    decoded = re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), value)
    return decoded.decode("utf-8", "replace")


def _split(text: bytes) -> dict[str, bytes | None]:
    """``KEY=value KEY2`` → ``{"KEY": b"value", "KEY2": None}``, keywords
    upper-cased; a repeated keyword is an error (RFC 5321 4.1.2)."""
    found: dict[str, bytes | None] = {}
    for item in text.split():
        raw, sep, value = item.partition(b"=")
        if not _KEYWORD.fullmatch(raw):
            raise _bad(raw.decode("ascii", "replace"), "not a parameter")
        keyword = raw.decode("ascii").upper()
        if keyword in found:
            raise _bad(keyword, "given twice")
        found[keyword] = value if sep else None
    return found


def parse_mail_parameters(text: bytes, max_size: int) -> MailParameters:
    """MAIL FROM's parameters; a declared SIZE over ``max_size`` is refused
    552 5.3.4 (RFC 1870 6.1), an unknown one 555 5.5.4, a malformed one 501."""
    size = body = ret = envid = None
    for keyword, value in _split(text).items():
        if keyword == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                raise _bad(keyword, "not a number")
            size = int(value)
            if size > max_size:
                raise ParameterError(
                    SMTPReply(
                        552,
                        "5.3.4",
                        f"Message too large: the limit is {max_size} bytes",
                    )
                )
        elif keyword == "BODY":
            body = (value or b"").decode("ascii", "replace").upper()
            if body not in ("7BIT", "8BITMIME"):
                raise _bad(keyword, "7BIT or 8BITMIME")
        elif keyword == "RET":
            ret = (value or b"").decode("ascii", "replace").upper()
            if ret not in ("FULL", "HDRS"):
                raise _bad(keyword, "FULL or HDRS")
        elif keyword == "ENVID":
            if not value or len(value) > 100:
                raise _bad(keyword, "1 to 100 characters")
            envid = xtext_decode(keyword, value)
        else:
            raise _unknown(keyword)
    return MailParameters(size=size, body=body, ret=ret, envid=envid)


def parse_rcpt_parameters(text: bytes) -> RecipientParameters:
    """RCPT TO's parameters: NOTIFY and ORCPT (RFC 3461); anything else 555."""
    notify: tuple[str, ...] = ()
    orcpt = None
    for keyword, value in _split(text).items():
        if keyword == "NOTIFY":
            words = (value or b"").decode("ascii", "replace").upper().split(",")
            allowed = {"SUCCESS", "FAILURE", "DELAY"}
            if words != ["NEVER"] and not (
                set(words) <= allowed and len(set(words)) == len(words)
            ):
                raise _bad(keyword, "NEVER, or SUCCESS, FAILURE, DELAY")
            notify = tuple(words)
        elif keyword == "ORCPT":
            kind, sep, address = (value or b"").partition(b";")
            if not sep or not _KEYWORD.fullmatch(kind) or not address:
                raise _bad(keyword, "addr-type;xtext")
            if len(value or b"") > 500:
                raise _bad(keyword, "over 500 characters")
            orcpt = (kind.decode("ascii").lower(), xtext_decode(keyword, address))
        else:
            raise _unknown(keyword)
    return RecipientParameters(notify=notify, orcpt=orcpt)
