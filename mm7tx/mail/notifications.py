"""The notifications that go back to a mail's own sender once it became
an MMS: an RFC 3464 delivery status notification (:func:`dsn_mail`) and an
RFC 8098 message disposition notification (:func:`mdn_mail`).

Both report on another message, so both go from the null sender
(``MAIL FROM:<>``, or ``mm7_report_mail_from``) and say ``Auto-Submitted:
auto-replied`` (RFC 3834): a bounce of one goes nowhere.  They carry the
original mail's header section (``text/rfc822-headers``), never its body.
Pure: no I/O, nothing of MM7.
"""

from __future__ import annotations

import quopri
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime, make_msgid, parseaddr

from mm7tx.mail.compose import (
    BUILD_POLICY,
    Mail,
    clean,
    header_block,
    make_report,
    set_boundaries,
)

# Which NOTIFY keyword (RFC 3461) asks for a DSN with each Action.
NOTIFY_FOR_ACTION = {
    "failed": "FAILURE",
    "delayed": "DELAY",
    "delivered": "SUCCESS",
    "relayed": "SUCCESS",
}


def notify_wants(notify: tuple[str, ...], action: str) -> bool:
    """Whether a recipient's NOTIFY asks for a DSN with ``action``; without
    NOTIFY, failures only (what MTAs do)."""
    wanted = {n.upper() for n in notify} or {"FAILURE"}
    if "NEVER" in wanted:
        return False
    return NOTIFY_FOR_ACTION.get(action) in wanted


@dataclass(frozen=True, slots=True)
class Reported:
    """One recipient's new status, for a notification: its final address
    (``15551234567@mms.example``), the ORCPT given for it (address type,
    address) if any, the RFC 3464 Action and Status (or the RFC 8098
    disposition type), and what the MMSC said (MMStatus, StatusText) with
    the report's date (RFC 5322)."""

    final_recipient: str
    original_recipient: tuple[str, str] | None
    action: str
    status: str
    mm_status: str
    status_text: str
    date: str


@dataclass(frozen=True, slots=True)
class Original:
    """What is known of the original mail: its envelope sender, ENVID, its
    arrival (seconds since the epoch), its Message-ID and Subject, and
    its header section as received."""

    mail_from: str
    envid: str | None
    arrival: float
    message_id: str | None
    subject: str | None
    headers: bytes


def _date(seconds: float) -> str:
    return format_datetime(datetime.fromtimestamp(seconds, UTC))


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2] or "mm7tx.invalid"


def _headers_part(headers: bytes) -> EmailMessage:
    """``text/rfc822-headers``: the header section as received, kept 7-bit
    (quoted-printable if it holds 8-bit bytes)."""
    part = EmailMessage(policy=BUILD_POLICY)
    if headers.isascii():
        part["Content-Type"] = "text/rfc822-headers"
        part.set_payload(headers.decode("ascii"))
    else:
        part["Content-Type"] = 'text/rfc822-headers; charset="utf-8"'
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(quopri.encodestring(headers).decode("ascii"))
    return part


def _report(
    report_type: str,
    author: str,
    to: str,
    subject: str,
    text: str,
    fields: list[Message],
    original: Original,
    envelope_sender: str,
    date: float,
) -> Mail:
    """A ``multipart/report`` of ``report_type``: the readable ``text``,
    the notification's header blocks ``fields``, the original headers."""
    msg = EmailMessage(policy=BUILD_POLICY)
    msg["MIME-Version"] = "1.0"
    msg["From"] = author
    msg["To"] = to
    msg["Subject"] = clean(subject)[:200]
    msg["Date"] = _date(date)
    domain = _domain_of(parseaddr(author)[1])
    msg["Message-ID"] = make_msgid("mm7tx-report", domain=domain)
    msg["Auto-Submitted"] = "auto-replied"
    if original.message_id:
        msg["In-Reply-To"] = clean(original.message_id)
        msg["References"] = clean(original.message_id)
    make_report(msg, text, report_type, fields)
    msg.attach(_headers_part(original.headers))
    set_boundaries(msg)
    return Mail(envelope_sender, [to], msg)


def _original_recipient(orcpt: tuple[str, str] | None) -> str:
    return f"{orcpt[0]}; {orcpt[1]}" if orcpt else ""


_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Mail Relayed to the Handset's MMSC",
}


def dsn_mail(
    original: Original,
    reported: Reported,
    *,
    reporting_mta: str,
    envelope_sender: str,
    now: float,
) -> Mail:
    """The RFC 3464 DSN telling ``original``'s sender what became of the
    MMS to one recipient: to the original envelope sender, from
    ``envelope_sender`` (``""``: the null sender)."""
    said = f"{reported.mm_status} {clean(reported.status_text)}".strip()
    text = (
        f"This is the MMS gateway at {reporting_mta}.\n\n"
        f"Your mail to <{reported.final_recipient}> was sent as an MMS.\n"
        f"The MMSC reports: {said}\n"
        f"Action: {reported.action}, status {reported.status}.\n\n"
        "The headers of your mail are attached (its body is not kept).\n"
    )
    per_message = header_block(
        ("Reporting-MTA", f"dns; {reporting_mta}"),
        ("Original-Envelope-Id", original.envid or ""),
        ("Arrival-Date", _date(original.arrival)),
    )
    per_recipient = header_block(
        ("Original-Recipient", _original_recipient(reported.original_recipient)),
        ("Final-Recipient", f"rfc822; {reported.final_recipient}"),
        ("Action", reported.action),
        ("Status", reported.status),
        ("Diagnostic-Code", f"X-MM7; {said}"),
        ("Last-Attempt-Date", reported.date),
    )
    domain = _domain_of(reported.final_recipient)
    return _report(
        "delivery-status",
        f"Mail Delivery System <MAILER-DAEMON@{domain}>",
        original.mail_from,
        _SUBJECTS.get(reported.action, "Delivery Status Notification"),
        text,
        [per_message, per_recipient],
        original,
        envelope_sender,
        now,
    )


def mdn_mail(
    original: Original,
    reported: Reported,
    to: str,
    *,
    reporting_ua: str,
    envelope_sender: str,
    now: float,
) -> Mail:
    """The RFC 8098 MDN for ``original``, read (or deleted) by one
    recipient, to ``to`` (its ``Disposition-Notification-To``);
    ``reported.action`` is the disposition type."""
    subject = clean(original.subject) or "your message"
    text = (
        f"Your message to <{reported.final_recipient}> ({subject}) was "
        f"{reported.action} on the handset ({reported.mm_status}).\n"
    )
    notification = header_block(
        ("Reporting-UA", f"{reporting_ua}; mm7tx"),
        ("Original-Recipient", _original_recipient(reported.original_recipient)),
        ("Final-Recipient", f"rfc822; {reported.final_recipient}"),
        ("Original-Message-ID", original.message_id or ""),
        (
            "Disposition",
            f"automatic-action/MDN-sent-automatically; {reported.action}",
        ),
    )
    return _report(
        "disposition-notification",
        reported.final_recipient,
        to,
        f"{reported.action.capitalize()}: {subject}",
        text,
        [notification],
        original,
        envelope_sender,
        now,
    )
