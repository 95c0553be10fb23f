"""Processors that turn MM7 transactions into email.

:class:`EmailProcessor` is what a VASP path is bound to by default: a
DeliverReq becomes the MMS as a MIME email, a DeliveryReportReq an RFC 3464
delivery status notification, a ReadReplyReq an RFC 8098 read receipt.  Each
goes to an :class:`~mm7tx.interfaces.IMailSender`, and the MM7 answer is 1000
only once the sender has accepted the mail.

Subclass it to change a rule: every address goes through
:meth:`EmailProcessor.sender_address` and :meth:`EmailProcessor.recipient_address`,
and every email through one ``*_message`` method.
"""

from __future__ import annotations

import codecs
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import quoprimime
from email.message import EmailMessage, Message
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.interfaces import (
    IDeliverProcessor,
    IDeliveryReportProcessor,
    IMailSender,
    IReadReplyProcessor,
    ISubmitProcessor,
    SendResult,
)
from mm7tx.mail.rules import AddressRules as AddressRules
from mm7tx.mail.wire import CONTROLS, HEADER_CLASSES, RawHeaderPolicy
from mm7tx.mm7.codec.mime import base64_lines
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.messages import (
    Address,
    Content,
    ContentPart,
    DeliverReq,
    DeliverRsp,
    DeliveryReportReq,
    DeliveryReportRsp,
    ReadReplyReq,
    ReadReplyRsp,
    Recipients,
    Status,
    SubmitReq,
    SubmitRsp,
)
from mm7tx.mm7.status import StatusCode
from mm7tx.transaction import Transaction

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.processors")


# Bodies are kept 7-bit (quoted-printable or base64): Twisted's SMTP client
# does not negotiate 8BITMIME, and many relays would mangle 8-bit data.
BUILD_POLICY = RawHeaderPolicy(cte_type="7bit", header_factory=HEADER_CLASSES)

# Control characters and every character str.splitlines() breaks at (C1's
# NEL, U+2028, U+2029): none may reach a header.
_MAILBOX = re.compile(r"^[^@\s<>\"(),;:\\\[\]]+@[^@\s<>\"(),;:\\\[\]]+$")

# MMStatus -> (RFC 3464 Action, Status) for delivery reports.
DSN_ACTIONS: dict[str, tuple[str, str]] = {
    "retrieved": ("delivered", "2.0.0"),
    "forwarded": ("relayed", "2.0.0"),
    "deferred": ("delayed", "4.0.0"),
    "indeterminate": ("delayed", "4.0.0"),
    "expired": ("failed", "4.4.7"),
    "rejected": ("failed", "5.0.0"),
    "unrecognised": ("failed", "5.1.1"),
    "unrecognized": ("failed", "5.1.1"),
    "unreachable": ("failed", "4.4.1"),
    "deliveryconditionnotmet": ("failed", "5.3.0"),
    "notsupported": ("failed", "5.6.0"),
}
# MMStatus -> RFC 8098 disposition type for read replies.
MDN_DISPOSITIONS = {"read": "displayed", "deleted": "deleted"}


def clean(text: str | None) -> str:
    """A header-safe one-line value: control characters and line separators
    (CR, LF, NEL, U+2028...) become a space, so nothing from a request can
    add a header to the email."""
    return CONTROLS.sub(" ", text or "").strip()


# The longest value, in characters, that each request field may put in a
# header; a longer one is cut there, marked and logged (README, "Hostile
# input").  A mail is worth more than a whole Subject, and 998 characters
# are an RFC 5322 line's worth (how a longer word still fits its lines:
# mm7tx.wire.fitted_words); addresses are never cut (one too long is a 2002).
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


def _filename(text: str | None, transaction: Transaction | None = None) -> str | None:
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


