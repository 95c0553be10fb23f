"""What of an MM7 request may go in an email, and how: each field's value
cleaned and cut to its limit (logged), MM7 addresses checked and made email
addresses, a part's filename and text, and the transfer encoding that gives
a text back as it came."""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from email import quoprimime
from email.utils import parseaddr

from twisted.logger import Logger

from mm7tx.mail.compose import clean
from mm7tx.mail.wire import CONTROLS
from mm7tx.mm7.codec.encoding import base64_lines
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.messages import Address, ContentPart
from mm7tx.mm7.status import StatusCode
from mm7tx.transaction import Transaction

# The processors' namespace, as before the split: it is in every log event.
log = Logger(namespace="mm7tx.processors")

# A bare mailbox, local part @ domain: no space, angle bracket, quote or
# other special (RFC 5322 3.2.3) that would make it more than one address.
MAILBOX = re.compile(r"^[^@\s<>\"(),;:\\\[\]]+@[^@\s<>\"(),;:\\\[\]]+$")

# The longest value, in characters, that each request field may put in a
# header; a longer one is cut there, marked and logged (README, "Hostile
# input").  A mail is worth more than a whole Subject, and 998 characters
# are an RFC 5322 line's worth (how a longer word still fits its lines:
# mm7tx.mail.wire.fitted_words); addresses are never cut (one too long is a 2002).
FIELD_LIMITS: dict[str, int] = {
    "Subject": 998,
    "StatusText": 998,
    "TransactionID": 256,
    "MessageID": 256,
    "LinkedID": 256,
    "VASPID": 256,
    "VASID": 256,
    "MMSRelayServerID": 256,
    "ServiceCode": 256,
    "Priority": 256,
    "MMStatus": 256,
    "Recipient": 256,
    "Sender": 256,
    # X-MM7-Recipients as a whole: the first recipients that fit, then
    # "[N more recipients]".
    "Recipients": 998,
    "Date": 256,
    "Content-Type": 256,
    "Content-ID": 256,
    "filename": 255,
}
# RFC 5321's limit on a path: longer addresses cannot be delivered.
MAX_ADDRESS = 254


def bounded(
    text: str | None, field: str, transaction: Transaction | None = None
) -> str:
    """``clean(text)`` cut to the field's limit in :data:`FIELD_LIMITS`, with
    a marker saying how much was cut, and the cut logged."""
    value = clean(text)
    limit = FIELD_LIMITS[field]
    if len(value) <= limit:
        return value
    cut = len(value) - limit
    log.warn(
        "{field} of {length} characters cut to {limit} (TransactionID {tid})",
        field=field,
        length=len(value),
        limit=limit,
        tid=transaction.transaction_id[:80] if transaction else None,
    )
    return f"{value[:limit].rstrip()} [{cut} characters cut]"


def part_filename(
    text: str | None, transaction: Transaction | None = None
) -> str | None:
    """A part's filename, cut to its limit keeping its extension."""
    value = clean(text)
    limit = FIELD_LIMITS["filename"]
    if len(value) <= limit:
        return value or None
    stem, dot, extension = value.rpartition(".")
    if not dot or not stem or len(extension) > 16:
        stem, extension = value, ""
    bounded(value, "filename", transaction)  # logs the cut
    ending = f"\u2026.{extension}" if extension else "\u2026"
    return stem[: limit - len(ending)] + ending


MEDIA_TYPE = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z"
)
TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]{1,64}\Z")
# Codecs that decode text but that no MIME text is written in, or that
# take more than linear time (punycode): their parts go as attachments.
ODD_CODECS = frozenset(
    {"idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined"}
)
# A line break that is not CRLF: MIME text (7bit, quoted-printable) has
# only CRLF line breaks, so such a text goes base64 to come out as it came.
BARE_BREAK = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def text_body(data: bytes, charset: str) -> tuple[str, str]:
    """The Content-Transfer-Encoding and payload that give back exactly
    ``data`` once decoded, with no line break added or changed:

    - 7bit when the text is short ASCII lines, each ending in CRLF (the
      payload has LF line ends; the SMTP sender writes CRLF);
    - else quoted-printable when its line breaks are all CRLF (a text
      without a final line break ends with a soft one, ``=``), unless
      base64 is shorter;
    - else base64: a bare LF or CR (instantcom's ``✓\nline 2``) is not a
      MIME text line break, and would come out CRLF in any other encoding.
    """
    if BARE_BREAK.search(data) or crlf_bytes(charset) != b"\r\n":
        return "base64", base64_lines(data).decode("ascii")
    text = data.decode("latin-1")  # one character per byte, for the encoder
    encoded = quoprimime.body_encode(text, eol="\n")
    if not data.endswith(b"\n"):
        if not data:
            return "7bit", ""
        encoded += "=\n"  # a soft break: the text ends without one
    elif encoded == text.replace("\r\n", "\n"):
        return "7bit", encoded
    base64 = base64_lines(data).decode("ascii")
    if len(base64) < len(encoded):
        return "base64", base64
    return "quoted-printable", encoded