def _disposition(kind: str, filename: str | None) -> str:
    """A Content-Disposition value, built in linear time: a short plain
    name quoted, any other as RFC 2231 continuations of at most 56
    characters each, so that folding never needs a line over 78."""
    if filename is None:
        return kind
    if (
        len(filename) <= 60
        and filename.isascii()
        and filename.isprintable()
        and not set(filename) & set('"\\')
    ):
        return f'{kind}; filename="{filename}"'
    encoded = quote(filename.encode("utf-8", "replace"), safe="")
    pieces = []
    at = 0
    while at < len(encoded):
        end = min(at + 56, len(encoded))
        percent = encoded.rfind("%", end - 2, end)
        if end < len(encoded) and percent >= 0:
            end = percent  # never split a %XX escape
        pieces.append(encoded[at:end])
        at = end
    first, *rest = pieces
    params = [f"filename*0*=utf-8''{first}"]
    params += [f"filename*{i}*={piece}" for i, piece in enumerate(rest, 1)]
    return f"{kind}; " + "; ".join(params)


_MEDIA_TYPE = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z"
)
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]{1,64}\Z")
# Codecs that decode text but that no MIME text is written in, or that
# take more than linear time (punycode): their parts go as attachments.
_ODD_CODECS = frozenset(
    {"idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined"}
)
# A line break that is not CRLF: MIME text (7bit, quoted-printable) has
# only CRLF line breaks, so such a text goes base64 to come out as it came.
_BARE_BREAK = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def _text_body(data: bytes, charset: str) -> tuple[str, str]:
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
    if _BARE_BREAK.search(data) or _crlf_bytes(charset) != b"\r\n":
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


def _crlf_bytes(charset: str) -> bytes | None:
    """What CRLF is in ``charset`` (a charset _text has decoded with)."""
    try:
        return "\r\n".encode(charset)
    except (LookupError, UnicodeError, ValueError):
        return None


def _text(part: ContentPart) -> str | None:
    """A text part's text, or None when its charset is unknown, not a text
    encoding, odd (see :data:`_ODD_CODECS`) or does not decode it."""
    try:
        info = codecs.lookup(part.charset or "utf-8")
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _ODD_CODECS:
        return None
    try:
        return part.data.decode(info.name)
    except (UnicodeError, ValueError, LookupError):
        return None


def email_date(timestamp: str | None) -> str:
    """An RFC 5322 date from an MM7 (ISO 8601) timestamp; now if unreadable."""
    when = None
    if timestamp:
        try:
            when = datetime.fromisoformat(timestamp.strip())
        except ValueError:
            when = None
    if when is None:
        when = datetime.now(UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_datetime(when)


@dataclass(frozen=True, slots=True)
class Mail:
    """An email ready for a sender: envelope sender (``""``: the null
    sender, ``MAIL FROM:<>``), recipients, message."""

    sender: str
    recipients: list[str]
    message: EmailMessage


# A plain dot-atom address, which parseaddr would give back unchanged.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9+_=-]+(?:\.[A-Za-z0-9+_=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z"
)