def crlf_bytes(charset: str) -> bytes | None:
    """What CRLF is in ``charset`` (a charset part_text has decoded with)."""
    try:
        return "\r\n".encode(charset)
    except (LookupError, UnicodeError, ValueError):
        return None


def part_text(part: ContentPart) -> str | None:
    """A text part's text, or None when its charset is unknown, not a text
    encoding, odd (see :data:`ODD_CODECS`) or does not decode it."""
    try:
        info = codecs.lookup(part.charset or "utf-8")
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in ODD_CODECS:
        return None
    try:
        return part.data.decode(info.name)
    except (UnicodeError, ValueError, LookupError):
        return None


# A plain dot-atom address, which parseaddr would give back unchanged.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9+_=-]+(?:\.[A-Za-z0-9+_=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z"
)


def mailbox(value: str, what: str) -> str:
    if len(value) <= MAX_ADDRESS and PLAIN_ADDRESS.match(value):
        return value  # the common case, without parseaddr's cost
    address = parseaddr(clean(value))[1] or clean(value)
    if (
        CONTROLS.search(value.strip())
        or not MAILBOX.match(address)
        or len(address) > MAX_ADDRESS
    ):
        raise MM7Error(
            StatusCode.ADDRESS_ERROR, details=f"{what} {value[:80]!r} is not an address"
        )
    return address


# A Number or ShortCode: ASCII digits, a leading "+", the separators
# Address.digits drops, a /TYPE=PLMN suffix (DESIGN.md).
# (Possessive, each character read once; whether it holds a digit is a
# second search: a digit between two runs of the same characters would
# make the match quadratic.)
NUMBER = re.compile(r"\s*+\+?+[0-9 ().-]*+(?:/TYPE=PLMN)?+\s*+", re.I)
DIGIT = re.compile(r"[0-9]")


def number(address: Address | None, what: str) -> str:
    """The digits of a Number or ShortCode (none for no address); anything
    else is refused, so that it can never make an envelope address of its
    own (``<root@localhost>``)."""
    if address is None:
        return ""
    if not (NUMBER.fullmatch(address.value) and DIGIT.search(address.value)):
        raise MM7Error(
            StatusCode.ADDRESS_ERROR,
            details=f"{what} {address.kind} {address.value[:80]!r} is not a number",
        )
    return address.digits


def mm7_address(
    address: Address, field: str, transaction: Transaction | None = None
) -> str:
    """An MM7 address as an X-MM7-Sender or X-MM7-Recipients names it: a
    Number as sent (``+15551234567``), a ShortCode with its kind
    (``7255 (ShortCode)``), an RFC2822Address as its bare address; one
    line, cut to the field's limit."""
    value = clean(address.value)
    if address.is_email:
        value = (parseaddr(value)[1] if len(value) <= 1024 else "") or value
    elif address.kind == "ShortCode" and value:
        value += " (ShortCode)"
    return bounded(value, field, transaction)


def mm7_addresses(
    addresses: Sequence[Address], transaction: Transaction | None = None
) -> str:
    """``addresses``, comma separated, as many as fit the limit of
    ``Recipients`` in :data:`FIELD_LIMITS`, then ``[N more recipients]``:
    a request to thousands of recipients makes one short header."""
    limit = FIELD_LIMITS["Recipients"]
    named: list[str] = []
    length = 0
    for index, address in enumerate(addresses):
        value = mm7_address(address, "Recipient", transaction)
        if not value:
            continue
        if length + len(value) + 2 * bool(named) > limit:
            return f"{', '.join(named)} [{len(addresses) - index} more recipients]"
        named.append(value)
        length += len(value) + 2 * (len(named) > 1)
    return ", ".join(named)