def _mailbox(value: str, what: str) -> str:
    if len(value) <= MAX_ADDRESS and _PLAIN_ADDRESS.match(value):
        return value  # the common case, without parseaddr's cost
    address = parseaddr(clean(value))[1] or clean(value)
    if (
        CONTROLS.search(value.strip())
        or not _MAILBOX.match(address)
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
_NUMBER = re.compile(r"\s*+\+?+[0-9 ().-]*+(?:/TYPE=PLMN)?+\s*+", re.I)
_DIGIT = re.compile(r"[0-9]")


def _number(address: Address | None, what: str) -> str:
    """The digits of a Number or ShortCode (none for no address); anything
    else is refused, so that it can never make an envelope address of its
    own (``<root@localhost>``)."""
    if address is None:
        return ""
    if not (_NUMBER.fullmatch(address.value) and _DIGIT.search(address.value)):
        raise MM7Error(
            StatusCode.ADDRESS_ERROR,
            details=f"{what} {address.kind} {address.value[:80]!r} is not a number",
        )
    return address.digits


def _mm7_address(
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


def _mm7_addresses(
    addresses: Sequence[Address], transaction: Transaction | None = None
) -> str:
    """``addresses``, comma separated, as many as fit the limit of
    ``Recipients`` in :data:`FIELD_LIMITS`, then ``[N more recipients]``:
    a request to thousands of recipients makes one short header."""
    limit = FIELD_LIMITS["Recipients"]
    named: list[str] = []
    length = 0
    for index, address in enumerate(addresses):
        value = _mm7_address(address, "Recipient", transaction)
        if not value:
            continue
        if length + len(value) + 2 * bool(named) > limit:
            return f"{', '.join(named)} [{len(addresses) - index} more recipients]"
        named.append(value)
        length += len(value) + 2 * (len(named) > 1)
    return ", ".join(named)


@implementer(
    IDeliverProcessor, IDeliveryReportProcessor, IReadReplyProcessor, ISubmitProcessor
)
class EmailProcessor:
    """Turns Deliver, DeliveryReport, ReadReply and Submit requests into email.

    It does not provide ICancelProcessor or IReplaceProcessor: a mail once
    handed to the relay cannot be recalled, so those are answered 4003.
    """

    def __init__(
        self,
        sender: IMailSender,
        rules: AddressRules,
        mm7_version: str = "6.8.0",
        keep_smil: bool = False,
        reporter: DeliveryReporter | None = None,
        options: Any = None,
    ) -> None:
        self.mail_sender = sender
        self.reporter = reporter
        self.rules = rules
        # The configured mm7_server_version, for subclasses: answers carry
        # the request's own (``transaction.mm7_version``), which falls back
        # to it.
        self.mm7_version = mm7_version
        self.keep_smil = keep_smil
        # A subclass's own options: an instance of its ``Options`` dataclass,
        # filled from its Path scope (None for a class that declares none).
        self.options = options
        self._msgid_domain = rules.from_domain or "mm7tx.invalid"

    # Address mapping: override these to change who mail comes from and goes to.

    def sender_address(self, address: Address | None) -> str:
        """The email address for an MM7 sender (or a report's handset)."""
        if address is not None and address.is_email:
            return _mailbox(address.value, "sender")
        digits = _number(address, "sender")
        if digits and self.rules.from_domain:
            return _mailbox(f"{digits}@{self.rules.from_domain}", "sender")
        if self.rules.from_address:
            return self.rules.from_address
        raise MM7Error(
            StatusCode.ADDRESS_ERROR,
            details="no sender address: set mm7_server_default_email_from_address",
        )

    def recipient_address(self, address: Address | None) -> str:
        """The email address for an MM7 recipient (or a report's sender)."""
        if address is not None and address.is_email:
            return _mailbox(address.value, "recipient")
        digits = _number(address, "recipient")
        if digits and self.rules.to_domain:
            return _mailbox(f"{digits}@{self.rules.to_domain}", "recipient")
        if self.rules.to_address:
            return self.rules.to_address
        raise MM7Error(
            StatusCode.ADDRESS_ERROR,
            details="no recipient address: set mm7_server_default_email_to_address",
        )

    # Building the emails.

    def _new_message(
        self,
        transaction: Transaction,
        sender: str,
        mm7_sender: Address | None = None,
        mm7_recipients: Sequence[Address] = (),
    ) -> EmailMessage:
        """A message with the headers every mail has; ``mm7_sender`` and
        ``mm7_recipients`` (To and Cc: never Bcc) are the request's MM7
        addresses, named in ``X-MM7-Sender`` and ``X-MM7-Recipients``
        whatever the address mapping made of them."""
        msg = EmailMessage(policy=BUILD_POLICY)
        msg["MIME-Version"] = "1.0"
        msg["From"] = sender
        msg["Message-ID"] = make_msgid("mm7", domain=self._msgid_domain)
        # An X-MM7-* header only with a value: no empty ones.
        tid = bounded(transaction.transaction_id, "TransactionID", transaction)
        if tid:
            msg["X-MM7-TransactionID"] = tid
        path = clean(transaction.path)
        if path:
            msg["X-MM7-Path"] = path
        if mm7_sender is not None:
            named = _mm7_address(mm7_sender, "Sender", transaction)
            if named:
                msg["X-MM7-Sender"] = named
        listed = _mm7_addresses(mm7_recipients, transaction)
        if listed:
            msg["X-MM7-Recipients"] = listed
        return msg

    def _attach(
        self,
        msg: EmailMessage,
        part: ContentPart,
        first: bool,
        transaction: Transaction | None = None,
    ) -> None:
        media = part.media_type.lower()
        original = None
        if not _MEDIA_TYPE.match(media):
            original, media = media, "application/octet-stream"
        maintype = media.partition("/")[0]
        if maintype in ("multipart", "message"):
            # RFC 2045 allows no base64 for these, and a leaf is no valid
            # multipart: they go as bytes, their type kept beside.
            original, media = media, "application/octet-stream"
            maintype = "application"
        text = _text(part) if maintype == "text" else None
        filename = _filename(part.filename, transaction)
        if filename is None and original == "message/rfc822":
            filename = "message.eml"
        if text is not None:
            leaf = msg if first else EmailMessage(policy=BUILD_POLICY)
            charset, data = part.charset, part.data
            if not (charset and _TOKEN.match(charset)):
                # No charset (the text was read as UTF-8) or one that cannot
                # be a parameter: the same characters, in UTF-8.
                charset, data = "utf-8", text.encode("utf-8", "replace")
            cte, payload = _text_body(data, charset)
            leaf["Content-Type"] = f'{media}; charset="{charset}"'
            leaf["Content-Transfer-Encoding"] = cte
            leaf.set_payload(payload)
            if first:
                return
            leaf["Content-Disposition"] = _disposition("inline", filename)
        else:
            # What add_attachment(bytes) makes, with the base64 done in one
            # call to the C encoder rather than line by line.
            leaf = EmailMessage(policy=BUILD_POLICY)
            charset = part.charset if maintype == "text" else None
            if charset and _TOKEN.match(charset):
                leaf["Content-Type"] = f'{media}; charset="{charset}"'
            else:
                leaf["Content-Type"] = media
            original = bounded(original, "Content-Type", transaction)
            if original:
                leaf["X-MM7-Content-Type"] = original
            leaf["Content-Transfer-Encoding"] = "base64"
            leaf["Content-Disposition"] = _disposition("attachment", filename)
            # Received as valid base64: carried as it came (mm7tx.codec.mime's
            # mime_base64), not decoded and encoded again.
            lines = part.base64
            if lines is None:
                lines = base64_lines(part.data)
            leaf.set_payload(lines.decode("ascii"))
        if part.content_id:
            leaf["Content-ID"] = (
                f"<{bounded(part.content_id, 'Content-ID', transaction)}>"
            )
        if not msg.is_multipart():
            msg.make_mixed()
        msg.attach(leaf)

    def _mms(
        self,
        transaction: Transaction,
        sender_address: Address | None,
        recipients: Recipients,
        subject: str | None,
        timestamp: str | None,
        content: Content,
        headers: dict[str, str | None],
    ) -> Mail:
        """An MMS as a MIME email: To and Cc in the headers, Bcc only in the
        envelope, text parts first, SMIL dropped unless ``keep_smil``."""
        sender = self.sender_address(sender_address)
        to = [self.recipient_address(a) for a in recipients.to]
        cc = [self.recipient_address(a) for a in recipients.cc]
        bcc = [self.recipient_address(a) for a in recipients.bcc]
        if not (to or cc or bcc):
            to = [self.recipient_address(None)]
        msg = self._new_message(
            transaction, sender, sender_address, recipients.to + recipients.cc
        )
        if to:
            msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        subject = bounded(subject, "Subject", transaction)
        if subject:  # no empty header for an MMS without one
            msg["Subject"] = subject
        msg["Date"] = email_date(timestamp)
        for header, value in headers.items():
            field = header.removeprefix("X-MM7-")
            value = bounded(
                value, field if field in FIELD_LIMITS else "MessageID", transaction
            )
            if value:
                msg[header] = value
        parts = [p for p in content if self.keep_smil or not p.is_smil]
        parts.sort(key=lambda p: not p.media_type.startswith("text/"))
        for index, part in enumerate(parts):
            self._attach(msg, part, index == 0, transaction)
        if not parts:
            msg.set_content("")
        _set_boundaries(msg)
        return Mail(sender, list(dict.fromkeys(to + cc + bcc)), msg)

    def deliver_message(self, request: DeliverReq, transaction: Transaction) -> Mail:
        """The MMS of a DeliverReq as a MIME email."""
        return self._mms(
            transaction,
            request.sender,
            request.recipients,
            request.subject,
            request.timestamp,
            request.content,
            {
                "X-MM7-LinkedID": request.linked_id,
                "X-MM7-MMSRelayServerID": request.mms_relay_server_id,
                "X-MM7-VASPID": request.vasp_id,
                "X-MM7-VASID": request.vas_id,
                "X-MM7-Priority": request.priority,
            },
        )

    def submit_message(
        self, request: SubmitReq, transaction: Transaction, message_id: str
    ) -> Mail:
        """The MMS of a SubmitReq as one MIME email to all its recipients."""
        account = transaction.account
        return self._mms(
            transaction,
            request.sender_address,
            request.recipients,
            request.subject,
            request.timestamp,
            request.content,
            {
                "X-MM7-MessageID": message_id,
                "X-MM7-VASP-Account": account.name if account else None,
                "X-MM7-VASPID": request.vasp_id,
                "X-MM7-VASID": request.vas_id,
                "X-MM7-ServiceCode": request.service_code,
                "X-MM7-LinkedID": request.linked_id,
                "X-MM7-Priority": request.priority,
            },
        )

    def _report(
        self,
        transaction: Transaction,
        handset: Address | None,
        originator: Address | None,
        what: str,
        status: str,
        status_text: str | None,
        report_type: str,
        fields: list[Message],
        message_id: str,
        date: str | None,
    ) -> Mail:
        """A ``multipart/report``: a readable part, then the notification.

        It reports on another message, so it goes from the null sender (or
        ``mm7_report_mail_from``) and says ``Auto-Submitted: auto-replied``
        (RFC 3834): a bounce of it goes nowhere, never back into the
        system, and no auto-responder answers it.  Its From is still the
        handset's address."""
        recipient_value = (
            bounded(handset.value, "Recipient", transaction) if handset else ""
        )
        text = (
            f"MM7 {what} for message {message_id or '(unknown)'}\n\n"
            f"Recipient:   {recipient_value or '(unknown)'}\n"
            f"MMStatus:    {status}\n"
            f"StatusText:  {bounded(status_text, 'StatusText') or '-'}\n"
            f"Date:        {bounded(date, 'Date') or '-'}\n"
        )
        sender = self.sender_address(handset)
        recipient = self.recipient_address(originator)
        # The request's own Sender and Recipient: the originator and the
        # handset, the other way round from the mail's From and To.
        msg = self._new_message(
            transaction, sender, originator, (handset,) if handset else ()
        )
        msg["To"] = recipient
        msg["Auto-Submitted"] = "auto-replied"
        msg["Subject"] = f"{what.capitalize()}: {status}"
        msg["Date"] = email_date(date)
        if message_id:
            msg["X-MM7-MessageID"] = message_id
        msg.set_content(text)
        msg.make_mixed()
        msg.set_type("multipart/report")
        msg.set_param("report-type", report_type)
        notification = EmailMessage(policy=BUILD_POLICY)
        notification["Content-Type"] = f"message/{report_type}"
        notification.set_payload(fields)  # type: ignore[arg-type]
        msg.attach(notification)
        _set_boundaries(msg)
        return Mail(self.rules.report_mail_from, [recipient], msg)

    def delivery_report_message(
        self, request: DeliveryReportReq, transaction: Transaction
    ) -> Mail:
        """A DeliveryReportReq as an RFC 3464 delivery status notification."""
        status = bounded(request.mm_status, "MMStatus", transaction) or "Indeterminate"
        action, code = DSN_ACTIONS.get(status.lower(), ("failed", "5.0.0"))
        handset = request.recipient
        final = self.sender_address(handset)
        message_id = bounded(request.message_id, "MessageID", transaction)
        relay = bounded(request.mms_relay_server_id, "MMSRelayServerID", transaction)
        status_text = bounded(request.status_text, "StatusText", transaction)
        per_message = _fields(
            ("Reporting-MTA", f"dns; {relay or 'mm7tx'}"),
            ("Original-Envelope-Id", message_id),
            ("Arrival-Date", email_date(request.date)),
        )
        per_recipient = _fields(
            ("Final-Recipient", f"rfc822; {final}"),
            ("X-MM7-Recipient", bounded(handset.value, "Recipient") if handset else ""),
            ("Action", action),
            ("Status", code),
            ("Diagnostic-Code", f"X-MM7; {status} {status_text}".strip()),
            ("X-MM7-MMStatus", status),
            ("X-MM7-StatusText", status_text),
        )
        return self._report(
            transaction,
            handset,
            request.sender,
            "delivery report",
            status,
            request.status_text,
            "delivery-status",
            [per_message, per_recipient],
            message_id,
            request.date,
        )

    def read_reply_message(
        self, request: ReadReplyReq, transaction: Transaction
    ) -> Mail:
        """A ReadReplyReq as an RFC 8098 message disposition notification."""
        status = bounded(request.mm_status, "MMStatus", transaction) or "Indeterminate"
        disposition = MDN_DISPOSITIONS.get(status.lower(), "processed")
        handset = request.recipient
        final = self.sender_address(handset)
        message_id = bounded(request.message_id, "MessageID", transaction)
        relay = bounded(request.mms_relay_server_id, "MMSRelayServerID", transaction)
        notification = _fields(
            ("Reporting-UA", f"{relay or 'mm7tx'}; mm7tx"),
            ("Final-Recipient", f"rfc822; {final}"),
            ("X-MM7-Recipient", bounded(handset.value, "Recipient") if handset else ""),
            ("Original-Message-ID", f"<{message_id}>" if message_id else ""),
            ("Disposition", f"automatic-action/MDN-sent-automatically; {disposition}"),
            ("X-MM7-MMStatus", status),
            (
                "X-MM7-StatusText",
                bounded(request.status_text, "StatusText", transaction),
            ),
        )
        return self._report(
            transaction,
            handset,
            request.sender,
            "read reply",
            status,
            request.status_text,
            "disposition-notification",
            [notification],
            message_id,
            request.timestamp,
        )

    # The transactions.

    def _hand_over(
        self, mail: Mail, transaction: Transaction | None = None
    ) -> defer.Deferred[Any]:
        """Send ``mail``: the sender's result, its reply noted on the
        transaction for the log."""
        d = self.mail_sender.send(mail.sender, mail.recipients, mail.message)

        def noted(result: Any) -> Any:
            if transaction is not None and isinstance(result, SendResult):
                transaction.outcome.relay_reply = result.reply
            return result

        return d.addCallback(noted)

    def _send(
        self, mail: Mail, transaction: Transaction | None = None
    ) -> defer.Deferred[Status]:
        return self._hand_over(mail, transaction).addCallback(result_status)

    def submit(
        self, request: SubmitReq, transaction: Transaction
    ) -> defer.Deferred[SubmitRsp]:
        """Mail a SubmitReq; answer with a new MessageID once the relay took it,
        and post a delivery report back when the VASP asked for one.

        A report goes back only for a MessageID the VASP was given in a
        SubmitRsp: none for a fault (the VASP never learnt the MessageID;
        it resubmits or gives up), none when the VASP's connection was gone
        before the answer.  On a partial success (1100) each recipient is
        reported Forwarded or Rejected by what the relay said to its mapped
        address (recipients mapped to one address share its fate)."""
        message_id = uuid.uuid4().hex
        mail = self.submit_message(request, transaction, message_id)
        d = self._hand_over(mail, transaction)

        def accepted(result: Any) -> SubmitRsp:
            status = result_status(result)
            refused = (
                {address for address, _, _ in result.refused}
                if isinstance(result, SendResult)
                else set()
            )
            self._report_submit(request, transaction, message_id, refused)
            return SubmitRsp(status, transaction.mm7_version, message_id)

        return d.addCallback(accepted)

    def _report_submit(
        self,
        request: SubmitReq,
        transaction: Transaction,
        message_id: str,
        refused: set[str],
    ) -> None:
        """Post one DeliveryReportReq per recipient of an accepted SubmitReq
        (if it asked for reports and the account has a URL for them)."""
        account = transaction.account
        if not (
            request.delivery_report
            and self.reporter is not None
            and account is not None
            and account.delivery_report_url
        ):
            return
        if transaction.answer_lost():
            log.info(
                "No delivery report for {message_id} to {vasp}: its SubmitRsp "
                "could not be sent, the connection was gone",
                message_id=message_id,
                vasp=account.name,
            )
            return
        for recipient in request.recipients.all:
            forwarded = self.recipient_address(recipient) not in refused
            self.reporter.report(
                account,
                DeliveryReportReq(
                    # The client makes it fit the namespace.
                    mm7_version=transaction.mm7_version,
                    message_id=message_id,
                    recipient=recipient,
                    sender=request.sender_address,
                    date=datetime.now(UTC).isoformat(timespec="seconds"),
                    mm_status="Forwarded" if forwarded else "Rejected",
                    status_text="Accepted by the mail relay"
                    if forwarded
                    else "Refused by the mail relay",
                ),
                transaction.namespace,
            )

    def deliver(
        self, request: DeliverReq, transaction: Transaction
    ) -> defer.Deferred[DeliverRsp]:
        mail = self.deliver_message(request, transaction)
        return self._send(mail, transaction).addCallback(
            lambda status: DeliverRsp(status, transaction.mm7_version)
        )

    def delivery_report(
        self, request: DeliveryReportReq, transaction: Transaction
    ) -> defer.Deferred[DeliveryReportRsp]:
        mail = self.delivery_report_message(request, transaction)
        return self._send(mail, transaction).addCallback(
            lambda status: DeliveryReportRsp(status, transaction.mm7_version)
        )

    def read_reply(
        self, request: ReadReplyReq, transaction: Transaction
    ) -> defer.Deferred[ReadReplyRsp]:
        mail = self.read_reply_message(request, transaction)
        return self._send(mail, transaction).addCallback(
            lambda status: ReadReplyRsp(status, transaction.mm7_version)
        )


# One random boundary per process (and nesting depth), so that the
# Content-Type naming it is the same in every email and parsed once: parsing
# a fresh one for each email took 7% of a transaction in a profile.  An
# email with text that contains it gets fresh random boundaries instead.
_BOUNDARY = f"mm7tx-{secrets.token_urlsafe(16)}"


def _text_payload(part: Message) -> object:
    """The payload as the generator writes it, unless base64 (whose
    alphabet has no "-": it cannot hold a boundary).  Not ``get_payload``,
    which encodes the whole text once more to look for surrogates (tens of
    milliseconds for a large part)."""
    if str(part.get("Content-Transfer-Encoding", "")).lower() == "base64":
        return None
    return part._payload  # type: ignore[attr-defined]


def _set_boundaries(msg: Message) -> None:
    """Boundaries for the multiparts that have none, set now: otherwise the
    generator makes one and scans the whole text for it."""
    fresh = any(
        (isinstance(payload, str) and _BOUNDARY in payload)
        or (isinstance(payload, bytes) and _BOUNDARY.encode() in payload)
        for payload in (_text_payload(part) for part in msg.walk())
    )

    def visit(part: Message, depth: int) -> None:
        if not part.is_multipart():
            return
        # (message/delivery-status also holds a list, of header blocks.)
        if part.get_content_maintype() == "multipart" and part.get_boundary() is None:
            # 128 random bits, short enough for Content-Type to fit a line.
            part.set_boundary(
                f"mm7tx-{secrets.token_urlsafe(16)}"
                if fresh
                else f"{_BOUNDARY}-{depth:02x}"
            )
        for child in part.get_payload():
            visit(child, depth + 1)  # type: ignore[arg-type]

    visit(msg, 0)


def _fields(*pairs: tuple[str, str]) -> Message:
    """A header block of a delivery-status or disposition notification."""
    block = Message(policy=BUILD_POLICY)
    for name, value in pairs:
        value = clean(value)
        if value:  # no empty field (X-MM7-StatusText:)
            block[name] = value
    return block


def result_status(result: Any) -> Status:
    """1000, or 1100 Partial success naming the refused recipients."""
    if isinstance(result, SendResult) and result.refused:
        refused = "; ".join(f"{a} {c} {clean(r)}" for a, c, r in result.refused)
        return Status.of(StatusCode.PARTIAL_SUCCESS, details=f"refused: {refused}")
    return Status.of(StatusCode.SUCCESS)
